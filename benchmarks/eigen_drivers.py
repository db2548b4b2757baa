"""Which LAPACK eigenvalue driver and which Gram product ``rankscope.numerics.linalg.gram_spectrum`` should use.

What it measures, in one run (numbers printed as tables; the chosen figures are in the docstring of
``rankscope/numerics/linalg.py`` and in the README's Performance section):

1. **Drivers.** Values-only ``scipy.linalg.eigvalsh(G, driver=d)`` for ``d`` in ``ev`` (``syev``),
   ``evd`` (``syevd``), ``evr`` (``syevr``) and ``evx`` (``syevx``, all eigenvalues) on float64 PSD
   Gram matrices ``G = ΔWᵀΔW`` of a ``2n x n`` update shaped like a fine-tune (rank-64 part with
   σ_i ∝ 1/i plus a dense noise floor), for each size ``n`` and BLAS thread count.  The drivers are
   timed in turns (the order rotates every round), so a background job slows them all alike; median and
   minimum of ``--repeats`` rounds.  Accuracy: ``max |λ_d − λ_ev| / λ_max`` between the drivers and
   against ``numpy.linalg.eigvalsh`` (numpy's own LAPACK build, an independent implementation).
2. **Gram product.** ``gram += block.T @ block`` (numpy; does it dispatch to ``syrk``?  timed against the
   same product of two distinct buffers, which must use ``gemm``) against ``scipy.linalg.blas.dsyrk``
   accumulating one triangle in place (``beta=1``, ``lower=1``), on one ``--syrk-rows x --syrk-cols`` block,
   on the same rows as 32 MiB blocks (what ``pairing.deltas.delta_blocks`` yields) and on the wide case
   ``D Dᵀ``; plus the end-to-end ``gram_spectrum`` time of both routes and their eigenvalue difference.

Each table row also gives the CPUs other processes kept busy meanwhile (``/proc/stat`` minus this process).

Usage::

    .venv/bin/python benchmarks/eigen_drivers.py [--sizes 256,512,1024,2048,4096] [--threads 2,1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import scipy.linalg.blas
from threadpoolctl import threadpool_limits

DRIVERS = ("ev", "evd", "evr", "evx")
BLOCK_BYTES = 32 * 1024 * 1024  # as rankscope.pairing.deltas.BLOCK_BYTES


# --------------------------------------------------------------------------------------------------
# load of other processes
# --------------------------------------------------------------------------------------------------


class OtherLoad:
    """CPUs' worth of work done by *other* processes between ``start()`` and ``stop()`` (Linux; else ``nan``)."""

    def __init__(self) -> None:
        self._t0 = self._busy0 = self._own0 = 0.0

    @staticmethod
    def _busy_seconds() -> float:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_seconds() -> float:
        t = os.times()
        return t.user + t.system

    def start(self) -> OtherLoad:
        self._t0 = time.perf_counter()
        try:
            self._busy0 = self._busy_seconds()
        except (OSError, ValueError, IndexError):
            self._busy0 = float("nan")
        self._own0 = self._own_seconds()
        return self

    def stop(self) -> float:
        wall = time.perf_counter() - self._t0
        try:
            busy = self._busy_seconds() - self._busy0
        except (OSError, ValueError, IndexError):
            return float("nan")
        own = self._own_seconds() - self._own0
        return max(0.0, busy - own) / max(wall, 1e-9)


# --------------------------------------------------------------------------------------------------
# test matrices
# --------------------------------------------------------------------------------------------------


