"""One training loop for sequence classification: full fine-tuning or LoRA, on any HF encoder or decoder.

Data flow::

    checkpoint ──build_model──► (model, tokenizer) ──train_model(model, task, tokenizer, config)──► metrics
                                                                                 └─ save_model ──► OUT/

:func:`build_model` makes the model (``AutoModelForSequenceClassification`` with a fresh, seeded
classification head; for ``method="lora"`` wrapped by peft); :func:`train_model` is the loop and knows
nothing about the method: it optimises every parameter with ``requires_grad`` and snapshots only
those, so a later method (e.g. subspace training, where the only trainable tensor is ``θ_d``) reuses
it by passing its own module whose ``forward(input_ids=, attention_mask=)`` returns logits.

The loop: AdamW (fused; weight decay 0.01, none on biases and norms), linear warm-up over the first 10 % of the
steps then linear decay to 0, gradient clipping at norm 1.0, dynamic padding with length-sorted
buckets (a bucket of 32 batches is drawn in seeded random order, sorted by length, cut into batches
and the batches shuffled), evaluation on validation after every epoch (and every ``eval_every`` steps),
early stopping after ``patience`` evaluations without improvement.  The *best* weights (highest
validation accuracy, ties broken by lower validation loss, then by the earlier evaluation) are
restored before the test evaluation and before saving (``restore_best=False`` keeps the last weights).

Learning rates: full fine-tuning defaults to 5e-5 (the BERT paper's 2e-5 is tuned for long runs of
BERT-base; the small MiniLM-L6 on a 2,000-example, 2-epoch run converges further with 5e-5), LoRA to 5e-4.

Determinism: ``torch.manual_seed``, ``numpy`` and ``random`` are seeded with ``seed`` before the model is
built (so the classifier head and LoRA ``A`` matrices are seeded) and again before training; the data
order comes from a ``torch.Generator`` seeded with ``seed``; ``torch.use_deterministic_algorithms(True,
warn_only=True)`` is on during the loop.  On CPU the same seed gives bit-identical weights and metrics
(with the same number of threads).

CPU threads: ``threads`` (``--threads``) sets ``torch.set_num_threads`` during training.  The CLI also sets
``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch is imported: with the default spinning
policy, a 2-core machine shared with one other busy process ran a MiniLM step in 4–5 s instead of 0.35–0.45 s.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import RankscopeError
from .training.data import Split, TaskData, load_task

if TYPE_CHECKING:  # torch is imported inside functions so that `rankscope --help` stays fast
    import torch

METHODS = ("full", "lora")
DEFAULT_LR = {"full": 5e-5, "lora": 5e-4}
BUCKET_BATCHES = 32
"""Batches per length-sorted bucket: large enough to cut padding, small enough to keep batches random."""


@dataclass
class LoraSpec:
    """What to adapt with LoRA (peft ``LoraConfig``; ``lora_dropout`` defaults to 0).

    ``target_modules``: module-name suffixes (``["query", "value"]``), the string ``"all-linear"``,
    or None for peft's default for the architecture (BERT: query, value; Llama: q_proj, v_proj).
    ``rank_pattern`` / ``alpha_pattern``: ``{pattern: r}`` overrides, or the path of a JSON file holding one.
    """

    r: int = 8
    alpha: float = 16
    target_modules: list[str] | str | None = None
    rank_pattern: dict[str, int] | str | None = None
    alpha_pattern: dict[str, float] | str | None = None
    use_rslora: bool = False
    dropout: float = 0.0


@dataclass
class TrainConfig:
    """Options of :func:`train_model` (``lr=None`` picks :data:`DEFAULT_LR` of ``method``)."""

    epochs: int = 2
    lr: float | None = None
    method: str = "full"
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 128
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "cpu"
    eval_every: int | None = None
    patience: int | None = None
    restore_best: bool = True
    progress: bool = True
    threads: int | None = None

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR.get(self.method, DEFAULT_LR["full"])


# --------------------------------------------------------------------------------------------------
# seeding, devices
# --------------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) global generators."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def deterministic_algorithms() -> Iterator[None]:
    """``torch.use_deterministic_algorithms(True, warn_only=True)`` for the duration, then restored."""
    import torch

    was_on, was_warn = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was_on, warn_only=was_warn)


@contextmanager
def num_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the duration (None: leave torch's default)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def torch_device(device: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` as a torch device (RankscopeError when unavailable)."""
    import torch

    from .spectrum import resolve_device

    return torch.device(resolve_device(device))


