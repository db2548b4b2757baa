"""Random projections ``P ∈ ℝ^{D×d}`` from a d-dimensional subspace to the D parameters of a model.

Every projection is a function ``θ_d ↦ P θ_d`` (differentiable, so ``∂L/∂θ_d = Pᵀ ∂L/∂θ`` comes from
autograd), fully determined by ``(D, d, seed)`` and its options: the same seed gives the same ``P`` on
every run and every device (random numbers are drawn on the CPU from generators seeded by
``numpy.random.SeedSequence([seed, block])``).

``dense`` (Li et al. 2018)
    i.i.d. Gaussian columns scaled to unit norm exactly.  Generated in blocks of columns, each from its
    own seed, so the matrix never has to exist whole: when ``D·d`` exceeds ``max_dense_elements`` the
    blocks are regenerated on every product (memory O(D·block)), otherwise they are kept.
``sparse`` (Li, Hastie & Church 2006, "very sparse random projections")
    Each entry is non-zero with probability ``1/s``, ``s = √D``, with a random sign; every column is
    scaled by ``1/√(its non-zero count)`` so it has unit norm exactly.  Stored as a sparse matrix with
    about ``d·√D`` entries.
``fastfood`` (Le, Sarlós & Smola 2013; used by Li et al. 2018 and Aghajanyan et al. 2021)
    ``P x = concat_b  s_b · (H G_b Π_b H B_b pad(x))[:rows_b]`` over blocks ``b`` of ``L_b = 2^k ≥ max(rows_b, d)``
    rows, ``H`` the Walsh–Hadamard transform (:mod:`.fwht`), ``B_b`` a ±1 diagonal, ``Π_b`` a permutation,
    ``G_b`` a Gaussian diagonal and ``s_b = 1/√(D·‖G_b‖²)``.  A full block column has squared norm
    ``L_b‖G_b‖²·s_b² = L_b/D`` exactly, so a column of ``P`` has unit norm in expectation (its ``rows_b/L_b``
    share of each block).  Layouts: ``global``, one block over all D (Li et al.); ``per-tensor``, one block
    per parameter tensor, all sharing ``θ_d``; ``blocked``, consecutive chunks of ``max(2^block_bits, L_d)``
    rows (Le et al.'s stacking of independent blocks), transformed together as one batch.

Cost of ``P x``: dense O(D·d); sparse O(d·√D); fastfood O(D log D) whatever d is.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import RankscopeError
from . import native
from .fwht import fwht, next_power_of_two

PROJECTIONS = ("dense", "sparse", "fastfood")
LAYOUTS = ("blocked", "global", "per-tensor")
DEFAULT_BLOCK_BITS = 20
"""``blocked`` layout: 2^20 rows per block (a 4 MiB float32 block transforms in cache; see benchmarks/subspace.py)."""
MAX_DENSE_ELEMENTS = 1 << 28
"""A dense ``P`` up to 2^28 entries (1 GiB in float32) is kept; larger ones are regenerated per product."""


def block_generator(seed: int, *key: int) -> torch.Generator:
    """A CPU generator for one block of a projection, independent of every other ``(seed, key)``."""
    state = np.random.SeedSequence([int(seed) % 2**63, *key]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


class Projection:
    """``θ_d ↦ P θ_d``; subclasses set ``kind`` and implement :meth:`__call__`."""

    kind = "projection"

    def __init__(self, D: int, d: int, seed: int = 0) -> None:  # noqa: N803  (the papers' names)
        check_dimensions(D, d)
        self.D, self.d, self.seed = int(D), int(d), int(seed)
        self.device = torch.device("cpu")

    def __call__(self, theta_d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def to(self, device: str | torch.device) -> Projection:
        self.device = torch.device(device)
        return self

    def offset_pieces(self, theta_d: torch.Tensor, bases: Sequence[torch.Tensor],
                      scales: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """``θ₀ᵢ + (P θ_d)ᵢ``, or ``θ₀ᵢ + λᵢ (P θ_d)ᵢ`` with ``scales = λ`` (SAID), for consecutive pieces
        ``θ₀ᵢ`` of the D rows: flat tensors, differentiable in ``θ_d`` and ``λ`` (not in θ₀)."""
        delta = torch.split(self(theta_d), [b.numel() for b in bases])  # one split: its backward is one concatenation
        if scales is not None:
            delta = [scales[i] * piece for i, piece in enumerate(delta)]
        return tuple(b.detach().reshape(-1) + piece for b, piece in zip(bases, delta, strict=True))

    def matrix(self) -> torch.Tensor:
        """The explicit ``D × d`` matrix (column ``j`` is ``P e_j``): for tests and small problems only."""
        eye = torch.eye(self.d, device=self.device)
        with torch.no_grad():
            return torch.stack([self(eye[j]) for j in range(self.d)], dim=1)

    def describe(self) -> dict:
        return {"projection": self.kind, "D": self.D, "d": self.d, "seed": self.seed, "kernel": self.kernel()}

    def kernel(self) -> str:
        """Which code computes ``P θ_d`` on the current device: ``torch`` here, ``native`` for Fastfood's C kernels."""
        return "torch"


