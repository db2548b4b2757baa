"""Train a model in a random subspace: ``θ = θ₀ + P θ_d`` (DID) or ``θ_i = θ₀,i + λ_i (P θ_{d−m})_i`` (SAID).

DID, direct intrinsic dimension (Li et al. 2018, "Measuring the Intrinsic Dimension of Objective
Landscapes"): every selected parameter moves along ``P θ_d``, ``θ_d ∈ ℝ^d`` starts at 0, ``θ₀`` is frozen.

SAID, structure-aware intrinsic dimension (Aghajanyan et al. 2021, "Intrinsic Dimensionality Explains
the Effectiveness of Language Model Fine-Tuning", eq. 3): one extra scalar ``λ_i`` per parameter tensor
``i`` (initialised to 1) scales that tensor's slice of ``P θ_{d−m}``; the ``m`` scalars count inside
``d``, so the projection has ``d − m`` columns.  Because ``θ_{d−m}`` starts at 0, ``∂L/∂λ_i`` is 0 at the
start and the λ's begin to move once ``θ_{d−m}`` has.

:class:`SubspaceModel` keeps ``θ₀`` as the wrapped module's own (frozen) parameters and runs the module
through :func:`torch.func.functional_call` with ``θ₀ + Δ`` substituted: no second copy of the model,
exact autograd (``∂L/∂θ_d = Pᵀ ∂L/∂θ``).  Parameters outside the subspace are frozen, except those named
by ``direct`` (e.g. a re-initialised classification head trained as usual, counted apart from ``d``,
with its own learning rate ``direct_lr`` when given).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import RankscopeError
from ..options import compile_regexes
from .projections import Projection, check_dimensions, make_projection

MODES = ("did", "said")


def select_parameters(module: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> list[str]:
    """Names of the parameters in the subspace: those matching any ``include`` regex (all when empty)
    and no ``exclude`` regex (``re.search``)."""
    names = [n for n, _ in module.named_parameters()]
    if not names:
        raise RankscopeError("the model has no parameters to train in a subspace")
    inc, exc = compile_regexes(include, "--include"), compile_regexes(exclude, "--exclude")
    chosen = [n for n in names if (not inc or any(p.search(n) for p in inc)) and not any(p.search(n) for p in exc)]
    if not chosen:
        raise RankscopeError("no parameter of the model is left in the subspace (check --include/--exclude)")
    return chosen


def subspace_names(module: nn.Module, include: Sequence[str] = (), exclude: Sequence[str] = (),
                   direct: Sequence[str] = ()) -> list[str]:
    """The parameters that move in the subspace: :func:`select_parameters` minus those trained ``direct``."""
    direct = set(direct)
    names = [n for n in select_parameters(module, include, exclude) if n not in direct]
    if not names:
        raise RankscopeError("no parameter of the model is left in the subspace (all are trained directly)")
    return names


class SubspaceModel(nn.Module):
    """``module`` with its selected parameters re-parameterised as ``θ₀ + P θ_d`` (see module docstring).

    ``d`` counts every trainable subspace scalar: ``θ_d`` for DID; ``θ_{d−m}`` plus the ``m`` λ's for SAID.
    ``direct``: names of parameters outside the subspace that stay trainable as usual.
    """

    def __init__(self, module: nn.Module, d: int, *, mode: str = "did", projection: str = "fastfood",
                 layout: str = "blocked", seed: int = 0, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 direct: Sequence[str] = (), direct_lr: float | None = None, block_bits: int | None = None) -> None:
        super().__init__()
        if mode not in MODES:
            raise RankscopeError(f"--mode: unknown mode '{mode}' (choose from did, said)")
        direct = set(direct)
        self.module = module
        self.direct_lr = direct_lr
        self.names = subspace_names(module, include, exclude, direct)
        params = dict(module.named_parameters())
        for name, p in params.items():
            p.requires_grad_(name in direct)
        self.shapes = [params[n].shape for n in self.names]
        self.sizes = [params[n].numel() for n in self.names]
        self.D = sum(self.sizes)
        self.mode, self.d = mode, int(d)
        self.m = len(self.names) if mode == "said" else 0
        check_dimensions(self.D, self.d)
        if self.d < self.m:
            raise RankscopeError(f"--d: SAID needs d >= m = {self.m} (one λ per tensor), got {self.d}")
        d_proj = self.d - self.m
        device = params[self.names[0]].device
        self.theta_d = nn.Parameter(torch.zeros(d_proj, device=device))
        self.lambdas = nn.Parameter(torch.ones(self.m, device=device)) if self.m else None
        options = {"layout": layout, "tensor_sizes": self.sizes}
        if block_bits is not None:
            options["block_bits"] = block_bits
        self.projection = make_projection(projection, self.D, d_proj, seed, device=device, **options) if d_proj else None

    def learning_rates(self) -> dict[int, float]:
        """``{id(p): direct_lr}`` for the directly trained parameters (read by the training engine's optimizer)."""
        if self.direct_lr is None:
            return {}
        return {id(p): self.direct_lr for p in self.module.parameters() if p.requires_grad}

    def delta(self) -> torch.Tensor:
        """``P θ_d`` (DID) or ``P θ_{d−m}`` before the λ scaling (SAID), as one flat D-vector."""
        if self.projection is None:
            return torch.zeros(self.D, device=self.theta_d.device, dtype=self.theta_d.dtype)
        return self._projection()(self.theta_d)

    def _projection(self) -> Projection:
        """The projection, moved first to θ_d's device if the module was moved since."""
        if self.projection.device != self.theta_d.device:
            self.projection.to(self.theta_d.device)
        return self.projection

    def current_parameters(self) -> dict[str, torch.Tensor]:
        """``{name: θ₀ + Δ}`` for every subspace parameter (differentiable in θ_d and λ)."""
        base = dict(self.module.named_parameters())
        if self.projection is None:  # SAID with d = m: only the λ's, scaling a zero update
            return {name: base[name].detach() + self.lambdas[i] * torch.zeros_like(base[name])
                    for i, name in enumerate(self.names)}
        pieces = self._projection().offset_pieces(self.theta_d, [base[n] for n in self.names], self.lambdas)
        return {name: piece.view(shape) for name, shape, piece in zip(self.names, self.shapes, pieces, strict=True)}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return torch.func.functional_call(self.module, self.current_parameters(), args, kwargs)

    @torch.no_grad()
    def merge(self) -> nn.Module:
        """Write ``θ₀ + Δ`` into the wrapped module (which then stands alone) and return it."""
        params = dict(self.module.named_parameters())
        for name, value in self.current_parameters().items():
            params[name].copy_(value)
        return self.module

    def describe(self) -> dict:
        direct = sum(p.numel() for n, p in self.module.named_parameters() if p.requires_grad)
        return {"mode": self.mode, "d": self.d, "D": self.D, "m": self.m, "tensors": len(self.names),
                "direct_params": direct,
                "projection": self.projection.describe() if self.projection is not None else None}
