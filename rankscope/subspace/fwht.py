"""Fast Walsh–Hadamard transform in torch: ``y = H_L x`` in O(L log L), differentiable.

``H_L`` is the unnormalised Sylvester–Hadamard matrix (``H_1 = [1]``, ``H_2n = [[H_n, H_n], [H_n, −H_n]]``;
the same matrix as ``scipy.linalg.hadamard``), so ``H_L H_L = L·I``: the transform is its own inverse
up to the factor ``1/L``, and symmetric, so its gradient is the same transform of the incoming gradient.

Vectorised butterflies.  The textbook transform runs ``log2 L`` radix-2 butterfly stages
``(a, b) -> (a + b, a − b)``, each a full pass over memory.  Because ``H_L = H_m ⊗ H_{L/m}`` for
``m = 2^k``, ``k`` consecutive stages are one multiplication by the small dense ``H_m``: this module
applies them as a single GEMM per pass and rotates the index bits so the next ``k`` bits are the
contiguous ones afterwards::

    pass:  X (L/m × m, contiguous)  ──  Y = H_m · Xᵀ  (m × L/m, written contiguously)

Viewing ``Y`` again as ``L/m × m`` exposes the next ``k`` bits; after passes whose ``k`` add up to
``log2 L`` every bit is back in place.  A pass costs ``2 m L`` flops and one read + one write of
``L`` numbers, so ``k = 4`` (``m = 16``) balances arithmetic against memory traffic on a 2-core CPU
(``benchmarks/subspace.py`` prints the throughput against the radix-2 loop and a dense matmul).
:func:`fwht_butterfly` keeps the plain radix-2 loop as an independent reference.

float32 CPU tensors go through the cache-blocked C transform of :mod:`.native` when it is available
(two passes over memory in all, ≈ 3× the GEMM passes); this torch path serves float64, CUDA and
machines without a C compiler, and is the reference the native kernel is tested against.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

from . import native

BITS_PER_PASS = 4
"""Butterfly stages fused into one GEMM pass (``m = 2^4 = 16``), measured fastest at L = 2^16…2^25."""


ROW_LOOP_LENGTH = 1 << 16
"""Rows at least this long are transformed one GEMM per row rather than as one batched GEMM."""


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def next_power_of_two(n: int) -> int:
    """Smallest power of two ``>= n`` (1 for n <= 1)."""
    return 1 << max(0, (int(n) - 1).bit_length())


@lru_cache(maxsize=64)
def _hadamard(m: int, dtype: torch.dtype, device: str) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=dtype, device=device)
    while h.shape[0] < m:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(m: int, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> torch.Tensor:
    """The ``m × m`` Sylvester–Hadamard matrix (entries ±1), ``m`` a power of two."""
    if not is_power_of_two(m):
        raise ValueError(f"Hadamard size must be a power of two, got {m}")
    return _hadamard(m, dtype, str(device))


def pass_plan(bits: int, per_pass: int = BITS_PER_PASS) -> list[int]:
    """Split ``bits`` butterfly stages into as few passes of at most ``per_pass`` stages, evenly sized."""
    if bits == 0:
        return []
    passes = math.ceil(bits / per_pass)
    base, extra = divmod(bits, passes)
    return [base + (1 if i < extra else 0) for i in range(passes)]


def _passes(src: torch.Tensor, dst_last: torch.Tensor, scratch: list[torch.Tensor], plan: list[int]) -> None:
    """Run the GEMM passes of ``plan`` on one row: ``src`` -> scratch buffers -> ``dst_last`` (all 1-D)."""
    length = src.shape[0]
    for i, k in enumerate(plan):
        m = 1 << k
        dst = dst_last if i == len(plan) - 1 else scratch[i % 2]
        torch.mm(hadamard(m, src.dtype, src.device), src.view(length // m, m).t(), out=dst.view(m, length // m))
        src = dst


def _fwht_raw(x: torch.Tensor, per_pass: int = BITS_PER_PASS) -> torch.Tensor:
    """``H_L`` applied to the last dimension of a 2-D ``(batch, L)`` tensor (no autograd).

    Long rows go one at a time through two reused scratch rows, so the intermediate passes stay in
    cache and only the final pass writes to the (fresh) output; short rows take one batched GEMM per pass.
    """
    batch, length = x.shape
    src = x.contiguous()  # only read
    plan = pass_plan(length.bit_length() - 1, per_pass)
    if batch == 1:  # ping-pong between two fresh buffers, the last one is the result
        buffers: list[torch.Tensor | None] = [None, None]
        for i, k in enumerate(plan):
            m = 1 << k
            dst = buffers[i % 2]
            if dst is None:
                dst = buffers[i % 2] = torch.empty_like(src)
            torch.mm(hadamard(m, src.dtype, src.device), src.view(length // m, m).t(), out=dst.view(m, length // m))
            src = dst
        return src if plan else src.clone()
    out = torch.empty_like(src)
    if length >= ROW_LOOP_LENGTH:
        scratch = [torch.empty(length, dtype=src.dtype, device=src.device) for _ in range(min(2, len(plan) - 1))]
        for row in range(batch):
            _passes(src[row], out[row], scratch, plan)
        return out
    buffers = [torch.empty_like(src) for _ in range(min(2, len(plan) - 1))]
    for i, k in enumerate(plan):
        m = 1 << k
        dst = out if i == len(plan) - 1 else buffers[i % 2]
        torch.matmul(hadamard(m, src.dtype, src.device), src.view(batch, length // m, m).transpose(1, 2),
                     out=dst.view(batch, m, length // m))
        src = dst
    return out


class _FWHT(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if native.usable(x):
            return native.fwht_rows(x.contiguous())
        return _fwht_raw(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: D102  (H is symmetric)
        return _FWHT.apply(grad)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Unnormalised Walsh–Hadamard transform ``H_L x`` of the last dimension (``L`` a power of two).

    Differentiable (the backward pass is the same transform); ``fwht(fwht(x)) == L * x``.
    """
    length = x.shape[-1]
    if not is_power_of_two(length):
        raise ValueError(f"fwht needs a power-of-two length, got {length}")
    if length == 1:
        return x.clone()
    return _FWHT.apply(x.reshape(-1, length)).reshape(x.shape)


def fwht_butterfly(x: torch.Tensor) -> torch.Tensor:
    """Reference radix-2 butterfly loop (one pass per stage): ``(a, b) -> (a + b, a − b)``."""
    length = x.shape[-1]
    if not is_power_of_two(length):
        raise ValueError(f"fwht needs a power-of-two length, got {length}")
    y, h = x.reshape(-1, length), 1
    while h < length:
        y = y.reshape(y.shape[0], length // (2 * h), 2, h)
        y = torch.stack((y[:, :, 0] + y[:, :, 1], y[:, :, 0] - y[:, :, 1]), dim=2)
        h *= 2
    return y.reshape(x.shape)
