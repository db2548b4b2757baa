"""Benchmark ``rankscope spectrum`` against a plain ``torch.linalg.svdvals`` loop on a Llama-shaped pair.

What it does, in one run:

1. Builds (once, cached under ``--data``) a synthetic Llama checkpoint pair in Hugging Face layout:
   sharded float32 safetensors, ``model.safetensors.index.json`` and a ``config.json``
   (hidden 1024, intermediate 2816, vocab 32000, ``--layers`` blocks; ~170M parameters at 8 layers).
   Base weights are N(0, 0.02²); each fine-tuned matrix is base + ΔW with ΔW = a rank-64 part with
   σ_i ∝ 1/i plus a dense Gaussian noise floor, ||ΔW||_F ≈ 1% of ||W||_F.  Every tensor is seeded
   from its name, so the build is deterministic and layer i is the same at 8 and 16 layers.
2. Times ``rankscope spectrum BASE FT --no-plots -q -o OUT`` and the baseline
   (``benchmarks/_baseline_svdvals.py``), each ``--repeats`` times as separate processes: median
   wall time (interpreter start included), median CPU seconds and peak RSS (``/usr/bin/time -v``,
   else ``getrusage``).  Each run waits (up to ``--idle-wait`` s) for other processes to go quiet,
   since on a 2-core machine any competing job inflates wall times several-fold.
3. Compares both against the float64 LAPACK reference ``scipy.linalg.svdvals(ft - base)`` of every
   matrix (computed once, cached next to the model): worst ``max_i |σ_i - σ_ref_i| / σ_ref_1``.
4. With ``--double``, also times rankscope on the 2x-layers model to show peak RSS stays flat.

Usage::

    .venv/bin/python benchmarks/spectrum.py [--data /tmp/rankscope-bench] [--repeats 3] [--double] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
BASELINE_SCRIPT = HERE / "_baseline_svdvals.py"

# Synthetic model recipe.  Bump RECIPE_VERSION when the recipe changes so cached data is rebuilt.
RECIPE_VERSION = 1
BASE_STD = 0.02
DELTA_RANK = 64
REL_DELTA = 0.01  # ||ΔW||_F / ||W||_F
NOISE_SHARE = 0.1  # fraction of ||ΔW||_F² in the dense noise floor
SHARD_BYTES = 500 * 1000 * 1000

TARGETS = {"wall_s": 8.0, "peak_rss_mb": 800.0, "max_rel_err": 1e-6}


@dataclass(frozen=True)
class LlamaShape:
    """Dimensions of the synthetic Llama model."""

    hidden: int = 1024
    intermediate: int = 2816
    layers: int = 8
    vocab: int = 32000
    heads: int = 16

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every tensor, in Hugging Face checkpoint order."""
        h, i = self.hidden, self.intermediate
        specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for layer in range(self.layers):
            p = f"model.layers.{layer}."
            specs += [(f"{p}self_attn.{m}_proj.weight", (h, h)) for m in "qkvo"]
            specs += [(f"{p}mlp.gate_proj.weight", (i, h)), (f"{p}mlp.up_proj.weight", (i, h)),
                      (f"{p}mlp.down_proj.weight", (h, i))]
            specs += [(f"{p}input_layernorm.weight", (h,)), (f"{p}post_attention_layernorm.weight", (h,))]
        specs += [("model.norm.weight", (h,)), ("lm_head.weight", (self.vocab, h))]
        return specs

    def config(self) -> dict[str, Any]:
        """A ``config.json`` for ``LlamaForCausalLM`` with these dimensions."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "vocab_size": self.vocab,
            "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-5,
            "hidden_act": "silu",
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
        }


# --------------------------------------------------------------------------------------------------
# 1. Synthetic checkpoint pair
# --------------------------------------------------------------------------------------------------


def _rng(seed: int, name: str, role: int) -> np.random.Generator:
    """A generator seeded by (seed, tensor name, role) only, so every tensor is reproducible on its own."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode()), role]))


