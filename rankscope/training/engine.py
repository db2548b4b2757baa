"""Running a training loop on a given model and data: seeding, batching, AdamW and its schedule, evaluation.

:func:`train_model` knows nothing about how the model was made: it optimises every parameter with
``requires_grad`` and snapshots only those, so any module whose ``forward(input_ids=, attention_mask=)``
returns logits (or an object with ``.logits``) trains with it: a peft model, a full fine-tune, or a
subspace model whose only trainable tensor is ``θ_d`` (:mod:`rankscope.subspace`).

Objectives (:data:`OBJECTIVES`, chosen by the data: a :class:`~rankscope.training.data.TaskData` or a
:class:`~rankscope.training.lm_data.LMTaskData`): ``classification`` — logits ``(batch, labels)``, mean
cross-entropy over the examples, accuracy; ``causal-lm`` — logits ``(batch, tokens, vocabulary)``, the logits at
position ``t`` predict the label at ``t+1`` (:func:`batch_loss`), mean cross-entropy over the tokens that count
(labels other than -100: not the prompt, not the padding; batches are right-padded), perplexity ``exp(loss)``.
The best evaluation is the highest accuracy (ties: lower loss) or the lowest loss.

The loop: AdamW (fused; weight decay 0.01, none on biases and norms), linear warm-up over the first 10 % of the
steps then linear decay to 0, gradient clipping at norm 1.0, dynamic padding with length-sorted
buckets (a bucket of 32 batches is drawn in seeded random order, sorted by length, cut into batches
and the batches shuffled), evaluation on validation after every epoch (and every ``eval_every`` steps),
early stopping after ``patience`` evaluations without improvement.  The *best* weights (highest
validation accuracy, ties broken by lower validation loss, then by the earlier evaluation) are
restored before the test evaluation (``restore_best=False`` keeps the last weights).

Learning rates: full fine-tuning defaults to 5e-5 (the BERT paper's 2e-5 is tuned for long runs of
BERT-base; the small MiniLM-L6 on a 2,000-example, 2-epoch run converges further with 5e-5), LoRA and AdaLoRA to
5e-4 (tune it per method: rankscope's rank-choice study found AdaLoRA's best rate above LoRA's).

Determinism: ``torch.manual_seed``, ``numpy`` and ``random`` are seeded with ``seed`` before training
(:func:`rankscope.training.models.load_classifier` seeds them before the model is built, too); the data
order comes from a ``torch.Generator`` seeded with ``seed``; ``torch.use_deterministic_algorithms(True,
warn_only=True)`` is on during the loop.  On CPU the same seed gives bit-identical weights and metrics
(with the same number of threads).

CPU threads: ``threads`` (``--threads``) sets ``torch.set_num_threads`` during training.  The CLI also sets
``OMP_WAIT_POLICY=PASSIVE`` (unless already set) before torch is imported: with the default spinning
policy, a 2-core machine shared with one other busy process ran a MiniLM step in 4–5 s instead of 0.35–0.45 s.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ..errors import RankscopeError
from .data import Split, TaskData
from .lm_data import IGNORE, LMTaskData, TextSplit, tokenize

if TYPE_CHECKING:  # torch is imported inside functions so that `rankscope --help` stays fast
    import torch
    from transformers import PreTrainedTokenizerBase

DEFAULT_LR = {"full": 5e-5, "lora": 5e-4, "adalora": 5e-4}
"""Learning rate of :class:`TrainConfig` by ``method`` when ``lr`` is None (module docstring)."""
BUCKET_BATCHES = 32
"""Batches per length-sorted bucket: large enough to cut padding, small enough to keep batches random."""
OBJECTIVES = ("classification", "causal-lm")
"""What a model is trained for: a class per example, or the next token of every counted token."""


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
    max_steps: int | None = None
    """Stop after this many optimisation steps (None: ``epochs`` full epochs).  The schedule then runs over
    ``min(max_steps, epochs × steps per epoch)`` steps and the weights are validated once more at the stop."""
    objective: str = "classification"
    """``classification`` or ``causal-lm`` (:data:`OBJECTIVES`); it must match the task data."""

    @property
    def learning_rate(self) -> float:
        """``lr``, or the default of ``method``."""
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

    from ..options import resolve_device

    return torch.device(resolve_device(device))


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors are counted once."""
    params = list({id(p): p for p in model.parameters()}.values())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