# --------------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------------


@contextmanager
def _quiet_transformers() -> Iterator[None]:
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


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer, with a pad token (eos, else unk) for decoders that have none."""
    from transformers import AutoTokenizer

    try:
        with _quiet_transformers():
            tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        raise RankscopeError(f"{path}: cannot load a tokenizer ({_first_line(exc)})") from exc
    if tokenizer.pad_token is None:
        fallback = tokenizer.eos_token or tokenizer.unk_token
        if fallback is None:
            raise RankscopeError(f"{path}: the tokenizer has no pad, eos or unk token to pad batches with")
        tokenizer.pad_token = fallback
    return tokenizer


def load_classifier(path: Path, label_names: Sequence[str], pad_token_id: int | None, seed: int) -> torch.nn.Module:
    """``AutoModelForSequenceClassification`` in float32 with a seeded head for ``label_names``.

    ``.bin`` weights are unpickled by transformers with ``weights_only=True``: a pickle holding code is
    refused before any of it runs, reported as one line naming the file.
    """
    import pickle
    import warnings

    import torch
    from transformers import AutoModelForSequenceClassification

    seed_everything(seed)
    id2label = dict(enumerate(label_names))
    try:
        with _quiet_transformers(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle warnings must not add lines to stderr
            model = AutoModelForSequenceClassification.from_pretrained(
                path, num_labels=len(label_names), id2label=id2label,
                label2id={v: k for k, v in id2label.items()}, dtype=torch.float32)
    except pickle.UnpicklingError as exc:  # transformers loads .bin weights with weights_only=True
        from .io.checkpoints import load_torch_file

        for weights in sorted(path.glob("*.bin")):
            load_torch_file(weights)  # raises the error naming the refused or corrupt file
        raise RankscopeError(f"{path}: cannot load a sequence-classification model ({_first_line(exc)})") from exc
    except (OSError, ValueError, KeyError, RuntimeError, EOFError) as exc:
        raise RankscopeError(f"{path}: cannot load a sequence-classification model ({_first_line(exc)})") from exc
    if model.config.pad_token_id is None and pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # decoders pick the last non-pad token
    return model


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


class TargetModulesRegex(str):
    """A ``target_modules`` regular expression from a config file (peft: ``re.fullmatch``), not a list of names."""


def parse_target_modules(value: str | Sequence[str] | None) -> list[str] | str | None:
    """``"query,value"`` -> ``["query", "value"]``; ``"all-linear"``, None and a config's regex pass through."""
    if value is None:
        return None
    if isinstance(value, TargetModulesRegex):
        from .options import compile_regex

        compile_regex(value, "target_modules")  # validated with the file named by lora_options_from_config
        return str(value)
    if isinstance(value, str):
        if value.strip().lower() == "all-linear":
            return "all-linear"
        value = value.split(",")
    names = [v.strip() for v in value if v.strip()]
    if not names:
        raise RankscopeError("--target-modules is empty (give names such as query,value or all-linear)")
    return names


