"""Benchmark ``rankscope spectrum`` and ``rankscope extract`` on a Llama-3.2-1B-shaped bf16 pair (and peers, side by side).

What it does, in one run:

1. Builds (once, cached under ``--data``) a synthetic checkpoint pair in Hugging Face layout: bf16 sharded
   safetensors (~2 GB shards, written tensor by tensor by a hand-written writer, so generation holds one
   4M-element chunk at a time), ``model.safetensors.index.json`` and ``config.json``.

   * default: Llama-3.2-1B shapes — hidden 2048, intermediate 8192, 16 layers, 32 heads / 8 KV heads
     (``k_proj``/``v_proj`` 512 x 2048), vocab 128,256, untied ``lm_head`` (1.5B parameters, 3.0 GB per side);
   * ``--moe``: a Qwen3-MoE-shaped pair (hidden 512, 4 layers, per-expert 2-D
     ``model.layers.L.mlp.experts.E.{gate,up,down}_proj.weight`` of expert intermediate 256), built twice,
     with 32 and 128 experts per layer, to show that peak RSS does not grow with the expert count;
   * ``--tiny``: everything shrunk (hidden 128, vocab 1000, 2 layers; MoE 8 / 32 experts) to check the
     script end to end in well under a minute; it also checks the results against float64 references.

   The fine-tune is ``bf16(bf16(W) + ΔW)`` with ``W ~ N(0, 0.02²)`` and ΔW = a rank-64 part (σ_i ∝ 1/i)
   plus a dense noise floor, ``‖ΔW‖_F ≈ 1 % ‖W‖_F`` (the recipe of ``benchmarks/spectrum.py``, whose
   constants, per-name seeding and process timing are imported), every tensor seeded from its name.
2. Times whole processes, the tools in turns within each of ``--repeats`` rounds (median wall including
   interpreter start, median CPU seconds, peak RSS by ``/usr/bin/time -v`` or ``getrusage``):
   ``rankscope spectrum BASE FT --no-plots -q --overwrite -o OUT`` and
   ``rankscope extract BASE FT --rank 64 -q --overwrite -o OUT``.
3. With ``--peers-venv PATH`` (a separate, benchmark-only virtualenv; never project dependencies) also,
   in the same rounds, whichever of these it holds (a missing one is skipped with a line saying so):

   * WeightWatcher: ``WeightWatcher(model=FT, base_model=BASE).analyze()`` on the safetensors folders — the
     ESD (eigenvalues of ΔWᵀΔW, power-law fits) of every fine-tune-minus-base layer;
   * modeldelta: ``modeldelta BASE FT -o OUT/report.json -q`` (full SVD of every ΔW);
   * mergekit: ``mergekit-extract-lora --model FT --base-model BASE --out-path OUT --max-rank 64`` with
     embeddings / ``lm_head`` excluded and norms skipped, as rankscope extract does by default
     (older mergekit: ``mergekit-extract-lora FT BASE OUT --rank=64``).
4. Prints a table: tool, task, wall median, CPU, peak RSS and rankscope's targets
   (spectrum ≤ 60 s, extract ≤ 60 s, peak RSS ≤ 1 GiB).

Usage::

    .venv/bin/python benchmarks/llm.py [--data /tmp/rankscope-llm] [--repeats 3] [--peers-venv /tmp/peers]
    .venv/bin/python benchmarks/llm.py --moe
    .venv/bin/python benchmarks/llm.py --tiny [--moe]      # end-to-end check, < 1 min
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import spectrum as bench  # noqa: E402  (benchmarks/spectrum.py: ΔW recipe constants, seeding, process timing)

RECIPE_VERSION = 1
SHARD_BYTES = 2 * 1000**3  # bf16 bytes per shard
TINY_SHARD_BYTES = 400 * 1000  # still several shards in --tiny
CHUNK_ELEMS = 1 << 22  # rows per generation chunk: CHUNK_ELEMS // columns
RANK = 64
TARGETS = {"spectrum_wall_s": 60.0, "extract_wall_s": 60.0, "peak_rss_mb": 1024.0}


# --------------------------------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DenseShape:
    """A Llama decoder (grouped-query attention, SwiGLU MLP, untied LM head)."""

    hidden: int = 2048
    intermediate: int = 8192
    layers: int = 16
    heads: int = 32
    kv_heads: int = 8
    vocab: int = 128256

    @property
    def label(self) -> str:
        return f"llama-h{self.hidden}-{self.layers}L-v{self.vocab}"

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * (self.hidden // self.heads)
        specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            specs += [(p + "self_attn.q_proj.weight", (h, h)), (p + "self_attn.k_proj.weight", (kv, h)),
                      (p + "self_attn.v_proj.weight", (kv, h)), (p + "self_attn.o_proj.weight", (h, h)),
                      (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                      (p + "mlp.down_proj.weight", (h, i)),
                      (p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        return specs + [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def config(self) -> dict[str, Any]:
        full = self.vocab == 128256
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": self.hidden,
            "intermediate_size": self.intermediate, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads, "vocab_size": self.vocab, "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "initializer_range": 0.02, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
            "bos_token_id": 128000 if full else 1, "eos_token_id": 128001 if full else 2,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                             "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        }


@dataclass(frozen=True)
class MoeShape:
    """A Qwen3-MoE decoder with per-expert 2-D expert tensors and a router ``mlp.gate``."""

    experts: int = 128
    hidden: int = 512
    expert_intermediate: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    vocab: int = 32000

    @property
    def label(self) -> str:
        return f"qwen3moe-h{self.hidden}-{self.layers}L-{self.experts}E"

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        h, i, d = self.hidden, self.expert_intermediate, self.hidden // self.heads
        specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            specs += [(p + "self_attn.q_proj.weight", (self.heads * d, h)),
                      (p + "self_attn.k_proj.weight", (self.kv_heads * d, h)),
                      (p + "self_attn.v_proj.weight", (self.kv_heads * d, h)),
                      (p + "self_attn.o_proj.weight", (h, self.heads * d)),
                      (p + "self_attn.q_norm.weight", (d,)), (p + "self_attn.k_norm.weight", (d,)),
                      (p + "mlp.gate.weight", (self.experts, h))]
            for e in range(self.experts):
                q = f"{p}mlp.experts.{e}."
                specs += [(q + "gate_proj.weight", (i, h)), (q + "up_proj.weight", (i, h)), (q + "down_proj.weight", (h, i))]
            specs += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
        return specs + [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]

    def config(self) -> dict[str, Any]:
        return {
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": self.hidden,
            "intermediate_size": 4 * self.hidden, "moe_intermediate_size": self.expert_intermediate,
            "num_experts": self.experts, "num_experts_per_tok": min(8, self.experts), "decoder_sparse_step": 1,
            "mlp_only_layers": [], "norm_topk_prob": True, "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads, "num_key_value_heads": self.kv_heads,
            "head_dim": self.hidden // self.heads, "vocab_size": self.vocab, "max_position_embeddings": 32768,
            "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "hidden_act": "silu", "attention_bias": False,
            "tie_word_embeddings": False, "torch_dtype": "bfloat16", "output_router_logits": False,
        }


Shape = DenseShape | MoeShape
TINY_DENSE = DenseShape(hidden=128, intermediate=512, layers=2, heads=4, kv_heads=2, vocab=1000)
TINY_MOE = {"hidden": 128, "expert_intermediate": 64, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 1000}


# --------------------------------------------------------------------------------------------------
# bf16 safetensors, written and read without a framework
# --------------------------------------------------------------------------------------------------


def to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 → bf16 bit patterns (uint16), rounded to nearest even (no NaNs here)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + (((u >> 16) & 1) + 0x7FFF)) >> 16).astype(np.uint16)


def from_bf16(b: np.ndarray) -> np.ndarray:
    """bf16 bit patterns → float32 (exact)."""
    return (b.astype(np.uint32) << 16).view(np.float32)


class SafetensorsWriter:
    """Writes one bf16 safetensors file whose tensors arrive in order, chunk by chunk (header first)."""

    def __init__(self, path: Path, specs: Sequence[tuple[str, tuple[int, ...]]]) -> None:
        header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        offset = 0
        for name, shape in specs:
            size = 2 * math.prod(shape)
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        self.expected = offset
        self.written = 0
        self.fh = open(path, "wb")  # noqa: SIM115  (closed in close())
        self.fh.write(struct.pack("<Q", len(raw)) + raw)

    def write(self, chunk: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(chunk, dtype="<u2").tobytes())
        self.written += chunk.size * 2

    def close(self) -> None:
        self.fh.close()
        if self.written != self.expected:
            raise RuntimeError(f"{self.fh.name}: wrote {self.written} bytes of tensor data, header says {self.expected}")


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The JSON header of a safetensors file and where its data begins."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(n)), 8 + n


_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


def read_tensor(path: Path, name: str) -> np.ndarray:
    """One tensor of a safetensors file as float64 (F32, F16, BF16, F64), read independently of rankscope."""
    header, start = read_header(path)
    info = header[name]
    begin, end = info["data_offsets"]
    raw = np.fromfile(path, dtype=_DTYPES[info["dtype"]], count=(end - begin) // np.dtype(_DTYPES[info["dtype"]]).itemsize,
                      offset=start + begin)
    values = from_bf16(raw) if info["dtype"] == "BF16" else raw
    return values.astype(np.float64).reshape(info["shape"])


# --------------------------------------------------------------------------------------------------
# the synthetic pair
# --------------------------------------------------------------------------------------------------


def tensor_chunks(name: str, shape: tuple[int, ...], seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``(base, finetuned)`` bf16 row chunks of one tensor: ``bf16(W)`` and ``bf16(bf16(W) + ΔW)``."""
    rng_w, rng_d = bench._rng(seed, name, 0), bench._rng(seed, name, 1)
    if len(shape) == 1:
        base = to_bf16(1.0 + bench.BASE_STD * rng_w.standard_normal(shape, dtype=np.float32))
        w = from_bf16(base)
        scale = bench.REL_DELTA * float(np.linalg.norm(w)) / math.sqrt(w.size)
        yield base, to_bf16(w + scale * rng_d.standard_normal(shape, dtype=np.float32))
        return
    m, n = shape
    target = bench.REL_DELTA * bench.BASE_STD * math.sqrt(m * n)  # REL_DELTA x the expected ‖W‖_F
    k = min(bench.DELTA_RANK, m, n)
    u = np.linalg.qr(rng_d.standard_normal((m, k)))[0]
    v = np.linalg.qr(rng_d.standard_normal((n, k)))[0]
    sigma = 1.0 / np.arange(1, k + 1)
    sigma *= math.sqrt(1.0 - bench.NOISE_SHARE) * target / np.linalg.norm(sigma)
    us, vt = (u * sigma).astype(np.float32), np.ascontiguousarray(v.T, dtype=np.float32)
    del u, v
    noise = math.sqrt(bench.NOISE_SHARE) * target / math.sqrt(m * n)
    step = max(1, CHUNK_ELEMS // n)
    for r0 in range(0, m, step):
        rows = min(step, m - r0)
        w = rng_w.standard_normal((rows, n), dtype=np.float32)
        w *= bench.BASE_STD
        base = to_bf16(w)
        ft = from_bf16(base) + us[r0:r0 + rows] @ vt
        ft += noise * rng_d.standard_normal((rows, n), dtype=np.float32)
        yield base, to_bf16(ft)


def write_pair(shape: Shape, seed: int, base_dir: Path, ft_dir: Path, shard_bytes: int) -> None:
    """Write both checkpoints shard by shard, tensor by tensor, chunk by chunk (memory: a few chunks)."""
    specs = shape.tensors()
    shapes = dict(specs)
    shards = bench.plan_shards(specs, limit=2 * shard_bytes)  # it counts 4 bytes per element; bf16 has 2
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    index = {"metadata": {"total_size": 2 * sum(math.prod(s) for _, s in specs)},
             "weight_map": {name: files[i] for i, names in enumerate(shards) for name in names}}
    for folder in (base_dir, ft_dir):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for fname, names in zip(files, shards, strict=True):
        group = [(name, shapes[name]) for name in names]
        writers = SafetensorsWriter(base_dir / fname, group), SafetensorsWriter(ft_dir / fname, group)
        for name, tshape in group:
            for base, ft in tensor_chunks(name, tshape, seed):
                writers[0].write(base)
                writers[1].write(ft)
        for w in writers:
            w.close()


def recipe(shape: Shape, seed: int, shard_bytes: int) -> dict[str, Any]:
    """Everything the generated data depends on (a cached pair is reused only if this matches)."""
    return {"version": RECIPE_VERSION, "kind": type(shape).__name__, "shape": asdict(shape), "seed": seed,
            "base_std": bench.BASE_STD, "delta_rank": bench.DELTA_RANK, "rel_delta": bench.REL_DELTA,
            "noise_share": bench.NOISE_SHARE, "shard_bytes": shard_bytes, "chunk_elems": CHUNK_ELEMS}


def ensure_pair(data: Path, shape: Shape, seed: int, shard_bytes: int) -> tuple[Path, float | None]:
    """The cached folder (``base/``, ``finetuned/``, ``meta.json``) for ``shape``, built if missing or stale."""
    folder = data / f"{shape.label}-seed{seed}"
    want = recipe(shape, seed, shard_bytes)
    if bench._read_meta(folder).get("recipe") == want:
        return folder, None
    if folder.exists():
        shutil.rmtree(folder)
    data.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=data))
    try:
        t0 = time.perf_counter()
        write_pair(shape, seed, tmp / "base", tmp / "finetuned", shard_bytes)
        seconds = time.perf_counter() - t0
        bench._write_meta(tmp, {"recipe": want, "generation_seconds": round(seconds, 1)})
        tmp.chmod(0o755)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, seconds