# --------------------------------------------------------------------------------------------------
# data: tokenise once, dynamic padding, length-sorted buckets
# --------------------------------------------------------------------------------------------------


@dataclass
class Encoded:
    """A tokenised split: one list of token ids per example, and the labels.

    ``token_labels`` (causal LM): one label per token (-100: does not count), and ``labels`` is empty;
    ``dropped``: examples left out because no token of theirs counts (:func:`rankscope.training.lm_data.tokenize`).
    """

    ids: list[list[int]]
    labels: list[int]
    token_labels: list[list[int]] | None = None
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> int:
        """Counted tokens (causal LM: the labels ``1..`` that are not -100 of every example; classification: 0)."""
        return sum(sum(label != IGNORE for label in labels[1:]) for labels in self.token_labels or [])


def encode(split: Split | TextSplit, tokenizer: PreTrainedTokenizerBase, max_length: int) -> Encoded:
    """Tokenise (truncate to ``max_length``, no padding) every example of ``split``: a classification split's texts,
    or a causal-LM split with per-token labels (:func:`rankscope.training.lm_data.tokenize`)."""
    if isinstance(split, TextSplit):
        ids, labels, dropped = tokenize(split, tokenizer, max_length)
        return Encoded(ids, [], labels, dropped)
    ids = tokenizer(list(split.texts), truncation=True, max_length=max_length)["input_ids"] if len(split) else []
    return Encoded([list(x) for x in ids], list(split.labels))


def usable_length(model: torch.nn.Module, requested: int) -> int:
    """``requested`` capped at the model's position limit (``config.max_position_embeddings``) when it has one."""
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(requested, limit) if isinstance(limit, int) and limit > 0 else requested


def collate(data: Encoded, idx: Sequence[int], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """A padded batch (to its longest member) of the examples ``idx``; causal-LM labels are padded with -100."""
    import torch

    width = max(len(data.ids[i]) for i in idx)
    input_ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(idx), width), dtype=torch.long)
    tokens = None if data.token_labels is None else torch.full((len(idx), width), IGNORE, dtype=torch.long)
    for row, i in enumerate(idx):
        seq = data.ids[i]
        cols = slice(width - len(seq), width) if left else slice(0, len(seq))
        input_ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
        if tokens is not None:
            tokens[row, cols] = torch.tensor(data.token_labels[i], dtype=torch.long)
    labels = tokens if tokens is not None else torch.tensor([data.labels[i] for i in idx], dtype=torch.long)
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