def check_projection_options(kind: str, layout: str) -> None:
    """One-line errors for an unknown projection or Fastfood layout name."""
    if kind not in PROJECTIONS:
        raise RankscopeError(f"--projection: unknown projection '{kind}' (choose from {', '.join(PROJECTIONS)})")
    if layout not in LAYOUTS:
        raise RankscopeError(f"--layout: unknown Fastfood layout '{layout}' (choose from {', '.join(LAYOUTS)})")


def check_dimensions(D: int, d: int) -> None:  # noqa: N803
    if D < 1:
        raise RankscopeError("the model has no parameters in the subspace (D = 0)")
    if not 1 <= d <= D:
        raise RankscopeError(f"--d: the subspace dimension must be in 1..D = {D:,}, got {d:,}")


# --------------------------------------------------------------------------------------------------
# dense
# --------------------------------------------------------------------------------------------------


class DenseProjection(Projection):
    """Gaussian columns of unit norm, generated block by block from the seed (see module docstring)."""

    kind = "dense"

    def __init__(self, D: int, d: int, seed: int = 0, max_dense_elements: int = MAX_DENSE_ELEMENTS,  # noqa: N803
                 block_elements: int = 1 << 24) -> None:
        super().__init__(D, d, seed)
        self.block_columns = max(1, min(d, block_elements // max(D, 1)))
        self.stored = D * d <= max_dense_elements
        self._matrix: torch.Tensor | None = None

    def column_block(self, index: int) -> torch.Tensor:
        """Columns ``[index·b, (index+1)·b)`` of ``P`` (unit-norm Gaussian), on the CPU."""
        start = index * self.block_columns
        cols = min(self.block_columns, self.d - start)
        block = torch.randn(self.D, cols, generator=block_generator(self.seed, 1, index))
        return block / block.norm(dim=0, keepdim=True)

    @property
    def n_blocks(self) -> int:
        return -(-self.d // self.block_columns)

    def stored_matrix(self) -> torch.Tensor:
        if self._matrix is None:
            self._matrix = torch.cat([self.column_block(i) for i in range(self.n_blocks)], dim=1).to(self.device)
        return self._matrix

    def to(self, device: str | torch.device) -> DenseProjection:
        super().to(device)
        if self._matrix is not None:
            self._matrix = self._matrix.to(self.device)
        return self

    def __call__(self, theta_d: torch.Tensor) -> torch.Tensor:
        if self.stored:
            return self.stored_matrix() @ theta_d
        return _StreamedDense.apply(theta_d, self)

    def describe(self) -> dict:
        return {**super().describe(), "stored": self.stored, "block_columns": self.block_columns}


class _StreamedDense(torch.autograd.Function):
    """``P x`` and ``Pᵀ g`` with the column blocks of ``P`` regenerated from the seed (memory O(D·block))."""

    @staticmethod
    def forward(ctx, theta_d: torch.Tensor, proj: DenseProjection) -> torch.Tensor:  # noqa: D102
        ctx.proj = proj
        out = torch.zeros(proj.D, dtype=theta_d.dtype, device=theta_d.device)
        b = proj.block_columns
        for i in range(proj.n_blocks):
            out += proj.column_block(i).to(theta_d.device) @ theta_d[i * b:(i + 1) * b]
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        proj = ctx.proj
        parts = [proj.column_block(i).to(grad.device).t() @ grad for i in range(proj.n_blocks)]
        return torch.cat(parts), None


# --------------------------------------------------------------------------------------------------
# sparse
# --------------------------------------------------------------------------------------------------


class SparseProjection(Projection):
    """Very sparse random projection with exactly unit-norm columns (see module docstring)."""

    kind = "sparse"

    def __init__(self, D: int, d: int, seed: int = 0, density: float | None = None) -> None:  # noqa: N803
        super().__init__(D, d, seed)
        self.density = float(density) if density is not None else 1.0 / np.sqrt(D)
        if not 0 < self.density <= 1:
            raise RankscopeError(f"--density must be in (0, 1], got {density}")
        rng = np.random.default_rng(np.random.SeedSequence([self.seed % 2**63, 2]))
        rows, cols, vals = [], [], []
        for j in range(d):
            k = max(1, int(rng.binomial(D, self.density)))  # an empty column would make P e_j = 0
            idx = rng.choice(D, size=k, replace=False)
            rows.append(idx)
            cols.append(np.full(k, j))
            vals.append(rng.choice((-1.0, 1.0), size=k) / np.sqrt(k))
        index = torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(cols)]).astype(np.int64))
        values = torch.from_numpy(np.concatenate(vals).astype(np.float32))
        self.matrix_ = torch.sparse_coo_tensor(index, values, (D, d), check_invariants=True).coalesce()

    @property
    def nnz(self) -> int:
        return int(self.matrix_._nnz())

    def to(self, device: str | torch.device) -> SparseProjection:
        super().to(device)
        self.matrix_ = self.matrix_.to(self.device)
        return self

    def __call__(self, theta_d: torch.Tensor) -> torch.Tensor:
        return torch.sparse.mm(self.matrix_, theta_d.unsqueeze(1)).squeeze(1)

    def describe(self) -> dict:
        return {**super().describe(), "density": self.density, "nnz": self.nnz}