def weight_map(folder: Path) -> dict[str, Path]:
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    return {name: folder / shard for name, shard in index.items()}


def float64_deltas(folder: Path) -> Iterator[tuple[str, np.ndarray]]:
    """``(tensor, ft - base in float64)`` for every 2-D tensor of the pair, one at a time."""
    base, ft = weight_map(folder / "base"), weight_map(folder / "finetuned")
    for name, path in base.items():
        header, _ = read_header(path)
        if len(header[name]["shape"]) == 2:
            yield name, read_tensor(ft[name], name) - read_tensor(path, name)


def reference_spectra(folder: Path) -> dict[str, np.ndarray]:
    """float64 LAPACK singular values of every ΔW (``scipy.linalg.svdvals``); for small pairs only."""
    import scipy.linalg

    return {name: scipy.linalg.svdvals(d, overwrite_a=True, check_finite=False) for name, d in float64_deltas(folder)}


def adapter_check(adapter: Path, folder: Path, reference: dict[str, np.ndarray], rank: int) -> tuple[float, str, int]:
    """Worst ``‖ΔW − s·B·A‖_F / ‖ΔW‖_F`` over the Eckart–Young optimum, from the adapter files alone.

    Over the modules with ``rank < min(shape)`` (at full rank the optimum is 0 and the ratio would only
    measure the dtype of the stored factors); returns ``(worst ratio, its module, modules in the adapter)``.
    """
    config = json.loads((adapter / "adapter_config.json").read_text())
    path = adapter / "adapter_model.safetensors"
    names = set(read_header(path)[0])
    worst, worst_name, count = 0.0, "", 0
    for name, delta in float64_deltas(folder):
        key = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{key}.lora_A.weight" not in names:
            continue
        module = name.removesuffix(".weight")
        count += 1
        if rank >= min(delta.shape):
            continue
        r = int(config.get("rank_pattern", {}).get(module, config["r"]))
        alpha = float(config.get("alpha_pattern", {}).get(module, config["lora_alpha"]))
        scale = alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r
        approx = scale * (read_tensor(path, f"{key}.lora_B.weight") @ read_tensor(path, f"{key}.lora_A.weight"))
        err = float(np.linalg.norm(delta - approx) / np.linalg.norm(delta))
        sigma = reference[name]
        optimum = float(np.sqrt(np.sum(sigma[rank:] ** 2) / np.sum(sigma**2)))
        ratio = max(err, 1e-6) / max(optimum, 1e-6)
        if ratio > worst:
            worst, worst_name = ratio, module
    return worst, worst_name, count