def batch_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(summed cross-entropy, number of terms) of a batch.

    Classification (``labels`` of shape ``(batch,)``): one term per example.  Causal LM (``labels`` of shape
    ``(batch, tokens)``): the logits at position ``t`` against the label at ``t+1``, one term per label that is
    not -100 (prompt and padding tokens do not count).
    """
    import torch

    if labels.dim() == 1:
        return torch.nn.functional.cross_entropy(logits, labels, reduction="sum"), labels.shape[0]
    shifted = labels[:, 1:]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), shifted.reshape(-1),
                                             ignore_index=IGNORE, reduction="sum")
    return loss, int((shifted != IGNORE).sum().item())


def evaluate(model: torch.nn.Module, data: Encoded, pad_id: int, config: TrainConfig, device: torch.device,
             left: bool = False, desc: str | None = None) -> dict[str, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data`` (causal LM: mean token loss, perplexity, tokens).

    ``desc``: show a progress bar of the batches under this name (when ``config.progress``; it vanishes at the end).
    """
    import torch
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    batches = eval_batches(data, config.eval_batch_size)
    with torch.no_grad(), tqdm(total=len(batches), desc=desc, unit="batch", leave=False, dynamic_ncols=True,
                               disable=not (config.progress and desc)) as bar:
        for idx in batches:
            batch = {k: v.to(device) for k, v in collate(data, idx, pad_id, left).items()}
            logits = logits_of(model, batch).float()
            loss, terms = batch_loss(logits, batch["labels"])
            loss_sum, count = loss_sum + loss.item(), count + terms
            if data.token_labels is None:
                correct += (logits.argmax(-1) == batch["labels"]).sum().item()
            bar.update(1)
    model.train(was_training)
    if data.token_labels is not None:
        loss = loss_sum / count if count else math.nan
        perplexity = math.exp(loss) if loss < 700 else (math.inf if loss >= 700 else math.nan)
        return {"loss": loss, "perplexity": perplexity, "tokens": count}
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

    def update(self, model: torch.nn.Module, scores: dict[str, float], step: int, epoch: float,
               selectable: bool = True) -> bool:
        """Record an evaluation; return True when it improves on the best (accuracy, then loss; causal LM: loss).

        An evaluation that is not ``selectable`` (a method's weights before their final form) is recorded only.
        """
        metric = "accuracy" if "accuracy" in scores else "perplexity"
        self.history.append({"step": step, "epoch": round(epoch, 4), "validation_loss": scores["loss"],
                             f"validation_{metric}": scores[metric]})
        if not selectable:
            self.history[-1]["selectable"] = False
            return False
        accuracy = scores.get("accuracy", 0.0)
        better = accuracy > self.accuracy or (accuracy == self.accuracy and scores["loss"] < self.loss)
        if better:
            self.accuracy, self.loss, self.step, self.epoch, self.stale = accuracy, scores["loss"], step, epoch, 0
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


def _check_config(config: TrainConfig, task_data: TaskData | LMTaskData) -> None:
    if config.objective not in OBJECTIVES:
        raise RankscopeError(f"--objective: unknown objective '{config.objective}' (choose from {', '.join(OBJECTIVES)})")
    given = "causal-lm" if isinstance(task_data, LMTaskData) else "classification"
    if given != config.objective:
        raise RankscopeError(f"--objective {config.objective}: the task '{task_data.name}' is {given} data")
    for name in ("epochs", "batch_size", "eval_batch_size", "max_length"):
        if getattr(config, name) < 1:
            raise RankscopeError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.learning_rate <= 0:
        raise RankscopeError(f"--lr must be positive, got {config.learning_rate}")
    for name in ("eval_every", "patience", "max_steps"):
        value = getattr(config, name)
        if value is not None and value < 1:
            raise RankscopeError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
    if len(task_data.train) == 0 or len(task_data.validation) == 0:
        raise RankscopeError(f"task '{task_data.name}' has an empty train or validation split")


def train_step(model: torch.nn.Module, batch: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float | None,
               hooks: StepHooks | None = None) -> float:
    """One optimisation step on ``batch`` (the mean cross-entropy of :func:`batch_loss`, plus ``hooks.extra_loss()``
    when given; optional clipping); returns the batch's cross-entropy (without the extra term)."""
    import torch

    total, terms = batch_loss(logits_of(model, batch).float(), batch["labels"])
    loss = total / max(terms, 1)
    extra = hooks.extra_loss() if hooks is not None else None
    optimizer.zero_grad(set_to_none=True)
    (loss if extra is None else loss + extra).backward()
    if grad_clip:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    optimizer.step()
    scheduler.step()
    return loss.item()


class StepHooks(Protocol):
    """What a method with its own schedule adds to the loop (AdaLoRA: :class:`rankscope.training.adalora.AdaLoraHooks`).

    ``start(total_steps)`` before the first step; ``extra_loss()`` a term added to each step's loss (or None);
    ``after_step(step)`` after each optimiser step, the gradients still in place; ``selectable(step)`` whether an
    evaluation after ``step`` may become the best (the last one always is kept when none was); ``finish()`` once the
    tested weights are in place, before the test evaluation.
    """

    def start(self, total_steps: int) -> None: ...

    def extra_loss(self) -> torch.Tensor | None: ...

    def after_step(self, step: int) -> None: ...

    def selectable(self, step: int) -> bool: ...

    def finish(self) -> None: ...


