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

AdaLoRA (``peft_type`` ``ADALORA``, Zhang et al. 2023): peft saves each module's kept triplets ``P`` (``lora_B``,
``out x k``), ``λ`` (``lora_E``, ``k x 1``) and ``Q`` (``lora_A``, ``k x in``), cut by the final ``rank_pattern``
(one boolean per initial triplet), and applies ``ΔW = P · diag(λ) · Q · α / (r₀ + 1e-5)`` with ``r₀ = init_r``
(``α = lora_alpha``, peft's default 8 when absent), as peft's own ``get_delta_weight`` of the loaded adapter does.
With ``lora_alpha = 0`` peft's loader scales a module that keeps ``k`` triplets by ``k / (r₀ + 1e-5)`` (its scaling
falls back to the rank it rebuilds the layer with, the kept one; training had used ``r₀``): read as peft loads it.  It is
read as the plain LoRA ``B = P``, ``A = diag(λ)·Q`` with the equivalent ``α' = k · α / (r₀ + 1e-5)``
(``s = α'/k``); a module that kept no triplet has ``ΔW = 0`` and is left out (``Adapter.empty_modules``).

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
    empty_modules: list[str] = field(default_factory=list)  # AdaLoRA modules that kept no triplet (ΔW = 0)

    @property
    def use_dora(self) -> bool:
        return bool(self.config.get("use_dora"))

    @property
    def adalora(self) -> bool:
        """Whether this is an AdaLoRA adapter (read as the equivalent plain LoRA: module docstring)."""
        return is_adalora(self.config)

    def describe(self) -> dict[str, Any]:
        keys = ("r", "lora_alpha", "target_modules", "use_rslora", "use_dora", "fan_in_fan_out", "rank_pattern",
                "alpha_pattern", "base_model_name_or_path", "task_type", "peft_version")
        described = {"path": str(self.path), "modules": len(self.modules),
                     "modules_to_save": sorted(self.modules_to_save), **{k: self.config.get(k) for k in keys}}
        if self.adalora:  # peft's `r` is unused by AdaLoRA
            del described["r"]
            described.update(peft_type="ADALORA", init_r=self.config.get("init_r"),
                             target_r=self.config.get("target_r"), empty_modules=len(self.empty_modules))
        return described


ADALORA_DEFAULT_ALPHA = 8
"""peft's ``lora_alpha`` when a config leaves it out (``LoraConfig``'s default, which ``AdaLoraConfig`` inherits)."""


def is_adalora(config: dict[str, Any]) -> bool:
    """Whether an adapter config is peft's AdaLoRA."""
    return str(config.get("peft_type") or "LORA").upper() == "ADALORA"


def adalora_kept(pattern: dict[str, Any] | None, module: str, adapter: str = "default") -> list[bool] | None:
    """An AdaLoRA ``rank_pattern``'s booleans for ``module`` (keyed ``<module>.lora_E``, or with the adapter name
    kept, as peft writes it while training), or None when the pattern does not name the module (nothing masked)."""
    pattern = pattern or {}
    return pattern.get(f"{module}.lora_E", pattern.get(f"{module}.lora_E.{adapter}"))


def _check_adalora_fields(config: dict[str, Any], where: str) -> None:
    """``init_r`` a positive integer, ``lora_alpha`` a number ≥ 0, ``rank_pattern`` lists of ``init_r`` booleans."""
    r0, alpha = config.get("init_r"), config.get("lora_alpha", ADALORA_DEFAULT_ALPHA)
    if isinstance(r0, bool) or not isinstance(r0, int) or r0 < 1:
        raise RankscopeError(f"{where}: AdaLoRA 'init_r' must be a positive integer, got {r0!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not np.isfinite(alpha) or alpha < 0:
        raise RankscopeError(f"{where}: 'lora_alpha' must be a number >= 0, got {alpha!r}")
    pattern = config.get("rank_pattern")
    if pattern is None:
        return
    if not isinstance(pattern, dict):
        raise RankscopeError(f"{where}: AdaLoRA 'rank_pattern' must be an object of module -> booleans")
    for key, kept in pattern.items():
        if not (isinstance(kept, list) and len(kept) == r0 and all(isinstance(k, bool) for k in kept)):
            raise RankscopeError(f"{where}: AdaLoRA rank_pattern['{key}'] must be a list of {r0} booleans (one per "
                                 f"initial triplet)")


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
    peft_type = str(config.get("peft_type") or "LORA").upper()
    if peft_type == "ADALORA":
        _check_adalora_fields(config, str(cfg))
        return config
    if peft_type != "LORA":
        raise RankscopeError(f"{cfg}: peft_type {peft_type} is not supported (only LORA and ADALORA adapters)")
    for key in ("r", "lora_alpha"):
        if config.get(key) is None:
            raise RankscopeError(f"{cfg}: '{key}' is missing")
    check_lora_fields(config, str(cfg))
    return config


def _keep(file: Path, name: str, dtype: str, is_float: bool, numel: int,
          skipped: list[dict[str, str]], empty_factors: bool = False) -> bool:
    """Whether a stored adapter tensor is read; the others go to ``skipped`` (an empty LoRA factor is an error, unless
    ``empty_factors``: AdaLoRA saves a module that kept no triplet as ``0 x n`` factors)."""
    if not is_float:
        skipped.append(skipped_entry(name, "adapter", dtype, dtype_reason(dtype)))
        return False
    if numel == 0:
        if LORA_KEY.match(name.removeprefix(PEFT_PREFIX)):
            if empty_factors:
                return True
            raise RankscopeError(f"{file}: LoRA factor '{name}' is empty (a zero dimension)")
        skipped.append(skipped_entry(name, "adapter", dtype, "empty tensor, nothing to analyse"))
        return False
    return True


def _finite(file: Path, name: str, values: np.ndarray) -> np.ndarray:
    if not np.isfinite(values).all():
        raise RankscopeError(f"{file}: tensor '{name}' contains NaN or Inf")
    return values


def _read_tensors(folder: Path, empty_factors: bool = False) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """The floating tensors of the adapter weights (float64, all finite) and the tensors left out."""
    st, pt = folder / "adapter_model.safetensors", folder / "adapter_model.bin"
    skipped: list[dict[str, str]] = []
    if st.is_file():
        from .checkpoints import open_checkpoint

        with open_checkpoint(st) as ckpt:
            return {n: _finite(st, n, ckpt.read_rows(n).reshape(info.shape).astype(np.float64))
                    for n, info in ckpt.tensors.items()
                    if _keep(st, n, info.dtype, info.is_float, info.numel, skipped, empty_factors)}, sorted(skipped,
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
                       t.numel(), skipped, empty_factors):
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
    tensors, skipped = _read_tensors(folder, empty_factors=is_adalora(config))
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
    empty: list[str] = []
    use_rslora = bool(config.get("use_rslora"))
    for module, p in sorted(parts.items()):
        if is_adalora(config):
            lm = _build_adalora_module(folder, config, module, p)
            if lm is None:
                empty.append(module)
                continue
            modules[module] = lm
        else:
            modules[module] = _build_module(folder, config, module, p, use_rslora)
    if not modules:
        raise RankscopeError(f"{folder}: the adapter holds no LoRA factors" +
                             (f" (every one of its {len(empty)} AdaLoRA modules kept no triplet)" if empty else ""))
    return Adapter(folder, config, modules, extra, skipped, empty)


def _build_adalora_module(folder: Path, config: dict, module: str, p: dict[str, np.ndarray]) -> LoraModule | None:
    """An AdaLoRA module as the equivalent plain LoRA (module docstring); None when it kept no triplet."""
    missing = [w for w in ("lora_A", "lora_B", "lora_E") if w not in p]
    if missing:
        raise RankscopeError(f"{folder}: AdaLoRA module '{module}' has {sorted(p)} but needs lora_A, lora_E and lora_B")
    a, b, e = p["lora_A"], p["lora_B"], p["lora_E"].reshape(-1)
    if a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0] or e.size != a.shape[0]:
        raise RankscopeError(f"{folder}: AdaLoRA module '{module}': lora_B is {b.shape}, lora_E {p['lora_E'].shape} "
                             f"and lora_A {a.shape} (wanted out x k, k x 1 and k x in)")
    r0 = int(config["init_r"])
    kept = adalora_kept(config.get("rank_pattern"), module)
    k = sum(kept) if kept is not None else r0
    if a.shape[0] != k:
        raise RankscopeError(f"{folder}: rank mismatch for AdaLoRA module '{module}': adapter_config.json keeps {k} of "
                             f"init_r={r0} triplets, the weights have {a.shape[0]}")
    if k == 0:
        return None
    alpha = config.get("lora_alpha")
    alpha = float(ADALORA_DEFAULT_ALPHA if alpha is None else alpha)
    scale = (alpha if alpha > 0 else float(k)) / (r0 + 1e-5)
    return LoraModule(module, np.ascontiguousarray(b), np.ascontiguousarray(e[:, None] * a), scale, scale * k)


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
