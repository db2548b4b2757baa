"""``rankscope intrinsic-dim``: measure a baseline, then search d90 for DID and/or SAID, with a run cache.

Output folder ``OUT``::

    runs/<mode>-d<d>-s<seed>.json   one finished training run each (the cache; baseline-s<seed>.json too)
    search.json                     the settings every cached run was made with (a resumed search must match)
    runs.csv                        mode, d, seed, metric, loss, seconds, trainable, D, steps, kernel: every run
    result.json                     d90 per mode, its bracket, the baseline, the target and its convention
    figures/intrinsic-dim.png       metric vs d (log x), threshold line, DID and SAID together
    run.json                        inputs, options, seeds, versions, timings

Every file is written to a temporary name and renamed, and ``result.json`` / ``run.json`` only when the
search has finished, so an interrupted search leaves just its cache; re-running the same command
resumes it (finished runs are read back, not retrained).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import RankscopeError
from ..protocol import ResultView
from ..summaries import ResultFiles
from . import native
from .search import SearchOutcome, find_d90
from .wrapper import subspace_names

if TYPE_CHECKING:
    import pandas as pd

HEADS = ("subspace", "direct")


@dataclass
class SearchConfig:
    """Everything that decides the result of one training run (hashed into the cache key).

    Every field, by name and value, goes into :meth:`key` (recorded in ``search.json``; tests pin it):
    renaming a field or changing a default changes the key of the same settings.  A field added later
    needs a default that reproduces the earlier behaviour (:func:`prepare_folder` reads a marker that
    lacks it as that default).  Build it with keywords.
    """

    task: str = "toy"
    model: str = "bundled:minilm-base"
    data: str | None = None
    projection: str = "fastfood"
    layout: str = "blocked"
    head: str = "subspace"
    head_lr: float | None = None
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    epochs: int | None = None
    lr: float | None = None
    baseline_lr: float | None = None
    batch_size: int | None = None
    split_seed: int = 0
    max_train: int | None = None
    max_eval: int | None = None
    max_length: int = 128
    text_column: str = "text"
    label_column: str = "label"
    lr_rule: str = "lr_full*sqrt(D/d)"

    def __post_init__(self) -> None:  # the key hashes JSON: paths as text, the patterns as lists
        self.model = str(self.model)
        self.data = None if self.data is None else str(self.data)
        self.include, self.exclude = list(self.include), list(self.exclude)

    def key(self) -> str:
        """The run-cache key: 16 hex digits of the SHA-1 of the sorted JSON of every field."""
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> SearchConfig:
        """The config recorded in ``search.json``/``run.json`` (fields it lacks take their default)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in names})


@dataclass
class StudyOptions:
    """How d90 is searched and judged (not in the cache key: runs are shared across these settings).

    ``threshold``: target = threshold × baseline (relative convention), unless ``target_absolute``;
    ``baseline``: given instead of measured; ``seeds`` runs per d from ``seed``; a geometric sweep from
    ``d_start`` by ``factor`` up to ``d_max`` (None: D), bisection to ``hi/lo <= 1 + tolerance``;
    ``grid``: evaluate exactly these d instead.  Recorded as ``run.json``'s ``options``.
    """

    modes: list[str] = field(default_factory=lambda: ["did"])
    threshold: float = 0.9
    target_absolute: float | None = None
    baseline: float | None = None
    seeds: int = 1
    seed: int = 0
    d_start: int = 10
    d_max: int | None = None
    factor: float = 2.0
    tolerance: float = 0.1
    grid: list[int] | None = None

    def __post_init__(self) -> None:
        self.modes = list(dict.fromkeys(self.modes))
        self.grid = list(self.grid) if self.grid else None

    def seed_list(self) -> list[int]:
        """The seeds of every d: ``seed, seed + 1, …`` (``seeds`` of them)."""
        return [self.seed + i for i in range(self.seeds)]


