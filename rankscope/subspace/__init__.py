"""Intrinsic dimension: train a model in a random d-dimensional subspace ``θ = θ₀ + P θ_d`` and search d90.

* :mod:`.fwht` — fast Walsh–Hadamard transform in torch (differentiable, O(L log L));
* :mod:`.projections` — dense, sparse and Fastfood projections ``P`` (seeded, unit-norm columns);
* :mod:`.wrapper` — :class:`SubspaceModel`: any ``nn.Module`` re-parameterised for DID or SAID;
* :mod:`.tasks` — the built-in tasks (Li et al.'s toy problem, MNIST FC, sklearn digits, text tasks);
* :mod:`.search` — the d90 search (geometric sweep, then bisection in log d);
* :mod:`.intrinsic` — the study behind ``rankscope intrinsic-dim`` (baseline, cache, outputs).

Example::

    from rankscope.subspace import intrinsic_dimension
    result = intrinsic_dimension("mnist-fc", "runs/mnist", modes=("did",), seeds=3)
    result.result["modes"]["did"]["d90"]
"""

from .intrinsic import IntrinsicDimResult, intrinsic_dimension
from .projections import DenseProjection, FastfoodProjection, SparseProjection, make_projection
from .wrapper import SubspaceModel

__all__ = ["intrinsic_dimension", "IntrinsicDimResult", "SubspaceModel", "make_projection", "DenseProjection",
           "SparseProjection", "FastfoodProjection"]
