"""Causal-LM tasks: plain text or prompt/response files, seeded splits, tokens with response-only labels.

Formats of ``--data FILE`` with ``--objective causal-lm`` (optionally ``.gz``/``.bz2``/``.xz`` compressed):

* ``.txt``: one example per line (UTF-8; blank lines are skipped).  A multi-line document is one JSONL ``text``.
* ``.jsonl`` / ``.json``: one JSON object per line (blank lines skipped), either ``{"text": ...}`` (the field named
  by ``text_column``) — every token counts — or ``{"prompt": ..., "response": ...}`` — only the response tokens
  count; both kinds may be mixed.  A ``.json`` file may instead hold one JSON array of such objects.  A line that
  is not a JSON object, holds neither a text nor a prompt/response pair, or holds a non-string value is one
  :class:`RankscopeError` naming the file and the line.

Splits: the examples are split 80/10/10 exactly as a classification task with a single class
(:func:`rankscope.training.data.stratified_split` with ``split_seed``: one seeded permutation cut into
train/validation/test, each then shuffled); ``max_train`` / ``max_eval`` take prefixes (nested seeded subsamples).

Tokens (:func:`tokenize`): a text is ``tokenizer(text)`` (with the tokenizer's own special tokens, e.g. Llama's
BOS) followed by the eos token; a prompt/response pair is ``tokenizer(prompt)`` followed by
``tokenizer(response, add_special_tokens=False)`` and the eos token, each part tokenised on its own so that the
boundary is exact (write the separator, such as a space or a newline, into the prompt or the response).  The labels
are the ids, with -100 on the prompt tokens; the whole is cut to ``max_length`` tokens.  The model predicts token
``t+1`` from tokens ``..t``, so an example's counted tokens are its labels ``1..`` that are not -100; an example left
with none (a prompt as long as ``max_length``, a one-token text without eos) cannot be trained on and is dropped.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RankscopeError
from .data import DEFAULT_FRACTIONS, TaskData, load_task, stratified_split

IGNORE = -100
"""The label of a token that does not count (prompt, padding): PyTorch's ``cross_entropy`` ``ignore_index``."""
FORMATS = (".txt", ".jsonl", ".json")
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


@dataclass
class TextSplit:
    """One split of a causal-LM task: the texts (or responses) and, per example, its prompt (None: plain text)."""

    texts: list[str]
    prompts: list[str | None]

    def __len__(self) -> int:
        return len(self.texts)

    def head(self, n: int | None) -> TextSplit:
        """The first ``n`` examples (all of them when ``n`` is None)."""
        return self if n is None else TextSplit(self.texts[:n], self.prompts[:n])

    def kinds(self) -> dict[str, int]:
        """How many examples are plain text and how many prompt/response pairs."""
        pairs = sum(p is not None for p in self.prompts)
        return {"text": len(self) - pairs, "prompt_response": pairs}


@dataclass
class LMTaskData:
    """A causal-LM task: the three splits (no labels; ``label_names`` is empty)."""

    name: str
    train: TextSplit
    validation: TextSplit
    test: TextSplit
    info: dict[str, Any] = field(default_factory=dict)
    objective: str = "causal-lm"

    @property
    def label_names(self) -> list[str]:
        return []

    @property
    def num_labels(self) -> int:
        return 0

    def describe(self) -> dict[str, Any]:
        """Plain-data summary for ``run.json``: source, split sizes and the kinds of example in each split."""
        splits = ("train", "validation", "test")
        return {"name": self.name, "objective": self.objective, "sizes": {s: len(getattr(self, s)) for s in splits},
                "kinds": {s: getattr(self, s).kinds() for s in splits}, **self.info}


# --------------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------------


def _kind(path: Path) -> tuple[str, str | None]:
    """(``.txt``/``.jsonl``/``.json``, compression suffix or None) from the file name."""
    suffixes = [s.lower() for s in path.suffixes]
    packed = suffixes.pop() if suffixes and suffixes[-1] in _OPENERS else None
    kind = suffixes[-1] if suffixes else ""
    if kind not in FORMATS:
        raise RankscopeError(f"{path}: unknown data format '{kind or path.name}' for --objective causal-lm "
                             f"(expected .txt, .jsonl or .json, optionally .gz/.bz2/.xz)")
    return kind, packed


def _read_lines(path: Path, packed: str | None) -> list[str]:
    try:
        if packed is None:
            text = path.read_text(encoding="utf-8")
        else:
            with _OPENERS[packed](path, "rt", encoding="utf-8") as handle:
                text = handle.read()
    except (OSError, EOFError, UnicodeDecodeError, lzma.LZMAError) as exc:
        raise RankscopeError(f"cannot read {path}: {str(exc).strip() or type(exc).__name__}") from exc
    return text.splitlines()


def _record(obj: Any, where: str, text_field: str) -> tuple[str | None, str]:
    """(prompt or None, text) of one JSON record."""
    if not isinstance(obj, dict):
        raise RankscopeError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj or "response" in obj:
        missing = [k for k in ("prompt", "response") if k not in obj]
        if missing:
            raise RankscopeError(f"{where}: has '{'prompt' if missing[0] == 'response' else 'response'}' but no "
                                 f"'{missing[0]}'")
        for key in ("prompt", "response"):
            if not isinstance(obj[key], str):
                raise RankscopeError(f"{where}: '{key}' must be a string, got {type(obj[key]).__name__}")
        return obj["prompt"], obj["response"]
    if text_field in obj:
        if not isinstance(obj[text_field], str):
            raise RankscopeError(f"{where}: '{text_field}' must be a string, got {type(obj[text_field]).__name__}")
        return None, obj[text_field]
    fields = ", ".join(map(str, obj)) or "none"
    raise RankscopeError(f"{where}: no '{text_field}' field and no 'prompt'/'response' pair (fields: {fields})")


