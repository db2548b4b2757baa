"""Building and saving the models that training runs on: tokenizer, classifier or causal LM, peft LoRA.

Data flow::

    checkpoint ──build_model──► (model, tokenizer) ──rankscope.training.engine.train_model──► metrics
                                                                  └─ save_model ──► OUT/

:func:`build_model` makes the model (``AutoModelForSequenceClassification`` with a fresh, seeded
classification head, or for ``objective="causal-lm"`` the decoder's ``AutoModelForCausalLM`` with its own LM head,
:func:`load_causal_lm`; for ``method="lora"`` wrapped by peft, :func:`apply_lora`, task type ``SEQ_CLS`` or
``CAUSAL_LM``; with ``init`` the LoRA factors then replaced by an adapter's, :func:`load_init_factors`);
:func:`save_model` writes it (a Hugging Face checkpoint, or the peft adapter with :func:`write_base_view`) with
its tokenizer.  The tokenizer is the model folder's, or the one named by ``tokenizer`` (``--tokenizer``); a
model folder without tokenizer files is one error line that says so (transformers would otherwise build an
empty-vocabulary tokenizer from ``config.json`` alone).

``train --init ADAPTER`` builds the model exactly as without it — same seeded head, same peft ``LoraConfig``
(ranks, alphas, targets and rsLoRA from the adapter's ``adapter_config.json``), same RNG draws — and only then
copies the adapter's ``lora_A`` / ``lora_B`` (``lora_embedding_A`` / ``_B``) tensors into the LoRA parameters,
exactly (every LoRA module of the model must have its tensors, of its shapes, in the file and every LoRA tensor of
the file a module).  A file module matches the model module of the same name or, as peft's ``target_modules`` list
rule matches, the one model module whose name ends in ``"." + name`` (an adapter written for the bare backbone,
``encoder.layer.0…``, loads into the classifier's ``bert.encoder.layer.0…``).  The head is not taken from the
adapter: it starts fresh and seeded, as in any LoRA run.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import RankscopeError
from .lora import LoraSpec, load_pattern

if TYPE_CHECKING:  # torch is imported inside functions so that `rankscope --help` stays fast
    import torch
    from transformers import PreTrainedTokenizerBase

METHODS = ("full", "lora")
"""Training methods: every parameter trainable (``full``), or LoRA factors plus the classifier head (``lora``)."""
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "tokenizer.model",
                   "spiece.model", "sentencepiece.bpe.model", "vocab.model", "merges.txt")
"""Files of which a folder needs one to hold a tokenizer."""


# --------------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------------


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence the 'newly initialised weights' report (a fresh head is expected) and the load/save bars."""
    import warnings

    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)  # peft calls deprecated transformers API
            warnings.filterwarnings("ignore", message="fan_in_fan_out is set")  # GPT-2 Conv1D: peft fixes it itself
            yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(path: Path, tokenizer: str | os.PathLike | None = None) -> PreTrainedTokenizerBase:
    """The checkpoint's tokenizer (or ``tokenizer``: a folder, ``bundled:NAME`` or a Hub id), with a pad token (eos,
    else unk) for decoders that have none.  A folder without tokenizer files is one error line naming it."""
    from transformers import AutoTokenizer

    source: str | Path = path
    where = f"{path}"
    if tokenizer is not None:
        where = f"--tokenizer {tokenizer}"
        given = Path(tokenizer).expanduser()
        if str(tokenizer).startswith("bundled:"):
            from ..io.checkpoints import resolve

            source = resolve(tokenizer)
        else:
            source = given if given.exists() else str(tokenizer)
    if isinstance(source, Path):
        if not source.is_dir():
            raise RankscopeError(f"{where}: a tokenizer is a folder (tokenizer.json, tokenizer_config.json, ...)")
        if not any((source / name).is_file() for name in TOKENIZER_FILES):
            hint = "" if tokenizer is not None else "; name one with --tokenizer NAME_OR_PATH"
            raise RankscopeError(f"{where}: no tokenizer in {source} (none of tokenizer.json, tokenizer_config.json, "
                                 f"vocab files){hint}")
    try:
        with quiet_transformers():
            tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError, TypeError) as exc:
        raise RankscopeError(f"{where}: cannot load a tokenizer ({_first_line(exc)})") from exc
    if len(tok) == 0:
        raise RankscopeError(f"{where}: the tokenizer has an empty vocabulary")
    if tok.pad_token is None:
        fallback = tok.eos_token or tok.unk_token
        if fallback is None:
            raise RankscopeError(f"{where}: the tokenizer has no pad, eos or unk token to pad batches with")
        tok.pad_token = fallback
    return tok