# --------------------------------------------------------------------------------------------------
# the tools
# --------------------------------------------------------------------------------------------------

WW_SCRIPT = (
    "import os, sys\n"
    "import weightwatcher as ww\n"
    "base, ft, out = sys.argv[1:4]\n"
    "os.makedirs(out, exist_ok=True)\n"
    "os.chdir(out)\n"
    "details = ww.WeightWatcher(model=ft, base_model=base).analyze()\n"
    "details.to_csv('details.csv')\n"
    "print(len(details), 'layers analysed')\n"
)


@dataclass
class Tool:
    """One timed command: ``out`` is removed before every run."""

    label: str
    task: str
    cmd: list[str]
    out: Path
    ours: bool = False
    samples: list[bench.Sample] = field(default_factory=list)
    error: str | None = None


def rankscope_tools(exe: Path, folder: Path, runs: Path, tag: str = "", extract: bool = True) -> list[Tool]:
    base, ft = str(folder / "base"), str(folder / "finetuned")
    spec = runs / "rankscope-spectrum"
    tools = [Tool(f"rankscope{tag}", "spectrum", [str(exe), "spectrum", base, ft, "--no-plots", "-q", "--overwrite",
                                                   "-o", str(spec)], spec, ours=True)]
    if extract:
        ext = runs / "rankscope-extract"
        tools.append(Tool("rankscope", f"extract r={RANK}", [str(exe), "extract", base, ft, "--rank", str(RANK), "-q",
                                                             "--overwrite", "-o", str(ext)], ext, ours=True))
    return tools


