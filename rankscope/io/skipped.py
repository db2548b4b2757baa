"""What an analysis leaves out: ``skipped_tensors`` entries, why a dtype is not analysed, and their console note.

Every tensor of a checkpoint or adapter that no analysis reads — only on one side, a dtype that is not a
float (FP8, integer, boolean, packed quantized), a shape that differs, an empty tensor — is one entry
``{"tensor", "checkpoint", "dtype", "reason"}``, so results say exactly what they do not cover.
"""

from __future__ import annotations


def dtype_reason(dtype: str, where: str = "") -> str:
    """Why a stored dtype is not analysed, e.g. ``dtype F8_E4M3 (FP8) is not analysed``."""
    if dtype.startswith("F8_"):
        family = "FP8"
    elif dtype in ("F4", "F6_E2M3", "F6_E3M2"):
        family = "microscaling FP4/FP6"
    elif dtype == "U8":
        family = "8-bit integer or packed quantized"
    elif dtype[:1] in ("I", "U") and dtype[1:].isdigit():
        family = "integer"
    elif dtype == "BOOL":
        family = "boolean"
    elif dtype == "C64":
        family = "complex"
    elif dtype.startswith(("qint", "quint")):  # torch's quantized dtypes in .bin files
        family = "quantized"
    else:
        family = "not a float32/float16/bfloat16/float64 type"
    return f"dtype {dtype} ({family}){where} is not analysed"


def skipped_entry(tensor: str, checkpoint: str, dtype: str, reason: str) -> dict[str, str]:
    """One entry of ``skipped_tensors`` (``run.json``)."""
    return {"tensor": tensor, "checkpoint": checkpoint, "dtype": dtype, "reason": reason}


def skipped_notes(skipped: list[dict[str, str]], shown: int = 3) -> list[str]:
    """``info["notes"]``: one console line summarising ``skipped_tensors`` (nothing when none were skipped).

    E.g. ``1 tensor not analysed (embeddings.position_ids: only in base, dtype I64); all are listed in
    run.json under skipped_tensors``.
    """
    if not skipped:
        return []

    def one(s: dict[str, str]) -> str:
        dtype = f", dtype {s['dtype']}" if s["reason"].startswith("only in") and s.get("dtype") else ""
        return f"{s['tensor']}: {s['reason']}{dtype}"

    listed = "; ".join(one(s) for s in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    count = f"{len(skipped)} tensor{'s' if len(skipped) != 1 else ''}"
    return [f"{count} not analysed ({listed}{more}); all are listed in run.json under skipped_tensors"]
