"""The arms of the rank-choice study: each one a function that returns the adapter setup to train (or evaluate).

Every arm function takes the task's :class:`Context` and returns an :class:`ArmSetup` (the exact per-module ranks,
the trainable-parameter count, how to train it, and what it cost to prepare), or raises :class:`ArmUnavailable`
with one line naming the command it needs, so the study goes on with the other arms.  :func:`train_arm` trains a
setup for one learning rate and seed and returns the metrics of the run.  Nothing here knows about the cache or the
report (``rank_choice.py``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import study_stats as st

BASE = "bundled:minilm-base"
RANKSCOPE = [sys.executable, "-m", "rankscope.cli"]


class ArmUnavailable(Exception):
    """An arm whose command or library is not available here (the message is one line naming it)."""


@dataclass
class Context:
    """What every arm of one task needs: the settings, the folder for its artefacts, module shapes, the budget."""

    settings: Any  # rank_choice.TaskSettings
    folder: Path
    shapes: dict[str, tuple[int, int]]
    budget_rank: int
    full_checkpoint: Callable[[], tuple[Path, float]]  # → (full fine-tune folder, its training seconds)
    full_lr: float
    threads: int = 2
    device: str = "cpu"  # where every model runs (training, probes, evaluation): cpu, cuda, cuda:N

    @property
    def budget(self) -> int:
        """The parameter budget: uniform rank ``budget_rank`` on every module."""
        return st.lora_parameters(self.shapes, st.uniform_ranks(self.shapes, self.budget_rank))


@dataclass
class ArmSetup:
    """What to train for an arm: exact ranks, their parameter count, the method and the one-off preparation cost."""

    name: str
    ranks: dict[str, int]
    params: int
    method: str = "lora"  # lora | eva | adalora | resize | extract
    init: Path | None = None  # a peft adapter to start from (train --init)
    setup_seconds: float = 0.0  # probe / full fine-tune / spectrum / recommend, paid once for all seeds
    spec: dict[str, Any] = field(default_factory=dict)  # what identifies the runs in the cache
    notes: str = ""

    @property
    def lora_config(self) -> dict[str, Any]:
        """``r``, ``lora_alpha``, ``target_modules``, ``rank_pattern``, ``alpha_pattern`` (α = 2r in every module)."""
        return config_from_ranks(self.ranks)


def config_from_ranks(ranks: dict[str, int]) -> dict[str, Any]:
    """A LoRA config giving every module exactly its rank (peft's matching rules) and α/r = 2 everywhere."""
    from rankscope.io.peft import lora_config_dict

    modules = sorted(m for m, r in ranks.items() if r > 0)
    return lora_config_dict(modules, [ranks[m] for m in modules], [2.0 * ranks[m] for m in modules])


def checked(setup: ArmSetup, ctx: Context) -> ArmSetup:
    """Recount the setup's parameters from its ranks and refuse one that is not within 1 % of the budget."""
    setup.params = st.lora_parameters(ctx.shapes, setup.ranks, 1 if setup.method.startswith("adalora") else 0)
    nominal = st.lora_parameters(ctx.shapes, setup.ranks)
    if not st.within_budget(nominal, ctx.budget):
        raise ArmUnavailable(f"arm {setup.name}: {nominal:,} LoRA parameters is not within 1 % of the budget "
                             f"{ctx.budget:,} ({100 * st.budget_error(nominal, ctx.budget):+.2f} %)")
    setup.spec = {**run_spec(setup.method, setup.ranks, setup.init), **setup.spec}
    return setup


def run_spec(method: str, ranks: dict[str, int], init: Path | None = None) -> dict[str, Any]:
    """What identifies an arm's runs in the cache: method, exact ranks, and the init adapter (path and content)."""
    return {"method": method, "ranks": ranks, "init": None if init is None else str(init),
            "init_sha": None if init is None else _file_hash(init / "adapter_model.safetensors")}


def _file_hash(path: Path) -> str | None:
    """Short SHA-256 of a file (a changed init adapter must not reuse old runs), or None when it is missing."""
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16] if path.is_file() else None