def peer_tools(venv: Path, folder: Path, runs: Path) -> tuple[list[Tool], list[str]]:
    """The peers installed in ``venv`` and one line for each one that is not."""
    base, ft = str(folder / "base"), str(folder / "finetuned")
    py, tools, notes = venv / "bin" / "python", [], []
    if not py.is_file():
        return [], [f"peers: no interpreter at {py}; all peers skipped"]
    has_ww = subprocess.run([str(py), "-c", "import weightwatcher"], capture_output=True).returncode == 0
    if has_ww:
        out = runs / "weightwatcher"
        tools.append(Tool("WeightWatcher", "ESD of ΔW", [str(py), "-c", WW_SCRIPT, base, ft, str(out)], out))
    else:
        notes.append(f"peers: WeightWatcher not installed in {venv} (pip install weightwatcher); skipped")
    md = venv / "bin" / "modeldelta"
    if md.is_file():
        out = runs / "modeldelta"
        tools.append(Tool("modeldelta", "full SVD of ΔW", ["sh", "-c", 'mkdir -p "$3" && exec "$0" "$1" "$2" -o "$3/report.json" -q',
                                                           str(md), base, ft, str(out)], out))
    else:
        notes.append(f"peers: modeldelta not installed in {venv} (pip install modeldelta); skipped")
    mk = venv / "bin" / "mergekit-extract-lora"
    if mk.is_file():
        out = runs / "mergekit"
        help_text = subprocess.run([str(mk), "--help"], capture_output=True, text=True).stdout
        if "--base-model" in help_text:
            cmd = [str(mk), "--model", ft, "--base-model", base, "--out-path", str(out), "--max-rank", str(RANK),
                   "--exclude-regex", "embed_tokens", "--exclude-regex", "lm_head", "--skip-undecomposable"]
        else:  # mergekit before the 2025 rewrite: positional FINETUNED BASE OUT
            cmd = [str(mk), ft, base, str(out), f"--rank={RANK}", "--skip-undecomposable"]
        tools.append(Tool("mergekit", f"extract r={RANK}", cmd, out))
    else:
        notes.append(f"peers: mergekit not installed in {venv} (pip install mergekit); skipped")
    return tools, notes