def base_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Base weight: N(0, BASE_STD²) for matrices, 1 + N(0, BASE_STD²) for norm scales (float32)."""
    rng = _rng(seed, name, 0)
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= BASE_STD
    if len(shape) == 1:
        w += 1.0
    return w


def add_delta(w: np.ndarray, name: str, seed: int) -> None:
    """Turn base weight ``w`` into the fine-tuned one in place: ``w += ΔW``.

    Matrices: ΔW = U diag(σ) Vᵀ (orthonormal U, V; σ_i ∝ 1/i, i ≤ DELTA_RANK) plus a dense Gaussian
    noise floor holding NOISE_SHARE of the energy; ||ΔW||_F = REL_DELTA ||W||_F.  Vectors: dense noise.
    """
    rng = _rng(seed, name, 1)
    target = REL_DELTA * float(np.linalg.norm(w.astype(np.float64)))
    if w.ndim == 1:
        w += (target / np.sqrt(w.size)) * rng.standard_normal(w.shape, dtype=np.float32)
        return
    m, n = w.shape
    k = min(DELTA_RANK, m, n)
    u = np.linalg.qr(rng.standard_normal((m, k)))[0]
    v = np.linalg.qr(rng.standard_normal((n, k)))[0]
    sigma = 1.0 / np.arange(1, k + 1)
    sigma *= np.sqrt(1.0 - NOISE_SHARE) * target / np.linalg.norm(sigma)
    delta = ((u * sigma).astype(np.float32)) @ v.T.astype(np.float32)
    delta += (np.sqrt(NOISE_SHARE) * target / np.sqrt(m * n)) * rng.standard_normal((m, n), dtype=np.float32)
    w += delta


def plan_shards(specs: Sequence[tuple[str, tuple[int, ...]]], limit: int = SHARD_BYTES) -> list[list[str]]:
    """Group tensors, in order, into shards of at most ``limit`` bytes of float32 data (one tensor minimum)."""
    shards: list[list[str]] = [[]]
    size = 0
    for name, shape in specs:
        nbytes = 4 * int(np.prod(shape))
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def write_pair(shape: LlamaShape, seed: int, base_dir: Path, ft_dir: Path) -> None:
    """Write the base and fine-tuned checkpoints, one shard in memory at a time.

    Each shard's base tensors are generated and saved, then turned into fine-tuned tensors in
    place and saved again, so peak memory is about one shard plus one tensor's temporaries.
    """
    from safetensors.numpy import save_file

    specs = shape.tensors()
    shapes = dict(specs)
    shards = plan_shards(specs)
    total = 4 * sum(int(np.prod(s)) for _, s in specs)
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for folder in (base_dir, ft_dir):
        folder.mkdir(parents=True)
        (folder / "config.json").write_text(json.dumps(shape.config(), indent=2) + "\n")
        index = {"metadata": {"total_size": total},
                 "weight_map": {name: files[i] for i, names in enumerate(shards) for name in names}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    for fname, names in zip(files, shards, strict=True):
        group = {name: base_tensor(name, shapes[name], seed) for name in names}
        save_file(group, str(base_dir / fname), metadata={"format": "pt"})
        for name in names:
            add_delta(group[name], name, seed)
        save_file(group, str(ft_dir / fname), metadata={"format": "pt"})
        del group


def recipe(shape: LlamaShape, seed: int) -> dict[str, Any]:
    """Everything the generated data depends on (a cached model is reused only if this matches)."""
    return {"version": RECIPE_VERSION, "shape": asdict(shape), "seed": seed, "base_std": BASE_STD,
            "delta_rank": DELTA_RANK, "rel_delta": REL_DELTA, "noise_share": NOISE_SHARE, "shard_bytes": SHARD_BYTES}


def _read_meta(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_meta(folder: Path, meta: dict[str, Any]) -> None:
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2) + "\n")
    os.replace(tmp, folder / "meta.json")


def ensure_model(data: Path, shape: LlamaShape, seed: int) -> tuple[Path, float | None]:
    """The cached model folder for ``shape`` (``base/``, ``finetuned/``, ``meta.json``), built if missing.

    Returns the folder and the build time in seconds (``None`` when it was already cached).
    """
    folder = data / f"llama-{shape.layers}L-seed{seed}"
    want = recipe(shape, seed)
    if _read_meta(folder).get("recipe") == want:
        return folder, None
    if folder.exists():
        shutil.rmtree(folder)
    data.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=data))
    try:
        t0 = time.perf_counter()
        write_pair(shape, seed, tmp / "base", tmp / "finetuned")
        seconds = time.perf_counter() - t0
        _write_meta(tmp, {"recipe": want, "generation_seconds": round(seconds, 1)})
        tmp.chmod(0o755)  # mkdtemp makes it private
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder, seconds


def model_bytes(folder: Path) -> int:
    """Size of all safetensors files under ``folder``."""
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


# --------------------------------------------------------------------------------------------------
# 2. float64 reference
# --------------------------------------------------------------------------------------------------


def iter_matrix_pairs(base: Path, ft: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """``(tensor name, base, finetuned)`` for every 2-D tensor, as stored (float32), one at a time."""
    from safetensors import safe_open

    base_map = json.loads((base / "model.safetensors.index.json").read_text())["weight_map"]
    ft_map = json.loads((ft / "model.safetensors.index.json").read_text())["weight_map"]
    for name, shard in base_map.items():
        with safe_open(base / shard, framework="numpy") as fb:
            if len(fb.get_slice(name).get_shape()) != 2:
                continue
            b = fb.get_tensor(name)
        with safe_open(ft / ft_map[name], framework="numpy") as ff:
            f = ff.get_tensor(name)
        yield name, b, f


def ensure_reference(folder: Path) -> tuple[dict[str, np.ndarray], float | None]:
    """``tensor name -> float64 LAPACK singular values of ft - base``, cached as ``reference-f64.npz``.

    Returns the spectra and the computation time in seconds (``None`` when cached).
    """
    import scipy.linalg

    path = folder / "reference-f64.npz"
    if path.is_file():
        with np.load(path) as npz:
            return {k: npz[k] for k in npz.files}, None
    t0 = time.perf_counter()
    ref: dict[str, np.ndarray] = {}
    for name, b, f in iter_matrix_pairs(folder / "base", folder / "finetuned"):
        delta = f.astype(np.float64) - b.astype(np.float64)
        ref[name] = scipy.linalg.svdvals(delta, overwrite_a=True, check_finite=False)
    seconds = time.perf_counter() - t0
    tmp = folder / "reference-f64.tmp.npz"
    np.savez(tmp, **ref)
    os.replace(tmp, path)
    _write_meta(folder, {**_read_meta(folder), "reference_seconds": round(seconds, 1)})
    return ref, seconds


def module_key(tensor: str, keys: set[str]) -> str:
    """The key of ``tensor`` among ``keys``: the tensor name itself, or the module name (no ``.weight``) with
    or without any leading prefix (rankscope strips a prefix only when one side of the pair lacks it)."""
    if tensor in keys:
        return tensor
    core = tensor.removesuffix(".weight")
    parts = core.split(".")
    for i in range(len(parts)):
        candidate = ".".join(parts[i:])
        if candidate in keys:
            return candidate
    raise KeyError(f"no spectrum for tensor '{tensor}' among {len(keys)} keys (e.g. {sorted(keys)[:3]})")


@dataclass
class Accuracy:
    """Worst error over modules of ``max_i |σ_i - σ_ref_i| / σ_ref_1``."""

    max_rel_err: float
    worst_module: str
    modules: int


def accuracy(spectra: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> Accuracy:
    """Compare ``spectra`` (keyed by tensor or module name) with the float64 reference."""
    keys = set(spectra)
    worst, worst_name = -1.0, ""
    for tensor, ref in reference.items():
        sigma = np.asarray(spectra[module_key(tensor, keys)], dtype=np.float64)
        if sigma.shape != ref.shape:
            raise ValueError(f"{tensor}: {sigma.shape[0]} singular values, reference has {ref.shape[0]}")
        err = float(np.max(np.abs(np.sort(sigma)[::-1] - ref)) / ref[0])
        if err > worst:
            worst, worst_name = err, tensor
    return Accuracy(worst, worst_name, len(reference))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file."""
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files}