def lora_options_from_config(path: str | os.PathLike) -> dict[str, Any]:
    """``r``, ``alpha``, ``target_modules``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora`` of a peft
    ``lora_config.json`` / ``adapter_config.json`` (e.g. written by ``rankscope recommend``).

    Every field is type-checked (:func:`rankscope.io.adapters.check_lora_fields`) and every pattern compiled
    before any work: a problem is one :class:`RankscopeError` naming the file and the field.
    """
    from .io.adapters import check_lora_fields

    where = f"--lora-config {path}"
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError, RecursionError) as exc:
        raise RankscopeError(f"--lora-config: cannot read {path} ({_first_line(exc)})") from exc
    if not isinstance(config, dict) or config.get("r") is None:
        raise RankscopeError(f"--lora-config: {path} is not a LoRA config (no 'r')")
    if str(config.get("peft_type") or "LORA").upper() != "LORA":
        raise RankscopeError(f"{where}: peft_type {config['peft_type']!r} is not LORA")
    check_lora_fields(config, where, min_pattern_rank=1)
    if config.get("use_dora"):
        raise RankscopeError(f"{where}: use_dora is not supported by rankscope train (plain LoRA only)")
    targets = config.get("target_modules")
    if isinstance(targets, list) and not targets:
        raise RankscopeError(f"{where}: 'target_modules' is empty")
    if isinstance(targets, str) and targets.strip().lower() != "all-linear":
        targets = TargetModulesRegex(targets)
    alpha = config.get("lora_alpha")
    return {"r": config["r"], "alpha": float(config["r"] if alpha is None else alpha), "target_modules": targets,
            "rank_pattern": config.get("rank_pattern") or None, "alpha_pattern": config.get("alpha_pattern") or None,
            "use_rslora": bool(config.get("use_rslora"))}


def load_pattern(value: dict | str | os.PathLike | None, option: str) -> dict[str, Any] | None:
    """A rank/alpha pattern given as a dict, a JSON string or the path of a JSON file, checked before use.

    Keys must be valid patterns (as peft wraps them); values integers >= 1 for ``--rank-pattern``,
    positive numbers for ``--alpha-pattern``.  A problem is one :class:`RankscopeError` naming the
    option and the file.
    """
    from .io.adapters import check_lora_fields

    if value is None:
        return None
    key = "rank_pattern" if "rank" in option else "alpha_pattern"
    if isinstance(value, dict):
        check_lora_fields({key: value}, option, min_pattern_rank=1)
        return value
    text = str(value)
    path = Path(text).expanduser()
    try:
        if path.is_file():
            text = path.read_text()
        elif not text.lstrip().startswith("{"):
            raise RankscopeError(f"{option}: file not found: {value}")
    except OSError as exc:
        raise RankscopeError(f"{option}: cannot read {value} ({exc.strerror or exc})") from exc
    try:
        pattern = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise RankscopeError(f"{option}: {value} is not valid JSON ({_first_line(exc)})") from exc
    if not isinstance(pattern, dict):
        raise RankscopeError(f"{option}: {value} must be a JSON object of module pattern -> number")
    check_lora_fields({key: pattern}, f"{option} {value}", min_pattern_rank=1)
    return pattern


def _suffix_matches(name: str, target: str) -> bool:
    """peft's rule for a list entry: the module name equals it or ends with ``"." + target``."""
    return name == target or name.endswith("." + target)


def check_lora_targets(model: torch.nn.Module, spec: LoraSpec) -> None:
    """Every target module and every rank/alpha pattern must match a module of ``model``."""
    import re

    import torch

    names = [n for n, _ in model.named_modules() if n]
    targets = spec.target_modules
    if isinstance(targets, list):
        leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        for target in targets:
            if not any(_suffix_matches(n, target) for n in names):
                raise RankscopeError(f"--target-modules: '{target}' matches no module of the model "
                                     f"(linear layers: {', '.join(leaves)})")
    for option, pattern in (("--rank-pattern", spec.rank_pattern), ("--alpha-pattern", spec.alpha_pattern)):
        for key in pattern or {}:
            try:
                hit = any(re.match(rf"(.*\.)?({key})$", n) for n in names)
            except re.error as exc:
                raise RankscopeError(f"{option}: '{key}' is not a valid pattern ({exc})") from exc
            if not hit:
                raise RankscopeError(f"{option}: '{key}' matches no module of the model")