def update_like(rows: int, cols: int, seed: int = 0, rank: int = 64, noise_share: float = 0.1) -> np.ndarray:
    """A float64 ``rows x cols`` matrix like a fine-tuning update: rank-``rank`` part (σ_i ∝ 1/i) + dense noise."""
    rng = np.random.default_rng(seed)
    k = min(rank, rows, cols)
    u = np.linalg.qr(rng.standard_normal((rows, k)))[0]
    v = np.linalg.qr(rng.standard_normal((cols, k)))[0]
    sigma = 1.0 / np.arange(1, k + 1)
    sigma *= np.sqrt(1.0 - noise_share) / np.linalg.norm(sigma)
    d = (u * sigma) @ v.T
    d += (np.sqrt(noise_share) / np.sqrt(rows * cols)) * rng.standard_normal((rows, cols))
    return d


def gram_of(n: int, seed: int = 0) -> np.ndarray:
    """The ``n x n`` Gram matrix ``DᵀD`` of a ``2n x n`` update (float64, Fortran order, both triangles)."""
    d = update_like(2 * n, n, seed)
    return np.asfortranarray(d.T @ d)


# --------------------------------------------------------------------------------------------------
# 1. drivers
# --------------------------------------------------------------------------------------------------


@dataclass
class DriverRow:
    """Timings of every driver at one size and thread count, and their agreement."""

    n: int
    threads: int
    seconds: dict[str, list[float]] = field(default_factory=dict)
    rel_diff_vs_ev: dict[str, float] = field(default_factory=dict)
    rel_diff_vs_numpy: float = 0.0
    other_cpus: float = 0.0

    def median(self, driver: str) -> float:
        return statistics.median(self.seconds[driver])

    def fastest(self) -> str:
        return min(self.seconds, key=self.median)


def _eig(g: np.ndarray, driver: str) -> tuple[float, np.ndarray]:
    a = g.copy(order="F")
    t0 = time.perf_counter()
    lam = scipy.linalg.eigvalsh(a, overwrite_a=True, check_finite=False, driver=driver)
    return time.perf_counter() - t0, lam


def time_drivers(g: np.ndarray, threads: int, repeats: int, drivers: Sequence[str] = DRIVERS) -> DriverRow:
    """Time the drivers in rotating turns, ``repeats`` rounds, with ``threads`` BLAS threads."""
    row = DriverRow(g.shape[0], threads, {d: [] for d in drivers})
    values: dict[str, np.ndarray] = {}
    load = OtherLoad().start()
    with threadpool_limits(limits=threads, user_api="blas"):
        for r in range(repeats):
            for i in range(len(drivers)):
                d = drivers[(i + r) % len(drivers)]
                seconds, lam = _eig(g, d)
                row.seconds[d].append(seconds)
                values.setdefault(d, lam)
        row.other_cpus = load.stop()
        ref_numpy = np.linalg.eigvalsh(g)
    scale = float(np.max(np.abs(values[drivers[0]])))
    row.rel_diff_vs_ev = {d: float(np.max(np.abs(values[d] - values[drivers[0]]))) / scale for d in drivers}
    row.rel_diff_vs_numpy = max(float(np.max(np.abs(values[d] - ref_numpy))) / scale for d in drivers)
    return row