# --------------------------------------------------------------------------------------------------
# 3. Measuring processes
# --------------------------------------------------------------------------------------------------

GNU_TIME = Path("/usr/bin/time")
_RUSAGE_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1], 'w').write(f'User time (seconds): {ru.ru_utime}\\nSystem time (seconds): {ru.ru_stime}\\n'\n"
    "                             f'Maximum resident set size (kbytes): {ru.ru_maxrss}\\n')\n"
    "sys.exit(rc)\n"
)


@dataclass
class Sample:
    """One process run: wall seconds (from spawn to exit), CPU seconds (user + system) and peak RSS in MiB."""

    wall_s: float
    cpu_s: float
    peak_rss_mb: float


@dataclass
class Measurement:
    """Repeated runs of one command."""

    label: str
    samples: list[Sample] = field(default_factory=list)

    @property
    def wall_s(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)

    @property
    def cpu_s(self) -> float:
        return statistics.median(s.cpu_s for s in self.samples)

    @property
    def peak_rss_mb(self) -> float:
        return max(s.peak_rss_mb for s in self.samples)

    def row(self, tool: str, acc: Accuracy | None) -> dict[str, Any]:
        """A row of the report table (and of the JSON file)."""
        return {"tool": tool, "wall_s": self.wall_s, "cpu_s": self.cpu_s, "peak_rss_mb": self.peak_rss_mb,
                "max_rel_err": acc.max_rel_err if acc else None, "worst_module": acc.worst_module if acc else None,
                "runs": [asdict(s) for s in self.samples]}


