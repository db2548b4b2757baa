"""All singular values of a matrix that arrives as blocks of rows, exactly.

Methods (``method=``):

``gram``  (CPU default for matrices with ``min(m, n) > SMALL``)
    Accumulate the Gram matrix of the smaller side in float64 (``G = sum_i D_i^T D_i`` over row
    blocks for tall matrices, ``G = D D^T`` for wide ones) and take ``sigma = sqrt(eigvalsh(G))``
    with LAPACK's symmetric tridiagonal solver.  Because ``G`` is formed in float64, the absolute
    error of every singular value is at most about ``sqrt(n * eps64) * sigma_1 ~ 1e-7 sigma_1``
    (docs/design-notes.md §2 shows the float32 Gram loses the tail; float64 does not).  Measured once on
    2 cores: about 3x faster than ``gesdd`` at 1024 x 1024 and 4x at 2816 x 1024, and the only method
    whose memory does not grow with the row count.

    *Gram product* (see :func:`gram_spectrum` for why numpy's product and eigensolver are used: they release
    the GIL, scipy's ``dsyrk`` / ``syev`` wrappers do not, so the table's single-call gain of ``dsyrk`` is lost
    to serialised workers).  ``block.T @ block`` in numpy already calls BLAS ``syrk`` (median 0.68 s with one thread on
    an 8192 x 2048 float64 block against 1.27 s for the same product of two distinct buffers, ``gemm``), but
    then mirrors the triangle and adds a temporary ``n x n`` result into ``G``.  ``dsyrk`` with ``beta = 1``
    accumulates the lower triangle in place instead: the same sums (bit-identical ``G`` in the measurement),
    no ``n x n`` temporary (half the Gram memory: 32 MiB at n = 2048, 512 MiB at 8192) and faster.  Over
    32 MiB row blocks of that matrix (2026-12-01, 2 cores, a background job holding 1.1-1.3 CPUs, medians of
    7 interleaved rounds, ``benchmarks/eigen_drivers.py``):

    ==============================================  ===============  ===============
    route                                           1 thread         2 threads
    ==============================================  ===============  ===============
    numpy ``gram += block.T @ block``, 4 blocks     0.82 s           1.49 s
    ``dsyrk`` lower, ``beta = 1``, 4 blocks         **0.63 s**       **1.35 s**
    whole ``gram_spectrum`` (numpy product)         1.28 s           3.90 s
    whole ``gram_spectrum`` (``dsyrk``)             **1.04 s**       **3.58 s**
    ==============================================  ===============  ===============

    (an earlier run: 0.95 against 1.37 s and 1.63 against 1.73 s for the blocked products).  Wide matrices
    use ``dsyrk`` on ``Dᵀ`` (``trans = 1``): 0.65 s against 0.67 s for numpy's ``D @ D.T`` at 2048 x 8192.

    *Eigenvalue driver.*  For eigenvalues only, every LAPACK driver runs the same algorithm — ``sytrd``
    to tridiagonal form, then the root-free QR of ``sterf`` (``syevd``, and ``syevr`` / ``syevx`` when all
    eigenvalues are wanted, call ``sterf`` too) — and they agree to max |Δλ| / λ_max ≤ 1.0e-16 with each
    other and with ``numpy.linalg.eigvalsh``.  Median / minimum seconds of 7 interleaved rounds on PSD
    Grams ``DᵀD`` of ``2n x n`` fine-tune-like updates (2026-12-01, 2 cores, background job ~1.4 CPUs):

    =====  ===  ===============  ===============  ===============  ===============
    n      thr  ev (syev)        evd (syevd)      evr (syevr)      evx (syevx)
    =====  ===  ===============  ===============  ===============  ===============
    256    1    0.0019 / 0.0018  0.0019 / 0.0018  0.0019 / 0.0018  0.0104 / 0.0018
    256    2    0.0105 / 0.0017  0.0216 / 0.0017  0.0079 / 0.0016  0.0100 / 0.0016
    512    1    0.0145 / 0.0091  0.0154 / 0.0090  0.0131 / 0.0090  0.0171 / 0.0132
    512    2    0.0604 / 0.0152  0.0324 / 0.0232  0.0751 / 0.0403  0.0234 / 0.0208
    1024   1    0.0708 / 0.0637  0.0762 / 0.0672  0.0628 / 0.0520  0.0672 / 0.0525
    1024   2    0.318 / 0.163    0.319 / 0.233    0.365 / 0.144    0.361 / 0.147
    2048   1    0.832 / 0.412    0.611 / 0.452    0.831 / 0.375    0.865 / 0.498
    2048   2    2.21 / 0.83      1.71 / 0.60      2.09 / 1.64      2.17 / 0.95
    4096   1    10.3 / 5.87      10.7 / 4.95      8.39 / 4.81      7.25 / 4.78
    4096   2    17.6 / 10.6      18.0 / 12.2      15.1 / 10.8      26.7 / 15.9
    =====  ===  ===============  ===============  ===============  ===============

    The "fastest" driver changes from size to size and from run to run (a second run of 15 rounds at
    512-2048 named ``evx``, ``evd``, ``ev``, ``ev``, ``evd``, ``evx`` for its six cells): the differences are noise, so there is
    no size threshold, and the choice is made on another ground: ``numpy.linalg.eigvalsh`` (``syevd``) releases
    the GIL where SciPy's wrappers do not (:func:`gram_spectrum`).  What does matter is oversubscription: with
    other work on the machine two BLAS threads per call were 2-4x *slower* than one, which is why parallel
    workers run single-threaded BLAS (``pairing.deltas.run_parallel``).
``svd``  (CPU default for small matrices)
    LAPACK ``gesdd`` singular values of the dense float64 matrix (``scipy.linalg.svdvals``).
``torch``  (default with ``device='cuda'``)
    The Gram method in float64 with torch on any device (``torch.linalg.eigvalsh``).

The matrices here are differences of two float32 checkpoints, formed in float64 by the caller,
so the float64 reference of the tests and the benchmark is exactly the matrix analysed.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import scipy.linalg  # imported eagerly: its own OpenBLAS must be loaded before threadpool limits are applied
import scipy.linalg.blas

SMALL = 64
"""At or below this smaller dimension, LAPACK SVD directly is as fast as the Gram route."""

METHODS = ("auto", "gram", "svd", "torch")



def choose_method(rows: int, cols: int, device: str = "cpu", method: str = "auto") -> str:
    """The method to use for an ``rows x cols`` matrix (see module docstring)."""
    if method != "auto":
        return method
    if device != "cpu":
        return "torch"
    return "svd" if min(rows, cols) <= SMALL else "gram"


def _sigma_from_eigenvalues(lam: np.ndarray) -> np.ndarray:
    """Singular values from Gram eigenvalues: clip round-off negatives, sqrt, sort descending."""
    return np.sqrt(np.clip(lam, 0.0, None))[::-1].copy()


def gram_spectrum(blocks: Iterable[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Singular values (descending, float64) of the ``rows x cols`` matrix given as row blocks.

    The float64 Gram matrix is accumulated with numpy's matmul (``block.T @ block``, which numpy sends to
    BLAS ``syrk``), and its eigenvalues are taken by ``numpy.linalg.eigvalsh`` (LAPACK ``syevd``).  Both
    release the GIL, so the parallel worker threads of :func:`rankscope.pairing.deltas.run_parallel` really
    run in parallel: scipy's f2py wrappers of ``dsyrk`` and ``syev`` hold it, which serialised the workers
    (measured 2026-12-01, 2 cores, one BLAS thread each: two threads of scipy ``dsyrk`` on 4096 x 2048 took
    0.58 s against 0.58 s one after the other, numpy's product 0.38 s against 0.64 s; scipy ``eigvalsh``
    of a 1536 x 1536 Gram 0.30 s against 0.35 s, numpy's 0.17 s against 0.33 s, the same eigenvalues).
    """
    if rows == 0 or cols == 0:
        for _ in blocks:  # the caller's generator still runs (its checks, its norms)
            pass
        return np.zeros(0)
    if rows >= cols:
        gram = np.zeros((cols, cols))
        for block in blocks:
            if block.shape[0]:
                b = np.asarray(block, dtype=np.float64)  # no copy for the float64 blocks of the callers
                gram += b.T @ b
    else:
        full = np.concatenate([np.asarray(b, dtype=np.float64) for b in blocks], axis=0)
        gram = full @ full.T
    lam = np.linalg.eigvalsh(gram, UPLO="L")
    return _sigma_from_eigenvalues(lam)