# --------------------------------------------------------------------------------------------------
# fastfood
# --------------------------------------------------------------------------------------------------


class _TiledGather(torch.autograd.Function):
    """``y[b, i] = h[b, Π_b[i] mod n]``: the permuted ``H_L pad(x)`` read from ``h = H_n x`` (see FastfoodProjection).

    The gradient folds back through the inverse permutation (a gather) and a sum over the ``L/n`` tiles,
    instead of a scatter-add into ``n`` bins.  (Torch path: CUDA, float64, no C compiler.)
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, index: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(inverse)
        ctx.n = h.shape[1]
        return torch.gather(h, 1, index)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        (inverse,) = ctx.saved_tensors
        unpermuted = torch.gather(grad, 1, inverse)
        return unpermuted.view(grad.shape[0], -1, ctx.n).sum(dim=1), None, None


class _NativeExpand(torch.autograd.Function):
    """``y = H_L (s G ⊙ h[Π mod n])`` in one native call (gather, scaling and transform fused, int32 indices).

    Backward: ``∂h[j] = Σ_{i: Π(i) mod n = j} (s G ⊙ H_L ∂y)_i``, the transform followed by a scatter-add
    into the ``n`` bins (which stay in cache).
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(index, scale)
        ctx.n = h.shape[1]
        return native.fastfood_expand(h.contiguous(), index, scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        index, scale = ctx.saved_tensors
        transformed = native.fwht_rows(grad.contiguous())
        return native.fastfood_scatter(transformed, index, scale, ctx.n), None, None


class _NativeOffsetPieces(torch.autograd.Function):
    """``θ₀ᵢ + (P θ_d)ᵢ`` (DID) or ``θ₀ᵢ + λᵢ (P θ_d)ᵢ`` (SAID) for consecutive blocks (``blocked``/``global``
    layouts), as flat pieces.

    The same native expansion as :class:`_NativeExpand`.  DID adds ``θ₀`` in place into its fresh output
    and returns the pieces as views of it; SAID keeps ``Δ = P θ_d`` for ``∂L/∂λᵢ = ⟨gᵢ, Δᵢ⟩`` and writes
    ``θ₀ᵢ + λᵢ Δᵢ`` into one second buffer.  The backward pass writes the pieces' gradients (times λᵢ)
    straight into the projection's reused ``(blocks, L)`` scratch buffer, zero past D, and transforms it
    in place: no other length-D temporary, each fresh one costing a page fault per 4 KiB.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, scales: torch.Tensor | None, index: torch.Tensor,  # noqa: D102
                gauss: torch.Tensor, bases: Sequence[torch.Tensor],
                scratch: Callable[[], torch.Tensor]) -> tuple[torch.Tensor, ...]:
        ctx.save_for_backward(index, gauss)
        ctx.n, ctx.scratch, ctx.sizes = h.shape[1], scratch, [b.numel() for b in bases]
        D = sum(ctx.sizes)  # noqa: N806
        delta = native.fastfood_expand(h.contiguous(), index, gauss).view(-1)[:D]
        if scales is None:
            ctx.delta, ctx.lambdas = None, None
            pieces = torch.split(delta, ctx.sizes)
            for piece, base in zip(pieces, bases, strict=True):
                piece.add_(base.detach().reshape(-1))
            return pieces
        ctx.delta, ctx.lambdas = delta, scales.detach().tolist()
        theta = torch.empty(D, dtype=torch.float32)
        pieces = torch.split(theta, ctx.sizes)
        for piece, base, part, lam in zip(pieces, bases, torch.split(delta, ctx.sizes), ctx.lambdas, strict=True):
            torch.add(base.detach().reshape(-1), part, alpha=lam, out=piece)
        return pieces

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # noqa: D102
        index, gauss = ctx.saved_tensors
        padded = ctx.scratch()
        flat, offset = padded.view(-1), 0
        grad_scales = None if ctx.lambdas is None else torch.zeros(len(ctx.sizes), dtype=torch.float32)
        for i, (size, grad) in enumerate(zip(ctx.sizes, grads, strict=True)):
            target = flat[offset:offset + size]
            if grad is None:
                target.zero_()
            elif ctx.lambdas is None:
                target.copy_(grad.reshape(-1))
            else:
                grad = grad.reshape(-1)
                grad_scales[i] = torch.dot(grad, ctx.delta[offset:offset + size])
                torch.mul(grad, ctx.lambdas[i], out=target)
            offset += size
        flat[offset:].zero_()
        transformed = native.fwht_rows(padded, out=padded)
        grad_h = native.fastfood_scatter(transformed, index, gauss, ctx.n)
        return grad_h, grad_scales, None, None, None, None


@dataclass(frozen=True)
class FastfoodBlock:
    """Rows ``[offset, offset + rows)`` of ``P``, computed by one transform of length ``length``."""

    offset: int
    rows: int
    length: int


def fastfood_blocks(D: int, d: int, layout: str, tensor_sizes: Sequence[int] | None = None,  # noqa: N803
                    block_bits: int = DEFAULT_BLOCK_BITS) -> list[FastfoodBlock]:
    """The row blocks of a Fastfood projection for ``layout`` (see module docstring)."""
    check_projection_options("fastfood", layout)
    if layout == "global":
        return [FastfoodBlock(0, D, next_power_of_two(D))]
    if layout == "per-tensor":
        if not tensor_sizes or sum(tensor_sizes) != D:
            raise RankscopeError("the per-tensor Fastfood layout needs the sizes of the tensors (summing to D)")
        offsets = np.concatenate([[0], np.cumsum(tensor_sizes)[:-1]])
        return [FastfoodBlock(int(o), int(n), next_power_of_two(max(int(n), d)))
                for o, n in zip(offsets, tensor_sizes, strict=True)]
    length = max(min(1 << block_bits, next_power_of_two(D)), next_power_of_two(d))  # blocked
    return [FastfoodBlock(o, min(length, D - o), length) for o in range(0, D, length)]


class FastfoodProjection(Projection):
    """``P x = concat_b s_b (H G_b Π_b H B_b pad(x))[:rows_b]`` (see module docstring).

    Blocks of equal length are transformed together as one ``(n_blocks, L)`` batch.
    """

    kind = "fastfood"

    def __init__(self, D: int, d: int, seed: int = 0, layout: str = "blocked",  # noqa: N803
                 tensor_sizes: Sequence[int] | None = None, block_bits: int = DEFAULT_BLOCK_BITS) -> None:
        super().__init__(D, d, seed)
        self.layout, self.block_bits = layout, block_bits
        self.blocks = fastfood_blocks(D, d, layout, tensor_sizes, block_bits)
        self.n = next_power_of_two(d)  # pad(x) is zero beyond n: H_L pad(x) is H_n x repeated L/n times
        # one group of consecutive blocks: P x is the transformed rows read as one vector, cut to D
        self.consecutive = layout != "per-tensor" and len({b.length for b in self.blocks}) == 1
        self._work: torch.Tensor | None = None  # see _scratch
        self.groups: list[dict] = []  # one per distinct block length
        for length in sorted({b.length for b in self.blocks}):
            members = [i for i, b in enumerate(self.blocks) if b.length == length]
            drawn = [self._draw(i, length) for i in members]
            self.groups.append({"length": length, "members": members,
                                "B": torch.stack([b for b, _, _ in drawn]),
                                "index": torch.stack([(p & (self.n - 1)).int() for _, p, _ in drawn]),
                                "G": torch.stack([g for _, _, g in drawn])})

    def _draw(self, block: int, length: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``B`` (its first n entries: the rest multiply zeros), ``Π`` and ``s·G`` of one block, from the seed."""
        gen = block_generator(self.seed, 3, block)
        signs = torch.randint(0, 2, (length,), generator=gen)[: self.n].float() * 2 - 1
        perm = torch.randperm(length, generator=gen)
        g = torch.randn(length, generator=gen)
        return signs, perm, g / torch.sqrt(self.D * g.double().square().sum()).float()

    def factors(self, block: int) -> dict[str, torch.Tensor]:
        """``B`` (first n entries), ``Π`` and ``s·G`` of one block, for checks."""
        if not 0 <= block < len(self.blocks):
            raise IndexError(block)
        signs, perm, scaled = self._draw(block, self.blocks[block].length)
        return {"B": signs, "Pi": perm, "sG": scaled}

    def _scratch(self) -> torch.Tensor:
        """The backward pass's ``(blocks, L)`` work buffer, kept between steps (one backward at a time)."""
        if self._work is None:
            group = self.groups[0]
            self._work = torch.empty(group["index"].shape, dtype=torch.float32)
        return self._work

    def _torch_tables(self, group: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """int64 ``Π mod n`` and ``Π⁻¹`` for the torch path, made (from the seed) on first use."""
        if "inverse" not in group:
            perm = torch.stack([self._draw(i, group["length"])[1] for i in group["members"]])
            group["index64"], group["inverse"] = (perm & (self.n - 1)).to(self.device), perm.argsort(dim=1).to(self.device)
        return group["index64"], group["inverse"]

    def to(self, device: str | torch.device) -> FastfoodProjection:
        super().to(device)
        for group in self.groups:
            for key in ("B", "index", "G", "index64", "inverse"):
                if key in group:
                    group[key] = group[key].to(self.device)
        return self

    def __call__(self, theta_d: torch.Tensor) -> torch.Tensor:
        """``s G Π H B pad(x)`` needs no length-L transform: pad(x) is zero past n = 2^⌈log₂ d⌉, and
        ``H_L = H_{L/n} ⊗ H_n`` has a first column of ones, so ``(H_L pad(x))_i = (H_n x)_{i mod n}``."""
        pieces: list[torch.Tensor | None] = [None] * len(self.blocks)
        for group in self.groups:
            h = self._short_transform(theta_d, group)
            if native.usable(h, group["G"]):                                   # H (s G) Π H_L B pad(x)
                y = _NativeExpand.apply(h, group["index"], group["G"])
            else:
                y = _TiledGather.apply(h, *self._torch_tables(group))          # Π H_L B pad(x)
                y = fwht(y.mul_(group["G"]))  # H (s G) …; in place: the gather saved nothing of its output
            if self.consecutive:
                return y.reshape(-1)[: self.D]  # consecutive blocks: one view, one slice (cheap backward)
            for i, row in zip(group["members"], y.unbind(0), strict=True):
                pieces[i] = row[: self.blocks[i].rows]
        return torch.cat(pieces)

    def offset_pieces(self, theta_d: torch.Tensor, bases: Sequence[torch.Tensor],
                      scales: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """As :meth:`Projection.offset_pieces`; fused into the native expansion for consecutive blocks."""
        group = self.groups[0]
        tensors = (theta_d, group["G"]) if scales is None else (theta_d, group["G"], scales)
        if self.consecutive and native.usable(*tensors):
            h = self._short_transform(theta_d, group)
            return _NativeOffsetPieces.apply(h, scales, group["index"], group["G"], list(bases), self._scratch)
        return super().offset_pieces(theta_d, bases, scales)

    def _short_transform(self, theta_d: torch.Tensor, group: dict) -> torch.Tensor:
        """``H_n B pad(x)``, one row per block of ``group`` (the only transform at length n, not L)."""
        x = torch.nn.functional.pad(theta_d, (0, self.n - self.d)).unsqueeze(0)
        return fwht(group["B"] * x)

    def kernel(self) -> str:
        return "native" if native.usable(self.groups[0]["G"]) else "torch"

    def describe(self) -> dict:
        return {**super().describe(), "layout": self.layout, "blocks": len(self.blocks),
                "transform_length": sum(b.length for b in self.blocks)}


def make_projection(kind: str, D: int, d: int, seed: int = 0, *, layout: str = "blocked",  # noqa: N803
                    tensor_sizes: Sequence[int] | None = None, block_bits: int = DEFAULT_BLOCK_BITS,
                    device: str | torch.device = "cpu") -> Projection:
    """A projection by name (``dense``, ``sparse`` or ``fastfood``) on ``device``."""
    check_projection_options(kind, layout)
    if kind == "dense":
        proj: Projection = DenseProjection(D, d, seed)
    elif kind == "sparse":
        proj = SparseProjection(D, d, seed)
    else:
        proj = FastfoodProjection(D, d, seed, layout, tensor_sizes, block_bits)
    return proj.to(device)