def _gnu_time_works() -> bool:
    if not GNU_TIME.is_file():
        return False
    probe = subprocess.run([str(GNU_TIME), "-v", "true"], capture_output=True, text=True)
    return probe.returncode == 0 and "Maximum resident set size" in probe.stderr


def run_measured(cmd: Sequence[str], use_gnu_time: bool) -> Sample:
    """Run ``cmd`` once; wall time around the whole process, peak RSS of that process (and its children)."""
    with tempfile.NamedTemporaryFile("r", suffix=".rusage") as report:
        if use_gnu_time:
            full = [str(GNU_TIME), "-v", "-o", report.name, *cmd]
        else:
            full = [sys.executable, "-c", _RUSAGE_WRAPPER, report.name, *cmd]
        t0 = time.perf_counter()
        proc = subprocess.run(full, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        text = Path(report.name).read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    fields = {}
    for key, pattern in (("rss", r"Maximum resident set size \(kbytes\): (\d+)"),
                         ("user", r"User time \(seconds\): ([\d.]+)"), ("sys", r"System time \(seconds\): ([\d.]+)")):
        match = re.search(pattern, text)
        if not match:
            raise RuntimeError(f"no '{key}' in the resource report of {' '.join(cmd)}:\n{text}")
        fields[key] = float(match.group(1))
    return Sample(wall, fields["user"] + fields["sys"], fields["rss"] / 1024)


def measure(label: str, cmd: Sequence[str], repeats: int, use_gnu_time: bool, max_busy: float,
            idle_wait: float) -> Measurement:
    """Run ``cmd`` ``repeats`` times, each on an idle machine if possible, printing each run."""
    result = Measurement(label)
    for i in range(repeats):
        busy = wait_until_idle(max_busy, idle_wait)
        sample = run_measured(cmd, use_gnu_time)
        result.samples.append(sample)
        print(f"  {label} run {i + 1}/{repeats}: {sample.wall_s:.2f} s wall, {sample.cpu_s:.2f} s CPU, "
              f"{sample.peak_rss_mb:.0f} MB (other processes before: {busy:.2f} CPUs)", flush=True)
    return result


def busy_cpus(interval: float = 1.0) -> float:
    """CPUs' worth of work done by other processes over ``interval`` seconds (this one sleeps meanwhile)."""

    def jiffies() -> tuple[int, int]:
        with open("/proc/stat") as fh:
            values = [int(v) for v in fh.readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    try:
        busy0, total0 = jiffies()
        time.sleep(interval)
        busy1, total1 = jiffies()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]  # not Linux: the load average is the best cheap proxy
    return (os.cpu_count() or 1) * (busy1 - busy0) / max(total1 - total0, 1)


def wait_until_idle(max_busy: float, timeout_s: float) -> float:
    """Wait up to ``timeout_s`` until other processes use fewer than ``max_busy`` CPUs; return the last reading."""
    deadline = time.monotonic() + timeout_s
    busy = busy_cpus()
    while busy >= max_busy and time.monotonic() < deadline:
        busy = busy_cpus(5.0)
    if busy >= max_busy:
        print(f"  warning: other processes keep {busy:.1f} CPUs busy; wall times will be inflated "
              "(the CPU-seconds column is less affected)", flush=True)
    return busy


def warm_page_cache(folder: Path) -> None:
    """Read every weight file once so all timed runs see the same (warm) page cache."""
    for path in sorted(folder.rglob("*.safetensors")):
        with path.open("rb") as fh:
            while fh.read(64 * 1024 * 1024):
                pass


def rankscope_cmd(exe: Path, folder: Path, out: Path) -> list[str]:
    return [str(exe), "spectrum", str(folder / "base"), str(folder / "finetuned"), "--no-plots", "-q", "-o", str(out)]


def baseline_cmd(python: Path, folder: Path, out: Path) -> list[str]:
    return [str(python), str(BASELINE_SCRIPT), str(folder / "base"), str(folder / "finetuned"), str(out)]


# --------------------------------------------------------------------------------------------------
# 4. Report
# --------------------------------------------------------------------------------------------------


def _check(value: float, target: float) -> str:
    return "ok" if value <= target else "MISS"


def render_table(rows: list[dict[str, Any]], ratio: dict[str, float] | None) -> str:
    """Fixed-width table: one line per tool row, the baseline/rankscope ratios and the rankscope targets."""
    header = f"{'tool':<32} {'wall s (median)':>15} {'CPU s':>7} {'peak RSS MB':>11} {'max |σ-σ_ref|/σ₁':>17}"
    lines = [header, "-" * len(header)]
    for r in rows:
        err = f"{r['max_rel_err']:.1e}" if r.get("max_rel_err") is not None else "-"
        lines.append(f"{r['tool']:<32} {r['wall_s']:>15.2f} {r['cpu_s']:>7.1f} {r['peak_rss_mb']:>11.0f} {err:>17}")
    if ratio:
        lines.append(f"{'ratio baseline / rankscope':<32} {ratio['wall_s']:>14.2f}x {ratio['cpu_s']:>6.2f}x "
                     f"{ratio['peak_rss_mb']:>10.2f}x {ratio['max_rel_err']:>16.1e}x")
    t = TARGETS
    lines.append(f"{'target (rankscope)':<32} {'≤ ' + format(t['wall_s'], 'g'):>15} {'':>7} "
                 f"{'≤ ' + format(t['peak_rss_mb'], 'g'):>11} {'≤ ' + format(t['max_rel_err'], 'g'):>17}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    venv_bin = Path(sys.executable).parent
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/rankscope-bench"),
                   help="Cache folder for the generated checkpoints, reference spectra and run outputs.")
    p.add_argument("--layers", type=int, default=8, help="Decoder layers of the benchmarked model.")
    p.add_argument("--repeats", type=int, default=3, help="Timed runs per tool (median wall, max peak RSS).")
    p.add_argument("--double", action="store_true", help="Also time rankscope on the model with 2x the layers.")
    p.add_argument("--seed", type=int, default=0, help="Seed of the synthetic weights.")
    p.add_argument("--rankscope", type=Path, default=venv_bin / "rankscope", help="rankscope console script.")
    p.add_argument("--python", type=Path, default=Path(sys.executable), help="Interpreter for the baseline.")
    p.add_argument("--skip-baseline", action="store_true", help="Time rankscope only.")
    p.add_argument("--max-busy", type=float, default=0.25,
                   help="Before each timed run, wait until other processes use fewer CPUs than this ...")
    p.add_argument("--idle-wait", type=float, default=120.0, help="... for at most this many seconds (0: don't wait).")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="Also save all figures as JSON.")
    args = p.parse_args(argv)
    if args.layers < 1 or args.repeats < 1:
        p.error("--layers and --repeats must be at least 1")
    return args


