"""Read a peft LoRA adapter into per-module low-rank factors ``ΔW = s · B · A``.

``B`` is ``out x r``, ``A`` is ``r x in`` and ``s = alpha / r`` (``alpha / sqrt(r)`` with
``use_rslora``), with ``rank_pattern`` / ``alpha_pattern`` overriding ``r`` / ``alpha`` per module
under peft's matching rule (a pattern matches a module whose name equals it or ends with
``"." + pattern``, regular expressions allowed; :func:`rankscope.io.peft.pattern_value`).  Orientation is always ``out x in`` (for
``fan_in_fan_out`` / GPT-2 ``Conv1D`` layers peft also stores ``B`` as ``out x r``; only the base
weight is transposed).  Embedding LoRA (``lora_embedding_A`` ``r x num_embeddings``,
``lora_embedding_B`` ``dim x r``) becomes ``B = A_emb^T``, ``A = B_emb^T`` so that ``ΔW`` has the
embedding's ``num_embeddings x dim`` layout.

DoRA (``use_dora``, Liu et al. 2024): with magnitude ``m`` (one entry per output row) the merged
weight is ``m ⊙ (W + sBA) / ||W + sBA||_row``, so the effective update
``ΔW = diag(m / ||W + sBA||_row) (W + sBA) - W`` is dense and needs the base weight.

Key layouts accepted: current peft (``base_model.model.<module>.lora_A.weight``), older files
with the adapter name kept (``...lora_A.default.weight``), and files without the
``base_model.model.`` prefix.  Tensors that are not LoRA factors are ``modules_to_save`` copies
(e.g. a classifier head) and are diffed densely against the base.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import RankscopeError
from .peft import LORA_KEY, PEFT_PREFIX, check_lora_fields, lora_scale, pattern_value, saved_module_key
from .skipped import dtype_reason, skipped_entry


@dataclass
class LoraModule:
    """One adapted module: ``ΔW = scale · B @ A`` (``out x in``), or the DoRA form with ``magnitude``."""

    module: str
    B: np.ndarray  # out x r, float64
    A: np.ndarray  # r x in, float64
    scale: float
    alpha: float
    embedding: bool = False
    magnitude: np.ndarray | None = None  # DoRA, one entry per output row

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.B.shape[0]), int(self.A.shape[1])

    def factored_svd(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Thin SVD ``U, σ, Vᵀ`` of ``scale·B·A`` from the factors alone (no ``out x in`` product).

        ``B = Q_B R_B`` and ``Aᵀ = Q_A R_A`` (reduced QR) give ``B A = Q_B (R_B R_Aᵀ) Q_Aᵀ``; the SVD of
        the ``r x r`` core ``R_B R_Aᵀ = U_c Σ V_cᵀ`` yields ``U = Q_B U_c``, ``V = Q_A V_c``.
        """
        q_b, r_b = np.linalg.qr(self.B)
        q_a, r_a = np.linalg.qr(self.A.T)
        u_c, s, vt_c = np.linalg.svd(r_b @ r_a.T)
        return q_b @ u_c, self.scale * s, vt_c @ q_a.T

    def singular_values(self) -> np.ndarray:
        """All ``min(out, in)`` singular values of ``ΔW`` (zeros beyond ``r``), descending."""
        s = self.factored_svd()[1]
        full = np.zeros(min(self.shape))
        full[: s.size] = s[: full.size]
        return full

    def delta(self, base_weight: np.ndarray | None = None) -> np.ndarray:
        """Dense ``ΔW`` (``out x in``, float64); DoRA needs the (oriented) base weight."""
        low_rank = self.scale * (self.B @ self.A)
        if self.magnitude is None:
            return low_rank
        if base_weight is None:
            raise RankscopeError(f"module '{self.module}' uses DoRA: its update needs the base model (--base)")
        merged = base_weight + low_rank
        norms = np.linalg.norm(merged, axis=1)
        return (self.magnitude / norms)[:, None] * merged - base_weight


@dataclass
class Adapter:
    """A peft LoRA adapter: its config, its low-rank modules and its fully trained extra modules."""

    path: Path
    config: dict[str, Any]
    modules: dict[str, LoraModule]
    modules_to_save: dict[str, np.ndarray] = field(default_factory=dict)  # tensor name -> values
    skipped_tensors: list[dict[str, str]] = field(default_factory=list)  # non-float or empty tensors not analysed

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    def describe(self) -> dict[str, Any]:
        keys = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "fan_in_fan_out", "rank_pattern",
                "alpha_pattern", "base_model_name_or_path", "task_type", "peft_version")
        return {"path": str(self.path), "modules": len(self.modules),
                "modules_to_save": sorted(self.modules_to_save), **{k: self.config.get(k) for k in keys}}


def _read_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "adapter_config.json"
    if not cfg.is_file():
        raise RankscopeError(f"{folder}: no adapter_config.json (is this a peft adapter folder?)")
    try:
        config = json.loads(cfg.read_text())
    except (OSError, ValueError) as exc:
        raise RankscopeError(f"{cfg}: unreadable adapter config ({exc})") from exc
    if not isinstance(config, dict):
        raise RankscopeError(f"{cfg}: adapter config is not a JSON object")
    peft_type = str(config.get("peft_type", "LORA")).upper()
    if peft_type != "LORA":
        raise RankscopeError(f"{cfg}: peft_type {peft_type} is not supported (only LORA adapters)")
    for key in ("r", "lora_alpha"):
        if config.get(key) is None:
            raise RankscopeError(f"{cfg}: '{key}' is missing")
    check_lora_fields(config, str(cfg))
    return config


