"""Does any rank plan, spectral init or resizing beat uniform LoRA rank at an equal parameter budget? A fair test.

One command, cached and resumable (every training run is one JSON file under ``--runs``; a re-run skips
finished runs and recomputes a corrupt one with a warning)::

    .venv/bin/python analyses/rank_choice.py [--stage gap|lr|seeds|report] [--max-hours H] [--device cuda]
    # → reports/rank-choice/  (--device: where the models run; GPU runs are cached apart from CPU runs)

Stages (without ``--stage``: all, in this order; each ends by regenerating the report from the cache):

* ``gap`` — the headroom check: full fine-tuning and uniform LoRA at ``TaskSettings.gap_ranks``, learning rate
  chosen on validation from a grid (2 seeds), then 4 seeds at that rate.  A task has headroom at rank r when full
  fine-tuning beats uniform rank r by ≥ 3 points of test accuracy and by ≥ 4 seed SDs (the larger of the two).
  The budget of the task is the largest studied rank with headroom (else the smallest studied rank).
* ``lr`` — every arm (``rank_choice_arms.TRAINED_ARMS``) at the budget: the learning-rate grid × 2 seeds,
  the rate with the best mean validation accuracy kept per arm.  A LoRA arm whose best rate sits at an edge of the
  grid gets one more rate beyond that edge (the grid's own ratio there), up to ``MAX_LR_EXTENSIONS`` per side
  (``Study.lr_grid``): an arm is never judged at a rate its grid cut short.  The same rule applies to uniform
  LoRA in the gap stage; full fine-tuning keeps its grid (a better full-FT rate could only widen the gap).
* ``seeds`` — every arm at its rate, seeds 0–7 (paired: the same seed gives the same data order and head init
  in every arm), plus the untrained extraction arms once.
* ``report`` — README.md, CSVs and figures from whatever the cache holds; pending arms are listed as pending.

Primary metric, fixed before running: test accuracy (held-out loss reported beside it).  For every arm: the mean
paired difference against ``uniform`` over the seeds both have, with a 95 % bootstrap interval resampling seeds
(``study_stats.paired_bootstrap``), and a verdict (wins: interval above 0; loses: below; else ties).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import rank_choice_arms as arms  # noqa: E402
import study_stats as st  # noqa: E402

STUDY_VERSION = 1
"""Part of every cache key: bump it when a change to the code makes old runs incomparable."""
LR_SEEDS = (0, 1)
GAP_SEEDS = (0, 1, 2, 3)
STUDY_SEEDS = tuple(range(8))
STAGES = ("gap", "lr", "seeds", "report")
MAX_LR_EXTENSIONS = 2
"""How many rates a LoRA arm's grid may grow by beyond each edge while its best rate sits on that edge."""


@dataclass(frozen=True)
class TaskSettings:
    """One task's data size, sequence length and schedule (the same for every arm), and its grids."""

    task: str
    max_train: int | None
    max_eval: int | None
    epochs: int
    batch_size: int
    max_length: int
    gap_ranks: tuple[int, ...]
    lora_lrs: tuple[float, ...]
    full_lrs: tuple[float, ...]
    train_examples: int  # the size of the training split as loaded (for the step count)

    @property
    def steps(self) -> int:
        return math.ceil(self.train_examples / self.batch_size) * self.epochs

    def key(self) -> dict[str, Any]:
        """What a run's result depends on (not the grids or the studied ranks)."""
        from rankscope.training.synthetic import SYNTHETIC_TASKS

        key = {"model": arms.BASE, "task": self.task, "max_train": self.max_train, "max_eval": self.max_eval,
               "epochs": self.epochs, "batch_size": self.batch_size, "max_length": self.max_length}
        if self.task in SYNTHETIC_TASKS:  # a changed generator must not reuse old runs
            key["generator"] = asdict(SYNTHETIC_TASKS[self.task])
        return key