def read_lm_file(path: str | os.PathLike, text_field: str = "text") -> tuple[list[str], list[str | None]]:
    """(texts or responses, prompts or None) of every example of a ``.txt`` / ``.jsonl`` / ``.json`` file, in order."""
    path = Path(path).expanduser()
    if not path.exists():
        raise RankscopeError(f"data file not found: {path}")
    if not path.is_file():
        raise RankscopeError(f"data path is not a file: {path}")
    kind, packed = _kind(path)
    lines = _read_lines(path, packed)
    if kind == ".txt":
        texts = [line for line in lines if line.strip()]
        return texts, [None] * len(texts)
    records: list[tuple[Any, str]] = []
    whole = "\n".join(lines).lstrip()
    if kind == ".json" and whole.startswith("["):
        try:
            items = json.loads(whole)
        except (ValueError, RecursionError) as exc:
            raise RankscopeError(f"{path}: not valid JSON ({str(exc).splitlines()[0]})") from exc
        records = [(item, f"{path}: record {i + 1}") for i, item in enumerate(items)]
    else:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except (ValueError, RecursionError) as exc:
                raise RankscopeError(f"{path}:{number}: not valid JSON ({str(exc).splitlines()[0]})") from exc
            records.append((obj, f"{path}:{number}"))
    prompts, texts = [], []
    for obj, where in records:
        prompt, text = _record(obj, where, text_field)
        prompts.append(prompt)
        texts.append(text)
    return texts, prompts


def load_lm_task(task: str | None = None, data: str | os.PathLike | None = None, *, text_column: str = "text",
                 split_seed: int = 0, fractions: Sequence[float] = DEFAULT_FRACTIONS, max_train: int | None = None,
                 max_eval: int | None = None) -> LMTaskData:
    """Read a causal-LM data file and split it (module docstring).

    ``data`` is the file; without it ``task`` must be the file's path.  ``task`` is otherwise only the name the run
    is recorded under (default: the file's stem).  ``text_column`` names the JSONL text field.
    """
    if data is None:
        if task is None or not Path(task).expanduser().is_file():
            raise RankscopeError(f"--objective causal-lm needs --data FILE (a .txt or .jsonl file), not the task "
                                 f"'{task}'")
        data = task
        task = None
    path = Path(data)
    name = task or path.name.split(".")[0]
    for option, value in (("max_train", max_train), ("max_eval", max_eval)):
        if value is not None and value < 1:
            raise RankscopeError(f"{option} must be at least 1, got {value}")
    texts, prompts = read_lm_file(path, text_column)
    idx = stratified_split(np.zeros(len(texts), dtype=int), split_seed, fractions) if texts else ([], [], [])
    splits = [TextSplit([texts[i] for i in part], [prompts[i] for i in part]) for part in idx]
    for split_name, split in zip(("train", "validation", "test"), splits, strict=True):
        if len(split) == 0:
            raise RankscopeError(f"{path}: too few examples ({len(texts)}) for a non-empty {split_name} split")
    info = {"source": "file", "data": str(data), "text_column": text_column, "examples": len(texts),
            "split_seed": split_seed, "fractions": list(fractions), "max_train": max_train, "max_eval": max_eval}
    return LMTaskData(name, splits[0].head(max_train), splits[1].head(max_eval), splits[2].head(max_eval), info)


def load_task_for(objective: str, task: str | None, data: str | os.PathLike | None = None, *, text_column: str = "text",
                  label_column: str = "label", split_seed: int = 0, max_train: int | None = None,
                  max_eval: int | None = None) -> TaskData | LMTaskData:
    """The splits of a task for ``objective``: a classification task (:func:`rankscope.training.data.load_task`) or a
    causal-LM file (:func:`load_lm_task`; ``label_column`` unused)."""
    if objective == "causal-lm":
        return load_lm_task(task, data, text_column=text_column, split_seed=split_seed, max_train=max_train,
                            max_eval=max_eval)
    return load_task(task or "rotten-tomatoes", data, text_column=text_column, label_column=label_column,
                     split_seed=split_seed, max_train=max_train, max_eval=max_eval)


# --------------------------------------------------------------------------------------------------
# tokens
# --------------------------------------------------------------------------------------------------


def tokenize(split: TextSplit, tokenizer: Any, max_length: int) -> tuple[list[list[int]], list[list[int]], int]:
    """(ids, labels, dropped) of a split (module docstring): labels are the ids with -100 on prompt tokens, both cut
    to ``max_length``; ``dropped`` examples had no counted token left and are not in the lists."""
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    ids_out, labels_out, dropped = [], [], 0
    for prompt, text in zip(split.prompts, split.texts, strict=True):
        if prompt is None:
            ids = [*tokenizer(text)["input_ids"], *eos]
            labels = list(ids)
        else:
            head = list(tokenizer(prompt)["input_ids"])
            tail = [*tokenizer(text, add_special_tokens=False)["input_ids"], *eos]
            ids, labels = head + tail, [IGNORE] * len(head) + tail
        ids, labels = ids[:max_length], labels[:max_length]
        if not any(label != IGNORE for label in labels[1:]):
            dropped += 1
            continue
        ids_out.append([int(i) for i in ids])
        labels_out.append([int(label) for label in labels])
    return ids_out, labels_out, dropped