def render_drivers(rows: Sequence[DriverRow]) -> str:
    drivers = list(rows[0].seconds)
    head = (f"{'n':>5} {'thr':>3} " + " ".join(f"{d + ' med/min s':>17}" for d in drivers)
            + f" {'fastest':>7} {'max|Δλ|/λmax drivers':>20} {'vs numpy':>9} {'other CPUs':>10}")
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = " ".join(f"{r.median(d):>8.4f}/{min(r.seconds[d]):<8.4f}" for d in drivers)
        lines.append(f"{r.n:>5} {r.threads:>3} {cells} {r.fastest():>7} {max(r.rel_diff_vs_ev.values()):>20.1e} "
                     f"{r.rel_diff_vs_numpy:>9.1e} {r.other_cpus:>10.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# 2. Gram product: numpy matmul against dsyrk
# --------------------------------------------------------------------------------------------------


def numpy_gram(blocks: Sequence[np.ndarray], cols: int) -> np.ndarray:
    """``gram += block.T @ block`` over row blocks (the route gram_spectrum took before this benchmark)."""
    gram = np.zeros((cols, cols))
    for block in blocks:
        gram += block.T @ block
    return gram


def gemm_gram(blocks: Sequence[np.ndarray], copies: Sequence[np.ndarray], cols: int) -> np.ndarray:
    """The same sum with the right factor a distinct buffer, so numpy cannot use syrk (must be gemm)."""
    gram = np.zeros((cols, cols))
    for block, other in zip(blocks, copies, strict=True):
        gram += block.T @ other
    return gram


def syrk_gram(blocks: Sequence[np.ndarray], cols: int) -> np.ndarray:
    """Lower triangle of ``Σ blockᵀ block`` accumulated in place by ``dsyrk`` (``beta=1``); upper triangle zero."""
    gram = np.zeros((cols, cols), order="F")
    for block in blocks:
        gram = scipy.linalg.blas.dsyrk(1.0, block.T, beta=1.0, c=gram, trans=0, lower=1, overwrite_c=1)
    return gram


def split_rows(d: np.ndarray, block_bytes: int = BLOCK_BYTES) -> list[np.ndarray]:
    step = max(1, block_bytes // (8 * d.shape[1]))
    return [np.ascontiguousarray(d[i:i + step]) for i in range(0, d.shape[0], step)]


def _interleaved(funcs: dict[str, Callable[[], object]], threads: int, repeats: int) -> tuple[dict[str, list[float]], float]:
    times: dict[str, list[float]] = {k: [] for k in funcs}
    names = list(funcs)
    load = OtherLoad().start()
    with threadpool_limits(limits=threads, user_api="blas"):
        for r in range(repeats):
            for i in range(len(names)):
                name = names[(i + r) % len(names)]
                t0 = time.perf_counter()
                funcs[name]()
                times[name].append(time.perf_counter() - t0)
    return times, load.stop()


def lower_equal(a: np.ndarray, b: np.ndarray) -> float:
    """``max |tril(a) − tril(b)| / max |b|``."""
    return float(np.max(np.abs(np.tril(a) - np.tril(b)))) / float(np.max(np.abs(b)))


def gram_products(rows: int, cols: int, threads: int, repeats: int) -> list[tuple[str, list[float], float]]:
    """``(label, seconds per round, other CPUs)`` for each Gram route; prints the exactness checks."""
    from rankscope.numerics import linalg

    d = update_like(rows, cols, seed=1)
    one = [d]
    copy = [d.copy()]
    blocks = split_rows(d)
    wide = np.ascontiguousarray(d.T)  # cols x rows: gram = wide @ wide.T
    funcs: dict[str, Callable[[], object]] = {
        f"numpy block.T @ block, 1 block {rows}x{cols}": lambda: numpy_gram(one, cols),
        f"numpy block.T @ other (gemm), 1 block {rows}x{cols}": lambda: gemm_gram(one, copy, cols),
        f"dsyrk lower beta=1, 1 block {rows}x{cols}": lambda: syrk_gram(one, cols),
        f"numpy, {len(blocks)} blocks of {blocks[0].shape[0]} rows": lambda: numpy_gram(blocks, cols),
        f"dsyrk, {len(blocks)} blocks of {blocks[0].shape[0]} rows": lambda: syrk_gram(blocks, cols),
        f"numpy wide D @ D.T, {cols}x{rows}": lambda: wide @ wide.T,
        f"dsyrk wide trans=1, {cols}x{rows}": lambda: scipy.linalg.blas.dsyrk(1.0, wide.T, trans=1, lower=1),
        f"gram_spectrum end to end, {len(blocks)} blocks": lambda: linalg.gram_spectrum(iter(blocks), rows, cols),
        f"numpy gram + eigvalsh ev, {len(blocks)} blocks": lambda: scipy.linalg.eigvalsh(
            numpy_gram(blocks, cols), overwrite_a=True, check_finite=False, driver="ev"),
    }
    times, other = _interleaved(funcs, threads, repeats)
    with threadpool_limits(limits=threads, user_api="blas"):
        ref = numpy_gram(one, cols)
        checks = {
            "dsyrk 1 block vs numpy (lower triangle)": lower_equal(syrk_gram(one, cols), ref),
            "dsyrk blocks vs numpy 1 block": lower_equal(syrk_gram(blocks, cols), ref),
            "dsyrk wide vs numpy wide": lower_equal(scipy.linalg.blas.dsyrk(1.0, wide.T, trans=1, lower=1),
                                                    wide @ wide.T),
        }
        lam_syrk = scipy.linalg.eigvalsh(syrk_gram(blocks, cols), lower=True, driver="ev")
        lam_numpy = scipy.linalg.eigvalsh(numpy_gram(blocks, cols), driver="ev")
        sigma = linalg.gram_spectrum(iter(blocks), rows, cols)
    checks["eigvalsh(dsyrk lower) vs eigvalsh(numpy), |Δλ|/λmax"] = (
        float(np.max(np.abs(lam_syrk - lam_numpy))) / float(lam_numpy[-1]))
    ref_sigma = scipy.linalg.svdvals(d)
    checks["gram_spectrum vs float64 gesdd, max|Δσ|/σ₁"] = float(np.max(np.abs(sigma - ref_sigma))) / ref_sigma[0]
    for name, value in checks.items():
        print(f"  check ({threads} thr): {name}: {value:.1e}")
    return [(name, t, other) for name, t in times.items()]


def render_products(results: Sequence[tuple[int, list[tuple[str, list[float], float]]]]) -> str:
    head = f"{'thr':>3} {'Gram route':<52} {'median s':>9} {'min s':>8} {'other CPUs':>10}"
    lines = [head, "-" * len(head)]
    for threads, rows in results:
        for name, t, other in rows:
            lines.append(f"{threads:>3} {name:<52} {statistics.median(t):>9.4f} {min(t):>8.4f} {other:>10.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=_ints, default=[256, 512, 1024, 2048, 4096], help="Gram sizes n.")
    p.add_argument("--threads", type=_ints, default=[2, 1], help="BLAS thread counts (threadpoolctl).")
    p.add_argument("--repeats", type=int, default=5, help="Rounds of interleaved timings (median, min).")
    p.add_argument("--drivers", default=",".join(DRIVERS), help="scipy eigvalsh drivers to compare.")
    p.add_argument("--syrk-rows", type=int, default=8192, help="Rows of the Gram-product block.")
    p.add_argument("--syrk-cols", type=int, default=2048, help="Columns of the Gram-product block (Gram size).")
    p.add_argument("--skip-drivers", action="store_true", help="Only the Gram-product part.")
    p.add_argument("--skip-syrk", action="store_true", help="Only the driver part.")
    args = p.parse_args(argv)
    args.drivers = tuple(d.strip() for d in args.drivers.split(",") if d.strip())
    if args.repeats < 1 or not args.sizes or not args.threads:
        p.error("--repeats must be at least 1 and --sizes/--threads non-empty")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"scipy {scipy.__version__}, numpy {np.__version__}, {os.cpu_count()} CPUs; "
          f"{args.repeats} interleaved rounds", flush=True)
    if not args.skip_drivers:
        rows: list[DriverRow] = []
        for n in args.sizes:
            g = gram_of(n)
            for threads in args.threads:
                rows.append(time_drivers(g, threads, args.repeats, args.drivers))
                print(render_drivers(rows[-1:]).splitlines()[-1], flush=True)
        print("\nvalues-only eigvalsh, seconds (median/min of interleaved rounds):")
        print(render_drivers(rows))
    if not args.skip_syrk:
        results = []
        for threads in args.threads:
            results.append((threads, gram_products(args.syrk_rows, args.syrk_cols, threads, args.repeats)))
        print("\nGram products (float64):")
        print(render_products(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