def run_rounds(tools: list[Tool], repeats: int, use_gnu_time: bool, max_busy: float, idle_wait: float) -> None:
    """``repeats`` rounds; in each, every tool once, in turns (a background job then slows all alike)."""
    for r in range(repeats):
        for tool in tools:
            if tool.error:
                continue
            shutil.rmtree(tool.out, ignore_errors=True)
            busy = bench.wait_until_idle(max_busy, idle_wait)
            try:
                s = bench.run_measured(tool.cmd, use_gnu_time)
            except RuntimeError as exc:
                tool.error = str(exc).strip().splitlines()[-1][:200]
                print(f"  {tool.label} {tool.task}: FAILED ({tool.error})", flush=True)
                continue
            tool.samples.append(s)
            print(f"  round {r + 1}/{repeats} {tool.label} {tool.task}: {s.wall_s:.2f} s wall, {s.cpu_s:.1f} s CPU, "
                  f"{s.peak_rss_mb:.0f} MB (other processes before: {busy:.2f} CPUs)", flush=True)


def row(tool: Tool) -> dict[str, Any]:
    if not tool.samples:
        return {"tool": tool.label, "task": tool.task, "error": tool.error or "no run"}
    wall = statistics.median(s.wall_s for s in tool.samples)
    res = {"tool": tool.label, "task": tool.task, "wall_s": wall, "cpu_s": statistics.median(s.cpu_s for s in tool.samples),
           "peak_rss_mb": max(s.peak_rss_mb for s in tool.samples), "runs": [asdict(s) for s in tool.samples]}
    if tool.ours:
        limit = TARGETS["spectrum_wall_s" if tool.task == "spectrum" else "extract_wall_s"]
        res["target"] = (f"wall ≤ {limit:g} s {bench._check(wall, limit)}, RSS ≤ 1 GiB "
                         f"{bench._check(res['peak_rss_mb'], TARGETS['peak_rss_mb'])}")
    return res