def apply_lora(model: torch.nn.Module, spec: LoraSpec) -> torch.nn.Module:
    """Wrap ``model`` with a peft LoRA adapter (task SEQ_CLS: the head goes to ``modules_to_save``)."""
    from peft import LoraConfig, TaskType, get_peft_model

    spec = replace(spec, rank_pattern=load_pattern(spec.rank_pattern, "--rank-pattern"),
                   alpha_pattern=load_pattern(spec.alpha_pattern, "--alpha-pattern"))
    check_lora_targets(model, spec)
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=spec.r, lora_alpha=spec.alpha, target_modules=spec.target_modules,
                        rank_pattern=spec.rank_pattern or {}, alpha_pattern=spec.alpha_pattern or {},
                        use_rslora=spec.use_rslora, lora_dropout=spec.dropout)
    try:
        with _quiet_transformers():
            return get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        raise RankscopeError(f"LoRA: {_first_line(exc)}") from exc


def build_model(checkpoint: str | os.PathLike, label_names: Sequence[str], method: str = "full",
                lora: LoraSpec | None = None, seed: int = 0) -> tuple[torch.nn.Module, Any, Path]:
    """(model, tokenizer, resolved path) ready for :func:`train_model`.

    ``full``: every parameter trainable.  ``lora``: only the LoRA factors and the classifier head.
    """
    from .io.checkpoints import resolve

    if method not in METHODS:
        raise RankscopeError(f"--method: unknown method '{method}' (choose from {', '.join(METHODS)})")
    path = resolve(checkpoint)
    if not path.is_dir():
        raise RankscopeError(f"{checkpoint}: training needs a model folder (config, weights and tokenizer)")
    tokenizer = load_tokenizer(path)
    model = load_classifier(path, label_names, tokenizer.pad_token_id, seed)
    if method == "lora":
        model = apply_lora(model, lora or LoraSpec())
    return model, tokenizer, path


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors are counted once."""
    params = list({id(p): p for p in model.parameters()}.values())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------------------------------
# data: tokenise once, dynamic padding, length-sorted buckets
# --------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """A tokenised split: one list of token ids per example, and the labels."""

    ids: list[list[int]]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def encode(split: Split, tokenizer, max_length: int) -> Encoded:
    """Tokenise (truncate to ``max_length``, no padding) every text of ``split``."""
    ids = tokenizer(list(split.texts), truncation=True, max_length=max_length)["input_ids"] if len(split) else []
    return Encoded([list(x) for x in ids], list(split.labels))


def usable_length(model: torch.nn.Module, requested: int) -> int:
    """``requested`` capped at the model's position limit (``config.max_position_embeddings``) when it has one."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(requested, limit) if isinstance(limit, int) and limit > 0 else requested