TASKS = {
    # 400 invented people × 4 countries, 4 train / 2 validation / 2 test templates: 1,600 / 800 / 800 sentences of
    # ~15 tokens; 2 epochs = 200 steps of 16.  LoRA rates around the calibration's best (r = 2 learnt at 3e-3,
    # r = 8 diverged there)
    "entity-facts": TaskSettings("entity-facts", None, None, 2, 16, 32, (2, 8), (1e-3, 2e-3, 4e-3),
                                 (3e-5, 1e-4, 3e-4), 1600),
    # the saturated control, reduced: 1,200 reviews (150 steps), 500 validation / 500 test, 64 tokens
    "rotten-tomatoes": TaskSettings("rotten-tomatoes", 1200, 500, 2, 16, 64, (2, 8), (3e-4, 1e-3, 3e-3),
                                    (3e-5, 1e-4, 3e-4), 1200),
}


sys.modules.setdefault("rank_choice", sys.modules[__name__])  # the report imports this module by name


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --------------------------------------------------------------------------------------------------
# the run cache
# --------------------------------------------------------------------------------------------------


def _grid_seeds_done(rows: list[dict[str, Any]], lr: float) -> bool:
    """Whether ``rows`` (an arm's cached records) hold every grid seed at ``lr``."""
    return sum(1 for x in rows if x["lr"] == lr and x["seed"] in LR_SEEDS) >= len(LR_SEEDS)


class RunCache:
    """One JSON file per training run: ``ROOT/cache/<task>/<arm>/lr<lr>-s<seed>-<hash>.json``.

    The hash covers the study version, the task settings, the arm's spec (ranks, method, init), the learning rate
    and the seed, so a changed setting never reuses an old run.
    """

    def __init__(self, root: Path, deadline: float, device: str = "cpu") -> None:
        self.root = root
        self.deadline = deadline
        self.device = device
        self.ran = 0
        self._records: dict[str | None, list[dict[str, Any]]] = {}  # read once per task; dropped when a run is stored

    def path(self, settings: TaskSettings, arm: str, spec: dict[str, Any], lr: float, seed: int) -> Path:
        key = {"version": STUDY_VERSION, "settings": settings.key(), "arm": arm, "spec": spec, "lr": lr, "seed": seed}
        if self.device != "cpu":  # runs on another device are other runs (not bit-identical); CPU keys stay as they were
            key["device"] = self.device
        safe = arm.replace("+", "_")
        return self.root / "cache" / settings.task / safe / f"lr{lr:g}-s{seed}-{st.settings_hash(key)}.json"

    def get(self, path: Path, quiet: bool = False) -> dict[str, Any] | None:
        """The record at ``path``; None when missing or corrupt (corrupt: a warning unless ``quiet``)."""
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            if not isinstance(record, dict) or not isinstance(record.get("test_accuracy"), (int, float)):
                raise ValueError("no test_accuracy")
            return record
        except (OSError, ValueError) as exc:
            if quiet:
                return None
            warnings.warn(f"corrupt cache entry {path} ({exc}): recomputing", stacklevel=2)
            log(f"warning: corrupt cache entry {path} ({exc}): recomputing")
            return None

    def out_of_time(self) -> bool:
        return time.time() > self.deadline

    def run(self, settings: TaskSettings, arm: str, spec: dict[str, Any], lr: float, seed: int, fn,
            **extra: Any) -> dict[str, Any] | None:
        """The cached record, or ``fn()`` run and stored; None when the time is up."""
        path = self.path(settings, arm, spec, lr, seed)
        record = self.get(path)
        if record is not None:
            return record
        if self.out_of_time():
            return None
        t0 = time.perf_counter()
        metrics = fn()
        record = {"task": settings.task, "arm": arm, "lr": lr, "seed": seed, **extra, **metrics,
                  "run_seconds": round(time.perf_counter() - t0, 3), "spec": spec, "settings": settings.key(),
                  "version": STUDY_VERSION, "device": self.device}
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
        os.replace(tmp, path)
        self.ran += 1
        self._records.clear()
        rank = f" r={extra['budget_rank']}" if extra.get("budget_rank") else ""
        log(f"{settings.task} {arm}{rank} lr={lr:g} seed={seed}: val {record['validation_accuracy']:.4f} "
            f"test {record['test_accuracy']:.4f} ({record['run_seconds']:.0f} s)")
        return record

    def records(self, task: str | None = None) -> list[dict[str, Any]]:
        """Every readable record (of ``task``), read from disk once until the next run is stored."""
        if task not in self._records:
            self._records[task] = self._read_records(task)
        return list(self._records[task])

    def _read_records(self, task: str | None) -> list[dict[str, Any]]:
        base = self.root / "cache" / (task or "")
        out = []
        for path in sorted(base.rglob("*.json")) if base.is_dir() else []:
            record = self.get(path, quiet=True)  # a corrupt entry is recomputed (with a warning) when a stage needs it
            if record is None or record.get("version") != STUDY_VERSION or record.get("device", "cpu") != self.device:
                continue  # another version's or another device's run (kept on disk, never mixed in)
            settings = TASKS.get(record.get("task"))
            if settings is None or json.loads(json.dumps(settings.key(), default=str)) != record.get("settings"):
                continue  # a run of other task settings (kept on disk, never mixed in)
            record["_mtime"] = path.stat().st_mtime
            out.append(record)
        return out