def _took(seconds: float | None, cached: Any) -> str:
    return f"{seconds:.1f} s" if seconds is not None else f"cached (took {cached} s)"


def prepare(data: Path, shape: LlamaShape, seed: int) -> tuple[Path, dict[str, np.ndarray]]:
    """Build (or reuse) the model pair and its float64 reference, reporting how long each took."""
    n_params = sum(int(np.prod(s)) for _, s in shape.tensors())
    print(f"model: Llama-shaped, {shape.layers} layers, {n_params / 1e6:.1f}M parameters, float32", flush=True)
    folder, gen_s = ensure_model(data, shape, seed)
    print(f"  data: {folder} ({model_bytes(folder) / 1e9:.2f} GB); generation "
          f"{_took(gen_s, _read_meta(folder).get('generation_seconds'))}", flush=True)
    reference, ref_s = ensure_reference(folder)
    print(f"  float64 LAPACK reference, {len(reference)} matrices: "
          f"{_took(ref_s, _read_meta(folder).get('reference_seconds'))}", flush=True)
    return folder, reference


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_gnu_time = _gnu_time_works()
    shape = LlamaShape(layers=args.layers)
    folder, reference = prepare(args.data, shape, args.seed)
    big_folder: Path | None = None
    if args.double:
        big_folder, big_s = ensure_model(args.data, LlamaShape(layers=2 * args.layers), args.seed)
        print(f"doubled model ({2 * args.layers} layers): {big_folder} ({model_bytes(big_folder) / 1e9:.2f} GB); "
              f"generation {_took(big_s, _read_meta(big_folder).get('generation_seconds'))}", flush=True)

    print(f"peak RSS and CPU time via {'/usr/bin/time -v' if use_gnu_time else 'getrusage(RUSAGE_CHILDREN)'}; "
          f"{args.repeats} runs per tool, page cache warm", flush=True)
    warm_page_cache(folder)
    timing = (args.max_busy, args.idle_wait)
    runs = folder / "runs"
    runs.mkdir(exist_ok=True)
    rs_out = runs / "rankscope"
    rs = measure("rankscope", rankscope_cmd(args.rankscope, folder, rs_out), args.repeats, use_gnu_time, *timing)
    rows = [rs.row(f"rankscope ({shape.layers} layers)", accuracy(load_npz(rs_out / "spectra.npz"), reference))]

    ratio: dict[str, float] = {}
    if not args.skip_baseline:
        bl_out = runs / "baseline.npz"
        bl = measure("baseline", baseline_cmd(args.python, folder, bl_out), args.repeats, use_gnu_time, *timing)
        rows.append(bl.row("baseline (torch svdvals, fp32)", accuracy(load_npz(bl_out), reference)))
        ratio = {k: rows[1][k] / max(rows[0][k], 1e-300) for k in ("wall_s", "cpu_s", "peak_rss_mb", "max_rel_err")}

    if big_folder is not None:
        (big_folder / "runs").mkdir(exist_ok=True)
        warm_page_cache(big_folder)
        big_cmd = rankscope_cmd(args.rankscope, big_folder, big_folder / "runs" / "rankscope")
        big_rs = measure(f"rankscope {2 * shape.layers}L", big_cmd, args.repeats, use_gnu_time, *timing)
        rows.append(big_rs.row(f"rankscope ({2 * shape.layers} layers)", None))

    print()
    print(render_table(rows, ratio))
    main_row = rows[0]
    print(f"\nrankscope vs targets: wall {_check(main_row['wall_s'], TARGETS['wall_s'])}, "
          f"peak RSS {_check(main_row['peak_rss_mb'], TARGETS['peak_rss_mb'])}, "
          f"error {_check(main_row['max_rel_err'], TARGETS['max_rel_err'])}; worst modules: rankscope "
          f"{main_row['worst_module']}" + (f", baseline {rows[1]['worst_module']}" if ratio else ""))
    if big_folder is not None:
        big = rows[-1]
        print(f"{shape.layers} -> {2 * shape.layers} layers: peak RSS {main_row['peak_rss_mb']:.0f} -> "
              f"{big['peak_rss_mb']:.0f} MB ({big['peak_rss_mb'] / main_row['peak_rss_mb']:.2f}x), wall "
              f"{main_row['wall_s']:.2f} -> {big['wall_s']:.2f} s ({big['wall_s'] / main_row['wall_s']:.2f}x)")

    if args.json is not None:
        meta = _read_meta(folder)
        report = {
            "model": {"folder": str(folder), "parameters": sum(int(np.prod(s)) for _, s in shape.tensors()),
                      "recipe": recipe(shape, args.seed)},
            "cpu_count": os.cpu_count(),
            "repeats": args.repeats,
            "rss_method": "/usr/bin/time -v" if use_gnu_time else "getrusage(RUSAGE_CHILDREN)",
            "generation_seconds": meta.get("generation_seconds"),
            "reference_seconds": meta.get("reference_seconds"),
            "double_generation_seconds": _read_meta(big_folder).get("generation_seconds") if big_folder else None,
            "targets": TARGETS,
            "rows": rows,
            "ratio_baseline_over_rankscope": ratio,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