# --------------------------------------------------------------------------------------------------
# what other engineers' commands provide, looked up when an arm needs them
# --------------------------------------------------------------------------------------------------


def _command_available(command: str) -> bool:
    try:
        cli = importlib.import_module("rankscope.cli")
    except ImportError:
        return False
    return any(getattr(c, "name", None) == command for c in getattr(cli, "COMMANDS", ()))


def need_probe(arm: str) -> Any:
    """``rankscope.probe.probe`` (engineer P), or :class:`ArmUnavailable`."""
    try:
        module = importlib.import_module("rankscope.probe")
        return module.probe
    except (ImportError, AttributeError):
        raise ArmUnavailable(f"arm {arm} needs `rankscope probe` (not available)") from None


def need_init_from(arm: str) -> None:
    """``rankscope recommend --init-from`` (engineer I), or :class:`ArmUnavailable`."""
    from rankscope.ranks import recommend

    if "init_from" not in inspect.signature(recommend).parameters:
        raise ArmUnavailable(f"arm {arm} needs `rankscope recommend --init-from` (not available)")


def need_train_init(arm: str) -> None:
    """``rankscope train --init ADAPTER`` (engineer I), or :class:`ArmUnavailable`."""
    from rankscope.train import train

    if "init" not in inspect.signature(train).parameters:
        raise ArmUnavailable(f"arm {arm} needs `rankscope train --init` (not available)")


def need_resize(arm: str) -> None:
    """``rankscope resize`` (engineer R), or :class:`ArmUnavailable`."""
    if not _command_available("resize"):
        raise ArmUnavailable(f"arm {arm} needs `rankscope resize` (not available)")