def svd_spectrum(blocks: Iterable[np.ndarray], rows: int, cols: int) -> np.ndarray:
    """Singular values by LAPACK ``gesdd`` of the assembled float64 matrix."""
    full = np.concatenate(list(blocks), axis=0) if rows else np.zeros((0, cols))
    if min(full.shape) == 0:
        return np.zeros(0)
    return scipy.linalg.svdvals(full, overwrite_a=True, check_finite=False).astype(np.float64)


def torch_spectrum(blocks: Iterable[np.ndarray], rows: int, cols: int, device: str,
                   block_bytes: int = 32 * 1024 * 1024) -> np.ndarray:
    """The float64 Gram method with torch on ``device`` (e.g. ``cuda``), the device holding the Gram matrix and
    one slice of at most ``block_bytes`` of the matrix at a time.

    Tall (``rows >= cols``): ``G = Σ DᵢᵀDᵢ`` over row slices as they arrive.  Wide: the row blocks are joined on
    the host (as the CPU route does) and ``G = Σ D[:, j]D[:, j]ᵀ`` runs over column slices.
    """
    import torch

    def slices(matrix: np.ndarray, axis: int) -> Iterable[torch.Tensor]:
        other = matrix.shape[1 - axis]
        step = max(1, block_bytes // (8 * max(1, other)))
        for start in range(0, matrix.shape[axis], step):
            part = matrix[start:start + step] if axis == 0 else matrix[:, start:start + step]
            yield torch.from_numpy(np.ascontiguousarray(part, dtype=np.float64)).to(device)

    if rows >= cols:
        gram = torch.zeros((cols, cols), dtype=torch.float64, device=device)
        for block in blocks:
            for d in slices(block, 0):
                gram.addmm_(d.T, d)
    else:
        full = np.concatenate(list(blocks), axis=0) if rows else np.zeros((0, cols))
        gram = torch.zeros((rows, rows), dtype=torch.float64, device=device)
        for d in slices(full, 1):
            gram.addmm_(d, d.T)
    if gram.shape[0] == 0:
        return np.zeros(0)
    lam = torch.linalg.eigvalsh(gram).cpu().numpy()
    return _sigma_from_eigenvalues(lam)


def spectrum_of_blocks(blocks: Iterable[np.ndarray], rows: int, cols: int, method: str, device: str = "cpu") -> np.ndarray:
    """Dispatch to the chosen method; ``blocks`` are float64 row blocks of the matrix."""
    if method == "gram":
        return gram_spectrum(blocks, rows, cols)
    if method == "svd":
        return svd_spectrum(blocks, rows, cols)
    if method == "torch":
        return torch_spectrum(blocks, rows, cols, device)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
