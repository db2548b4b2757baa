"""The native (C) kernels of subspace training against independent references.

References: ``scipy.linalg.hadamard`` products and the radix-2 butterfly loop in float64, ``index_add_``
for the scatter, and the pure-torch Fastfood path (``native.disabled()``), which the other subspace tests
pin to the explicit ``s·H G Π H B`` product.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from torch import nn

from rankscope.subspace import native
from rankscope.subspace.fwht import fwht, fwht_butterfly
from rankscope.subspace.projections import FastfoodProjection
from rankscope.subspace.wrapper import SubspaceModel


def _rows(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, length, generator=torch.Generator().manual_seed(seed))


def _close_to_exact(ours: torch.Tensor, exact: torch.Tensor, length: int) -> None:
    """float32 against float64: rounding grows like √(log L) relative to the output scale √L·|x|."""
    scale = float(exact.abs().max())
    assert float((ours.double() - exact).abs().max()) <= 1e-5 * scale * max(1.0, np.log2(length))


@pytest.mark.parametrize("bits", range(0, 14))
def test_native_fwht_equals_the_hadamard_matrix_product(bits):
    length = 1 << bits
    x = _rows(3, length, bits)
    exact = x.double() @ torch.from_numpy(scipy.linalg.hadamard(length).astype(np.float64)).T
    _close_to_exact(native.fwht_rows(x), exact, length)


@pytest.mark.parametrize("bits,blocking", [(12, (3, 2)), (12, (0, 5)), (11, (4, 3)), (9, (2, 1)), (13, (12, 12)),
                                           (10, (1, 4)), (8, (8, 1))])
def test_every_pass_shape_gives_the_transform(bits, blocking):
    """Chunks and strip groups of every size (uneven group splits, strips narrower than a row) agree."""
    length = 1 << bits
    x = _rows(2, length, bits)
    exact = fwht_butterfly(x.double())
    _close_to_exact(native.fwht_rows(x, blocking=blocking), exact, length)


@pytest.mark.parametrize("bits", [16, 20, 22])
def test_long_rows_and_threads_give_the_same_transform(bits):
    length = 1 << bits
    x = _rows(1, length, bits)
    exact = fwht_butterfly(x.double())
    one = native.fwht_rows(x, threads=1)
    _close_to_exact(one, exact, length)
    for threads in (2, 3):  # every element takes the same additions whatever the split: bit-identical
        assert torch.equal(native.fwht_rows(x, threads=threads), one)


def test_in_place_transform_and_input_left_alone():
    x = _rows(4, 1 << 15, 1)
    keep = x.clone()
    out = native.fwht_rows(x)
    assert torch.equal(x, keep)
    assert torch.equal(native.fwht_rows(x, out=x), out)


def test_blocking_out_of_range_is_an_error():
    with pytest.raises(ValueError, match="blocking"):
        native.fwht_rows(_rows(1, 16), blocking=(3, 13))


def test_fwht_uses_native_for_float32_and_matches_the_torch_path():
    x = _rows(5, 1 << 14, 2).requires_grad_(True)
    g = _rows(5, 1 << 14, 3)
    y = fwht(x)
    y.backward(g)
    with native.disabled():
        assert not native.usable(x)
        x2 = x.detach().clone().requires_grad_(True)
        y2 = fwht(x2)
        y2.backward(g)
    assert native.usable(x.detach())
    assert torch.allclose(y, y2, atol=1e-3, rtol=1e-5)
    assert torch.allclose(x.grad, x2.grad, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("rows,length,n", [(3, 1 << 12, 1 << 5), (1, 1 << 18, 1 << 10), (2, 1 << 17, 1 << 17)])
def test_fastfood_expand_and_scatter_match_gather_and_index_add(rows, length, n):
    gen = torch.Generator().manual_seed(rows + n)
    h = torch.randn(rows, n, generator=gen)
    index = torch.randint(0, n, (rows, length), generator=gen, dtype=torch.int32)
    scale = torch.randn(rows, length, generator=gen)
    gathered = scale.double() * torch.gather(h.double(), 1, index.long())
    _close_to_exact(native.fastfood_expand(h, index, scale), fwht_butterfly(gathered), length)
    g = torch.randn(rows, length, generator=gen)
    exact = torch.zeros(rows, n, dtype=torch.float64).scatter_add_(1, index.long(), scale.double() * g.double())
    for threads in (1, 2):  # one row over two threads: per-thread partial bins, summed
        ours = native.fastfood_scatter(g, index, scale, n, threads=threads)
        assert torch.allclose(ours.double(), exact, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("layout", ["blocked", "global", "per-tensor"])
def test_native_fastfood_projection_equals_the_torch_path(layout):
    sizes = [3000, 700, 5000, 1]
    proj = FastfoodProjection(sum(sizes), 40, seed=5, layout=layout, tensor_sizes=sizes, block_bits=11)
    x = torch.randn(40, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g = torch.randn(sum(sizes), generator=torch.Generator().manual_seed(2))
    y = proj(x)
    (gx,) = torch.autograd.grad(y, x, g)
    with native.disabled():
        x2 = x.detach().clone().requires_grad_(True)
        y2 = proj(x2)
        (gx2,) = torch.autograd.grad(y2, x2, g)
    assert torch.allclose(y, y2, atol=1e-6, rtol=1e-4)
    assert torch.allclose(gx, gx2, atol=1e-5, rtol=1e-4)


class _TwoBranches(nn.Module):
    """Uses ``a`` always and ``b`` only when asked, so a piece can get no gradient at all."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 5)
        self.b = nn.Linear(6, 5)

    def forward(self, x, use_b: bool = True):
        out = self.a(x)
        return out + self.b(x) if use_b else out