def collate(data: Encoded, idx: Sequence[int], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """A padded batch (to its longest member) of the examples ``idx``."""
    import torch

    width = max(len(data.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    for row, i in enumerate(idx):
        seq = data.ids[i]
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    labels = torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def train_batches(data: Encoded, batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """One epoch of index batches: seeded order, length-sorted within buckets, batches shuffled."""
    import torch

    order = torch.randperm(len(data), generator=generator).tolist()
    bucket = batch_size * BUCKET_BATCHES
    batches = []
    for start in range(0, len(order), bucket):
        chunk = sorted(order[start:start + bucket], key=lambda i: len(data.ids[i]))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def eval_batches(data: Encoded, batch_size: int) -> list[list[int]]:
    """Index batches sorted by length (evaluation order does not matter, padding does)."""
    order = sorted(range(len(data)), key=lambda i: len(data.ids[i]))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------


def logits_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Forward pass; accepts HF outputs (``.logits``) or a plain tensor."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return getattr(out, "logits", out)


def evaluate(model: torch.nn.Module, data: Encoded, pad_id: int, config: TrainConfig, device: torch.device,
             left: bool = False) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    import torch

    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for idx in eval_batches(data, config.eval_batch_size):
            batch = {k: v.to(device) for k, v in collate(data, idx, pad_id, left).items()}
            logits = logits_of(model, batch).float()
            loss_sum += torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="sum").item()
            correct += (logits.argmax(-1) == batch["labels"]).sum().item()
    model.train(was_training)
    n = max(len(data), 1)
    return {"loss": loss_sum / n, "accuracy": correct / n}


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over trainable parameters; no weight decay on biases, norms and other 1-D tensors.

    A model may give some parameters their own learning rate with a ``learning_rates()`` method
    returning ``{id(parameter): lr}`` (a subspace model's directly trained head does).
    """
    import torch

    own = model.learning_rates() if hasattr(model, "learning_rates") else {}
    buckets: dict[tuple[float, float], list] = {}
    for _, p in model.named_parameters():
        if p.requires_grad:
            key = (own.get(id(p), lr), 0.0 if p.dim() < 2 else weight_decay)
            buckets.setdefault(key, []).append(p)
    if not buckets:
        raise RankscopeError("the model has no trainable parameters")
    groups = [{"params": params, "lr": group_lr, "weight_decay": decay}
              for (group_lr, decay), params in sorted(buckets.items(), key=lambda kv: (kv[0][0] != lr, -kv[0][1]))]
    try:  # the fused kernel is ~2.5x faster on CPU (the full-FT step updates a 30522x384 embedding)
        return torch.optim.AdamW(groups, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups, lr=lr)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Learning-rate factor rising linearly to 1 over ``warmup`` steps, then falling linearly to 0 at ``total``."""
    import torch

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class _Best:
    """The best evaluation so far and a copy of the trainable weights at that point."""

    accuracy: float = -1.0
    loss: float = math.inf
    step: int = 0
    epoch: float = 0.0
    state: dict[str, torch.Tensor] | None = None
    stale: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    def update(self, model: torch.nn.Module, scores: dict[str, float], step: int, epoch: float) -> bool:
        """Record an evaluation; return True when it improves on the best (accuracy, then loss)."""
        self.history.append({"step": step, "epoch": round(epoch, 4), "validation_loss": scores["loss"],
                             "validation_accuracy": scores["accuracy"]})
        better = scores["accuracy"] > self.accuracy or (scores["accuracy"] == self.accuracy and scores["loss"] < self.loss)
        if better:
            self.accuracy, self.loss, self.step, self.epoch, self.stale = scores["accuracy"], scores["loss"], step, epoch, 0
            self.state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        else:
            self.stale += 1
        return better

    def restore(self, model: torch.nn.Module) -> None:
        """Copy the best weights back into ``model``."""
        import torch

        if self.state is not None:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    if n in self.state:
                        p.copy_(self.state[n])


def _check_config(config: TrainConfig, task_data: TaskData) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise RankscopeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.learning_rate <= 0:
        raise RankscopeError(f"--lr must be positive, got {config.learning_rate}")
    for name in ("eval_every", "patience"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise RankscopeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if len(task_data.train) == 0 or len(task_data.validation) == 0:
        raise RankscopeError(f"task '{task_data.name}' has an empty train or validation split")


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float | None) -> float:
    """One optimisation step on ``batch`` (cross-entropy, optional clipping); returns the batch loss."""
    import torch

    loss = torch.nn.functional.cross_entropy(logits_of(model, batch).float(), batch["labels"])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


@dataclass
class _Counters:
    """Book-keeping of one :func:`train_model` call."""

    steps_per_epoch: int
    sizes: tuple[int, int, int]
    device: str
    step: int = 0
    examples: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    stopped: bool = False
    eval_seconds: float = 0.0
    train_seconds: float = 0.0
    seconds: float = 0.0
    threads: int = 0


def _metrics(best: _Best, config: TrainConfig, test: dict[str, float | None], model: torch.nn.Module,
             counters: _Counters) -> dict[str, Any]:
    """The metrics dictionary of :func:`train_model`."""
    last = best.history[-1]
    chosen = {"validation_loss": best.loss, "validation_accuracy": best.accuracy} if config.restore_best else \
        {"validation_loss": last["validation_loss"], "validation_accuracy": last["validation_accuracy"]}
    n_trainable, n_total = count_parameters(model)
    return {
        **chosen,
        "test_loss": test["loss"],
        "test_accuracy": test["accuracy"],
        "last_validation_accuracy": last["validation_accuracy"],
        "train_loss": counters.epoch_losses[-1],
        "train_loss_by_epoch": counters.epoch_losses,
        "weights": "best" if config.restore_best else "last",
        "best_step": best.step,
        "best_epoch": round(best.epoch, 4),
        "trainable_params": n_trainable,
        "total_params": n_total,
        "trainable_fraction": n_trainable / n_total if n_total else 0.0,
        "steps": counters.step,
        "epochs_completed": round(counters.step / counters.steps_per_epoch, 4),
        "stopped_early": counters.stopped,
        "train_examples": counters.sizes[0],
        "validation_examples": counters.sizes[1],
        "test_examples": counters.sizes[2],
        "examples_per_second": round(counters.examples / max(counters.train_seconds, 1e-9), 2),
        "seconds": round(counters.seconds, 3),
        "train_seconds": round(counters.train_seconds, 3),
        "eval_seconds": round(counters.eval_seconds, 3),
        "history": best.history,
        "device": counters.device,
        "threads": counters.threads,
    }


def train_model(model: torch.nn.Module, task_data: TaskData, tokenizer, config: TrainConfig) -> dict[str, Any]:
    """Train every ``requires_grad`` parameter of ``model`` on ``task_data``; return the metrics.

    The model is left on ``config.device`` holding the weights that were tested: those of the best
    validation evaluation, or the last ones when ``config.restore_best`` is False.  The returned
    ``validation_*`` scores belong to those same weights (``last_validation_accuracy``: the final one).
    """
    import torch
    from tqdm.auto import tqdm

    _check_config(config, task_data)
    device = torch_device(config.device)
    t_start = time.perf_counter()
    pad_id, left = tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right") == "left"
    max_length = usable_length(model, config.max_length)
    train_data, val_data, test_data = (encode(s, tokenizer, max_length)
                                       for s in (task_data.train, task_data.validation, task_data.test))
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    scheduler = linear_schedule(optimizer, int(round(config.warmup_ratio * total)), total)
    best = _Best()
    c = _Counters(steps_per_epoch, (len(train_data), len(val_data), len(test_data)), str(device))

    def validate() -> None:
        t_eval = time.perf_counter()
        best.update(model, evaluate(model, val_data, pad_id, config, device, left), c.step, c.step / steps_per_epoch)
        c.eval_seconds += time.perf_counter() - t_eval
        c.stopped = bool(config.patience and best.stale >= config.patience)

    t_train = time.perf_counter()
    with deterministic_algorithms(), num_threads(config.threads), tqdm(total=total, desc="train", unit="step", disable=not config.progress,
                                          dynamic_ncols=True) as bar:
        c.threads = torch.get_num_threads()
        for _ in range(config.epochs):
            loss_sum, seen = 0.0, 0
            for idx in train_batches(train_data, config.batch_size, generator):
                batch = {k: v.to(device) for k, v in collate(train_data, idx, pad_id, left).items()}
                loss = train_step(model, batch, optimizer, scheduler, config.grad_clip)
                c.step, c.examples = c.step + 1, c.examples + len(idx)
                loss_sum, seen = loss_sum + loss * len(idx), seen + len(idx)
                bar.update(1)
                if c.step % steps_per_epoch == 0 or (config.eval_every and c.step % config.eval_every == 0):
                    validate()
                bar.set_postfix(loss=f"{loss:.4f}", val_acc=f"{best.history[-1]['validation_accuracy']:.4f}"
                                if best.history else "-")
                if c.stopped:
                    break
            c.epoch_losses.append(loss_sum / max(seen, 1))
            if c.stopped:
                break
    c.train_seconds = time.perf_counter() - t_train - c.eval_seconds
    if config.restore_best:
        best.restore(model)
    t_test = time.perf_counter()
    with num_threads(config.threads):
        test = evaluate(model, test_data, pad_id, config, device, left) if len(test_data) else {"loss": None, "accuracy": None}
    c.eval_seconds += time.perf_counter() - t_test
    c.seconds = time.perf_counter() - t_start
    return _metrics(best, config, test, model, c)


# --------------------------------------------------------------------------------------------------
# outputs and the Python API
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


def save_model(model: torch.nn.Module, tokenizer, folder: Path, final: Path | None = None) -> list[str]:
    """``save_pretrained`` of the model (HF safetensors checkpoint, or the peft adapter) and the tokenizer.

    A peft adapter also gets :func:`write_base_view`, so that ``AutoPeftModelForSequenceClassification
    .from_pretrained(OUT)`` builds the base with the task's labels.  ``final`` is the folder ``folder`` becomes
    (the output folder when ``folder`` is the work folder of :func:`rankscope.io.results.atomic_output`); by
    default it is derived from the work folder's name (``.NAME.partial-PID-XXXX`` → ``NAME``), else ``folder``.
    """
    with _quiet_transformers():
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

    Nothing changes (``None``) when the base is not a local folder with ``model.safetensors`` (or its sharded index).
    """
    import copy

    from .io.checkpoints import read_safetensors_header

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


def _run_info(inputs: dict[str, Any], task_data: TaskData, config: TrainConfig, model: torch.nn.Module,
              metrics: dict[str, Any], argv: str | None) -> dict[str, Any]:
    """Provenance for ``run.json``: inputs as given and resolved, task, options, seed, environment."""
    from .io.results import versions

    return {
        "command": "train",
        "argv": argv,
        "inputs": inputs,
        "task": task_data.describe(),
        "options": {**{k: v for k, v in asdict(config).items() if k != "progress"}, "lr": config.learning_rate},
        "lora": lora_summary(model),
        "seed": config.seed,
        "device": metrics["device"],
        "threads": metrics["threads"],
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "versions": versions(),
    }


def train(model: str | os.PathLike = "bundled:minilm-base", task: str = "rotten-tomatoes", method: str = "full",
          out: str | os.PathLike | None = None, *, data: str | os.PathLike | None = None, text_column: str = "text",
          label_column: str = "label", split_seed: int = 0, max_train: int | None = None,
          max_eval: int | None = None, seed: int = 0, epochs: int = 2, lr: float | None = None, batch_size: int = 16,
          max_length: int = 128, warmup_ratio: float = 0.1, weight_decay: float = 0.01, grad_clip: float | None = 1.0,
          device: str = "cpu", eval_every: int | None = None, patience: int | None = None, restore_best: bool = True,
          r: int = 8, alpha: float = 16, target_modules: str | Sequence[str] | None = None,
          rank_pattern: dict | str | None = None, alpha_pattern: dict | str | None = None, use_rslora: bool = False,
          lora_dropout: float = 0.0, threads: int | None = None, progress: bool = True,
          argv: str | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Fine-tune ``model`` on ``task`` with ``method`` (``full`` or ``lora``); return the metrics.

    With ``out``, writes (atomically) the trained model at the top of ``out`` (``full``: a Hugging Face
    checkpoint, ``model.safetensors`` + ``config.json``; ``lora``: ``adapter_model.safetensors`` +
    ``adapter_config.json``), the tokenizer, ``metrics.json`` and ``run.json``.  The saved and tested
    weights are the best on validation (``restore_best=False``: the last).  See :class:`TrainConfig`
    and :class:`LoraSpec` for the options, :func:`rankscope.training.data.load_task` for ``task``/``data``.

    Example::

        metrics = train("bundled:minilm-base", "rotten-tomatoes", "lora", "runs/lora-r8", max_train=2000)
        metrics["test_accuracy"]
    """
    from .io.results import atomic_output, check_output_target, peak_rss_mb, resolve_output, write_json

    t_start = time.perf_counter()
    if method not in METHODS:
        raise RankscopeError(f"--method: unknown method '{method}' (choose from {', '.join(METHODS)})")
    if out is not None:
        check_output_target(Path(out), "train", overwrite)
    config = TrainConfig(epochs=epochs, lr=lr, method=method, batch_size=batch_size, max_length=max_length,
                         warmup_ratio=warmup_ratio, weight_decay=weight_decay, grad_clip=grad_clip, seed=seed,
                         device=device, eval_every=eval_every, patience=patience, restore_best=restore_best,
                         progress=progress, threads=threads)
    torch_device(device)  # fail on a bad device before loading anything
    if method == "lora":  # and on a bad pattern file
        load_pattern(rank_pattern, "--rank-pattern")
        load_pattern(alpha_pattern, "--alpha-pattern")
    task_data = load_task(task, data, text_column=text_column, label_column=label_column, split_seed=split_seed,
                          max_train=max_train, max_eval=max_eval)
    lora = LoraSpec(r, alpha, parse_target_modules(target_modules), rank_pattern, alpha_pattern, use_rslora,
                    lora_dropout) if method == "lora" else None
    net, tokenizer, path = build_model(model, task_data.label_names, method, lora, seed)
    t_built = time.perf_counter()
    loop = train_model(net, task_data, tokenizer, config)
    metrics = {"method": method, "task": task_data.name, "model": str(model), **loop}
    if out is None:
        return metrics
    inputs = {"model": str(model), "model_resolved": str(path), "task": task, "data": None if data is None else str(data)}
    info = _run_info(inputs, task_data, config, net, metrics, argv)
    with atomic_output(out, "train", overwrite, info) as tmp:
        t_save = time.perf_counter()
        files = save_model(net, tokenizer, tmp, final=resolve_output(out))
        write_json(tmp / "metrics.json", metrics)
        info["outputs"] = sorted([*files, "metrics.json", "run.json"])
        info["seconds"] = {"load": round(t_built - t_start, 3), "train": metrics["train_seconds"],
                           "eval": metrics["eval_seconds"], "save": round(time.perf_counter() - t_save, 3),
                           "total": round(time.perf_counter() - t_start, 3)}
        info["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return metrics


def evaluate_checkpoint(model: str | os.PathLike = "bundled:minilm-base", task: str = "rotten-tomatoes", *,
                        adapter: str | os.PathLike | None = None, data: str | os.PathLike | None = None,
                        text_column: str = "text", label_column: str = "label", split_seed: int = 0,
                        max_eval: int | None = None, max_length: int = 128, batch_size: int = 64,
                        device: str = "cpu") -> dict[str, Any]:
    """Validation and test accuracy and loss of a checkpoint, optionally with a peft adapter, without training.

    The splits are those of :func:`train` with the same ``split_seed``, so the numbers compare with its
    ``metrics.json``.  A head missing from ``model`` (a bare ``BertModel``) is seeded fresh unless the adapter
    brings it (``modules_to_save``), as adapters extracted from a full fine-tune do.
    """
    task_data = load_task(task, data, text_column=text_column, label_column=label_column, split_seed=split_seed,
                          max_eval=max_eval)
    net, tokenizer, _ = build_model(model, task_data.label_names, "full", None, 0)
    if adapter is not None:
        from peft import PeftModel

        from .io.checkpoints import resolve

        net = PeftModel.from_pretrained(net, resolve(adapter))
    config = TrainConfig(max_length=max_length, eval_batch_size=batch_size, device=device, progress=False)
    dev = torch_device(device)
    net.to(dev)
    pad_id, left = tokenizer.pad_token_id, getattr(tokenizer, "padding_side", "right") == "left"
    length = usable_length(net, max_length)
    scores = {name: evaluate(net, encode(split, tokenizer, length), pad_id, config, dev, left)
              for name, split in (("validation", task_data.validation), ("test", task_data.test))}
    return {"model": str(model), "adapter": None if adapter is None else str(adapter), "task": task_data.name,
            **{f"{name}_{k}": v for name, s in scores.items() for k, v in s.items()}}


# --------------------------------------------------------------------------------------------------
# command line (registered in rankscope.cli)
# --------------------------------------------------------------------------------------------------


def summary_line(metrics: dict[str, Any]) -> str:
    """One line: accuracies, trainable parameters and time."""
    return (f"{metrics['method']} on {metrics['task']}: validation accuracy {metrics['validation_accuracy']:.4f}, "
            f"test accuracy {metrics['test_accuracy']:.4f}, {metrics['trainable_params']:,} of "
            f"{metrics['total_params']:,} parameters trainable, {metrics['steps']} steps in {metrics['seconds']:.1f} s "
            f"({metrics['examples_per_second']:.1f} examples/s)")