def _keep(file: Path, name: str, dtype: str, is_float: bool, numel: int,
          skipped: list[dict[str, str]]) -> bool:
    """Whether a stored adapter tensor is read; the others go to ``skipped`` (an empty LoRA factor is an error)."""
    if not is_float:
        skipped.append(skipped_entry(name, "adapter", dtype, dtype_reason(dtype)))
        return False
    if numel == 0:
        if LORA_KEY.match(name.removeprefix(PEFT_PREFIX)):
            raise RankscopeError(f"{file}: LoRA factor '{name}' is empty (a zero dimension)")
        skipped.append(skipped_entry(name, "adapter", dtype, "empty tensor, nothing to analyse"))
        return False
    return True


def _finite(file: Path, name: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise RankscopeError(f"{file}: tensor '{name}' contains NaN or Inf")
    return values


def _read_tensors(folder: Path) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """The floating tensors of the adapter weights (float64, all finite) and the tensors left out."""
    st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    skipped: list[dict[str, str]] = []
    if st.is_file():
        from .checkpoints import open_checkpoint

        with open_checkpoint(st) as ckpt:
            return {n: _finite(st, n, ckpt.read_rows(n).reshape(info.shape).astype(np.float64))
                    for n, info in ckpt.tensors.items()
                    if _keep(st, n, info.dtype, info.is_float, info.numel, skipped)}, sorted(skipped,
                                                                                       key=lambda s: s["tensor"])
    if pt.is_file():
        import torch

        from .checkpoints import load_torch_file, torch_dtype_name

        state = load_torch_file(pt, "adapter weights")
        if not isinstance(state, dict):
            raise RankscopeError(f"{pt}: not a state dict")
        tensors = {}
        for n, t in state.items():
            if not isinstance(t, torch.Tensor):
                skipped.append({"tensor": str(n), "checkpoint": "adapter", "dtype": type(t).__name__,
                                "reason": "not a tensor"})
            elif _keep(pt, str(n), torch_dtype_name(t.dtype), t.dtype in (torch.float32, torch.float16,
                                                                           torch.bfloat16, torch.float64),
                       t.numel(), skipped):
                tensors[str(n)] = _finite(pt, str(n), t.detach().to(torch.float64).numpy())
        return tensors, sorted(skipped, key=lambda s: s["tensor"])
    raise RankscopeError(f"{folder}: no adapter_model.safetensors or adapter_model.bin")


def read_adapter(path: str | Path) -> Adapter:
    """Read a peft LoRA adapter folder (see module docstring)."""
    from .checkpoints import resolve

    folder = resolve(path)
    if folder.is_file():
        folder = folder.parent
    config = _read_config(folder)
    tensors, skipped = _read_tensors(folder)
    parts: dict[str, dict[str, np.ndarray]] = {}
    extra: dict[str, np.ndarray] = {}
    for key, value in tensors.items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        match = LORA_KEY.match(name)
        if match:
            parts.setdefault(match["module"], {})[match["which"]] = value
        else:
            extra[saved_module_key(name)] = value
    modules: dict[str, LoraModule] = {}
    use_rslora = bool(config.get("use_rslora"))
    for module, p in sorted(parts.items()):
        modules[module] = _build_module(folder, config, module, p, use_rslora)
    if not modules:
        raise RankscopeError(f"{folder}: the adapter holds no LoRA factors")
    return Adapter(folder, config, modules, extra, skipped)


def _build_module(folder: Path, config: dict, module: str, p: dict[str, np.ndarray], use_rslora: bool) -> LoraModule:
    embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
    a_key, b_key = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    if a_key not in p or b_key not in p:
        raise RankscopeError(f"{folder}: module '{module}' has {sorted(p)} but needs both {a_key} and {b_key}")
    a, b = p[a_key], p[b_key]
    if a.ndim != 2 or b.ndim != 2:
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)  # conv LoRA: flatten kernels
    if embedding:  # ΔW_emb (num_embeddings x dim) = (B_emb @ A_emb)^T
        a, b = b.T, a.T
    if b.shape[1] != a.shape[0]:
        raise RankscopeError(f"{folder}: module '{module}': lora_B is {b.shape} but lora_A is {a.shape}")
    r = a.shape[0]
    r_config = int(pattern_value(config.get("rank_pattern") or {}, module, config["r"]))
    if r_config != r:
        raise RankscopeError(
            f"{folder}: rank mismatch for module '{module}': adapter_config.json says r={r_config}, "
            f"the weights have r={r}"
        )
    alpha = float(pattern_value(config.get("alpha_pattern") or {}, module, config["lora_alpha"]))
    magnitude = p.get("lora_magnitude_vector")
    if magnitude is not None:
        magnitude = magnitude.reshape(-1)
        if not embedding and magnitude.size != b.shape[0]:
            raise RankscopeError(f"{folder}: module '{module}': lora_magnitude_vector has {magnitude.size} entries "
                                 f"but the update has {b.shape[0]} output rows")
    return LoraModule(module, np.ascontiguousarray(b), np.ascontiguousarray(a), lora_scale(alpha, r, use_rslora),
                      alpha, embedding, magnitude)