@dataclass
class _Counters:
    """Book-keeping of one :func:`train_model` call."""

    steps_per_epoch: int
    sizes: tuple[int, int, int]
    device: str
    step: int = 0
    examples: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    tokens: tuple[int, int, int] = (0, 0, 0)
    dropped: tuple[int, int, int] = (0, 0, 0)
    stopped: bool = False
    eval_seconds: float = 0.0
    train_seconds: float = 0.0
    seconds: float = 0.0
    threads: int = 0


def _metrics(best: _Best, config: TrainConfig, test: dict[str, float | None], model: torch.nn.Module,
             counters: _Counters) -> dict[str, Any]:
    """The metrics dictionary of :func:`train_model`."""
    last = best.history[-1]
    metric = "validation_accuracy" if "validation_accuracy" in last else "validation_perplexity"
    if config.restore_best:
        kept = next((h for h in best.history if h["step"] == best.step), last) if metric != "validation_accuracy" \
            else {"validation_loss": best.loss, "validation_accuracy": best.accuracy}
    else:
        kept = last
    chosen = {"validation_loss": kept["validation_loss"], metric: kept[metric]}
    n_trainable, n_total = count_parameters(model)
    if metric == "validation_accuracy":
        scores = {"test_loss": test["loss"], "test_accuracy": test["accuracy"],
                  "last_validation_accuracy": last["validation_accuracy"]}
    else:
        scores = {"test_loss": test["loss"], "test_perplexity": test["perplexity"],
                  "last_validation_loss": last["validation_loss"], "last_validation_perplexity": last[metric],
                  "train_tokens": counters.tokens[0], "validation_tokens": counters.tokens[1],
                  "test_tokens": counters.tokens[2],
                  "dropped_examples": dict(zip(("train", "validation", "test"), counters.dropped, strict=True))}
    return {
        "objective": config.objective,
        **chosen,
        **scores,
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


def padding(tokenizer: PreTrainedTokenizerBase, config: TrainConfig) -> tuple[int, bool]:
    """(pad token id, pad on the left?) of batches: the tokenizer's side for classification; causal LM always on the
    right, where the labels line up with the tokens."""
    left = getattr(tokenizer, "padding_side", "right") == "left"
    return tokenizer.pad_token_id, left and config.objective == "classification"


def train_model(model: torch.nn.Module, task_data: TaskData | LMTaskData, tokenizer: PreTrainedTokenizerBase,
                config: TrainConfig, hooks: StepHooks | None = None, test: bool = True) -> dict[str, Any]:
    """Train every ``requires_grad`` parameter of ``model`` on ``task_data``; return the metrics.

    The model is left on ``config.device`` holding the weights that were tested: those of the best
    validation evaluation, or the last ones when ``config.restore_best`` is False.  The returned
    ``validation_*`` scores belong to those same weights (``last_validation_accuracy``: the final one).
    Causal LM (``config.objective``): ``validation_loss`` / ``validation_perplexity``, ``test_loss`` /
    ``test_perplexity`` and the token counts instead of accuracies; the tokenizer pads on the right.

    ``hooks``: a method's own schedule (:class:`StepHooks`), e.g. AdaLoRA's.  ``test=False`` leaves the test split
    alone (its scores None: a learning-rate sweep tests only the rate it keeps, with :func:`test_scores`).

    Progress: one bar of the optimisation steps; while it evaluates, its description says so, a second bar counts
    the evaluation batches, and the step bar's clock is paused (its rate and ETA count training time only).
    """
    import torch
    from tqdm.auto import tqdm

    _check_config(config, task_data)
    device = torch_device(config.device)
    t_start = time.perf_counter()
    pad_id, left = padding(tokenizer, config)
    max_length = usable_length(model, config.max_length)
    train_data, val_data, test_data = (encode(s, tokenizer, max_length)
                                       for s in (task_data.train, task_data.validation, task_data.test))
    if len(train_data) == 0 or len(val_data) == 0:
        raise RankscopeError(f"task '{task_data.name}': no {'train' if len(train_data) == 0 else 'validation'} "
                             f"example keeps a response token within --max-length {max_length}")
    steps_per_epoch = math.ceil(len(train_data) / config.batch_size)
    total = steps_per_epoch * config.epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    optimizer = make_optimizer(model, config.learning_rate, config.weight_decay)
    scheduler = linear_schedule(optimizer, int(round(config.warmup_ratio * total)), total)
    if hooks is not None:
        hooks.start(total)
    best = _Best()
    c = _Counters(steps_per_epoch, (len(train_data), len(val_data), len(test_data)), str(device),
                  tokens=(train_data.tokens, val_data.tokens, test_data.tokens),
                  dropped=(train_data.dropped, val_data.dropped, test_data.dropped))
    metric, short = ("accuracy", "val_acc") if config.objective == "classification" else ("perplexity", "val_ppl")

    def validate(bar: Any) -> None:
        t_eval = time.perf_counter()
        bar.set_description_str("train (validating)", refresh=True)
        scores = evaluate(model, val_data, pad_id, config, device, left, desc="validate")
        best.update(model, scores, c.step, c.step / steps_per_epoch,
                    hooks is None or hooks.selectable(c.step) or (c.step == total and best.state is None))
        bar.set_description_str("train", refresh=False)
        bar.unpause()  # the step bar's rate and ETA leave the evaluation out
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
                loss = train_step(model, batch, optimizer, scheduler, config.grad_clip, hooks)
                weight = len(idx) if train_data.token_labels is None else int((batch["labels"][:, 1:] != IGNORE).sum())
                c.step, c.examples = c.step + 1, c.examples + len(idx)
                loss_sum, seen = loss_sum + loss * weight, seen + weight
                if hooks is not None:
                    hooks.after_step(c.step)
                bar.update(1)
                last = c.step == total  # the end of the last epoch, or max_steps
                if c.step % steps_per_epoch == 0 or (config.eval_every and c.step % config.eval_every == 0) or last:
                    validate(bar)
                bar.set_postfix({"loss": f"{loss:.4f}",
                                 short: f"{best.history[-1][f'validation_{metric}']:.4f}" if best.history else "-"})
                if c.stopped or last:
                    break
            c.epoch_losses.append(loss_sum / max(seen, 1))
            if c.stopped or c.step == total:
                break
    c.train_seconds = time.perf_counter() - t_train - c.eval_seconds
    if config.restore_best:
        best.restore(model)
    if hooks is not None:
        hooks.finish()
    t_test = time.perf_counter()
    with num_threads(config.threads):
        scores = evaluate(model, test_data, pad_id, config, device, left, desc="test") if len(test_data) and test \
            else {"loss": None, metric: None}
    c.eval_seconds += time.perf_counter() - t_test
    c.seconds = time.perf_counter() - t_start
    return _metrics(best, config, scores, model, c)


def test_scores(model: torch.nn.Module, task_data: TaskData | LMTaskData, tokenizer: PreTrainedTokenizerBase,
                config: TrainConfig) -> dict[str, Any]:
    """The test scores :func:`train_model` reports (``test_loss`` and ``test_accuracy``, or ``test_perplexity``), for
    a model trained with ``test=False``; also ``seconds``."""
    t_test = time.perf_counter()
    device = torch_device(config.device)
    pad_id, left = padding(tokenizer, config)
    data = encode(task_data.test, tokenizer, usable_length(model, config.max_length))
    metric = "accuracy" if config.objective == "classification" else "perplexity"
    with num_threads(config.threads):
        scores = evaluate(model, data, pad_id, config, device, left, desc="test") if len(data) else \
            {"loss": None, metric: None}
    return {"test_loss": scores["loss"], f"test_{metric}": scores[metric], "seconds": time.perf_counter() - t_test}