@dataclass
class IntrinsicDimResult(ResultView):
    """The runs table, the per-mode searches and the provenance of one intrinsic-dimension study.

    The result protocol of every analysis (:mod:`rankscope.protocol`): ``table`` (one row per training run;
    ``runs`` is the same DataFrame), ``info`` (what ``run.json`` holds), :meth:`save`, :meth:`load`,
    :meth:`summary` (one row per mode), :meth:`summary_text`, :meth:`figures`; ``result`` is what ``result.json``
    holds (d90 per mode, bracket, baseline, target).
    """

    table: pd.DataFrame
    result: dict[str, Any]
    info: dict[str, Any]

    @property
    def runs(self) -> pd.DataFrame:
        """The runs table (:attr:`table` under its earlier name)."""
        return self.table

    def save(self, out: str | os.PathLike, *, overwrite: bool = False, started: float | None = None) -> None:
        """Write the study to ``out``: what :func:`intrinsic_dimension` writes at the end (module docstring).

        The folder is checked and given its ``search.json`` first (:func:`prepare_folder`: a new folder,
        or one holding this same search; ``overwrite`` as for every command).  ``started``: the
        :func:`time.perf_counter` value the study began at, for ``seconds.total``.
        """
        folder = prepare_folder(Path(out), SearchConfig.from_dict(self.info["config"]), False, overwrite)
        write_result(self, folder, started)

    @classmethod
    def load(cls, out: str | os.PathLike) -> IntrinsicDimResult:
        """A finished study from its folder: ``runs.csv``, ``result.json`` and ``run.json``."""
        import pandas as pd

        from ..io.results import read_json

        out = Path(out)
        result = read_json(out / "result.json")
        try:
            runs = pd.read_csv(out / "runs.csv", dtype={"d": "Int64"})
        except (OSError, ValueError) as exc:
            raise RankscopeError(f"{out / 'runs.csv'}: missing or unreadable ({exc})") from exc
        return cls(runs, result, read_json(out / "run.json"))

    def render_figures(self, folder: Path) -> list[str]:
        """Draw ``intrinsic-dim.png`` (:mod:`rankscope.figures.intrinsic`) into ``folder``; returns the file names."""
        from ..figures.intrinsic import plot_intrinsic_dim

        folder.mkdir(parents=True, exist_ok=True)
        return [plot_intrinsic_dim(self.table, self.result, folder / "intrinsic-dim.png")]

    def result_files(self) -> ResultFiles:
        """``result.json``, as the key figures read it."""
        return ResultFiles(documents={"result.json": self.result})

    def summary(self) -> pd.DataFrame:
        """One row per mode: ``d90`` (None when the target was not reached), its ``bracket_low``/``bracket_high``,
        the metric at d90 (``mean``, ``std`` over ``seeds``), ``D`` and ``d90_share`` (d90 / D)."""
        import pandas as pd

        r = self.result
        rows = {}
        for mode, m in r.get("modes", {}).items():
            at = m.get("at_d90") or {}
            bracket = m.get("bracket") or [None, None]
            d90 = m.get("d90")
            rows[mode] = {"d90": d90, "bracket_low": bracket[0], "bracket_high": bracket[1], "mean": at.get("mean"),
                          "std": at.get("std"), "seeds": at.get("seeds"), "D": r.get("D"),
                          "d90_share": d90 / r["D"] if d90 is not None and r.get("D") else None}
        return pd.DataFrame.from_dict(rows, orient="index")

    def summary_text(self) -> str:
        """The lines the command prints: the baseline and target, then d90 per mode."""
        r = self.result
        lines = [f"{r['task']}: baseline {r['metric']} {_fmt(r['baseline']['mean'])}, target {_fmt(r['target'])} "
                 f"({r['convention']})"]
        for mode, m in r["modes"].items():
            if m["d90"] is None:
                lines.append(f"  {mode.upper()}: target not reached up to d = {m['bracket'][0]:,}")
            else:
                spread = m.get("at_d90", {})
                lines.append(f"  {mode.upper()}: d90 = {m['d90']:,} (bracket {m['bracket'][0]}..{m['bracket'][1]}; "
                             f"metric {_fmt(spread.get('mean'))} ± {_fmt(spread.get('std'))} over "
                             f"{spread.get('seeds', 0)} seeds)  of D = {r['D']:,}")
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


# --------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary sibling and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