def render(rows: list[dict[str, Any]]) -> str:
    head = f"{'tool':<26} {'task':<16} {'wall s (median)':>15} {'CPU s':>8} {'peak RSS MB':>11}  target"
    lines = [head, "-" * (len(head) + 30)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['tool']:<26} {r['task']:<16} failed: {r['error']}")
        else:
            lines.append(f"{r['tool']:<26} {r['task']:<16} {r['wall_s']:>15.2f} {r['cpu_s']:>8.1f} "
                         f"{r['peak_rss_mb']:>11.0f}  {r.get('target', '')}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/rankscope-llm"), help="Cache folder for pairs and run outputs.")
    p.add_argument("--repeats", type=int, default=3, help="Rounds (each tool once per round; median wall, max RSS).")
    p.add_argument("--moe", action="store_true", help="MoE pairs (32 and 128 experts per layer) instead of the Llama pair.")
    p.add_argument("--tiny", action="store_true", help="Shrink everything (end-to-end check, < 1 min); adds float64 checks.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the synthetic weights.")
    p.add_argument("--rankscope", type=Path, default=Path(sys.executable).parent / "rankscope", help="rankscope script.")
    p.add_argument("--peers-venv", type=Path, default=None, metavar="PATH",
                   help="Benchmark-only virtualenv with WeightWatcher / modeldelta / mergekit (Llama pair only).")
    p.add_argument("--max-busy", type=float, default=0.25, help="Before each run, wait until other processes use fewer "
                   "CPUs than this ...")
    p.add_argument("--idle-wait", type=float, default=None, help="... for at most this many seconds [120; --tiny: 0].")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="Also save all figures as JSON.")
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.idle_wait is None:
        args.idle_wait = 0.0 if args.tiny else 120.0
    return args