@pytest.mark.parametrize("mode", ["did", "said"])
@pytest.mark.parametrize("use_b", [True, False])
def test_fused_offset_pieces_match_theta0_plus_delta_and_its_gradient(use_b, mode):
    x = torch.randn(16, 6, generator=torch.Generator().manual_seed(0))
    model = SubspaceModel(_TwoBranches(), 13, mode=mode, projection="fastfood", seed=3)
    trainable = [model.theta_d] + ([model.lambdas] if mode == "said" else [])
    with torch.no_grad():
        model.theta_d.copy_(torch.randn(model.theta_d.numel(), generator=torch.Generator().manual_seed(4)))
        if mode == "said":  # λ away from 1, so a wrong scaling shows
            model.lambdas.copy_(torch.tensor([0.5, -1.5, 2.0, 0.25]))
    fused = model.current_parameters()
    base = dict(model.module.named_parameters())
    delta = torch.split(model.delta().detach(), model.sizes)
    for i, ((name, value), piece) in enumerate(zip(fused.items(), delta, strict=True)):
        scale = float(model.lambdas.detach()[i]) if mode == "said" else 1.0
        assert torch.allclose(value, base[name] + scale * piece.view(value.shape), atol=1e-6)

    def grads() -> list[torch.Tensor]:
        for p in trainable:
            p.grad = None
        model(x, use_b=use_b).square().sum().backward()
        return [p.grad.clone() for p in trainable]

    fused_grads = grads()
    with native.disabled():
        reference = grads()
    again = grads()  # a second step reuses the scratch buffer: same gradient
    for ours, ref, second in zip(fused_grads, reference, again, strict=True):
        assert torch.allclose(ours, ref, atol=1e-5, rtol=1e-4)
        assert torch.allclose(second, ref, atol=1e-5, rtol=1e-4)
    if not use_b and mode == "said":  # b's λ's get no gradient, a's do
        assert torch.count_nonzero(fused_grads[1][2:]) == 0 and torch.count_nonzero(fused_grads[1][:2]) == 2


def test_a_failed_build_warns_and_falls_back(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSCOPE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(native, "_compiler", lambda: "/bin/false")  # a compiler that always fails
    native._library.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert not native.available()
        assert any("native kernels unavailable" in str(w.message) for w in caught)
        x = _rows(2, 64)
        assert torch.allclose(fwht(x), fwht_butterfly(x), atol=1e-4)  # the torch path
        assert not list(tmp_path.glob("*.so")) and not list(tmp_path.glob("*.tmp*"))  # nothing half-written
    finally:
        monkeypatch.undo()
        native._library.cache_clear()
    assert native.available()


def test_the_build_is_cached_by_a_key_of_source_compiler_and_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSCOPE_CACHE_DIR", str(tmp_path))
    first = native._build()
    assert first.parent == tmp_path and first.name.startswith("kernels-")
    stamp = first.stat().st_mtime_ns
    assert native._build() == first and first.stat().st_mtime_ns == stamp  # reused, not rebuilt


def test_the_kernels_refuse_memory_they_cannot_read():
    x = _rows(4, 64)
    with pytest.raises(ValueError, match="contiguous"):
        native.fwht_rows(x.t().contiguous().t())  # a transposed view
    with pytest.raises(ValueError, match="power-of-two"):
        native.fwht_rows(_rows(2, 48))
    with pytest.raises(ValueError, match="float32"):
        native.fwht_rows(x.double())
    index = torch.zeros(4, 64, dtype=torch.int64)
    with pytest.raises(ValueError, match="int32"):
        native.fastfood_expand(_rows(4, 8), index, x)
    with pytest.raises(ValueError, match="disagree"):
        native.fastfood_expand(_rows(3, 8), index.int(), x)


def test_an_unwritable_cache_folder_falls_back_to_a_temporary_one(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("RANKSCOPE_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(native.tempfile, "gettempdir", lambda: str(tmp_path))
    built = native._build()
    assert built.parent == tmp_path / f"rankscope-{os.getuid()}" and built.exists()
