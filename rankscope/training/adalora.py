"""AdaLoRA training: peft's adaptive rank allocation driven by the engine's loop, and its result as a plain LoRA adapter.

AdaLoRA (Zhang et al. 2023, "Adaptive budget allocation for parameter-efficient fine-tuning", ICLR) parametrises
each target module's update in SVD form, ``ΔW = P·Λ·Q · α/r₀`` (peft: ``lora_B``, ``lora_E``, ``lora_A``; ``r₀`` =
``init_r``, the scale ``α / (r₀ + 1e-5)`` as peft computes it), starts every module at ``r₀`` triplets and, after
``tinit`` warm-up steps, masks the least important triplets (``λ_i = 0``) on a cubic schedule until ``target_r × n``
triplets are left at step ``T − tfinal``; the last ``tfinal`` steps train at that final allocation.  A triplet's
importance is eq. 11 of the paper, ``S_i = s(λ_i) + mean_j s(P_ji) + mean_j s(Q_ij)``, with ``s = Ī·Ū`` the smoothed
sensitivity ``|w·∂L/∂w|`` times its uncertainty (peft's ``RankAllocator``).  The training loss adds the
orthogonality regulariser of eq. 4 as peft applies it: ``γ · mean over P, Q of ‖PᵀP − I‖_F`` (resp. ``‖QQᵀ − I‖_F``).

Two budgets (:data:`BUDGET_UNITS`): ``rank`` is AdaLoRA's own (``target_r × n`` triplets, whatever they cost: a
triplet of an ``out × in`` module costs ``out + in + 1`` parameters, so where the triplets go decides the
parameter count); ``params`` keeps the schedule and the scores and only changes which triplets survive each masking
step: the best-scored ones that fit in a parameter budget that falls linearly with AdaLoRA's triplet budget, from
every triplet to ``target_r · Σ (out + in)`` — the parameters of uniform-rank LoRA at ``r = target_r``
(:func:`mask_to_parameters`).  rankscope's rank-choice study found this arm the best one at an exact parameter
budget (``reports/rank-choice/``).

:func:`to_lora` turns the trained model into plain LoRA at the final ranks, exactly: module ``m`` keeping the
triplets ``K`` gets ``A' = (Λ·Q)[K]``, ``B' = P[:, K]`` and ``α'_m = |K|·α/(r₀ + 1e-5)``, so that ``α'/|K|·B'A' =
ΔW`` (a module that keeps nothing is left out).  Every rankscope command and peft itself then read the adapter
as any LoRA.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import RankscopeError
from ..io.adapters import adalora_kept

if TYPE_CHECKING:
    import torch

__all__ = ["BUDGET_UNITS", "AdaLoraHooks", "AdaLoraSpec", "apply_adalora", "mask_to_parameters", "to_lora"]

BUDGET_UNITS = ("rank", "params")
"""What AdaLoRA's final budget counts: triplets (peft's rule) or parameters (module docstring)."""
ADAPTER = "default"


@dataclass(frozen=True)
class AdaLoraSpec:
    """AdaLoRA's options: the final average rank ``target_r``, the initial rank (default ``⌈1.5·target_r⌉``), ``alpha``
    (scale ``α/r₀``), the targets (as :class:`rankscope.training.lora.LoraSpec`'s), the budget unit, and the schedule
    as fractions of the run's steps: ``warmup`` (peft's ``tinit``), ``final`` (``tfinal``: the share of steps trained at
    the final allocation) and ``interval`` (``deltaT``: steps between two masking steps; default ``T/40``).

    The defaults are those of rankscope's rank-choice study (tinit 10 %, tfinal 55 %, 40 masking steps, γ = 0.5).
    """

    target_r: int = 8
    init_r: int | None = None
    alpha: float | None = None
    target_modules: list[str] | str | None = None
    budget_unit: str = "rank"
    warmup: float = 0.1
    final: float = 0.55
    interval: int | None = None
    orth_reg_weight: float = 0.5
    dropout: float = 0.0

    @property
    def initial_rank(self) -> int:
        """``init_r``, or ``⌈1.5·target_r⌉`` (at least ``target_r + 1``)."""
        return self.init_r if self.init_r is not None else max(math.ceil(1.5 * self.target_r), self.target_r + 1)

    @property
    def lora_alpha(self) -> float:
        """``alpha``, or ``2·r₀`` (the scale 2 of LoRA's default ``α = 2r``)."""
        return float(self.alpha) if self.alpha is not None else 2.0 * self.initial_rank

    def check(self) -> None:
        """Every option in range, as one :class:`RankscopeError` naming it."""
        if self.budget_unit not in BUDGET_UNITS:
            raise RankscopeError(f"--budget-unit: unknown unit '{self.budget_unit}' (choose from {', '.join(BUDGET_UNITS)})")
        if self.alpha is not None and not self.alpha > 0:
            raise RankscopeError(f"--alpha must be positive, got {self.alpha!r}")
        if self.target_r < 1:
            raise RankscopeError(f"--r: AdaLoRA's final average rank must be at least 1, got {self.target_r}")
        if self.initial_rank <= self.target_r:
            raise RankscopeError(f"--init-r {self.initial_rank} must exceed --r {self.target_r} (AdaLoRA prunes from "
                                 "the initial rank down to the final average rank)")
        if not (0 <= self.warmup < 1 and 0 <= self.final < 1 and self.warmup + self.final < 1):
            raise RankscopeError(f"--adalora-schedule: warm-up {self.warmup:g} and final {self.final:g} must be "
                                 "fractions of the steps that leave room for the pruning phase (their sum below 1)")
        if self.interval is not None and self.interval < 1:
            raise RankscopeError(f"AdaLoRA's masking interval must be at least 1 step, got {self.interval}")
        if self.orth_reg_weight < 0:
            raise RankscopeError(f"--orth-reg must be at least 0, got {self.orth_reg_weight:g}")

    def describe(self) -> dict[str, Any]:
        """The options as ``run.json`` records them."""
        return {"target_r": self.target_r, "init_r": self.initial_rank, "alpha": self.lora_alpha,
                "budget_unit": self.budget_unit, "warmup": self.warmup, "final": self.final,
                "interval": self.interval, "orth_reg_weight": self.orth_reg_weight}


def apply_adalora(model: torch.nn.Module, spec: AdaLoraSpec, task_type: str = "SEQ_CLS") -> torch.nn.Module:
    """Wrap ``model`` with peft's AdaLoRA (its schedule is set when the loop starts: :meth:`AdaLoraHooks.start`)."""
    from peft import AdaLoraConfig, get_peft_model

    from .lora import LoraSpec
    from .models import check_lora_targets, quiet_transformers

    spec.check()
    check_lora_targets(model, LoraSpec(spec.target_r, spec.lora_alpha, spec.target_modules))
    # peft checks the schedule against total_step when the config is made: a placeholder, replaced at the start
    config = AdaLoraConfig(task_type=task_type, init_r=spec.initial_rank, target_r=spec.target_r,
                           lora_alpha=spec.lora_alpha, target_modules=spec.target_modules, lora_dropout=spec.dropout,
                           total_step=100, tinit=0, tfinal=0, deltaT=1, orth_reg_weight=spec.orth_reg_weight)
    try:
        with quiet_transformers():
            wrapped = get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        raise RankscopeError(f"AdaLoRA: {(str(exc).strip().splitlines() or [type(exc).__name__])[0]}") from exc
    if task_type == "CAUSAL_LM":
        head = wrapped.get_base_model().get_output_embeddings()
        if any(getattr(m, "base_layer", None) is head for m in wrapped.modules()):
            raise RankscopeError("--target-modules: the LM head never gets LoRA (it is the output embedding)")
    return wrapped


def adalora_layers(model: torch.nn.Module) -> Iterator[tuple[str, torch.nn.Module]]:
    """``(name, layer)`` of every AdaLoRA layer of a wrapped model (names as in ``model.base_model.model``)."""
    for name, module in model.base_model.model.named_modules():
        e = getattr(module, "lora_E", None)
        if e is not None and ADAPTER in e:
            yield name, module


def module_shapes(model: torch.nn.Module) -> dict[str, tuple[int, int]]:
    """``{AdaLoRA module name: (out, in)}`` of a wrapped model (names as in ``model.base_model.model``)."""
    return {name: (layer.lora_B[ADAPTER].shape[0], layer.lora_A[ADAPTER].shape[1])
            for name, layer in adalora_layers(model)}


def parameter_budget(shapes: dict[str, tuple[int, int]], target_r: int) -> int:
    """``target_r · Σ (out + in)``: the parameters of uniform-rank LoRA at ``target_r`` on the same modules."""
    return target_r * sum(o + i for o, i in shapes.values())


def mask_to_parameters(allocator: Any, model: torch.nn.Module, budget: int, target_params: int) -> dict[str, list[bool]]:
    """AdaLoRA's masking step with its budget in parameters (in place of ``RankAllocator.mask_to_budget``).

    ``budget``: the schedule's triplet budget at this step, mapped linearly onto parameters from every triplet
    (``init_bgt``) down to ``target_params`` (at ``target_bgt``).  Triplets are kept in order of importance ``S_i``
    (module docstring) while their cost ``out + in + 1`` fits; the rest get ``λ_i = 0``.  Returns the rank pattern
    ``{E parameter name: [kept, …]}`` as peft's masking step does.
    """
    import torch

    name = allocator.adapter_name
    span = max(1, allocator.init_bgt - allocator.target_bgt)
    params = {n: p for n, p in model.named_parameters() if f".{name}" in n}
    triplets = []  # (importance, E parameter name, index, cost)
    total = 0
    for n, e in params.items():
        if f"lora_E.{name}" not in n:
            continue
        a, b = n.replace("lora_E", "lora_A"), n.replace("lora_E", "lora_B")
        score_a = (allocator.exp_avg_ipt[a] * allocator.exp_avg_unc[a]).mean(dim=1)
        score_b = (allocator.exp_avg_ipt[b] * allocator.exp_avg_unc[b]).mean(dim=0)
        score_e = (allocator.exp_avg_ipt[n] * allocator.exp_avg_unc[n]).view(-1)
        cost = params[a].shape[1] + params[b].shape[0] + 1
        importance = (score_e + score_a + score_b).tolist()
        triplets += [(importance[i], n, i, cost) for i in range(e.shape[0])]
        total += cost * e.shape[0]
    allowed = target_params + (budget - allocator.target_bgt) * (total - target_params) / span
    keep: dict[str, list[bool]] = {n: [False] * params[n].shape[0] for n in params if f"lora_E.{name}" in n}
    spent = 0
    for _importance, n, i, cost in sorted(triplets, key=lambda x: -x[0]):
        if spent + cost <= allowed:
            keep[n][i] = True
            spent += cost
    with torch.no_grad():
        for n, kept in keep.items():
            params[n].masked_fill_(~torch.tensor(kept, device=params[n].device).view(-1, 1), 0.0)
    return keep


class AdaLoraHooks:
    """What the engine's loop calls for AdaLoRA (:func:`rankscope.training.engine.train_model`'s ``hooks``).

    ``start`` sets the schedule from the run's step count ``T``: ``tinit = round(warmup·T)``, ``tfinal =
    round(final·T)``, ``deltaT = interval or max(1, T // 40)``; ``extra_loss`` is the orthogonality regulariser;
    ``after_step`` is peft's ``update_and_allocate`` (after the optimiser step, the gradients still in place);
    ``selectable`` says whether an evaluation may be kept as the best (only at the final allocation, step ≥
    ``T − tfinal``: an earlier state holds more triplets than the budget); ``finish`` applies the final pattern.
    """

    def __init__(self, model: torch.nn.Module, spec: AdaLoraSpec) -> None:
        self.model, self.spec = model, spec
        self.config = model.peft_config[ADAPTER]
        self.shapes = module_shapes(model)
        self.target_params = parameter_budget(self.shapes, spec.target_r)
        self.final_step = 0
        self._groups: list[tuple[tuple[str, tuple[int, ...]], list[torch.nn.Parameter]]] | None = None

    def start(self, total_steps: int) -> None:
        """Set peft's schedule for a run of ``total_steps`` steps (an error when it leaves no pruning phase)."""
        import types

        tinit, tfinal = round(self.spec.warmup * total_steps), round(self.spec.final * total_steps)
        if tinit >= total_steps - tfinal:
            raise RankscopeError(f"AdaLoRA: {total_steps} training steps leave no pruning phase between the warm-up "
                                 f"({tinit} steps) and the final phase ({tfinal} steps): train longer (--epochs, "
                                 "more data) or shorten --adalora-schedule")
        cfg = self.config
        cfg.total_step, cfg.tinit, cfg.tfinal = total_steps, tinit, tfinal
        cfg.deltaT = self.spec.interval or max(1, total_steps // 40)
        self.final_step = total_steps - tfinal
        if self.spec.budget_unit == "params":
            allocator = self.model.base_model.rankallocator
            target = self.target_params
            allocator.mask_to_budget = types.MethodType(
                lambda alloc, net, budget: mask_to_parameters(alloc, net, budget, target), allocator)

    def extra_loss(self) -> torch.Tensor | None:
        """``γ · mean ‖PᵀP − I‖_F`` over the P (``lora_B``) and Q (``lora_A``) factors; None when ``γ = 0``.

        Factors of one shape are stacked and their Gram matrices formed in one batched product: the same sum as one
        term per factor, in a handful of kernels instead of several per module (measured in ``benchmarks/train.py``).
        """
        import torch

        if not self.spec.orth_reg_weight:
            return None
        if self._groups is None:
            groups: dict[tuple[str, tuple[int, ...]], list[torch.nn.Parameter]] = {}
            for name, p in self.model.named_parameters():
                if (".lora_A." in name or ".lora_B." in name) and p.requires_grad:
                    groups.setdefault(("A" if ".lora_A." in name else "B", tuple(p.shape)), []).append(p)
            self._groups = list(groups.items())
        total, count = None, 0
        for (kind, _shape), params in self._groups:
            x = torch.stack(params)
            gram = x @ x.mT if kind == "A" else x.mT @ x
            eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
            norms = torch.linalg.matrix_norm(gram - eye).sum()
            total, count = (norms if total is None else total + norms), count + len(params)
        return None if total is None else self.spec.orth_reg_weight * total / count

    def after_step(self, step: int) -> None:
        """peft's budget update and masking at optimisation step ``step`` (1-based)."""
        self.model.base_model.update_and_allocate(step)

    def selectable(self, step: int) -> bool:
        """Whether the weights after ``step`` hold the final allocation."""
        return step >= self.final_step

    def finish(self) -> None:
        """Apply the final rank pattern to the weights in place (idempotent)."""
        pattern = self.config.rank_pattern
        if pattern:
            import torch

            with torch.no_grad():
                self.model.base_model.rankallocator.mask_using_rank_pattern(self.model.base_model.model, pattern)

    def final_ranks(self) -> dict[str, int]:
        """``{module: kept triplets}`` of the final pattern (every module at ``r₀`` before any masking)."""
        ranks = {}
        for module in self.shapes:
            kept = adalora_kept(self.config.rank_pattern, module, ADAPTER)
            ranks[module] = self.spec.initial_rank if kept is None else int(sum(bool(k) for k in kept))
        return ranks

    def record(self) -> dict[str, Any]:
        """``run.json``'s ``adalora``: the options, the schedule, the final ranks and their parameter count."""
        ranks = self.final_ranks()
        cfg = self.config
        return {**self.spec.describe(), "tinit": cfg.tinit, "tfinal": cfg.tfinal, "deltaT": cfg.deltaT,
                "total_step": cfg.total_step, "final_ranks": ranks,
                "lora_params": sum(ranks[m] * (o + i) for m, (o, i) in self.shapes.items()),
                "budget_params": self.target_params if self.spec.budget_unit == "params" else None,
                "budget_triplets": self.spec.target_r * len(self.shapes)}


def to_lora(model: torch.nn.Module, hooks: AdaLoraHooks, task_type: str = "SEQ_CLS") -> torch.nn.Module:
    """The trained AdaLoRA model as a peft LoRA model at the final ranks, with the same output (module docstring).

    The AdaLoRA layers are unloaded (the trained head, if any, stays as the head) and LoRA is applied to the modules
    that keep a triplet, with ``rank_pattern`` / ``alpha_pattern`` per module; its factors are the kept rows of
    ``Λ·Q`` and columns of ``P``.
    """
    import torch

    from ..io.peft import pattern_key
    from .lora import LoraSpec
    from .models import apply_lora

    hooks.finish()
    ranks = {m: r for m, r in hooks.final_ranks().items() if r > 0}
    if not ranks:
        raise RankscopeError("AdaLoRA kept no triplet in any module (a larger --r?)")
    r0 = hooks.spec.initial_rank
    factors = {}
    for name, module in adalora_layers(model):
        if name not in ranks:
            continue
        kept = adalora_kept(hooks.config.rank_pattern, name, ADAPTER)
        index = torch.tensor([i for i in range(r0) if kept is None or kept[i]], dtype=torch.long)
        e, a, b = module.lora_E[ADAPTER].detach(), module.lora_A[ADAPTER].detach(), module.lora_B[ADAPTER].detach()
        factors[name] = ((a * e)[index].clone(), b[:, index].clone())
    scale = module_scale(model)
    base = model.base_model.unload()
    common = max(set(ranks.values()), key=list(ranks.values()).count)
    spec = LoraSpec(common, common * scale, sorted(ranks),
                    {pattern_key(m): r for m, r in ranks.items() if r != common},
                    {pattern_key(m): r * scale for m, r in ranks.items() if r != common}, dropout=hooks.spec.dropout)
    lora = apply_lora(base, spec, None, task_type)
    with torch.no_grad():
        for name, module in lora.base_model.model.named_modules():
            if name in factors:
                a, b = factors[name]
                module.lora_A[ADAPTER].weight.copy_(a)
                module.lora_B[ADAPTER].weight.copy_(b)
    return lora


def module_scale(model: torch.nn.Module) -> float:
    """peft's AdaLoRA scale ``α / (r₀ + 1e-5)`` (the same in every module: one α, one initial rank)."""
    for _name, layer in adalora_layers(model):
        return float(layer.scaling[ADAPTER]) / (float(layer.ranknum[ADAPTER]) + 1e-5)
    raise RankscopeError("AdaLoRA: the model has no AdaLoRA layer")