def prepare(data: Path, shape: Shape, seed: int, shard_bytes: int) -> Path:
    n_params = sum(math.prod(s) for _, s in shape.tensors())
    folder, seconds = ensure_pair(data, shape, seed, shard_bytes)
    took = f"{seconds:.1f} s" if seconds is not None else f"cached (took {bench._read_meta(folder).get('generation_seconds')} s)"
    print(f"pair {shape.label}: {n_params / 1e6:.1f}M parameters, bf16, {bench.model_bytes(folder) / 1e9:.2f} GB "
          f"in {folder}; generation {took}", flush=True)
    return folder


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    use_gnu_time = bench._gnu_time_works()
    shard_bytes = TINY_SHARD_BYTES if args.tiny else SHARD_BYTES
    timing = (args.max_busy, args.idle_wait)
    print(f"peak RSS via {'/usr/bin/time -v' if use_gnu_time else 'getrusage(RUSAGE_CHILDREN)'}; {args.repeats} rounds, "
          f"{os.cpu_count()} CPUs", flush=True)
    report: dict[str, Any] = {"cpu_count": os.cpu_count(), "repeats": args.repeats, "targets": TARGETS}
    checks: list[str] = []

    if args.moe:
        counts = (8, 32) if args.tiny else (32, 128)
        dims = TINY_MOE if args.tiny else {}
        folders = {e: prepare(args.data, MoeShape(experts=e, **dims), args.seed, shard_bytes) for e in counts}
        tools = []
        for e, folder in folders.items():
            (folder / "runs").mkdir(exist_ok=True)
            bench.warm_page_cache(folder)
            tools += rankscope_tools(args.rankscope, folder, folder / "runs", tag=f" ({e} experts)", extract=False)
        run_rounds(tools, args.repeats, use_gnu_time, *timing)
        rows = [row(t) for t in tools]
        if all("error" not in r for r in rows):
            lo, hi = rows
            checks.append(f"{counts[0]} -> {counts[1]} experts ({hi['wall_s'] / lo['wall_s']:.2f}x wall): peak RSS "
                          f"{lo['peak_rss_mb']:.0f} -> {hi['peak_rss_mb']:.0f} MB "
                          f"({hi['peak_rss_mb'] / lo['peak_rss_mb']:.2f}x)")
        if args.tiny:
            for (e, folder), tool in zip(folders.items(), tools, strict=True):
                if tool.samples:
                    acc = bench.accuracy(bench.load_npz(tool.out / "spectra.npz"), reference_spectra(folder))
                    checks.append(f"{e} experts: spectrum vs float64 LAPACK over {acc.modules} matrices: max |σ-σ_ref|/σ₁ "
                                  f"{acc.max_rel_err:.1e} ({acc.worst_module})")
        report["pairs"] = {str(e): recipe(MoeShape(experts=e, **dims), args.seed, shard_bytes) for e in counts}
    else:
        shape = TINY_DENSE if args.tiny else DenseShape()
        folder = prepare(args.data, shape, args.seed, shard_bytes)
        runs = folder / "runs"
        runs.mkdir(exist_ok=True)
        tools = rankscope_tools(args.rankscope, folder, runs)
        if args.peers_venv is not None:
            peers, notes = peer_tools(args.peers_venv, folder, runs)
            for line in notes:
                print(line, flush=True)
            tools += peers
        bench.warm_page_cache(folder)
        run_rounds(tools, args.repeats, use_gnu_time, *timing)
        rows = [row(t) for t in tools]
        if args.tiny:
            reference = reference_spectra(folder)
            if tools[0].samples:
                acc = bench.accuracy(bench.load_npz(tools[0].out / "spectra.npz"), reference)
                checks.append(f"spectrum vs float64 LAPACK over {acc.modules} matrices: max |σ-σ_ref|/σ₁ "
                              f"{acc.max_rel_err:.1e} ({acc.worst_module})")
            if tools[1].samples:
                worst, module, count = adapter_check(tools[1].out, folder, reference, RANK)
                checks.append(f"extract: {count} modules extracted; worst error / Eckart–Young optimum {worst:.6f} ({module})")
            for tool in tools[2:]:
                if tool.label == "mergekit" and tool.samples:
                    worst, module, count = adapter_check(tool.out, folder, reference, RANK)
                    checks.append(f"mergekit: {count} modules extracted; worst error / optimum {worst:.6f} ({module})")
        report["pair"] = recipe(shape, args.seed, shard_bytes)

    print()
    print(render(rows))
    for line in checks:
        print(line)
    if args.json is not None:
        report.update(rows=rows, checks=checks)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0 if all("error" not in r for r in rows if r["tool"].startswith("rankscope")) else 1


if __name__ == "__main__":
    sys.exit(main())
