"""Spectral initialisation of a rank plan: a peft adapter at the planned ranks whose factors start in a signal's top subspace.

``recommend --init-from PROBE_OR_PAIR`` writes ``OUT/init/`` (:class:`InitAdapter`): ``adapter_config.json`` (the
plan's ``LoraConfig``, plus ``base_model_name_or_path``), ``adapter_model.safetensors`` (the factors, float32) and
``init.csv`` (one row per module).  The formulas are :mod:`rankscope.numerics.spectral_init`'s:

* a **probe** folder (``rankscope probe``; ``run.json`` ``"command": "probe"``) gives the top singular triplets of
  its signal in ``singular_vectors.npz`` (``"<module>:U"``, ``":S"``, ``":Vt"``): ``update`` → the warm start
  ``s·B·A = ΔW_r``; ``gradient`` → LoRA-One, ``s·B·A = −(s/γ)·G_r/σ₁(G)`` (``γ`` = ``init_scale``, default 128);
* ``pair`` — the ``BASE FINETUNED`` pair given as SOURCE: the full fine-tune's ``ΔW``, truncated exactly by
  :func:`rankscope.extract.extract` with the plan's config (``method="exact"``: the float64 top-``r`` triplets of
  the streamed ``ΔW``), so ``s·B·A = ΔW_r`` as ``rankscope extract`` writes it.

A planned rank larger than the number of triplets a probe kept (its ``R``, ``--keep-vectors``) is **refused**
(one line naming the module, both ranks and the two ways out), never capped: the adapter must have the plan's
ranks, or it is not the plan.

Module names: the tensors are keyed as peft expects for the plan's ``task_type`` — the names of the task model
(``base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight`` for a ``BertModel`` base under
``SEQ_CLS``), via :func:`rankscope.io.peft.lora_tensor_keys`.  For a pair they come from extract (the task model
of the pair); for a probe, from the ``…ForSequenceClassification`` class of the probe's base (the model
``rankscope train`` and the probe build; the bare class for a ``FEATURE_EXTRACTION`` plan) on torch's meta device
(:class:`rankscope.pairing.model_layout.ModelLayout`),
each plan module mapped to the one model module that peft's ``target_modules`` list rule selects (its name, or a
name ending in ``"." + name``), and the whole config replayed through peft's matching
(:func:`rankscope.io.peft.check_lora_config`).

The task head: peft (0.21) cannot load a ``SEQ_CLS`` adapter whose file lacks the ``modules_to_save`` tensors of
the head it wraps (``classifier`` / ``score``), so ``OUT/init`` holds one — the fine-tune's (``pair``: extract's
``modules_to_save`` copy), or the probe's fresh head, rebuilt exactly as the probe (and ``rankscope train``)
built it from its ``run.json`` (its ``seed`` and ``task.label_names``).  ``rankscope train --init`` does not use
it: the head starts fresh and seeded there, as in any training run.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import RankscopeError
from .io.peft import LORA_KEY, PEFT_PREFIX, WRAPPED_HEADS, check_lora_config, head_owner, lora_scale, lora_tensor_keys
from .io.results import write_json
from .numerics.spectral_init import LORA_ONE_GAMMA, SIGNALS, init_factors, init_norm

PAIR = "pair"
"""The ``--init-from`` keyword for the ``BASE FINETUNED`` pair given as SOURCE."""
VECTORS_FILE = "singular_vectors.npz"
"""The probe's file of top singular triplets (``"<module>:U"`` rows x R, ``":S"`` R, ``":Vt"`` R x cols)."""
INIT_FOLDER = "init"
"""Sub-folder of a recommend result that holds the init adapter."""
SIGNAL_NAMES = {"gradient": "probe gradient", "update": "probe update", PAIR: "full-FT ΔW"}
"""What each init source is called in ``run.json`` and the summary."""
FORMULAS = {"gradient": "LoRA-One: s·B·A = −(s/γ)·G_r/σ₁ (B = −U_r√Σ_r/√(γσ₁), A = √Σ_r V_rᵀ/√(γσ₁))",
            "update": "warm start: s·B·A = ΔW_r (B = U_r√Σ_r/√s, A = √Σ_r V_rᵀ/√s)"}


@dataclass
class InitSource:
    """Where the init comes from, checked before any spectrum is computed (:func:`check_init_source`)."""

    kind: str  # "probe" or "pair"
    signal: str  # "gradient" or "update"
    given: str
    folder: Path | None = None
    info: dict[str, Any] = field(default_factory=dict)
    gamma: float | None = None

    @property
    def name(self) -> str:
        return SIGNAL_NAMES[PAIR if self.kind == PAIR else self.signal]