def load_classifier(path: Path, label_names: Sequence[str], pad_token_id: int | None, seed: int) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` in float32 with a seeded head for ``label_names``.

    ``.bin`` weights are unpickled by transformers with ``weights_only=True``: a pickle holding code is
    refused before any of it runs, reported as one line naming the file.
    """
    import pickle
    import warnings

    import torch
    from transformers import AutoModelForSequenceClassification

    from .engine import seed_everything

    seed_everything(seed)
    id2label = dict(enumerate(label_names))
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle warnings must not add lines to stderr
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(label_names), id2label=id2label,
                label2id={v: k for k, v in id2label.items()}, dtype=torch.float32)
    except pickle.UnpicklingError as exc:  # transformers loads .bin weights with weights_only=True
        from ..io.checkpoints import load_torch_file

        for weights in sorted(path.glob("*.bin")):
            load_torch_file(weights)  # raises the error naming the refused or corrupt file
        raise RankscopeError(f"{path}: cannot load a sequence-classification model ({_first_line(exc)})") from exc
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
        raise RankscopeError(f"{path}: cannot load a sequence-classification model ({_first_line(exc)})") from exc
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # decoders pick the last non-pad token
    return model


def check_decoder(path: Path) -> None:
    """``path`` must be a decoder-only model that ``AutoModelForCausalLM`` builds (GPT-2, Llama, ...): an
    encoder-only (BERT) or encoder-decoder (T5) model is one error line."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise RankscopeError(f"{path}: cannot read the model's config.json ({_first_line(exc)})") from exc
    kind = getattr(config, "model_type", None) or "unknown"
    why = None
    if getattr(config, "is_encoder_decoder", False):
        why = f"is an encoder-decoder model ({kind})"
    elif kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        why = f"has no causal-LM class in transformers ({kind})"
    elif kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        why = f"is an encoder-only model ({kind})"
    if why:
        raise RankscopeError(f"{path}: {why}; --objective causal-lm trains decoder-only models (GPT-2, Llama, ...)")


def load_causal_lm(path: Path, pad_token_id: int | None, seed: int) -> torch.nn.Module:
    """``AutoModelForCausalLM`` in float32 (after :func:`check_decoder`), with its LM head from the checkpoint.

    A checkpoint without LM head weights that are not tied to the input embeddings (a bare ``LlamaModel``) is
    refused: its head would be random, and a LoRA adapter, which does not save the head, could not be reloaded.
    """
    import pickle
    import warnings

    import torch
    from transformers import AutoModelForCausalLM

    from .engine import seed_everything

    check_decoder(path)
    seed_everything(seed)
    try:
        with quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, loading = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, output_loading_info=True)
    except pickle.UnpicklingError as exc:
        from ..io.checkpoints import load_torch_file

        for weights in sorted(path.glob("*.bin")):
            load_torch_file(weights)
        raise RankscopeError(f"{path}: cannot load a causal-LM model ({_first_line(exc)})") from exc
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
        raise RankscopeError(f"{path}: cannot load a causal-LM model ({_first_line(exc)})") from exc
    head = model.get_output_embeddings()
    head_names = {n for n, m in model.named_modules() if m is head}
    missing = sorted(k for k in loading.get("missing_keys", []) if k.rsplit(".", 1)[0] in head_names)
    if missing:
        raise RankscopeError(f"{path}: the checkpoint has no LM head ({missing[0]} is missing; a bare "
                             f"{model.config.architectures[0] if model.config.architectures else 'model'}?): "
                             f"--objective causal-lm needs a *ForCausalLM / *LMHeadModel checkpoint")
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _suffix_matches(name: str, target: str) -> bool:
    """peft's rule for a list entry: the module name equals it or ends with ``"." + target``."""
    return name == target or name.endswith("." + target)


def check_lora_targets(model: torch.nn.Module, spec: LoraSpec, where: str | None = None) -> None:
    """Every target module and every rank/alpha pattern must match a module of ``model``.

    Messages name the options (``--target-modules``, ``--rank-pattern``, ``--alpha-pattern``), or the
    fields of the file ``where`` (an adapter's ``adapter_config.json``) when given.
    """
    import re

    import torch

    names = [n for n, _ in model.named_modules() if n]
    targets = spec.target_modules
    if isinstance(targets, list):
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        for target in targets:
            if not any(_suffix_matches(n, target) for n in names):
                label = f"{where}: target_modules" if where else "--target-modules"
                raise RankscopeError(f"{label}: '{target}' matches no module of the model "
                                     f"(linear layers: {', '.join(leaves)})" + (" (an adapter for another model?)"
                                                                                if where else ""))
    options = (("--rank-pattern", spec.rank_pattern), ("--alpha-pattern", spec.alpha_pattern))
    if where:
        options = ((f"{where}: rank_pattern", spec.rank_pattern), (f"{where}: alpha_pattern", spec.alpha_pattern))
    for option, pattern in options:
        for key in pattern or {}:
            try:
                hit = any(re.match(rf"(.*\.)?({key})$", n) for n in names)
            except re.error as exc:
                raise RankscopeError(f"{option}: '{key}' is not a valid pattern ({exc})") from exc
            if not hit:
                raise RankscopeError(f"{option}: '{key}' matches no module of the model")


def apply_lora(model: torch.nn.Module, spec: LoraSpec, where: str | None = None,
               task_type: str = "SEQ_CLS") -> torch.nn.Module:
    """Wrap ``model`` with a peft LoRA adapter (task ``SEQ_CLS``: the head goes to ``modules_to_save``;
    ``CAUSAL_LM``: only the LoRA factors train, and the LM head never gets LoRA — targeting it is an error).

    ``where``: the file the spec comes from (``train --init``'s ``adapter_config.json``), for messages.
    """
    from peft import LoraConfig, get_peft_model

    spec = replace(spec, rank_pattern=load_pattern(spec.rank_pattern, "--rank-pattern"),
                   alpha_pattern=load_pattern(spec.alpha_pattern, "--alpha-pattern"))
    check_lora_targets(model, spec, where)
    head = model.get_output_embeddings() if task_type == "CAUSAL_LM" else None
    head_names = {n for n, m in model.named_modules() if head is not None and m is head}
    config = LoraConfig(task_type=task_type, r=spec.r, lora_alpha=spec.alpha, target_modules=spec.target_modules,
                        rank_pattern=spec.rank_pattern or {}, alpha_pattern=spec.alpha_pattern or {},
                        use_rslora=spec.use_rslora, lora_dropout=spec.dropout)
    try:
        with quiet_transformers():
            wrapped = get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        raise RankscopeError(f"LoRA: {_first_line(exc)}") from exc
    adapted = sorted(n for n, m in wrapped.named_modules() if hasattr(m, "lora_A")
                     and any(n == h or n.endswith("." + h) for h in head_names))
    if adapted:
        label = f"{where}: target_modules" if where else "--target-modules"
        raise RankscopeError(f"{label}: '{adapted[0].rsplit('.', 1)[-1]}' is the LM head, which never gets LoRA "
                             f"(it is the output embedding; all-linear leaves it out)")
    return wrapped


_LORA_PARAMETER = re.compile(r"^(?P<module>.+)\.(?P<which>lora_A|lora_B|lora_embedding_A|lora_embedding_B)"
                             r"\.default(?P<weight>\.weight)?$")
"""A LoRA parameter of a peft model (adapter ``default``); its key in an adapter file drops ``.default``."""


def _adapter_tensors(weights: Path, where: str) -> dict[str, torch.Tensor]:
    """An adapter file's tensors, LoRA keys normalised to peft's saved form (``base_model.model.<m>.lora_A.weight``)."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..io.peft import LORA_KEY, PEFT_PREFIX

    try:
        raw = load_file(str(weights))
    except (OSError, ValueError, SafetensorError) as exc:
        raise RankscopeError(f"{where}: cannot read {weights.name} ({_first_line(exc)})") from exc
    out: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        core = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        match = LORA_KEY.match(core)
        if match is not None and match.group("which") != "lora_magnitude_vector":
            which = match.group("which")
            key = f"{PEFT_PREFIX}{match.group('module')}.{which}" + (".weight" if which in ("lora_A", "lora_B") else "")
            if not torch.isfinite(value).all():
                raise RankscopeError(f"{where}: tensor '{key}' contains NaN or Inf")
        out[key] = value
    return out


def load_init_factors(model: torch.nn.Module, weights: Path, where: str) -> dict[str, Any]:
    """Copy an adapter file's LoRA factors into ``model``'s LoRA parameters, exactly (module docstring).

    ``where`` names the adapter in messages.  Returns what was loaded: ``modules``, ``factors`` and the
    ``ignored`` tensors (not LoRA factors: a ``modules_to_save`` copy of a head, biases), which stay as built.
    An adapter for another model or other targets (a LoRA parameter without its tensor, a LoRA tensor without
    its parameter, another shape) is one :class:`RankscopeError`.
    """
    import torch

    from ..io.peft import PEFT_PREFIX

    tensors = _adapter_tensors(weights, where)
    params: dict[str, dict[str, torch.nn.Parameter]] = {}  # model module -> factor suffix -> parameter
    for name, p in model.named_parameters():
        match = _LORA_PARAMETER.match(name)
        if match is not None:
            params.setdefault(match.group("module"), {})[f"{match.group('which')}{match.group('weight') or ''}"] = p
    files: dict[str, dict[str, str]] = {}  # file module -> factor suffix -> key
    for key in tensors:
        match = _LORA_FILE_KEY.match(key)
        if match is not None:
            files.setdefault(match.group("module"), {})[match.group("factor")] = key
    mapping, used = {}, set()
    for module in params:
        hits = [f for f in files if module == f or module.endswith("." + f.removeprefix(PEFT_PREFIX))]
        if len(hits) != 1:
            what = "no tensors" if not hits else f"{len(hits)} candidate modules ({', '.join(hits[:2])})"
            raise RankscopeError(f"{where}: {what} for module '{module}' that its adapter_config.json targets: an "
                                 f"adapter for other targets or another model?")
        mapping[module] = hits[0]
        used.add(hits[0])
    extra = sorted(set(files) - used)
    if extra:
        raise RankscopeError(f"{where}: module '{extra[0]}' of the adapter file is no LoRA module of the model "
                             f"({len(extra)} such): an adapter for another model or other targets?")
    with torch.no_grad():
        for module, factors in params.items():
            keys = files[mapping[module]]
            if set(keys) != set(factors):
                raise RankscopeError(f"{where}: module '{mapping[module]}' holds {', '.join(sorted(keys))}, the model's "
                                     f"LoRA layer needs {', '.join(sorted(factors))}: an adapter for another model?")
            for suffix, p in factors.items():
                value = tensors[keys[suffix]]
                if tuple(value.shape) != tuple(p.shape):
                    raise RankscopeError(f"{where}: tensor '{keys[suffix]}' has shape {tuple(value.shape)}, the "
                                         f"model's LoRA factor {tuple(p.shape)}: an adapter for another model?")
                p.copy_(value.to(p.dtype))
    lora_keys = {k for keys in files.values() for k in keys.values()}
    ignored = sorted(k for k in tensors if k not in lora_keys)
    return {"modules": len(params), "factors": sum(len(f) for f in params.values()), "ignored": ignored}


_LORA_FILE_KEY = re.compile(r"^(?P<module>.+)\.(?P<factor>lora_A\.weight|lora_B\.weight|lora_embedding_A|lora_embedding_B)$")
"""A LoRA factor's key in an adapter file, as :func:`_adapter_tensors` normalises it."""


def build_model(checkpoint: str | os.PathLike, label_names: Sequence[str], method: str = "full",
                lora: LoraSpec | None = None, seed: int = 0, lora_source: str | None = None, *,
                objective: str = "classification", tokenizer: str | os.PathLike | None = None,
                ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, Path]:
    """(model, tokenizer, resolved path) ready for :func:`rankscope.training.engine.train_model`.

    ``full``: every parameter trainable.  ``lora``: only the LoRA factors and the classifier head (to start from
    an adapter's factors: :func:`build_init_model`); ``lora_source`` names the file ``lora`` was read from in
    messages (:func:`apply_lora`).  ``objective="causal-lm"``: the decoder with its LM head (:func:`load_causal_lm`;
    ``label_names`` unused), a right-padding tokenizer, LoRA of task type ``CAUSAL_LM``.  ``tokenizer``: load the
    tokenizer from there instead of the model folder.
    """
    from ..io.checkpoints import resolve
    from .engine import OBJECTIVES

    if method not in METHODS:
        raise RankscopeError(f"--method: unknown method '{method}' (choose from {', '.join(METHODS)})")
    if objective not in OBJECTIVES:
        raise RankscopeError(f"--objective: unknown objective '{objective}' (choose from {', '.join(OBJECTIVES)})")
    path = resolve(checkpoint)
    if not path.is_dir():
        raise RankscopeError(f"{checkpoint}: training needs a model folder (config, weights and tokenizer)")
    if objective == "causal-lm":
        check_decoder(path)
    tok = load_tokenizer(path, tokenizer)
    if objective == "causal-lm":
        tok.padding_side = "right"
        model = load_causal_lm(path, tok.pad_token_id, seed)
    else:
        model = load_classifier(path, label_names, tok.pad_token_id, seed)
    if method == "lora":
        model = apply_lora(model, lora or LoraSpec(), lora_source, "CAUSAL_LM" if objective == "causal-lm" else "SEQ_CLS")
    return model, tok, path


def build_init_model(checkpoint: str | os.PathLike, label_names: Sequence[str], init: str | os.PathLike,
                     lora: LoraSpec | None = None, seed: int = 0, *, objective: str = "classification",
                     tokenizer: str | os.PathLike | None = None,
                     ) -> tuple[torch.nn.Module, PreTrainedTokenizerBase, Path, dict[str, Any]]:
    """:func:`build_model` with ``method="lora"`` started from the adapter ``init`` (module docstring).

    ``lora``: the spec built from the adapter's config (:func:`rankscope.training.lora.init_options`; by default
    read here, dropout 0).  Returns ``(model, tokenizer, path, loaded)``, ``loaded`` from :func:`load_init_factors`.
    """
    from .lora import init_options, parse_target_modules

    opts = init_options(init, objective)
    if lora is None:
        lora = LoraSpec(opts["r"], opts["alpha"], parse_target_modules(opts["target_modules"]), opts["rank_pattern"],
                        opts["alpha_pattern"], opts["use_rslora"])
    where = f"--init {init}"
    model, tok, path = build_model(checkpoint, label_names, "lora", lora, seed, f"{where}/adapter_config.json",
                                   objective=objective, tokenizer=tokenizer)
    loaded = load_init_factors(model, opts["weights"], where)
    return model, tok, path, loaded


# --------------------------------------------------------------------------------------------------
# saving
# --------------------------------------------------------------------------------------------------


def lora_summary(model: torch.nn.Module) -> dict[str, Any] | None:
    """The adapter's effective configuration (resolved target modules included), or None for full runs."""
    config = getattr(model, "peft_config", {}).get("default")
    if config is None:
        return None
    targets = config.target_modules
    return {"r": config.r, "alpha": config.lora_alpha,
            "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
            "rank_pattern": dict(config.rank_pattern or {}), "alpha_pattern": dict(config.alpha_pattern or {}),
            "use_rslora": config.use_rslora, "lora_dropout": config.lora_dropout,
            "modules_to_save": sorted(config.modules_to_save or [])}


BASE_VIEW = "base_model"
"""Sub-folder of a LoRA run's output: the base checkpoint seen as the trained task model (:func:`write_base_view`)."""


def save_model(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, folder: Path, final: Path | None = None) -> list[str]:
    """``save_pretrained`` of the model (HF safetensors checkpoint, or the peft adapter) and the tokenizer.

    A peft adapter also gets :func:`write_base_view`, so that ``AutoPeftModelForSequenceClassification
    .from_pretrained(OUT)`` builds the base with the task's labels (``AutoPeftModelForCausalLM``: the decoder).  ``final`` is the folder ``folder`` becomes
    (the output folder when ``folder`` is the work folder of :func:`rankscope.io.results.atomic_output`); by
    default it is derived from the work folder's name (``.NAME.partial-PID-XXXX`` → ``NAME``), else ``folder``.
    """
    with quiet_transformers():
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    if getattr(model, "peft_config", None):
        write_base_view(model, Path(folder), Path(final) if final is not None else _final_folder(Path(folder)))
    return sorted(p.name for p in folder.iterdir())


def _final_folder(folder: Path) -> Path:
    """Where a work folder of :func:`rankscope.io.results.atomic_output` (``.NAME.partial-PID-XXXX``, made next to the
    output folder) ends up: its sibling ``NAME``; any other folder is final already.  Absolute either way."""
    import re

    match = re.fullmatch(r"\.(.+)\.partial-\d+-[^/]+", folder.name)
    return Path(os.path.abspath(folder.parent / match.group(1) if match else folder))


def write_base_view(model: torch.nn.Module, folder: Path, final: Path) -> Path | None:
    """Make a saved LoRA adapter name its base *as the task model*, labels included; returns the view folder.

    The rule (peft 0.21 ``auto.py``): ``AutoPeftModelForSequenceClassification.from_pretrained(ADAPTER)`` builds the
    base with ``AutoModelForSequenceClassification.from_pretrained(base_model_name_or_path, **kwargs)`` and never
    reads a ``config.json`` next to the adapter, so from a bare base it gets transformers' default two
    ``LABEL_i`` labels (and cannot load a head with another number of labels).  A ``config.json`` in the
    adapter folder itself would break transformers' own PEFT route (``AutoModelFor….from_pretrained(ADAPTER)``
    then takes the folder for a complete model and looks for its weights there).  So ``folder/base_model/``
    gets the trained model's ``config.json`` (its class in ``architectures``, ``num_labels``, ``id2label`` /
    ``label2id``, ``pad_token_id``) and a weight index whose entries are the base checkpoint's own files by
    absolute path (transformers joins an index entry to the folder with ``os.path.join``, which keeps an
    absolute path; nothing is copied), and ``adapter_config.json``'s ``base_model_name_or_path`` becomes
    ``final/base_model``.  The base must stay where it is, as before (the path was absolute already); a moved
    adapter still loads with ``PeftModel.from_pretrained(AutoModelFor….from_pretrained(BASE, num_labels=N), ADAPTER)``.

    A causal-LM adapter gets the same view: there are no labels, but its ``config.json`` names the causal-LM class
    (a bare ``GPT2Model`` base is seen as the ``GPT2LMHeadModel`` that was trained, its head tied to the embeddings).

    Nothing changes (``None``) when the base is not a local folder with ``model.safetensors`` (or its sharded index).
    """
    import copy

    from ..io.checkpoints import read_safetensors_header

    peft_config = model.peft_config.get("default")
    base = Path(getattr(peft_config, "base_model_name_or_path", None) or "")
    adapter_config = folder / "adapter_config.json"
    if not (str(base) and base.is_dir() and adapter_config.is_file()):
        return None
    base = Path(os.path.abspath(base))
    index = base / "model.safetensors.index.json"
    try:
        if index.is_file():
            shards = json.loads(index.read_text())["weight_map"]
            weight_map = {name: os.path.join(base, file) for name, file in shards.items()}
        elif (base / "model.safetensors").is_file():
            weight_map = dict.fromkeys(read_safetensors_header(base / "model.safetensors"),
                                       os.path.join(base, "model.safetensors"))
        else:
            return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RankscopeError):
        return None  # an unreadable index: keep the adapter as peft wrote it
    task_model = model.get_base_model()
    config = copy.deepcopy(task_model.config)
    config.architectures = [type(task_model).__name__]
    view = folder / BASE_VIEW
    view.mkdir()
    config.save_pretrained(view)
    (view / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                  indent=2) + "\n")
    data = json.loads(adapter_config.read_text())
    data["base_model_name_or_path"] = str(final / BASE_VIEW)
    adapter_config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return view
