"""Baseline for ``benchmarks/spectrum.py``: the obvious way to get every ΔW spectrum with torch.

For each 2-D tensor of BASE: load it and its FINETUNED counterpart with ``safetensors.safe_open``
(``framework="pt"``), subtract in float32 and call ``torch.linalg.svdvals`` (float32).  The spectra
are saved to OUT (an ``.npz`` keyed by tensor name).  Run as its own process so that the benchmark
can measure its wall time and peak RSS.

Usage: python benchmarks/_baseline_svdvals.py BASE_DIR FINETUNED_DIR OUT.npz
"""

from __future__ import annotations

import argparse
import json
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open


def weight_map(folder: Path) -> dict[str, Path]:
    """``tensor name -> shard file`` of a Hugging Face folder (sharded or single-file)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return {name: folder / shard for name, shard in json.loads(index.read_text())["weight_map"].items()}
    single = folder / "model.safetensors"
    with safe_open(single, framework="pt") as f:
        return dict.fromkeys(f.keys(), single)


def spectra(base: Path, finetuned: Path) -> dict[str, np.ndarray]:
    """``tensor name -> float32 singular values of (finetuned - base)`` for every 2-D tensor."""
    base_map, ft_map = weight_map(base), weight_map(finetuned)
    out: dict[str, np.ndarray] = {}
    with ExitStack() as stack:
        handles = {}

        def handle(path: Path):
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            return handles[path]

        for name, path in base_map.items():
            if name not in ft_map:
                continue
            b = handle(path).get_tensor(name)
            if b.dim() != 2:
                continue
            f = handle(ft_map[name]).get_tensor(name)
            delta = f.float() - b.float()
            del b, f
            out[name] = torch.linalg.svdvals(delta).numpy()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path)
    parser.add_argument("finetuned", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    np.savez(args.out, **spectra(args.base, args.finetuned))


if __name__ == "__main__":
    main()