@dataclass
class InitAdapter:
    """The init adapter of a plan, in memory (written to ``OUT/init/`` by :meth:`write`).

    Attributes:
        table: one row per adapted module (``init.csv``): ``module`` (the plan's name), ``adapter_module`` (the
            task model's), ``rank``, ``alpha``, ``scale``, ``sigma_1``, ``sigma_r`` (of the signal), ``init_norm``
            (``‖s·B·A‖_F``), and for a pair ``rel_error`` / ``optimal_rel_error`` (extract's).
        tensors: ``adapter_model.safetensors`` content (float32 LoRA factors, and the head peft needs).
        adapter_config: ``adapter_config.json`` content.
        info: what ``run.json`` records under ``"init"``.
    """

    table: pd.DataFrame
    tensors: dict[str, np.ndarray]
    adapter_config: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: Path) -> list[str]:
        """Write the adapter into ``folder`` (created; inside the plan's work folder); returns the file names."""
        from safetensors.numpy import save_file

        folder.mkdir()
        write_json(folder / "adapter_config.json", self.adapter_config)
        save_file({k: np.ascontiguousarray(v) for k, v in self.tensors.items()}, str(folder / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        self.table.to_csv(folder / "init.csv", index=False)
        return sorted(p.name for p in folder.iterdir())

    def summary(self) -> str:
        """One line: where the init came from, its formula and size."""
        i = self.info
        gamma = f", γ = {i['gamma']:g}" if i.get("gamma") is not None else ""
        return (f"init: {INIT_FOLDER}/ from the {i['signal']} ({i['from']}{gamma}), {i['formula']}; "
                f"{i['modules']} modules, {i['parameters']:,} parameters")


# --------------------------------------------------------------------------------------------------
# the source of an init
# --------------------------------------------------------------------------------------------------


def check_init_source(init_from: str | os.PathLike, finetuned: Any, gamma: float | None) -> InitSource:
    """Check ``--init-from`` (a probe folder or ``pair``) and ``--init-scale`` before any work; one error line otherwise."""
    given = str(init_from)
    if gamma is not None and not (isinstance(gamma, (int, float)) and np.isfinite(gamma) and gamma > 0):
        raise RankscopeError(f"--init-scale {gamma}: must be a positive number")
    if given == PAIR:
        if finetuned is None:
            raise RankscopeError("--init-from pair: give SOURCE as BASE FINETUNED (the full fine-tune whose ΔW starts "
                                 "the adapter), or give a probe folder")
        source = InitSource(PAIR, "update", given)
    else:
        folder = Path(init_from)
        if not folder.is_dir():
            raise RankscopeError(f"--init-from {given}: no such folder (give a rankscope probe result folder, or "
                                 f"'{PAIR}' with BASE FINETUNED)")
        try:
            info = json.loads((folder / "run.json").read_text())
        except (OSError, ValueError, RecursionError) as exc:
            raise RankscopeError(f"--init-from {given}: no readable run.json (not a rankscope probe result folder)") from exc
        command = info.get("command") if isinstance(info, dict) else None
        if command != "probe":
            what = f"a '{command}' result" if isinstance(command, str) else "no rankscope result"
            raise RankscopeError(f"--init-from {given}: holds {what}, not a rankscope probe (give a probe folder, or "
                                 f"'{PAIR}' with BASE FINETUNED)")
        signal = info.get("signal")
        if signal not in SIGNALS:
            raise RankscopeError(f"--init-from {given}: run.json 'signal' is {signal!r}, not one of {', '.join(SIGNALS)}")
        if not (folder / VECTORS_FILE).is_file():
            raise RankscopeError(f"--init-from {given}: no {VECTORS_FILE} (the probe's top singular vectors, which the "
                                 f"init needs; rerun rankscope probe)")
        source = InitSource("probe", signal, given, folder, info)
    if source.signal == "gradient":
        source.gamma = float(gamma) if gamma is not None else LORA_ONE_GAMMA
    elif gamma is not None:
        raise RankscopeError(f"--init-scale applies to a gradient signal (LoRA-One's γ); --init-from {given} gives "
                             f"{source.name}, whose warm start s·B·A = ΔW_r has no free scale")
    return source


def probe_model(info: dict[str, Any], given: str) -> Path:
    """The base checkpoint folder a probe ran on, from its ``run.json`` (``inputs.model_resolved`` / ``inputs.model``,
    as ``rankscope train`` records them, or ``model``)."""
    from .io.checkpoints import resolve

    inputs = info.get("inputs") if isinstance(info.get("inputs"), dict) else {}
    candidates = [inputs.get("model_resolved"), inputs.get("model"), info.get("model")]
    base = inputs.get("base")
    if isinstance(base, dict):
        candidates += [base.get("resolved"), base.get("given")]
    for value in candidates:
        if isinstance(value, str) and value:
            try:
                path = resolve(value)
            except RankscopeError:
                continue
            if path.is_dir() and (path / "config.json").is_file():
                return path
    raise RankscopeError(f"--init-from {given}: run.json does not name the probe's base model as a folder with a "
                         f"config.json (inputs.model): cannot name the adapter's modules")


# --------------------------------------------------------------------------------------------------
# building the adapter
# --------------------------------------------------------------------------------------------------


def suffix_match(module: str, names: list[str], what: str) -> str:
    """The one name in ``names`` that peft's list rule selects for ``module`` (equal, or ending in ``"." + module``)."""
    hits = [n for n in names if n == module or n.endswith("." + module)]
    if len(hits) != 1:
        found = "no module" if not hits else f"{len(hits)} modules ({', '.join(hits[:3])})"
        raise RankscopeError(f"--init-from: the plan's module '{module}' matches {found} of {what}")
    return hits[0]


def _task_layout(base: Path, task: str | None, given: str) -> dict[str, str]:
    """Module name → layer type of the model peft wraps for ``task`` on ``base`` (``SEQ_CLS`` or null: the
    ``…ForSequenceClassification`` class the probe trained; ``FEATURE_EXTRACTION``: the bare class), built on the
    meta device."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        MODEL_MAPPING_NAMES,
    )

    from .pairing.model_layout import ModelLayout

    if task not in (None, "SEQ_CLS", "FEATURE_EXTRACTION"):
        raise RankscopeError(f"--init-from {given}: the plan's task_type is {task}, but a probe measures the "
                             "sequence-classification model (plan from the probe, or init from 'pair')")
    try:
        config = json.loads((base / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise RankscopeError(f"--init-from {given}: cannot read {base / 'config.json'} ({exc})") from exc
    names = MODEL_MAPPING_NAMES if task == "FEATURE_EXTRACTION" else MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
    arch = names.get(str(config.get("model_type")))
    if isinstance(arch, (tuple, list)):
        arch = arch[0]
    if arch is None:
        raise RankscopeError(f"--init-from {given}: transformers has no {task or 'SEQ_CLS'} model class for model_type "
                             f"{config.get('model_type')!r} of {base}")
    layout_probe = ModelLayout({**config, "architectures": [arch]}, background=False)
    layout = layout_probe.result()
    if layout is None:
        raise RankscopeError(f"--init-from {given}: cannot name the adapter's modules: {layout_probe.reason}")
    return layout


def _heads(config: dict[str, Any]) -> tuple[str, ...]:
    """The head modules whose tensors a loadable adapter must hold: ``modules_to_save`` and the task's wrapped heads."""
    return tuple(dict.fromkeys([*(config.get("modules_to_save") or []), *WRAPPED_HEADS.get(config.get("task_type") or "",
                                                                                           ())]))


def _probe_head(base: Path, info: dict[str, Any], heads: tuple[str, ...], given: str) -> dict[str, np.ndarray]:
    """The probe's fresh head, rebuilt as the probe built it (``rankscope train``'s seeded head), as adapter tensors.

    The global random generators that the seeded build resets (Python, numpy, torch) are restored afterwards.
    """
    import random

    import torch

    from .training.models import load_classifier, load_tokenizer

    task = info.get("task") if isinstance(info.get("task"), dict) else {}
    labels, seed = task.get("label_names"), info.get("seed", 0)
    if not (isinstance(labels, list) and len(labels) >= 2 and isinstance(seed, int)):
        raise RankscopeError(f"--init-from {given}: run.json does not record the probe's seed and task.label_names, "
                             "which rebuild its head (peft needs the head in the adapter)")
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    try:
        model = load_classifier(base, [str(x) for x in labels], load_tokenizer(base).pad_token_id, seed)
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
    return {f"{PEFT_PREFIX}{name}": value.detach().cpu().numpy().astype(np.float32)
            for name, value in model.state_dict().items() if head_owner(name, heads) is not None}


def _probe_triplets(folder: Path, modules: list[str], rows: list[int], cols: list[int],
                    ranks: list[int]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The ``U, S, Vt`` of every planned module from the probe's npz, checked (shapes, finiteness, kept rank)."""
    import zipfile

    path = folder / VECTORS_FILE
    out = {}
    try:
        with np.load(path) as npz:
            keys = set(npz.files)
            for module, m, n, r in zip(modules, rows, cols, ranks, strict=True):
                names = [f"{module}:{part}" for part in ("U", "S", "Vt")]
                missing = [k for k in names if k not in keys]
                if missing:
                    raise RankscopeError(f"--init-from {folder}: {VECTORS_FILE} has no '{missing[0]}' (the plan adapts "
                                         f"module '{module}'; was the plan made for another model?)")
                u, s, vt = (np.asarray(npz[k], dtype=np.float64) for k in names)
                if u.ndim != 2 or s.ndim != 1 or vt.ndim != 2 or u.shape != (m, s.size) or vt.shape != (s.size, n):
                    raise RankscopeError(f"--init-from {folder}: {VECTORS_FILE} vectors of '{module}' have shapes U "
                                         f"{u.shape}, S {s.shape}, Vt {vt.shape}; the plan's module is {m} x {n}")
                if not (np.isfinite(u).all() and np.isfinite(s).all() and np.isfinite(vt).all()):
                    raise RankscopeError(f"--init-from {folder}: {VECTORS_FILE} vectors of '{module}' contain NaN or Inf")
                if r > s.size:
                    raise RankscopeError(f"--init-from {folder}: module '{module}' is planned at rank {r} but the probe "
                                         f"kept {s.size} singular vectors; rerun rankscope probe with --keep-vectors "
                                         f"{r} or more, or plan with --max-rank {s.size}")
                out[module] = (u, s, vt)
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise RankscopeError(f"--init-from {folder}: {VECTORS_FILE} is unreadable ({exc})") from exc
    return out


def _plan_modules(table: pd.DataFrame, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The adapted modules of a plan (rank > 0) with their rank, alpha and LoRA scale."""
    rslora = bool(config.get("use_rslora"))
    out = []
    for row in table.itertuples():
        if int(row.rank) > 0:
            out.append({"module": str(row.module), "rows": int(row.rows), "cols": int(row.cols), "rank": int(row.rank),
                        "alpha": float(row.alpha), "scale": float(lora_scale(float(row.alpha), int(row.rank), rslora))})
    return out


def _zero_note(table: pd.DataFrame, warnings: list[str]) -> None:
    dead = table["module"][table["sigma_r"] <= 0].tolist()
    if dead:
        warnings.append(f"init: the signal has fewer than r non-zero singular values in {len(dead)} module(s) (e.g. "
                        f"{dead[0]}): those components start at zero in both factors and receive no gradient")


def _from_probe(source: InitSource, table: pd.DataFrame, config: dict[str, Any]) -> InitAdapter:
    planned = _plan_modules(table, config)
    triplets = _probe_triplets(source.folder, [p["module"] for p in planned], [p["rows"] for p in planned],
                               [p["cols"] for p in planned], [p["rank"] for p in planned])
    base = probe_model(source.info, source.given)
    layout = _task_layout(base, config.get("task_type"), source.given)
    names = list(layout)
    tensors: dict[str, np.ndarray] = {}
    rows, intended = [], {}
    gamma = source.gamma if source.gamma is not None else LORA_ONE_GAMMA
    for p in planned:
        model_name = suffix_match(p["module"], names, f"the model peft wraps for task_type {config.get('task_type')} "
                                                      f"on {base}")
        kind = layout[model_name]
        if kind not in ("linear", "conv1d", "embedding"):
            raise RankscopeError(f"--init-from {source.given}: module '{model_name}' is a {kind} layer, which peft "
                                 "LoRA cannot adapt")
        u, s, vt = triplets[p["module"]]
        b, a = init_factors(source.signal, u, s, vt, p["rank"], p["scale"], gamma)
        tensors.update(lora_tensor_keys(model_name, kind == "embedding", b, a))
        intended[model_name] = (p["rank"], p["alpha"])
        rows.append({"module": p["module"], "adapter_module": model_name, "rank": p["rank"], "alpha": p["alpha"],
                     "scale": p["scale"], "sigma_1": float(s[0]), "sigma_r": float(s[p["rank"] - 1]),
                     "init_norm": init_norm(source.signal, s, p["rank"], p["scale"], gamma)})
    check_lora_config(config, intended, names)  # peft's matching on the task model's module names
    heads = _heads(config)
    if heads:
        tensors.update(_probe_head(base, source.info, heads, source.given))
    conv1d = any(layout[n] == "conv1d" for n in intended)
    return _finish(source, rows, tensors, config, str(base), conv1d)


def _from_pair(source: InitSource, table: pd.DataFrame, config: dict[str, Any], base: Any, finetuned: Any,
               spectra: dict[str, np.ndarray], device: str, workers: int | None, progress: bool) -> InitAdapter:
    from .extract import extract

    planned = _plan_modules(table, config)
    result = extract(base, finetuned, config=config, method="exact", device=device, workers=workers, progress=progress)
    adapted = list(result.adapter_config["target_modules"])
    lora_rows = result.table[result.table["role"] == "lora"]
    report = {str(r.module): r for r in lora_rows.itertuples()}
    wanted: dict[str, str] = {}
    rows = []
    for p in planned:
        name = suffix_match(p["module"], adapted, "the adapter extract builds from the pair")
        row = report[suffix_match(p["module"], list(report), "the modules extract adapts")]
        if int(row.rank) != p["rank"] or float(row.alpha) != p["alpha"]:
            raise RankscopeError(f"--init-from pair: extract gave module '{name}' rank {row.rank} (alpha {row.alpha}), "
                                 f"the plan {p['rank']} (alpha {p['alpha']})")
        wanted[name] = p["module"]
        s = np.asarray(spectra.get(p["module"], []), dtype=np.float64)
        rows.append({"module": p["module"], "adapter_module": name, "rank": p["rank"], "alpha": p["alpha"],
                     "scale": p["scale"], "sigma_1": float(s[0]) if s.size else float("nan"),
                     "sigma_r": float(row.sigma_r), "init_norm": init_norm("update", s, p["rank"], p["scale"]),
                     "rel_error": float(row.rel_error), "optimal_rel_error": float(row.optimal_rel_error)})
    extra = [name for name in adapted if name not in wanted]
    if extra:
        raise RankscopeError(f"--init-from pair: extract adapted module '{extra[0]}', which the plan does not")
    tensors = {}
    heads = _heads({**config, "modules_to_save": result.adapter_config.get("modules_to_save")})
    for key, value in result.tensors.items():
        core = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        match = LORA_KEY.match(core)
        if (match.group("module") in wanted) if match is not None else head_owner(core, heads) is not None:
            tensors[key] = value  # the planned modules' factors and the fine-tune's head (modules_to_save)
    fan_in = bool(result.adapter_config.get("fan_in_fan_out"))
    return _finish(source, rows, tensors, config, str(result.adapter_config.get("base_model_name_or_path")), fan_in)


def _finish(source: InitSource, rows: list[dict[str, Any]], tensors: dict[str, np.ndarray], config: dict[str, Any],
            base: str, fan_in_fan_out: bool) -> InitAdapter:
    table = pd.DataFrame(rows)
    warnings: list[str] = []
    _zero_note(table, warnings)
    adapter_config = {**config, "base_model_name_or_path": base}
    if fan_in_fan_out:
        adapter_config["fan_in_fan_out"] = True  # GPT-2 Conv1D layers (peft would set it itself, with a warning)
    lora = [k for k in tensors if LORA_KEY.match(k[len(PEFT_PREFIX):])]
    info = {"from": source.given if source.kind != PAIR else PAIR, "signal": source.name, "formula": FORMULAS[source.signal],
            "gamma": source.gamma, "base_model_name_or_path": base, "modules": len(table),
            "parameters": int(sum(tensors[k].size for k in lora)),
            "head_tensors": sorted(set(tensors) - set(lora)), "folder": f"{INIT_FOLDER}/", "warnings": warnings}
    return InitAdapter(table, tensors, adapter_config, info)


def spectral_init(source: InitSource, table: pd.DataFrame, config: dict[str, Any], *, base: Any = None,
                  finetuned: Any = None, spectra: dict[str, np.ndarray] | None = None, device: str = "cpu",
                  workers: int | None = None, progress: bool = False) -> InitAdapter:
    """The init adapter of a plan (``table``: the plan's ``ranks.csv`` rows; ``config``: its ``LoraConfig``).

    ``source`` from :func:`check_init_source`; ``base``/``finetuned`` are the pair (``pair`` only), ``spectra``
    its ΔW spectra for ``init.csv``.  See the module docstring for the rules.
    """
    t0 = time.perf_counter()
    if source.kind == PAIR:
        adapter = _from_pair(source, table, config, base, finetuned, spectra or {}, device, workers, progress)
    else:
        adapter = _from_probe(source, table, config)
    adapter.info["seconds"] = round(time.perf_counter() - t0, 3)
    return adapter