CACHE_NAME = re.compile(r"^(?:baseline-s-?\d+|(?:did|said)-d\d+-s-?\d+)\.json$")
"""Names of the run-cache files in ``OUT/runs/`` (the only files ``--restart`` removes)."""
OUTPUT_NAMES = ("search.json", "runs.csv", "result.json", "run.json", "figures/intrinsic-dim.png", "summary.json")


def _search_marker(marker: Path) -> dict[str, Any] | None:
    """``search.json`` as rankscope wrote it (with its marker, or the earlier marker-less layout), else ``None``."""
    try:
        data = json.loads(marker.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or not isinstance(data.get("key"), str):
        return None
    tag = data.get("rankscope")
    if tag is not None and (not isinstance(tag, dict) or tag.get("tool") != "rankscope"
                            or tag.get("command") != "intrinsic-dim"):
        return None
    return data


def _refuse_edited_outputs(folder: Path, out: Path) -> None:
    """A resumed search rewrites its tables and figures: refuse when the user edited one since rankscope wrote it."""
    from ..io.results import edited_files, read_marker

    marker = read_marker(folder)
    edited = [f for f in edited_files(folder, marker) if not f.startswith("runs/") and f != "search.json"] \
        if marker is not None else []
    if edited:
        raise RankscopeError(f"output folder {out}: '{edited[0]}' of the earlier search was changed since rankscope "
                             "wrote it; it is yours now and a resumed search would replace it: move it, or give "
                             "another -o")


def prepare_folder(out: Path, config: SearchConfig, restart: bool, overwrite: bool = False, write: bool = True) -> Path:
    """Create ``out`` or check that it holds a search with the same settings (``restart``: clear its cache).

    The output-folder rule of :func:`rankscope.io.results.check_output_target` holds for everything but a
    folder holding this command's own search: that one is resumed (its cached runs are reused).
    Returns the folder to write (symlinks resolved).  ``write=False`` only checks (nothing is changed).
    """
    from ..io.results import check_output_target, make_marker, resolve_output

    settings = {"rankscope": make_marker("intrinsic-dim"), "key": config.key(), "config": asdict(config)}
    folder = resolve_output(out)
    marker = folder / "search.json"
    previous = _search_marker(marker) if marker.is_file() else None
    if previous is None:
        target = check_output_target(out, "intrinsic-dim", overwrite)
        if not write:
            return folder
        for name in target.previous if target.state == "replace" else ():
            (folder / name).unlink(missing_ok=True)  # a finished result of this command whose cache is gone
        if target.state == "merge":
            ours = set(target.previous)
            taken = [n for n in OUTPUT_NAMES if (folder / n).exists() and n not in ours]
            taken += [f"runs/{p.name}" for p in (folder / "runs").glob("*.json") if CACHE_NAME.match(p.name)
                      and f"runs/{p.name}" not in ours]
            if taken:
                raise RankscopeError(f"output folder {out}: '{taken[0]}' exists and was not written by this search; "
                                     "refusing to replace it (give another -o)")
    else:
        _refuse_edited_outputs(folder, out)
        # settings a marker does not mention (added in a later version) had their default value
        before = {**asdict(SearchConfig()), **previous["config"]}
        if restart:
            for cached in (folder / "runs").glob("*.json") if write else ():
                if CACHE_NAME.match(cached.name):
                    cached.unlink()
        elif before != settings["config"]:
            changed = sorted(k for k, v in settings["config"].items() if before.get(k) != v)
            raise RankscopeError(f"{out} holds runs of a different search (changed: {', '.join(changed)}); "
                                 "use another -o, or --restart to discard them")
    if not write:
        return folder
    try:
        (folder / "runs").mkdir(parents=True, exist_ok=True)
        write_atomic(marker, json.dumps(settings, indent=2) + "\n")
    except OSError as exc:
        raise RankscopeError(f"cannot write output folder {out}: {exc.strerror or exc}") from exc
    return folder


def read_cached_run(path: Path) -> dict[str, Any] | None:
    """A cached run record, or ``None`` when the file is unreadable or its fields have the wrong types."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(record, dict):
        return None
    metric = record.get("metric")
    if isinstance(metric, bool) or not isinstance(metric, (int, float)) or not np.isfinite(metric):
        return None
    if not isinstance(record.get("mode"), str) or not isinstance(record.get("seed"), int):
        return None
    if record.get("d") is not None and (isinstance(record["d"], bool) or not isinstance(record["d"], int)):
        return None
    return record


# --------------------------------------------------------------------------------------------------
# one run
# --------------------------------------------------------------------------------------------------


class Runner:
    """Trains (or reads from the cache) one run: the baseline, or ``(mode, d, seed)`` in the subspace."""

    def __init__(self, task, config: SearchConfig, out: Path | None, device: str, threads: int | None,
                 progress: bool, log: Callable[[str], None]) -> None:
        self.task, self.config, self.out, self.log = task, config, out, log
        self.device, self.threads, self.progress = device, threads, progress
        self.records: list[dict[str, Any]] = []
        self.warnings: list[str] = []
        probe = task.build(0)
        self.head = task.head(probe)
        self.D_model = sum(p.numel() for p in probe.parameters())
        options = self._wrap_options()
        names = subspace_names(probe, options["include"], options["exclude"], options["direct"])
        sizes = dict((n, p.numel()) for n, p in probe.named_parameters())
        self.D, self.m = sum(sizes[n] for n in names), len(names)
        del probe

    def _wrap_options(self) -> dict[str, Any]:
        c = self.config
        direct = c.head == "direct"
        return {"projection": c.projection, "layout": c.layout, "include": c.include, "exclude": c.exclude,
                "direct": self.head if direct else (),
                "direct_lr": (c.head_lr or getattr(self.task, "head_lr", None)) if direct else None}

    def _cache_path(self, name: str) -> Path | None:
        return None if self.out is None else self.out / "runs" / f"{name}.json"

    def run(self, mode: str, d: int | None, seed: int) -> dict[str, Any]:
        """One run; ``mode='full'`` is the baseline (every parameter trained directly)."""
        from .tasks import FitSettings
        from .wrapper import SubspaceModel

        name = f"baseline-s{seed}" if mode == "full" else f"{mode}-d{d}-s{seed}"
        path = self._cache_path(name)
        if path is not None and path.is_file():
            record = read_cached_run(path)
            if record is not None and (record["mode"], record.get("d"), record["seed"]) == (mode, d, seed):
                self.records.append(record)
                self.log(f"{name}: {self.task.metric} {record['metric']:.4f} (cached)")
                return record
            warning = f"{path}: corrupt run-cache entry (unreadable or wrongly typed 'metric'/'mode'/'d'/'seed'); recomputing it"
            self.warnings.append(warning)
            self.log(f"Warning: {warning}")
        c = self.config
        kind = "full" if mode == "full" else "subspace"
        lr = (c.baseline_lr if kind == "full" else c.lr) or self.task.default_lr(kind, self.D, d or self.D)
        settings = FitSettings(epochs=c.epochs, lr=lr, batch_size=c.batch_size, seed=seed, device=self.device,
                               threads=self.threads, progress=self.progress)
        t0 = time.perf_counter()
        model = self.task.build(seed)
        if mode == "full":
            trainable = sum(p.numel() for p in model.parameters())
            net = model
        else:
            net = SubspaceModel(model, d, mode=mode, seed=seed, **self._wrap_options())
            trainable = d + net.describe()["direct_params"]
        fitted = self.task.fit(net, settings, kind)
        projection = getattr(net, "projection", None)
        record = {"mode": mode, "d": d, "seed": seed, "metric": fitted["metric"], "loss": fitted.get("loss"),
                  "seconds": round(time.perf_counter() - t0, 3), "trainable": trainable, "D": self.D,
                  "steps": fitted.get("steps"), "lr": lr,
                  "validation_accuracy": fitted.get("validation_accuracy"),
                  "kernel": projection.kernel() if projection is not None else None}
        if path is not None:
            write_atomic(path, json.dumps(record, indent=2) + "\n")
        self.records.append(record)
        self.log(f"{name}: {self.task.metric} {record['metric']:.4f} in {record['seconds']:.1f} s")
        return record

    def mean(self, mode: str, d: int | None, seeds: Sequence[int]) -> float:
        return float(np.mean([self.run(mode, d, s)["metric"] for s in seeds]))


# --------------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------------


def check_options(config: SearchConfig, study: StudyOptions) -> None:
    """Every check that needs neither the task nor the model (before anything loads)."""
    if study.target_absolute is None and not 0 < study.threshold <= 1.5:
        raise RankscopeError(f"--threshold must be in (0, 1.5], got {study.threshold}")
    if study.seeds < 1:
        raise RankscopeError(f"--seeds must be at least 1, got {study.seeds}")
    if study.factor <= 1:
        raise RankscopeError(f"--factor must exceed 1, got {study.factor}")
    if study.tolerance < 0:
        raise RankscopeError(f"--tolerance must be non-negative, got {study.tolerance}")
    if study.d_start < 1:
        raise RankscopeError(f"--d-start: the subspace dimension must be at least 1, got {study.d_start}")
    if study.d_max is not None and study.d_max < 1:
        raise RankscopeError(f"--d-max: the subspace dimension must be at least 1, got {study.d_max}")
    for d in study.grid or ():
        if d < 1:
            raise RankscopeError(f"--d: every subspace dimension must be at least 1, got {d}")
    if config.head not in HEADS:
        raise RankscopeError(f"--head: unknown choice '{config.head}' (choose from {', '.join(HEADS)})")
    from .projections import check_projection_options

    check_projection_options(config.projection, config.layout)


def _grid_outcome(runner: Runner, mode: str, grid: Sequence[int], seeds: Sequence[int], target: float) -> SearchOutcome:
    evaluated = {d: runner.mean(mode, d, seeds) for d in sorted(set(grid))}
    passing = [d for d, v in evaluated.items() if v >= target]
    if not passing:
        return SearchOutcome(None, (max(evaluated), None), evaluated)
    d90 = passing[0]
    below = [d for d in evaluated if d < d90]
    return SearchOutcome(d90, (max(below) if below else None, d90), evaluated)


def _check_against_model(runner: Runner, study: StudyOptions) -> tuple[int, int]:
    """Before any training: the d range fits D, and SAID's d leaves room for its m λ's. Returns (upper, m)."""
    D = runner.D  # noqa: N806
    d_max, grid = study.d_max, study.grid
    upper = D if d_max is None else d_max
    for option, value in (("--d-max", d_max), ("--d", max(grid) if grid else None)):
        if value is not None and value > D:
            raise RankscopeError(f"{option}: the subspace dimension must be at most D = {D:,} (the parameters in "
                                 f"the subspace), got {value:,}")
    m_tensors = runner.m if "said" in study.modes else 0
    if "said" in study.modes:
        if upper < m_tensors:
            raise RankscopeError(f"--d-max: SAID needs d >= m = {m_tensors} (one λ per tensor), got {upper}")
        if grid and min(grid) < m_tensors:
            raise RankscopeError(f"--d: SAID needs d >= m = {m_tensors} (one λ per tensor), got {min(grid)}")
    return upper, m_tensors


def _search_mode(runner: Runner, mode: str, target: float, d_min: int, upper: int,
                 study: StudyOptions) -> dict[str, Any]:
    """d90 of one mode (searched, or read off ``study.grid``), with the seed spread at d90."""
    seeds = study.seed_list()
    if study.grid:
        outcome = _grid_outcome(runner, mode, study.grid, seeds, target)
    else:
        outcome = find_d90(lambda d: runner.mean(mode, d, seeds), target, d_min, upper,
                           d_start=study.d_start, factor=study.factor, tolerance=study.tolerance)
    entry = {**outcome.to_dict(), "d_min": d_min}
    if outcome.d90 is not None:
        values = [r["metric"] for r in runner.records if r["mode"] == mode and r["d"] == outcome.d90]
        entry["at_d90"] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "min": float(min(values)),
                           "max": float(max(values)), "seeds": len(values)}
    return entry


def intrinsic_dimension(task: str = "toy", out: str | os.PathLike | None = None, *, modes: Sequence[str] = ("did",),
                        model: str = "bundled:minilm-base", data: str | None = None, projection: str = "fastfood",
                        layout: str = "blocked", head: str = "subspace", head_lr: float | None = None,
                        include: Sequence[str] = (), exclude: Sequence[str] = (), threshold: float = 0.9,
                        target_absolute: float | None = None, baseline: float | None = None, seeds: int = 1,
                        seed: int = 0, d_start: int = 10, d_max: int | None = None, factor: float = 2.0,
                        tolerance: float = 0.1, grid: Sequence[int] | None = None, epochs: int | None = None,
                        lr: float | None = None, baseline_lr: float | None = None, batch_size: int | None = None,
                        split_seed: int = 0, max_train: int | None = None, max_eval: int | None = None,
                        max_length: int = 128, text_column: str = "text", label_column: str = "label",
                        device: str = "cpu", threads: int | None = None, restart: bool = False,
                        progress: bool = False, log: Callable[[str], None] | None = None, argv: str | None = None,
                        overwrite: bool = False) -> IntrinsicDimResult:
    """Intrinsic dimension of ``task``: d90 for each of ``modes`` (``did``, ``said``).

    ``baseline``: the metric of ordinary training, measured with the same loop when None (one run per
    seed).  ``grid``: evaluate exactly these d instead of searching.  With ``out``, runs are cached there
    and the result files written (module docstring).  See :func:`rankscope.subspace.search.find_d90`.
    The keywords are the fields of :class:`SearchConfig` and :class:`StudyOptions` and the run
    settings of :func:`run_study`, which this calls.

    Example::

        result = intrinsic_dimension("toy", "runs/toy", seeds=3, d_start=1, tolerance=0, threshold=1.0)
        result.result["modes"]["did"]["d90"]   # 10
    """
    config = SearchConfig(task=task, model=model, data=data, projection=projection, layout=layout, head=head,
                          head_lr=head_lr, include=include, exclude=exclude, epochs=epochs, lr=lr,
                          baseline_lr=baseline_lr, batch_size=batch_size, split_seed=split_seed, max_train=max_train,
                          max_eval=max_eval, max_length=max_length, text_column=text_column,
                          label_column=label_column)
    study = StudyOptions(modes=modes, threshold=threshold, target_absolute=target_absolute, baseline=baseline,
                         seeds=seeds, seed=seed, d_start=d_start, d_max=d_max, factor=factor, tolerance=tolerance,
                         grid=grid)
    return run_study(config, study, out, device=device, threads=threads, restart=restart, progress=progress, log=log,
                     argv=argv, overwrite=overwrite)


def run_study(config: SearchConfig, study: StudyOptions, out: str | os.PathLike | None = None, *, device: str = "cpu",
              threads: int | None = None, restart: bool = False, progress: bool = False,
              log: Callable[[str], None] | None = None, argv: str | None = None,
              overwrite: bool = False) -> IntrinsicDimResult:
    """:func:`intrinsic_dimension` with its settings as the two objects (what the CLI builds).

    ``restart``: discard the runs cached in ``out``; ``log``: one line per finished or cached run;
    ``argv``: the command line recorded in ``run.json``; ``overwrite``: as for every command.
    """
    from ..training.engine import torch_device
    from .tasks import load_subspace_task
    from .wrapper import MODES

    t_start = time.perf_counter()
    log = log or (lambda _msg: None)
    for mode in study.modes:
        if mode not in MODES:
            raise RankscopeError(f"--mode: unknown mode '{mode}' (choose from did, said, both)")
    from ..options import compile_regexes

    compile_regexes(config.include, "--include"), compile_regexes(config.exclude, "--exclude")  # before anything loads
    check_options(config, study)
    if out is not None:
        prepare_folder(Path(out), config, restart, overwrite, write=False)  # refuse a foreign folder before any work
    device = str(torch_device(device))
    task_obj = load_subspace_task(config.task, model=config.model, data=config.data, split_seed=config.split_seed,
                                  max_train=config.max_train, max_eval=config.max_eval, max_length=config.max_length,
                                  text_column=config.text_column, label_column=config.label_column)
    out_path = None if out is None else Path(out)
    runner = Runner(task_obj, config, None, device, threads, progress, log)
    D = runner.D  # noqa: N806
    upper, m_tensors = _check_against_model(runner, study)
    if out_path is not None:
        out_path = prepare_folder(out_path, config, restart, overwrite)
        runner.out = out_path
    seed_list = study.seed_list()
    t_search = time.perf_counter()
    if study.baseline is None:
        per_seed = [runner.run("full", None, s)["metric"] for s in seed_list]
        base = {"mean": float(np.mean(per_seed)), "per_seed": per_seed, "given": False}
    else:
        base = {"mean": float(study.baseline), "per_seed": None, "given": True}
    absolute = study.target_absolute is not None
    target = float(study.target_absolute) if absolute else study.threshold * base["mean"]
    results = {mode: _search_mode(runner, mode, target, m_tensors if mode == "said" else 1, upper, study)
               for mode in study.modes}
    import pandas as pd

    runs = pd.DataFrame(runner.records).astype({"d": "Int64"}).drop_duplicates(subset=["mode", "d", "seed"]).sort_values(
        ["mode", "d", "seed"], key=lambda s: s.map({"full": 0, "did": 1, "said": 2}) if s.name == "mode" else s,
        na_position="first").reset_index(drop=True)
    convention = "absolute" if absolute else "relative"
    result = {"task": task_obj.name, "metric": task_obj.metric, "convention": convention,
              "threshold": None if absolute else study.threshold,
              "target_absolute": study.target_absolute, "target": target, "baseline": base, "D": D,
              "D_model": runner.D_model, "m": m_tensors or None, "projection": config.projection,
              "layout": config.layout if config.projection == "fastfood" else None, "head": config.head,
              "seeds": seed_list, "modes": results}
    from ..io.results import versions

    info = {"command": "intrinsic-dim", "argv": argv, "task": task_obj.describe(), "config": asdict(config),
            "options": asdict(study), "seed": study.seed, "seeds": seed_list, "device": device, "threads": threads,
            "versions": versions(), "native_kernels": native.available(), "warnings": runner.warnings,
            "seconds": {"load": task_obj.load_seconds, "search": round(time.perf_counter() - t_search, 3),
                        "training_runs": round(float(runs["seconds"].sum()), 3)}}
    outcome = IntrinsicDimResult(runs, result, info)
    if out_path is not None:
        write_result(outcome, out_path, t_start)
    return outcome


def write_result(result: IntrinsicDimResult, out: Path, t_start: float | None = None) -> None:
    """Write runs.csv, result.json, the figure and, last, run.json (each atomically) into a prepared ``out``."""
    from ..io.results import peak_rss_mb

    write_atomic(out / "runs.csv", result.table.to_csv(index=False))
    write_atomic(out / "result.json", json.dumps(result.result, indent=2) + "\n")
    result.info["figures"] = result.render_figures(out / "figures")
    if t_start is not None:
        result.info["seconds"]["total"] = round(time.perf_counter() - t_start, 3)
    result.info["peak_rss_mb"] = round(peak_rss_mb(), 1)
    result.info["outputs"] = ["runs/", "search.json", "runs.csv", "result.json", "figures/intrinsic-dim.png", "run.json"]
    from ..io.results import MARKER, make_marker, write_summary

    summary = write_summary(out, result.info)
    cached = sorted(f"runs/{p.name}" for p in (out / "runs").glob("*.json") if CACHE_NAME.match(p.name))
    files = sorted([*cached, "search.json", "runs.csv", "result.json", "figures/intrinsic-dim.png", "run.json",
                    *([summary] if summary else [])])
    result.info[MARKER] = make_marker("intrinsic-dim", files, out)
    write_atomic(out / "run.json", json.dumps(result.info, indent=2, default=str) + "\n")


def rerender(out: Path) -> list[str]:
    """Redraw ``figures/intrinsic-dim.png`` of a finished study from its files (:meth:`IntrinsicDimResult.load`)."""
    return IntrinsicDimResult.load(out).render_figures(out / "figures")