# --------------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------------


class Study:
    """The study's state for one invocation: cache, contexts per task, timing of runs for projections."""

    def __init__(self, runs: Path, out: Path, tasks: list[str], deadline: float, threads: int,
                 device: str = "cpu") -> None:
        self.runs, self.out, self.tasks, self.threads, self.device = runs, out, tasks, threads, device
        self.cache = RunCache(runs, deadline, device)
        self._shapes: dict[str, tuple[int, int]] | None = None
        self.unavailable: dict[str, dict[str, str]] = {t: {} for t in tasks}
        self.failed: dict[str, set[str]] = {t: set() for t in tasks}
        self.only: set[str] | None = None  # --arms

    @property
    def shapes(self) -> dict[str, tuple[int, int]]:
        if self._shapes is None:
            self._shapes = arms.module_shapes("any")
        return self._shapes

    # ---- projections -----------------------------------------------------------------------------

    def seconds_per_run(self, task: str, kind: str) -> float | None:
        """Median wall seconds of this task's finished runs of ``kind`` (full / lora)."""
        import numpy as np

        rows = [r["run_seconds"] for r in self.cache.records(task)
                if (r["arm"] == "full") == (kind == "full") and "run_seconds" in r]
        return float(np.median(rows)) if rows else None

    def project(self, stage: str, pending: list[tuple[str, str]]) -> None:
        """Print the projected time of the pending runs ``(task, kind)`` of a stage."""
        total, unknown = 0.0, 0
        for task, kind in pending:
            # this task and kind; else another task's; else the other kind's (a full run times a LoRA one roughly)
            candidates = [(task, kind), *((t, kind) for t in self.tasks), (task, "lora" if kind == "full" else "full")]
            per = next((v for t, k in candidates if (v := self.seconds_per_run(t, k)) is not None), None)
            if per is None:
                unknown += 1
            else:
                total += per
        note = f" (+{unknown} runs not yet timed: the projection follows the first run)" if unknown else ""
        log(f"stage {stage}: {len(pending)} runs pending, projected {total / 60:.0f} min{note}")

    # ---- gap -------------------------------------------------------------------------------------

    def gap_runs(self, task: str) -> list[tuple[str, int | None]]:
        s = TASKS[task]
        return [("full", None)] + [("uniform", r) for r in s.gap_ranks]

    def _gap_one(self, task: str, which: str, r: int | None, seeds: tuple[int, ...], lr: float) -> list[dict]:
        s = TASKS[task]
        ctx = self.context(task, budget_rank=r or 1, full_lr=lr)
        out = []
        for seed in seeds:
            if which == "full":
                folder = self.runs / task / "full-ft" / f"lr{lr:g}-s{seed}"
                save = folder if seed == 0 else None
                rec = self.cache.run(s, "full", {"method": "full"}, lr, seed,
                                     lambda seed=seed, save=save: arms.train_full(ctx, lr, seed, save), kind="full")
            else:  # exactly the runs of the study's `uniform` arm at budget rank r (same cache entries)
                rec = self.cache.run(s, "uniform", self.uniform_spec(r), lr, seed,
                                     lambda seed=seed: arms.train_uniform_rank(ctx, r, lr, seed), kind="lora",
                                     budget_rank=r, params=st.lora_parameters(self.shapes, st.uniform_ranks(self.shapes, r)),
                                     setup_seconds=0.0)
            if rec is not None:
                out.append(rec)
        return out

    def uniform_spec(self, r: int) -> dict[str, Any]:
        """The cache spec of uniform rank r: what ``arm_uniform`` gives, plus the budget rank."""
        return {**arms.run_spec("lora", st.uniform_ranks(self.shapes, r)), "budget_rank": r}

    def rows(self, task: str, arm: str, rank: int | None = None) -> list[dict[str, Any]]:
        """Cached records of ``arm`` (at budget rank ``rank`` when given), of its newest spec only.

        A changed arm (another plan, another init adapter) writes new cache entries beside the old ones; the spec
        of the most recent entry wins, so old and new runs are never mixed.
        """
        rows = [x for x in self.cache.records(task) if x["arm"] == arm and (rank is None or x.get("budget_rank") == rank)]
        if arm == "full" or not rows:
            return rows
        by_rank: dict[Any, list[dict[str, Any]]] = {}
        for x in rows:
            by_rank.setdefault(x.get("budget_rank"), []).append(x)
        kept = []
        for group in by_rank.values():
            newest = st.settings_hash(max(group, key=lambda x: x["_mtime"])["spec"])
            kept += [x for x in group if st.settings_hash(x["spec"]) == newest]
        return kept

    def rate_done(self, task: str, arm: str, lr: float, rank: int | None = None) -> bool:
        """Whether every grid seed of ``arm`` at ``lr`` is in the cache already."""
        return _grid_seeds_done(self.rows(task, arm, rank), lr)

    def best_lr(self, task: str, arm: str, lrs: tuple[float, ...], rank: int | None = None) -> float | None:
        rows = self.rows(task, arm, rank)
        if not all(_grid_seeds_done(rows, lr) for lr in lrs):
            return None
        return st.best_setting([x for x in rows if x["seed"] in LR_SEEDS and x["lr"] in lrs])

    def lr_grid(self, task: str, arm: str, rank: int | None = None) -> tuple[float, ...]:
        """The LoRA learning-rate grid of ``arm``: the task's grid, grown past an edge while the best rate sits there.

        While every rate of the grid has its ``LR_SEEDS`` runs and the best (``best_lr``) is the largest rate, the
        next rate up, ``max · max / second largest``, joins the grid (likewise downwards), at most
        ``MAX_LR_EXTENSIONS`` per side.  Deterministic given the cache, so the stages (which run the missing rates)
        and the report (which reads them) agree.  A grid whose newest rate is not run yet has no ``best_lr``.
        """
        grid = sorted(TASKS[task].lora_lrs)
        up = down = 0
        while True:
            best = self.best_lr(task, arm, tuple(grid), rank)
            if best is None:
                return tuple(grid)
            if best == grid[-1] and up < MAX_LR_EXTENSIONS:
                grid.append(float(f"{grid[-1] * grid[-1] / grid[-2]:.2g}"))
                up += 1
            elif best == grid[0] and down < MAX_LR_EXTENSIONS:
                grid.insert(0, float(f"{grid[0] * grid[0] / grid[1]:.2g}"))
                down += 1
            else:
                return tuple(grid)

    def run_lr_grid(self, task: str, arm: str, rank: int | None, run_one) -> None:
        """Run ``run_one(lr)`` (the ``LR_SEEDS`` runs at one rate) over ``lr_grid``, growing it as it asks."""
        done: set[float] = set()
        base = set(TASKS[task].lora_lrs)
        while not self.cache.out_of_time():
            grid = self.lr_grid(task, arm, rank)
            todo = [lr for lr in grid if lr not in done]
            if not todo:
                return
            for lr in todo:
                if lr not in base and not self.rate_done(task, arm, lr, rank):
                    log(f"{task} {arm}: best rate at the grid edge; adding lr {lr:g}")
                if run_one(lr) is False:
                    return
                done.add(lr)

    def stage_gap(self) -> None:
        pending = []
        for task in self.tasks:
            s = TASKS[task]
            for which, r in self.gap_runs(task):
                kind = "full" if which == "full" else "lora"
                arm, spec = ("full", {"method": "full"}) if which == "full" else ("uniform", self.uniform_spec(r))
                lrs = s.full_lrs if which == "full" else self.lr_grid(task, arm, r)
                for lr in lrs:
                    for seed in LR_SEEDS:
                        if self.cache.get(self.cache.path(s, arm, spec, lr, seed)) is None:
                            pending.append((task, kind))
                best = self.task_lr(task, arm, r)
                for seed in GAP_SEEDS[len(LR_SEEDS):]:
                    if best is None or self.cache.get(self.cache.path(s, arm, spec, best, seed)) is None:
                        pending.append((task, kind))
        self.project("gap", pending)
        projected = False
        for task in self.tasks:
            s = TASKS[task]
            for which, r in self.gap_runs(task):
                arm = "full" if which == "full" else "uniform"

                def run_one(lr: float, task: str = task, which: str = which, r: int | None = r) -> None:
                    nonlocal projected
                    self._gap_one(task, which, r, LR_SEEDS, lr)
                    if self.cache.ran >= 1 and not projected:
                        projected = True
                        self.project("gap (after the first run)", pending[1:])

                if which == "full":
                    for lr in s.full_lrs:
                        run_one(lr)
                else:
                    self.run_lr_grid(task, arm, r, run_one)
                best = self.task_lr(task, arm, r)
                if best is None:
                    log(f"{task} {arm} r={r}: learning-rate grid incomplete (time limit)")
                    continue
                log(f"{task} {arm}{'' if r is None else f' r={r}'}: learning rate {best:g} (best on validation)")
                self._gap_one(task, which, r, GAP_SEEDS, best)

    # ---- contexts --------------------------------------------------------------------------------

    def gap_table(self, task: str) -> list[dict[str, Any]]:
        """One row per studied uniform rank: the gap check against full fine-tuning (at their chosen rates)."""
        s = TASKS[task]
        full_lr = self.task_lr(task, "full")
        if full_lr is None:
            return []
        full = [x["test_accuracy"] for x in self.rows(task, "full") if x["lr"] == full_lr]
        rows = []
        for r in s.gap_ranks:
            lr = self.task_lr(task, "uniform", r)
            if lr is None:
                continue
            lora = [x["test_accuracy"] for x in self.rows(task, "uniform", r) if x["lr"] == lr]
            if len(full) < 2 or len(lora) < 2:
                continue
            check = st.gap_check(full, lora)
            rows.append({"task": task, "rank": r, "params": st.lora_parameters(self.shapes, st.uniform_ranks(self.shapes, r)),
                         "full_lr": full_lr, "lora_lr": lr, "full_seeds": len(full), "lora_seeds": len(lora), **check})
        return rows

    def budget_rank(self, task: str) -> int | None:
        rows = self.gap_table(task)
        if len(rows) < len(TASKS[task].gap_ranks):
            return None
        with_headroom = [row["rank"] for row in rows if row["headroom"]]
        return max(with_headroom) if with_headroom else min(TASKS[task].gap_ranks)

    def context(self, task: str, budget_rank: int, full_lr: float | None = None) -> arms.Context:
        s = TASKS[task]
        full_lr = full_lr if full_lr is not None else self.task_lr(task, "full")

        def full_checkpoint() -> tuple[Path, float]:
            folder = self.runs / task / "full-ft" / f"lr{full_lr:g}-s0"
            rec = self.cache.get(self.cache.path(s, "full", {"method": "full"}, full_lr, 0))
            if not (folder / "run.json").is_file() or rec is None:
                ctx = self.context(task, budget_rank, full_lr)
                log(f"{task}: training the full fine-tune (lr {full_lr:g}, seed 0) for the spectra")
                rec = arms.train_full(ctx, full_lr, 0, folder)
            return folder, float(rec.get("wall_seconds", rec.get("seconds", 0.0)))

        return arms.Context(s, self.runs / task, self.shapes, budget_rank, full_checkpoint, full_lr or 0.0,
                            self.threads, self.device)

    def setup(self, task: str, arm: str, ctx: arms.Context) -> arms.ArmSetup | None:
        """The arm's setup, or None (recorded as unavailable, with its one-line reason)."""
        make = arms.TRAINED_ARMS.get(arm) or arms.EXTRACTED_ARMS[arm]
        try:
            setup = make(ctx)
        except arms.ArmUnavailable as exc:
            self.unavailable[task][arm] = str(exc)
            log(f"{task}: {exc}")
            return None
        except Exception as exc:  # an arm that breaks must not stop the others
            self.unavailable[task][arm] = f"arm {arm} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            log(f"{task}: {self.unavailable[task][arm]}")
            traceback.print_exc()
            return None
        self.unavailable[task].pop(arm, None)
        return setup

    def arm_run(self, task: str, setup: arms.ArmSetup, ctx: arms.Context, lr: float, seed: int) -> dict | None:
        s = TASKS[task]
        if setup.name in self.failed[task]:  # one failure per arm and invocation is enough
            return None
        kind = "full" if setup.method == "extract" else "lora"
        try:
            return self.cache.run(s, setup.name, {**setup.spec, "budget_rank": ctx.budget_rank}, lr, seed,
                                  lambda: arms.train_arm(ctx, setup, lr, seed), kind=kind,
                                  budget_rank=ctx.budget_rank, params=setup.params,
                                  setup_seconds=round(setup.setup_seconds, 3))
        except arms.ArmUnavailable as exc:
            self.unavailable[task][setup.name] = str(exc)
            self.failed[task].add(setup.name)
            log(f"{task}: {exc}")
        except Exception as exc:
            self.unavailable[task][setup.name] = f"arm {setup.name} failed: {type(exc).__name__}: " \
                                                 f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
            log(f"{task}: {self.unavailable[task][setup.name]}")
            self.failed[task].add(setup.name)
            traceback.print_exc()
        return None

    # ---- lr and seeds ----------------------------------------------------------------------------

    def _ready(self, task: str) -> tuple[int, arms.Context] | None:
        r = self.budget_rank(task)
        if r is None:
            log(f"{task}: the gap check is not finished; run --stage gap first")
            return None
        return r, self.context(task, r)

    def stage_lr(self) -> None:
        for task in self.tasks:
            ready = self._ready(task)
            if ready is None:
                continue
            r, ctx = ready
            s = TASKS[task]
            pending = [(task, "lora")] * (len(arms.TRAINED_ARMS) * len(s.lora_lrs) * len(LR_SEEDS))
            self.project(f"lr ({task}, budget r = {r}, upper bound, before any grid extension)", pending)
            for arm in arms.TRAINED_ARMS:
                if self.only is not None and arm not in self.only:
                    continue
                setup = self.setup(task, arm, ctx)
                if setup is None:
                    continue

                def run_one(lr: float, task: str = task, setup: arms.ArmSetup = setup, ctx: arms.Context = ctx) -> bool:
                    for seed in LR_SEEDS:
                        self.arm_run(task, setup, ctx, lr, seed)
                    return setup.name not in self.failed[task]

                self.run_lr_grid(task, arm, r, run_one)

    def task_lr(self, task: str, arm: str, rank: int | None = None) -> float | None:
        """The chosen rate: full fine-tuning on its fixed grid, a LoRA arm on its (possibly grown) ``lr_grid``."""
        if arm == "full":
            return self.best_lr(task, "full", TASKS[task].full_lrs)
        return self.best_lr(task, arm, self.lr_grid(task, arm, rank), rank)

    def arm_lr(self, task: str, arm: str, rank: int) -> float | None:
        return self.task_lr(task, arm, rank)

    def stage_seeds(self) -> None:
        for task in self.tasks:
            ready = self._ready(task)
            if ready is None:
                continue
            r, ctx = ready
            self.project(f"seeds ({task}, upper bound)", [(task, "lora")] * (len(arms.TRAINED_ARMS) * len(STUDY_SEEDS)))
            for arm in arms.TRAINED_ARMS:
                if self.only is not None and arm not in self.only:
                    continue
                lr = self.arm_lr(task, arm, r)
                if lr is None:
                    log(f"{task} {arm}: no learning rate chosen yet (stage lr)")
                    continue
                setup = self.setup(task, arm, ctx)
                if setup is None:
                    continue
                for seed in STUDY_SEEDS:
                    self.arm_run(task, setup, ctx, lr, seed)
            for arm in arms.EXTRACTED_ARMS:
                if self.only is not None and arm not in self.only:
                    continue
                setup = self.setup(task, arm, ctx)
                if setup is not None:
                    self.arm_run(task, setup, ctx, 0.0, 0)

    # ---- availability without running (for the report) -------------------------------------------

    def check_availability(self) -> None:
        """Record which arms cannot run here, without training anything (for the report)."""
        for task in self.tasks:
            r = self.budget_rank(task)
            if r is None:
                continue
            ctx = self.context(task, r)
            for arm, need in (("plan-update", arms.need_probe), ("plan-gradient", arms.need_probe),
                              ("uniform+init-gradient", arms.need_init_from), ("uniform+init-update", arms.need_init_from),
                              ("plan+init-gradient", arms.need_init_from), ("resize4x", arms.need_resize)):
                try:
                    need(arm)
                    if "init" in arm:
                        arms.need_train_init(arm)
                        arms.need_probe(arm)
                except arms.ArmUnavailable as exc:
                    self.unavailable[task].setdefault(arm, str(exc))
            del ctx


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=STAGES, default=None, help="Run one stage (default: all, in order).")
    parser.add_argument("--max-hours", type=float, default=None,
                        help="Start no new training run after this many hours (the report is still written).")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"Comma-separated tasks ({', '.join(TASKS)}).")
    parser.add_argument("--runs", type=Path, default=Path("runs/rank-choice"))
    parser.add_argument("--out", type=Path, default=Path("reports/rank-choice"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="Where the models run: cpu (default), cuda, cuda:N.  Runs on a GPU are cached apart from "
                             "CPU runs (they are not bit-identical) and the report covers the runs of this device.")
    parser.add_argument("--arms", default=None, help="Comma-separated arms for stages lr/seeds (default: all).")
    parser.add_argument("--smoke", action="store_true", help="Tiny sizes (minutes) to check the pipeline end to end.")
    args = parser.parse_args(argv)
    if args.smoke:
        for name, s in list(TASKS.items()):
            TASKS[name] = TaskSettings(s.task, 96, 24, 1, 16, 24, (1, 2), s.lora_lrs, s.full_lrs, 96)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    for t in tasks:
        if t not in TASKS:
            parser.error(f"--tasks: unknown task {t!r} (choose from {', '.join(TASKS)})")
    deadline = time.time() + (args.max_hours * 3600 if args.max_hours is not None else math.inf)
    study = Study(args.runs, args.out, tasks, deadline, args.threads, args.device)
    if args.arms:
        study.only = {a.strip() for a in args.arms.split(",") if a.strip()}
        unknown = study.only - set(arms.TRAINED_ARMS) - set(arms.EXTRACTED_ARMS)
        if unknown:
            parser.error(f"--arms: unknown arm(s) {', '.join(sorted(unknown))}")
    stages = STAGES if args.stage is None else (args.stage,)
    t0 = time.time()
    log(f"rank-choice study: stages {', '.join(stages)}; tasks {', '.join(tasks)}; cache {args.runs / 'cache'}")
    for stage in stages:
        if stage != "report":
            getattr(study, f"stage_{stage}")()
            if study.cache.out_of_time():
                log(f"--max-hours reached after stage {stage}")
    study.check_availability()
    from rank_choice_report import write_report

    write_report(study, args.out, {"stages_run": list(stages), "seconds": round(time.time() - t0, 1),
                                   "settings": {t: asdict(TASKS[t]) for t in tasks}})
    log(f"report written to {args.out}")


if __name__ == "__main__":
    main()
