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
    """Singular values (descending, float64) of the ``rows x cols`` matrix given as row blocks."""
    if rows >= cols:
        gram = np.zeros((cols, cols))
        for block in blocks:
            gram += block.T @ block
    else:
        full = np.concatenate(list(blocks), axis=0) if rows else np.zeros((0, cols))
        gram = full @ full.T
    if gram.shape[0] == 0:
        return np.zeros(0)
    lam = scipy.linalg.eigvalsh(gram, overwrite_a=True, check_finite=False, driver="ev")
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
