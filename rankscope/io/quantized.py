"""Exact dequantization of FP8 block-scaled and MXFP4 weights, and how to recognise them in a checkpoint.

Two quantized layouts of current LLM checkpoints are read as the real weights they stand for:

* **FP8 block-scaled** (DeepSeek-V3, Qwen3-FP8: ``quantization_config = {"quant_method": "fp8",
  "weight_block_size": [128, 128], ...}``): ``x.weight`` is ``F8_E4M3`` (or ``F8_E5M2``) of shape ``m x n``
  and ``x.weight_scale_inv`` holds one float per ``b_r x b_c`` block, shape ``ceil(m/b_r) x ceil(n/b_c)``;
  the weight is ``W[i, j] = q[i, j] · s[i // b_r, j // b_c]``.  The product of an FP8 value (4 significant
  bits) and a float32 scale (24) needs at most 28 bits, so it is formed **exactly** in float64.
* **MXFP4** (OCP Microscaling v1.0, gpt-oss ``quantization_config = {"quant_method": "mxfp4"}``):
  ``X_blocks`` (``U8``, ``[E, R, G, 16]``) packs 32 FP4 E2M1 values per block, two per byte, low nibble
  first; ``X_scales`` (``U8``, ``[E, R, G]``) is one E8M0 exponent per block, value ``2^(s - 127)``
  (``s = 255`` is NaN).  Dequantized, expert ``e`` is the ``R x 32G`` matrix ``fp4 · 2^(s-127)``, and — as
  transformers' ``convert_moe_packed_tensors`` does for gpt-oss — the stored weight ``X`` is its transpose,
  ``[E, 32G, R]``, the layout of the bf16 gpt-oss checkpoints (``[E, in, out]``).  Every value is exact in
  float64.

Anything else that is quantized (per-tensor FP8 scales, GPTQ/AWQ integers, NF4) is not dequantized here and
stays a reported skip.  This module knows shapes, dtypes and bytes only; :mod:`rankscope.io.checkpoints`
reads the bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

FP8_DTYPES = ("F8_E4M3", "F8_E5M2")
SCALE_DTYPES = ("F32", "BF16", "F16", "F64")
DEFAULT_FP8_BLOCK = (128, 128)
MX_BLOCK = 32
"""Values per MXFP4 block (16 bytes)."""

FP4_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
"""The 16 FP4 E2M1 values by code (OCP MX v1.0 §5.3.3): sign bit, 2 exponent bits (bias 1), 1 mantissa bit."""


def _fp8_table(exponent_bits: int, mantissa_bits: int, finite_only: bool) -> np.ndarray:
    """All 256 float64 values of an 8-bit float with the given field widths (IEEE-like, subnormals included).

    ``finite_only`` is E4M3FN (no infinities; only ``S.1111.111`` is NaN); otherwise IEEE rules (E5M2).
    """
    bias = 2 ** (exponent_bits - 1) - 1
    top = 2 ** exponent_bits - 1
    out = np.empty(256)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        exp = (code >> mantissa_bits) & top
        man = code & (2 ** mantissa_bits - 1)
        if finite_only and exp == top and man == 2 ** mantissa_bits - 1:
            value = math.nan
        elif not finite_only and exp == top:
            value = math.inf if man == 0 else math.nan
        elif exp == 0:
            value = man / 2 ** mantissa_bits * 2.0 ** (1 - bias)
        else:
            value = (1 + man / 2 ** mantissa_bits) * 2.0 ** (exp - bias)
        out[code] = sign * value
    return out


FP8_TABLES = {"F8_E4M3": _fp8_table(4, 3, True), "F8_E5M2": _fp8_table(5, 2, False)}
"""Code → float64 value of every FP8 byte (E4M3FN: max 448; E5M2: max 57344)."""


@dataclass(frozen=True)
class QuantSpec:
    """How one logical weight is stored: ``scheme`` (``fp8-block`` or ``mxfp4``), its physical tensors and block."""

    scheme: str
    parts: tuple[str, ...]  # fp8-block: (weight, weight_scale_inv); mxfp4: (X_blocks, X_scales)
    block: tuple[int, int] = (0, 0)  # fp8-block: rows x cols per scale


def fp8_values(codes: np.ndarray, dtype: str) -> np.ndarray:
    """Float64 values of FP8 codes (``uint8`` array) of ``dtype`` (``F8_E4M3`` or ``F8_E5M2``)."""
    return FP8_TABLES[dtype][codes]


def apply_block_scales(values: np.ndarray, scales: np.ndarray, block: tuple[int, int], row_start: int) -> np.ndarray:
    """``values[i, j] *= scales[(row_start + i) // b_r - first, j // b_c]`` in place; returns ``values``.

    ``scales`` are the scale rows from ``row_start // b_r`` on (float64), ``values`` the float64 rows from
    ``row_start``.  Every product is exact (see the module docstring).
    """
    br, bc = block
    first = row_start // br
    for k in range(scales.shape[0]):
        lo = max(0, (first + k) * br - row_start)
        hi = min(values.shape[0], (first + k + 1) * br - row_start)
        if lo >= hi:
            continue
        for j in range(scales.shape[1]):
            values[lo:hi, j * bc:(j + 1) * bc] *= scales[k, j]
    return values


def mxfp4_values(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Float64 ``R x 32G`` matrix from ``blocks`` (``uint8 [R, G, 16]``) and ``scales`` (``uint8 [R, G]``)."""
    rows, groups = scales.shape
    values = np.empty((rows, groups, MX_BLOCK))
    values[..., 0::2] = FP4_E2M1[blocks & 0x0F]
    values[..., 1::2] = FP4_E2M1[blocks >> 4]
    exponent = scales.astype(np.int64) - 127
    values = np.ldexp(values, exponent[..., None])
    values[scales == 255] = np.nan  # E8M0 NaN encoding
    return values.reshape(rows, groups * MX_BLOCK)


def _block_size(config: Mapping[str, Any] | None) -> tuple[int, int] | None:
    """``weight_block_size`` of an FP8 ``quantization_config`` (None when absent)."""
    q = (config or {}).get("quantization_config")
    size = q.get("weight_block_size") if isinstance(q, dict) else None
    if isinstance(size, list) and len(size) == 2 and all(type(v) is int and v > 0 for v in size):
        return size[0], size[1]
    return None


def find_quantized(tensors: Mapping[str, tuple[tuple[int, ...], str]], config: Mapping[str, Any] | None,
                   ) -> tuple[dict[str, tuple[tuple[int, ...], str, QuantSpec]], dict[str, str]]:
    """Recognise FP8 block-scaled and MXFP4 weights among ``{name: (shape, dtype)}``.

    Returns ``{logical name: (logical shape, dtype label, spec)}`` for every weight that will be dequantized,
    and ``{tensor: reason}`` for scale or packed tensors whose layout is inconsistent (they stay skipped).
    A weight whose parts are consumed is listed once under its logical name; its scale tensors are not
    tensors of the model any more.
    """
    found: dict[str, tuple[tuple[int, ...], str, QuantSpec]] = {}
    problems: dict[str, str] = {}
    config_block = _block_size(config)
    for name, (shape, dtype) in tensors.items():
        if dtype in FP8_DTYPES and f"{name}_scale_inv" in tensors:
            scale_name = f"{name}_scale_inv"
            s_shape, s_dtype = tensors[scale_name]
            block = config_block or DEFAULT_FP8_BLOCK
            expected = tuple(math.ceil(d / b) for d, b in zip(shape, block, strict=False))
            if len(shape) != 2 or s_dtype not in SCALE_DTYPES or tuple(s_shape) != expected:
                problems[name] = (f"FP8 weight with scale '{scale_name}' of shape {list(s_shape)} {s_dtype}: expected "
                                  f"a float scale per {block[0]}x{block[1]} block, shape {list(expected)}")
                continue
            found[name] = (tuple(shape), dtype, QuantSpec("fp8-block", (name, scale_name), block))
        elif name.endswith("_blocks") and dtype == "U8" and name[:-len("_blocks")] + "_scales" in tensors:
            logical = name[:-len("_blocks")]
            scale_name = logical + "_scales"
            s_shape, s_dtype = tensors[scale_name]
            ok = (len(shape) == 4 and shape[3] == MX_BLOCK // 2 and tuple(s_shape) == tuple(shape[:3])
                  and s_dtype in ("U8", "F8_E8M0"))
            if not ok:
                problems[name] = (f"MXFP4 blocks {list(shape)} with scales '{scale_name}' {list(s_shape)} {s_dtype}: "
                                  f"expected [E, R, G, 16] U8 blocks and [E, R, G] E8M0 scales")
                continue
            experts, rows, groups = shape[:3]
            found[logical] = ((experts, groups * MX_BLOCK, rows), "MXFP4", QuantSpec("mxfp4", (name, scale_name)))
    return found, problems
