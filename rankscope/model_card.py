"""The model card (``README.md``) of an adapter that rankscope wrote: where it came from, its ranks, its error.

``extract`` and ``resize`` put it next to ``adapter_config.json`` (as the Hub and peft's ``save_pretrained`` do):
YAML front matter (``library_name: peft``, ``base_model`` when the base is a Hub id, tags), the source
checkpoints, the ranks per module kind, the error against the Eckart–Young optimum, the command that made it and
how to load it.  Everything comes from the result's table, ``adapter_config`` and ``info`` (``run.json``).
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

from .version import __version__

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _hub_id(value: Any) -> str | None:
    """``value`` when it reads as a Hub id (``org/name``), not a local path."""
    text = str(value or "")
    return text if _HUB_ID.match(text) and not text.startswith((".", "/", "~")) else None


def _cell(value: Any) -> str:
    return "–" if value is None or (isinstance(value, float) and value != value) else str(value).replace("|", "\\|")


def _table(frame: pd.DataFrame) -> list[str]:
    """A Markdown table of ``frame`` (index included as the first column)."""
    head = [frame.index.name or "", *map(str, frame.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for idx, row in frame.iterrows():
        lines.append("| " + " | ".join(_cell(v) for v in [idx, *row.tolist()]) + " |")
    return lines


def _ranks(values: pd.Series) -> str:
    lo, hi = int(values.min()), int(values.max())
    return str(lo) if lo == hi else f"{lo}–{int(values.median())}–{hi}"


def _by_kind(rows: pd.DataFrame, rank: str, params: str) -> pd.DataFrame:
    """Per module kind: modules, rank (min–median–max), LoRA parameters and the errors."""
    out = {}
    for kind, g in rows.groupby("kind", sort=False):
        entry = {"modules": len(g), "rank (min–median–max)": _ranks(g[rank]), "LoRA parameters": f"{int(g[params].sum()):,}",
                 "rel_error median": f"{g['rel_error'].median():.4f}", "rel_error max": f"{g['rel_error'].max():.4f}"}
        if "optimal_rel_error" in g and g["optimal_rel_error"].notna().any():
            entry["optimum max"] = f"{g['optimal_rel_error'].max():.4f}"
            entry["worst ratio"] = f"{g['ratio'].max():.6f}"
        out[kind] = entry
    frame = pd.DataFrame.from_dict(out, orient="index")
    frame.index.name = "kind"
    return frame


def _command(info: dict[str, Any], function: str) -> list[str]:
    argv = info.get("argv")
    if argv:
        return ["```bash", str(argv), "```"]
    return [f"Made through the Python API (`{function}`); every option is in `run.json`."]


def _front_matter(base: Any, tags: list[str]) -> list[str]:
    hub = _hub_id(base)
    return ["---", "library_name: peft", *([f"base_model: {hub}"] if hub else []),
            "tags:", *(f"- {t}" for t in tags), "---", ""]


def _usage(base: Any, task: Any) -> list[str]:
    auto = {"SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM",
            "TOKEN_CLS": "AutoModelForTokenClassification", "QUESTION_ANS": "AutoModelForQuestionAnswering",
            "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM"}.get(str(task), "AutoModel")
    return ["## Use", "", "```python", "from peft import PeftModel", f"from transformers import {auto}", "",
            f"base = {auto}.from_pretrained({str(base)!r})",
            "model = PeftModel.from_pretrained(base, 'THIS_FOLDER')  # or .merge_and_unload() for plain weights",
            "```", ""]


def _error_lines(rows: pd.DataFrame, what: str) -> list[str]:
    lines = [f"`rel_error = ‖ΔW − s·B·A‖_F / ‖ΔW‖_F` of the stored factors, {what}; the optimum is the Eckart–Young "
             "error of the same rank, `√(Σ_{i>r} σ_i² / Σ σ_i²)`, and `ratio` = rel_error / optimum (1 = optimal)."]
    if "ratio" in rows and rows["ratio"].notna().any():
        worst = rows.loc[rows["ratio"].idxmax()]
        lines += ["", f"Worst module: `{worst['module']}`, ratio {worst['ratio']:.6f} (rel_error {worst['rel_error']:.4f}, "
                      f"optimum {worst['optimal_rel_error']:.4f})."]
    else:
        lines += ["", "The optimum was not computed (`--no-optimum`)."]
    return lines


def extract_card(table: pd.DataFrame, adapter_config: dict[str, Any], info: dict[str, Any]) -> str:
    """``README.md`` of an adapter written by ``rankscope extract``."""
    rows = table[table["role"] == "lora"]
    inputs = info.get("inputs", {})
    base, ft = inputs.get("base", {}), inputs.get("finetuned", {})
    adapter = info.get("adapter", {})
    dtype = (info.get("options") or {}).get("dtype") or "fp32 (LoRA factors; other tensors as read)"
    base_id = base.get("given") if _hub_id(base.get("given")) else adapter_config.get("base_model_name_or_path")
    lines = _front_matter(base.get("given"), ["lora", "peft", "rankscope", "extracted"])
    lines += ["# LoRA adapter extracted from a full fine-tune", "",
              f"Written by rankscope {__version__} (`rankscope extract`): every targeted module's "
              "`ΔW = W_finetuned − W_base` is replaced by its best rank-r approximation (truncated SVD, "
              "Eckart–Young), so that merging this adapter into the base gives `W_base + ΔW_r`.", "",
              "## Source checkpoints", "", "| | given | resolved |", "|---|---|---|",
              f"| base | `{_cell(base.get('given'))}` | `{_cell(base.get('resolved'))}` |",
              f"| fine-tune | `{_cell(ft.get('given'))}` | `{_cell(ft.get('resolved'))}` |", "",
              "## Ranks", "",
              f"{adapter.get('lora_modules', len(rows))} LoRA modules, {adapter.get('lora_parameters', 0):,} LoRA "
              f"parameters; task_type `{adapter_config.get('task_type')}`; modules_to_save "
              f"{', '.join(f'`{m}`' for m in adapter.get('modules_to_save') or []) or 'none'}; tensors stored as "
              f"{dtype}.", ""]
    if not rows.empty:
        lines += _table(_by_kind(rows, "rank", "lora_params")) + [""]
    lines += ["## Error against the optimum", ""] + _error_lines(rows, "against the fine-tune's ΔW") + [""]
    lines += ["## Command", ""] + _command(info, "rankscope.extract.extract") + [""]
    return "\n".join(lines + _usage(base_id, adapter_config.get("task_type")))


def resize_card(table: pd.DataFrame, adapter_config: dict[str, Any], info: dict[str, Any]) -> str:
    """``README.md`` of an adapter written by ``rankscope resize``."""
    source = (info.get("inputs") or {}).get("adapter", {})
    res, opts = info.get("results", {}), info.get("options", {})
    base = adapter_config.get("base_model_name_or_path")
    kept = table[table["r_after"] > 0]
    dtype = opts.get("dtype") or "new factors fp32, copied tensors as stored"
    lines = _front_matter(base, ["lora", "peft", "rankscope", "resized"])
    lines += ["# LoRA adapter resized by rankscope", "",
              f"Written by rankscope {__version__} (`rankscope resize`): each module's update `s·B·A` of the source "
              f"adapter is cut to the rank that rule `{opts.get('rule')}` gives it, as its best approximation of that "
              "rank (from the factors, Eckart–Young).", "",
              "## Source", "", f"- adapter: `{_cell(source.get('path'))}` (r = {_cell(source.get('r'))}, "
              f"lora_alpha = {_cell(source.get('lora_alpha'))})", f"- its base model: `{_cell(base)}`", "",
              "## Ranks", "",
              f"{len(kept)} LoRA modules ({res.get('dropped', 0)} dropped at rank 0), LoRA parameters "
              f"{res.get('params_before', 0):,} → {res.get('params_after', 0):,}; "
              f"{100 * res.get('captured_energy', 0.0):.1f}% of the source's ‖ΔW‖² kept; alpha {opts.get('alpha')}; "
              f"tensors stored as {dtype}.", ""]
    if not table.empty:
        lines += _table(_by_kind(table, "r_after", "params_after")) + [""]
    lines += ["## Error against the optimum", ""] + _error_lines(table, "against the source adapter's update") + [""]
    lines += ["## Command", ""] + _command(info, "rankscope.resize.resize") + [""]
    return "\n".join(lines + _usage(base, adapter_config.get("task_type")))