def _kwargs_for(function: Callable, wanted: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``wanted`` that ``function`` accepts (a signature we only know by its contract)."""
    params = inspect.signature(function).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(wanted)
    return {k: v for k, v in wanted.items() if k in params}


# --------------------------------------------------------------------------------------------------
# shared preparation: spectra and plans, probes (each cached in the task folder with its cost)
# --------------------------------------------------------------------------------------------------


def _timed_folder(folder: Path, make: Callable[[Path], None]) -> float:
    """Build ``folder`` once with ``make`` (which writes it atomically); return the seconds it took (stored)."""
    cost_file = folder.parent / f"{folder.name}.seconds.json"
    if folder.is_dir() and (folder / "run.json").is_file() and cost_file.is_file():
        try:
            return float(json.loads(cost_file.read_text())["seconds"])
        except (ValueError, KeyError, TypeError):
            pass
    if folder.exists():
        shutil.rmtree(folder)
    t0 = time.perf_counter()
    make(folder)
    seconds = time.perf_counter() - t0
    cost_file.write_text(json.dumps({"seconds": round(seconds, 3)}) + "\n")
    return seconds


def full_spectrum(ctx: Context) -> tuple[Path, float]:
    """``rankscope spectrum`` of the full fine-tune (best learning rate, seed 0); total cost with the fine-tune."""
    from rankscope.spectrum import spectrum

    full, full_seconds = ctx.full_checkpoint()
    folder = ctx.folder / "full-spectrum"
    seconds = _timed_folder(folder, lambda out: spectrum(BASE, full).save(out, plots=False))
    return folder, full_seconds + seconds


def probe_folder(ctx: Context, signal: str, arm: str) -> tuple[Path, float]:
    """The probe of ``signal`` (gradient or update) on the task, made once; its ``cost_seconds``."""
    probe = need_probe(arm)
    s = ctx.settings
    folder = ctx.folder / f"probe-{signal}"
    steps = max(1, round(0.2 * s.steps))  # update: a fifth of the training steps of full fine-tuning
    wanted = {"task": s.task, "signal": signal, "max_train": s.max_train, "max_eval": s.max_eval,
              "max_length": s.max_length, "batch_size": s.batch_size, "seed": 0, "batches": 8, "steps": steps,
              "lr": ctx.full_lr, "keep_vectors": max(64, 8 * ctx.budget_rank), "threads": ctx.threads, "device": ctx.device,
              "progress": False}

    def make(out: Path) -> None:
        probe(BASE, **_kwargs_for(probe, wanted)).save(out)

    wall = _timed_folder(folder, make)
    info = json.loads((folder / "run.json").read_text())
    facts = {k: info.get(k) for k in ("batches", "steps", "cost_seconds", "probe")}
    kept = probe_facts_path(ctx.folder.parent, s.task, signal)  # the probe folder is not in git; its facts are
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(json.dumps(facts, indent=1) + "\n")
    return folder, float(info.get("cost_seconds", wall))


def probe_facts_path(runs: Path, task: str, signal: str) -> Path:
    """Where a probe's size, cost and training metrics are kept beside the run cache (for the report)."""
    return runs / "cache" / "probes" / f"{task}-{signal}.json"


def plan_ranks(source: Path, ctx: Context, out: Path, extra: list[str] | None = None) -> tuple[dict[str, int], float]:
    """``rankscope recommend SOURCE --rule budget:N`` (N = the budget) → per-module ranks, and its seconds.

    With ``extra`` (CLI options such as ``--init-from``) the CLI is called, otherwise the Python API."""
    from rankscope.ranks import RankPlan, recommend

    def make(folder: Path) -> None:
        if extra is None:
            recommend(source, rule=f"budget:{ctx.budget}", targets="all-linear", alpha="2r").save(folder)
        else:
            run_cli(["recommend", str(source), "--rule", f"budget:{ctx.budget}", "--targets", "all-linear",
                     "--alpha", "2r", *extra, "-o", str(folder)])

    seconds = _timed_folder(out, make)
    plan = RankPlan.load(out)
    return {str(m): int(r) for m, r in zip(plan.table["module"], plan.table["rank"], strict=True)}, seconds


def run_cli(args: list[str]) -> None:
    """``rankscope ARGS`` in a subprocess; a failure is :class:`ArmUnavailable` with its last error line."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(RANKSCOPE + args, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        raise ArmUnavailable(f"`rankscope {args[0]}` failed: {lines[-1] if lines else done.returncode}")


def _named(ranks: dict[str, int], ctx: Context, what: str) -> dict[str, int]:
    """Ranks keyed by exactly the study's module names (every module present; missing ones at rank 0)."""
    unknown = sorted(set(ranks) - set(ctx.shapes))
    if unknown:
        raise ArmUnavailable(f"{what}: modules not in the model: {', '.join(unknown[:3])}")
    return {m: int(ranks.get(m, 0)) for m in ctx.shapes}


# --------------------------------------------------------------------------------------------------
# the arms
# --------------------------------------------------------------------------------------------------


def arm_uniform(ctx: Context) -> ArmSetup:
    """Uniform rank r (the budget's rank) in every module, default init."""
    return checked(ArmSetup("uniform", st.uniform_ranks(ctx.shapes, ctx.budget_rank), 0), ctx)


def arm_plan_full(ctx: Context) -> ArmSetup:
    """The plan of ``recommend --rule budget:N`` on the spectra of the full fine-tune (needs a full fine-tune)."""
    spectra, cost = full_spectrum(ctx)
    ranks, seconds = plan_ranks(spectra, ctx, ctx.folder / "plan-full")
    return checked(ArmSetup("plan-full", _named(ranks, ctx, "plan-full"), 0, setup_seconds=cost + seconds), ctx)


def _arm_plan_probe(ctx: Context, signal: str) -> ArmSetup:
    name = f"plan-{signal}"
    folder, cost = probe_folder(ctx, signal, name)
    ranks, seconds = plan_ranks(folder, ctx, ctx.folder / name)
    return checked(ArmSetup(name, _named(ranks, ctx, name), 0, setup_seconds=cost + seconds), ctx)


def arm_plan_update(ctx: Context) -> ArmSetup:
    """The plan from the probe update (a short full fine-tuning run's ΔW)."""
    return _arm_plan_probe(ctx, "update")


def arm_plan_gradient(ctx: Context) -> ArmSetup:
    """The plan from the probe gradient (∂L/∂W at the base)."""
    return _arm_plan_probe(ctx, "gradient")


def arm_placebo(ctx: Context) -> ArmSetup:
    """The full-FT plan's ranks shuffled across modules of the same shape (seeded): same multiset, same budget."""
    plan = arm_plan_full(ctx)
    ranks = st.shuffled_ranks(ctx.shapes, plan.ranks, seed=0)
    return checked(ArmSetup("placebo", ranks, 0, setup_seconds=plan.setup_seconds,
                            notes="ranks of plan-full shuffled within each module shape (seed 0)"), ctx)


def _init_adapter(ctx: Context, name: str, signal: str, uniform: bool) -> ArmSetup:
    need_init_from(name)
    need_train_init(name)
    folder, cost = probe_folder(ctx, signal, name)
    extra = ["--init-from", str(folder)]
    if uniform:  # the uniform plan: every rank held at r
        extra += ["--min-rank", str(ctx.budget_rank), "--max-rank", str(ctx.budget_rank)]
    ranks, seconds = plan_ranks(folder, ctx, ctx.folder / name, extra)
    init = ctx.folder / name / "init"
    if not (init / "adapter_config.json").is_file():
        raise ArmUnavailable(f"arm {name}: `rankscope recommend --init-from` wrote no {init}/adapter_config.json")
    return checked(ArmSetup(name, _named(ranks, ctx, name), 0, init=init, setup_seconds=cost + seconds), ctx)


def arm_uniform_init_gradient(ctx: Context) -> ArmSetup:
    """Uniform rank r, factors started in the probe gradient's top singular subspace (LoRA-One / LoRA-GA)."""
    return _init_adapter(ctx, "uniform+init-gradient", "gradient", uniform=True)


def arm_uniform_init_update(ctx: Context) -> ArmSetup:
    """Uniform rank r, factors started at the best rank-r approximation of the probe update."""
    return _init_adapter(ctx, "uniform+init-update", "update", uniform=True)


def arm_plan_init(ctx: Context) -> ArmSetup:
    """The probe-gradient plan, with its factors started in the gradient's subspace (plan + init)."""
    return _init_adapter(ctx, "plan+init-gradient", "gradient", uniform=False)


def arm_eva(ctx: Context) -> ArmSetup:
    """peft's EVA init (``init_lora_weights="eva"``) at uniform rank r, ``rho=1`` (no redistribution).

    EVA's redistribution (``rho > 1``) keeps the *sum of ranks*, not the parameter count: a rank moved from a
    384×384 module to a 1536×384 one costs 2.5× the parameters, so only ``rho=1`` is an equal-budget arm.
    """
    try:
        from peft import EvaConfig, initialize_lora_eva_weights  # noqa: F401
    except ImportError:
        raise ArmUnavailable("arm eva needs peft's EvaConfig / initialize_lora_eva_weights (not in this peft)") from None
    return checked(ArmSetup("eva", st.uniform_ranks(ctx.shapes, ctx.budget_rank), 0, method="eva",
                            notes="EVA init (rho=1, no label mask), B=0"), ctx)


def _adalora_setup(ctx: Context, name: str, notes: str) -> ArmSetup:
    """The setup of an AdaLoRA arm (``name`` is also its training method), or :class:`ArmUnavailable`."""
    try:
        from peft import AdaLoraConfig  # noqa: F401
    except ImportError:
        raise ArmUnavailable(f"arm {name} needs peft's AdaLoraConfig (not in this peft)") from None
    return checked(ArmSetup(name, st.uniform_ranks(ctx.shapes, ctx.budget_rank), 0, method=name, notes=notes), ctx)


def arm_adalora(ctx: Context) -> ArmSetup:
    """peft's AdaLoRA from 1.5·r down to a final average rank r (final budget r per module in rank units)."""
    return _adalora_setup(ctx, "adalora", "final budget in rank units; effective parameters measured after training")


def arm_adalora_params(ctx: Context) -> ArmSetup:
    """AdaLoRA with its budget counted in parameters: the final model holds at most the uniform arm's count.

    peft's AdaLoRA keeps a number of triplets (rank units), so where it puts them decides the parameter count
    (±5 % across seeds here).  This arm keeps AdaLoRA's schedule, scores and training, and only changes which
    triplets survive each masking: the best-scored ones that fit in a parameter budget
    (:func:`rankscope.training.adalora.mask_to_parameters`, what ``train --method adalora --budget-unit params`` runs).
    """
    return _adalora_setup(ctx, "adalora-params", "AdaLoRA, final budget in parameters (≤ the uniform arm's count)")


def arm_resize4x(ctx: Context) -> ArmSetup:
    """Uniform rank 4r trained, then ``rankscope resize --rule budget:N`` to the budget (evaluated as resized)."""
    need_resize("resize4x")
    setup = ArmSetup("resize4x", st.uniform_ranks(ctx.shapes, ctx.budget_rank), 0, method="resize",
                     notes="trained at 4r; ranks after resize are measured per run")
    setup = checked(setup, ctx)
    setup.spec["trained_ranks"] = 4 * ctx.budget_rank
    return setup


def _arm_extract(ctx: Context, greedy: bool) -> ArmSetup:
    spectra, cost = full_spectrum(ctx)
    name = "extract-greedy" if greedy else "extract-uniform"
    if greedy:
        ranks, seconds = plan_ranks(spectra, ctx, ctx.folder / "plan-full")
    else:
        ranks, seconds = st.uniform_ranks(ctx.shapes, ctx.budget_rank), 0.0
    return checked(ArmSetup(name, _named(ranks, ctx, name), 0, method="extract", setup_seconds=cost + seconds,
                            notes="no training: cut from the full fine-tune"), ctx)


def arm_extract_greedy(ctx: Context) -> ArmSetup:
    """No training: the full fine-tune's ΔW truncated with the budget plan (greedy allocation)."""
    return _arm_extract(ctx, True)


def arm_extract_uniform(ctx: Context) -> ArmSetup:
    """No training: the full fine-tune's ΔW truncated at uniform rank r."""
    return _arm_extract(ctx, False)


TRAINED_ARMS: dict[str, Callable[[Context], ArmSetup]] = {
    "uniform": arm_uniform,
    "plan-full": arm_plan_full,
    "plan-update": arm_plan_update,
    "plan-gradient": arm_plan_gradient,
    "placebo": arm_placebo,
    "uniform+init-gradient": arm_uniform_init_gradient,
    "uniform+init-update": arm_uniform_init_update,
    "plan+init-gradient": arm_plan_init,
    "eva": arm_eva,
    "adalora": arm_adalora,
    "adalora-params": arm_adalora_params,
    "resize4x": arm_resize4x,
}
"""Arms trained with the task's steps, batch and schedule (learning rate chosen per arm)."""
EXTRACTED_ARMS: dict[str, Callable[[Context], ArmSetup]] = {
    "extract-greedy": arm_extract_greedy,
    "extract-uniform": arm_extract_uniform,
}
"""Arms without training (the headroom check of allocation)."""


# --------------------------------------------------------------------------------------------------
# training one run of an arm
# --------------------------------------------------------------------------------------------------


def head_parameters(hidden: int, labels: int) -> int:
    """The classifier head's trainable parameters (a ``hidden → labels`` linear layer with bias)."""
    return hidden * labels + labels


def train_arm(ctx: Context, setup: ArmSetup, lr: float, seed: int) -> dict[str, Any]:
    """Train (or evaluate) ``setup`` once; the metrics, with ``lora_params`` measured on the trained model."""
    t0 = time.perf_counter()
    if setup.method == "lora":
        out = _train_lora(ctx, setup, lr, seed)
    elif setup.method == "eva":
        out = _train_eva(ctx, setup, lr, seed)
    elif setup.method in ("adalora", "adalora-params"):
        out = _train_adalora(ctx, setup, lr, seed)
    elif setup.method == "resize":
        out = _train_resize(ctx, setup, lr, seed)
    elif setup.method == "extract":
        out = _extracted(ctx, setup)
    else:
        raise ValueError(f"unknown method {setup.method}")
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _common(ctx: Context) -> dict[str, Any]:
    s = ctx.settings
    return {"task": s.task, "max_train": s.max_train, "max_eval": s.max_eval, "epochs": s.epochs,
            "batch_size": s.batch_size, "max_length": s.max_length, "threads": ctx.threads, "device": ctx.device,
            "progress": False}


def _metrics_subset(m: Any) -> dict[str, Any]:
    keys = ("validation_accuracy", "validation_loss", "test_accuracy", "test_loss", "trainable_params", "steps",
            "seconds", "train_seconds", "eval_seconds", "best_epoch", "history")
    return {k: m[k] for k in keys if k in m}


def _check_lora_count(out: dict[str, Any], setup: ArmSetup, labels: int) -> None:
    out["lora_params"] = out["trainable_params"] - head_parameters(384, labels)
    if setup.method in ("lora", "eva") and out["lora_params"] != setup.params:
        raise RuntimeError(f"arm {setup.name}: the model has {out['lora_params']:,} LoRA parameters, the accounting "
                           f"says {setup.params:,}")


def _train_lora(ctx: Context, setup: ArmSetup, lr: float, seed: int, ranks: dict[str, int] | None = None,
                out: Path | None = None) -> dict[str, Any]:
    from rankscope.train import train

    cfg = config_from_ranks(ranks or setup.ranks)
    kwargs = {"r": cfg["r"], "alpha": cfg["lora_alpha"], "target_modules": cfg["target_modules"],
              "rank_pattern": cfg["rank_pattern"] or None, "alpha_pattern": cfg["alpha_pattern"] or None}
    if setup.init is not None and ranks is None:  # train --init takes ranks, alphas and targets from the adapter
        kwargs = {"init": str(setup.init)}
    m = train(BASE, method="lora", out=out, lr=lr, seed=seed, **kwargs, **_common(ctx))
    result = _metrics_subset(m)
    if ranks is None:
        _check_lora_count(result, setup, len(m.info["task"]["label_names"]))
    return result


def train_full(ctx: Context, lr: float, seed: int, out: Path | None = None) -> dict[str, Any]:
    """Full fine-tuning (every parameter) with the task's settings; saved to ``out`` when given."""
    from rankscope.train import train

    t0 = time.perf_counter()
    m = train(BASE, method="full", out=out, lr=lr, seed=seed, overwrite=True, **_common(ctx))
    result = _metrics_subset(m)
    result["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return result


def train_uniform_rank(ctx: Context, r: int, lr: float, seed: int) -> dict[str, Any]:
    """Uniform rank ``r`` LoRA (the gap check's runs; the same code path as the ``uniform`` arm)."""
    setup = ArmSetup(f"uniform-r{r}", st.uniform_ranks(ctx.shapes, r), 0)
    setup.params = st.lora_parameters(ctx.shapes, setup.ranks)
    t0 = time.perf_counter()
    out = _train_lora(ctx, setup, lr, seed)
    out["wall_seconds"] = round(time.perf_counter() - t0, 3)
    return out


def _batches_for_eva(task_data: Any, tokenizer: Any, ctx: Context, seed: int) -> list[dict[str, Any]]:
    import torch

    from rankscope.training.engine import collate, encode, train_batches

    data = encode(task_data.train, tokenizer, ctx.settings.max_length)
    idx = train_batches(data, ctx.settings.batch_size, torch.Generator().manual_seed(seed))
    pad = tokenizer.pad_token_id
    return [{k: v for k, v in collate(data, b, pad).items() if k != "labels"} for b in idx]


def _eva_layer_inputs(layer_input: Any, model_input: Any, layer_name: str) -> Any:
    """EVA's per-layer SVD input: the non-padding tokens of a (batch, seq, dim) input, or a (batch, dim) input as is
    (the pooler sees only the [CLS] vector, which peft's default language-modelling rule cannot index)."""
    x = layer_input[0] if isinstance(layer_input, (tuple, list)) else layer_input
    if x.dim() == 3:
        return x[model_input.T.unbind()]  # model_input: the (row, position) pairs of real tokens
    return x.contiguous()  # peft hashes it with .view(-1)


def _train_eva(ctx: Context, setup: ArmSetup, lr: float, seed: int) -> dict[str, Any]:
    """EVA: the model built as ``train`` builds it, then peft's own EVA init, then the same loop."""
    import torch
    from peft import EvaConfig, LoraConfig, TaskType, get_peft_model, initialize_lora_eva_weights

    from rankscope.io.checkpoints import resolve
    from rankscope.training.data import load_task
    from rankscope.training.engine import TrainConfig, train_model
    from rankscope.training.models import load_classifier, load_tokenizer

    s, r = ctx.settings, ctx.budget_rank
    task_data = load_task(s.task, max_train=s.max_train, max_eval=s.max_eval)
    path = resolve(BASE)
    tokenizer = load_tokenizer(path)
    model = load_classifier(path, task_data.label_names, tokenizer.pad_token_id, seed)
    t_setup = time.perf_counter()
    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=r, lora_alpha=2 * r, target_modules="all-linear",
                        init_lora_weights="eva", eva_config=EvaConfig(rho=1.0, use_label_mask=False))
    model = get_peft_model(model, config)
    with torch.no_grad():
        initialize_lora_eva_weights(model, _batches_for_eva(task_data, tokenizer, ctx, seed),
                                    prepare_layer_inputs_fn=_eva_layer_inputs, show_progress_bar=False)
    setup_seconds = time.perf_counter() - t_setup
    config_ = TrainConfig(epochs=s.epochs, lr=lr, method="lora", batch_size=s.batch_size, max_length=s.max_length,
                          seed=seed, threads=ctx.threads, device=ctx.device, progress=False)
    result = _metrics_subset(train_model(model, task_data, tokenizer, config_))
    result["setup_seconds"] = round(setup_seconds, 3)
    _check_lora_count(result, setup, len(task_data.label_names))
    return result


def _train_adalora(ctx: Context, setup: ArmSetup, lr: float, seed: int) -> dict[str, Any]:
    """AdaLoRA from 1.5·r to an average r: ``rankscope train --method adalora --orth-reg 0`` (``--budget-unit params``
    for ``adalora-params``), tinit 10 %, tfinal 55 %, 40 masking steps.

    The runs cached before this arm called ``train`` drove peft directly with the same model, schedule, masking and
    loop (bit-identical: seed 0 of both arms re-run through the command gave the cached accuracies).  The parameter
    count keeps the study's convention: ``Σ k·(out + in)`` plus one per kept triplet (its λ).
    """
    from rankscope.train import train

    unit = "params" if setup.method == "adalora-params" else "rank"
    m = train(BASE, method="adalora", lr=lr, seed=seed, r=ctx.budget_rank, target_modules="all-linear",
              budget_unit=unit, orth_reg=0.0, **_common(ctx))
    result = _metrics_subset(m)
    kept = {name.removeprefix("bert."): k for name, k in m["adalora"]["final_ranks"].items()}
    result["final_ranks"] = kept
    result["lora_params"] = st.lora_parameters(ctx.shapes, {k: v for k, v in kept.items() if k in ctx.shapes}, 1)
    result["lora_params_trained"] = result["trainable_params"] - head_parameters(384, len(m.info["task"]["label_names"]))
    return result


def _adapter_ranks(folder: Path) -> dict[str, int]:
    """Per-module ranks of a saved peft adapter, from its ``lora_A`` tensor shapes."""
    from rankscope.io.checkpoints import read_safetensors_header

    header = read_safetensors_header(folder / "adapter_model.safetensors")
    ranks = {}
    for key, meta in header.items():
        if key.endswith("lora_A.weight"):
            module = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight").removeprefix("bert.")
            shape = meta["shape"] if isinstance(meta, dict) else meta.shape
            ranks[module] = int(shape[0])
    return ranks


def _train_resize(ctx: Context, setup: ArmSetup, lr: float, seed: int) -> dict[str, Any]:
    """Train uniform 4r, ``rankscope resize`` to the budget, evaluate the resized adapter."""
    from rankscope.train import evaluate_checkpoint

    work = ctx.folder / "resize-work" / f"lr{lr:g}-s{seed}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    big = st.uniform_ranks(ctx.shapes, 4 * ctx.budget_rank)
    trained = _train_lora(ctx, setup, lr, seed, ranks=big, out=work / "trained")
    t1 = time.perf_counter()
    run_cli(["resize", str(work / "trained"), "--rule", f"budget:{ctx.budget}", "-o", str(work / "resized")])
    t2 = time.perf_counter()
    s = ctx.settings
    scores = evaluate_checkpoint(BASE, s.task, adapter=work / "resized", max_eval=s.max_eval, max_length=s.max_length,
                                device=ctx.device)
    ranks = _adapter_ranks(work / "resized")
    result = {**{f"trained_{k}": v for k, v in trained.items() if k != "history"},
              "validation_accuracy": scores["validation_accuracy"], "validation_loss": scores["validation_loss"],
              "test_accuracy": scores["test_accuracy"], "test_loss": scores["test_loss"],
              "final_ranks": ranks, "lora_params": st.lora_parameters(ctx.shapes, _named(ranks, ctx, "resize4x")),
              "train_seconds": trained["train_seconds"], "resize_seconds": round(t2 - t1, 3),
              "seconds": round(time.perf_counter() - t0, 3)}
    if not st.within_budget(result["lora_params"], ctx.budget):
        raise RuntimeError(f"arm resize4x: the resized adapter has {result['lora_params']:,} parameters, "
                           f"not within 1 % of {ctx.budget:,}")
    shutil.rmtree(work / "trained", ignore_errors=True)
    return result


def classification_base(ctx: Context, labels: list[str]) -> Path:
    """The base as a sequence classifier (seeded head): the layout extracted adapters apply to."""
    folder = ctx.folder / "base-seqcls"
    if not (folder / "config.json").is_file():
        from rankscope.io.checkpoints import resolve
        from rankscope.training.models import load_classifier, load_tokenizer

        tokenizer = load_tokenizer(resolve(BASE))
        model = load_classifier(resolve(BASE), labels, tokenizer.pad_token_id, seed=0)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def _extracted(ctx: Context, setup: ArmSetup) -> dict[str, Any]:
    """Accuracy of the adapter cut from the full fine-tune with the setup's ranks (plus head, biases, LayerNorms)."""
    from rankscope.extract import extract
    from rankscope.train import evaluate_checkpoint
    from rankscope.training.data import load_task

    s = ctx.settings
    full, _ = ctx.full_checkpoint()
    labels = load_task(s.task, max_train=1, max_eval=1).label_names
    base_cls = classification_base(ctx, labels)
    folder = ctx.folder / setup.name
    config_file = ctx.folder / f"{setup.name}.lora_config.json"
    config_file.write_text(json.dumps(config_from_ranks(setup.ranks), indent=2) + "\n")
    t0 = time.perf_counter()
    if folder.exists():
        shutil.rmtree(folder)
    extract(base_cls, full, config=config_file, save_modules=["classifier", "LayerNorm"], bias="all").save(folder)
    seconds = time.perf_counter() - t0
    scores = evaluate_checkpoint(base_cls, s.task, adapter=folder, max_eval=s.max_eval, max_length=s.max_length,
                                device=ctx.device)
    return {k: scores[k] for k in ("validation_accuracy", "validation_loss", "test_accuracy", "test_loss")} | {
        "lora_params": setup.params, "extract_seconds": round(seconds, 3), "seconds": round(seconds, 3)}


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """``(out, in)`` of every ``nn.Linear`` of a sequence classifier except its head (what ``all-linear`` adapts),
    keyed by the base model's module names (no ``bert.`` prefix), sorted."""
    import torch

    shapes = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and not name.startswith("classifier"):
            shapes[name.split(".", 1)[1] if name.startswith("bert.") else name] = (module.out_features,
                                                                                  module.in_features)
    return dict(sorted(shapes.items()))


def module_shapes(task: str) -> dict[str, tuple[int, int]]:
    """:func:`linear_shapes` of the study's base as a task model."""
    from rankscope.io.checkpoints import resolve
    from rankscope.training.models import load_classifier, load_tokenizer

    path = resolve(BASE)
    tokenizer = load_tokenizer(path)
    return linear_shapes(load_classifier(path, ["a", "b"], tokenizer.pad_token_id, seed=0))
