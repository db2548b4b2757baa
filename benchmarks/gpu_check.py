"""One-shot GPU check: the CUDA tests, then ``spectrum`` and ``extract`` timed on a Llama-2-7B-shaped bf16 pair.

Meant for a fresh single-GPU machine (an H200) and about 10 minutes, in one go::

    python3 benchmarks/gpu_check.py --json $OUT/gpu_check.json      # on the GPU machine
    .venv/bin/python benchmarks/gpu_check.py --tiny --device cpu      # the same steps, tiny, on a CPU (a dry run)

1. **Environment.** Every package rankscope needs must import; a missing one is installed with
   ``pip install -e .[dev]`` constrained to the torch already there (an unpinned torch is never installed),
   unless ``--no-install``.  rankscope itself runs from this checkout (``python -m rankscope.cli``).
2. **Tests.** ``pytest tests/test_cuda.py`` (they skip without a GPU).
3. **Pair.** A Llama-2-7B-shaped pair (hidden 4096, intermediate 11008, 32 layers, vocab 32000; sharded bf16
   safetensors, ``model.safetensors.index.json``, ``config.json``) is generated on the device (or with every
   CPU thread): base ``N(0, 0.02²)``, fine-tune ``= base + U diag(σ) Vᵀ`` (rank 64, σ_i ∝ 1/i, ``‖ΔW‖ ≈ 1 %``
   of ``‖W‖``) plus a small dense noise, rounded to bf16.  The shapes come from ``benchmarks/spectrum.py``'s
   ``LlamaShape``.  It is written to local disk (``--data``) and reused when its recipe matches.
4. **Timings.** ``rankscope spectrum --device D --no-plots`` and ``rankscope extract --rank 64 --device D``,
   each as a whole process (interpreter start included), with the default workers and with each of
   ``--workers-variants``: wall seconds, peak RSS, the GPU's peak memory in use (NVML or nvidia-smi, sampled),
   and checks — σ of three modules against ``torch.linalg.svdvals`` in float64 (a different algorithm from
   rankscope's Gram route) and extract's worst error ratio to the Eckart–Young optimum.  Targets: ≤ 60 s each.

A command that runs past ``--timeout`` is stopped and reported; the whole script keeps to ``--budget`` seconds
(runs that would not fit are skipped and listed).  The table is printed and, with ``--json``, saved.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_S = 60.0
RECIPE_VERSION = 1
BASE_STD = 0.02
DELTA_RANK = 64
REL_DELTA = 0.01
NOISE_SHARE = 0.05
SHARD_BYTES = 5 * 1000**3  # bf16 bytes per shard (Hugging Face's default for 7B-class models is ~5 GB)
REQUIRED = ("numpy", "scipy", "pandas", "safetensors", "transformers", "peft", "huggingface_hub", "matplotlib",
            "seaborn", "click", "tqdm", "threadpoolctl", "sklearn", "pytest")


def _bench_spectrum() -> Any:
    """``benchmarks/spectrum.py`` as a module (for its ``LlamaShape`` and ``plan_shards``)."""
    spec = importlib.util.spec_from_file_location("rankscope_bench_spectrum", HERE / "spectrum.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------------
# 1. environment
# --------------------------------------------------------------------------------------------------


def check_environment(install: bool) -> dict[str, Any]:
    """Versions of torch and the GPU; installs what is missing (torch pinned to the one present)."""
    import torch

    missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    env: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__,
                           "cuda": torch.version.cuda, "gpus": torch.cuda.device_count(),
                           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                           "cpus": os.cpu_count(), "missing_before": missing,
                           "ray": importlib.util.find_spec("ray") is not None}
    if missing and install:
        with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as pins:
            pins.write(f"torch=={torch.__version__}\n")
        cmd = [sys.executable, "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]", "-c", pins.name]
        print("installing:", " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        env["pip_rc"] = proc.returncode
        if proc.returncode:
            print(f"  pip failed ({proc.returncode}): {proc.stderr.strip()[-600:]}", flush=True)
        importlib.invalidate_caches()
        missing = [m for m in REQUIRED if importlib.util.find_spec(m) is None]
    env["missing"] = missing
    return env


# --------------------------------------------------------------------------------------------------
# 3. the pair
# --------------------------------------------------------------------------------------------------


def shape_of(tiny: bool) -> Any:
    bench = _bench_spectrum()
    if tiny:
        return bench.LlamaShape(hidden=96, intermediate=256, layers=2, vocab=512, heads=4)
    return bench.LlamaShape(hidden=4096, intermediate=11008, layers=32, vocab=32000, heads=32)


def recipe(shape: Any, seed: int) -> dict[str, Any]:
    return {"version": RECIPE_VERSION, "shape": asdict(shape), "seed": seed, "base_std": BASE_STD,
            "delta_rank": DELTA_RANK, "rel_delta": REL_DELTA, "noise_share": NOISE_SHARE, "dtype": "bf16"}


def _tensors(name: str, shape: tuple[int, ...], index: int, seed: int, device: str) -> tuple[Any, Any]:
    """(base, fine-tune) of one tensor as bf16 on ``device``: see the module docstring."""
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed * 1_000_003 + index)
    w = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * BASE_STD
    if len(shape) == 1:
        w += 1.0
        d = torch.randn(shape, generator=gen, device=device) * (REL_DELTA * BASE_STD)
        return w.bfloat16(), (w + d).bfloat16()
    m, n = shape
    k = min(DELTA_RANK, m, n)
    target = REL_DELTA * float(torch.linalg.vector_norm(w))
    u = torch.linalg.qr(torch.randn((m, k), generator=gen, device=device)).Q
    v = torch.linalg.qr(torch.randn((n, k), generator=gen, device=device)).Q
    sigma = 1.0 / torch.arange(1, k + 1, device=device, dtype=torch.float32)
    sigma *= (1.0 - NOISE_SHARE) ** 0.5 * target / torch.linalg.vector_norm(sigma)
    delta = (u * sigma) @ v.T
    delta += torch.randn((m, n), generator=gen, device=device) * (NOISE_SHARE**0.5 * target / (m * n) ** 0.5)
    return w.bfloat16(), (w + delta).bfloat16()


def write_pair(shape: Any, seed: int, folder: Path, device: str) -> float:
    """Generate and write ``folder/base`` and ``folder/finetuned``; returns the seconds it took."""
    import torch
    from safetensors.torch import save_file

    bench = _bench_spectrum()
    t0 = time.perf_counter()
    if device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    specs = shape.tensors()
    shards = bench.plan_shards(specs, limit=2 * SHARD_BYTES)  # plan_shards counts float32 bytes: 2 x bf16's
    files = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    total = 2 * sum(int(np.prod(s)) for _, s in specs)
    config = {**shape.config(), "torch_dtype": "bfloat16"}
    for side in ("base", "finetuned"):
        (folder / side).mkdir(parents=True)
        (folder / side / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        index = {"metadata": {"total_size": total},
                 "weight_map": {n: files[i] for i, names in enumerate(shards) for n in names}}
        (folder / side / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    shapes = dict(specs)
    order = {name: i for i, (name, _) in enumerate(specs)}
    for fname, names in zip(files, shards, strict=True):
        base, ft = {}, {}
        for name in names:
            b, f = _tensors(name, shapes[name], order[name], seed, device)
            base[name], ft[name] = b.cpu(), f.cpu()
        save_file(base, str(folder / "base" / fname), metadata={"format": "pt"})
        save_file(ft, str(folder / "finetuned" / fname), metadata={"format": "pt"})
        print(f"  wrote {fname} ({len(names)} tensors)", flush=True)
    return time.perf_counter() - t0


def ensure_pair(data: Path, tiny: bool, seed: int, device: str) -> tuple[Path, dict[str, Any]]:
    """The cached pair for this recipe, built if missing (or different)."""
    shape = shape_of(tiny)
    folder = data / ("llama-tiny" if tiny else "llama2-7b-shaped")
    want = recipe(shape, seed)
    meta_path = folder / "meta.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("recipe") == want:
        meta = json.loads(meta_path.read_text())
        meta["cached"] = True
        return folder, meta
    shutil.rmtree(folder, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    need = 2 * 2 * sum(int(np.prod(s)) for _, s in shape.tensors())  # two bf16 checkpoints
    free = shutil.disk_usage(data).free
    if free < need * 1.1 + 2e9:
        raise SystemExit(f"{data}: {free / 1e9:.1f} GB free, the pair needs {need / 1e9:.1f} GB (use --data)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=data))
    try:
        seconds = write_pair(shape, seed, tmp, device)
        params = sum(int(np.prod(s)) for _, s in shape.tensors())
        meta = {"recipe": want, "generation_seconds": round(seconds, 1), "parameters": params,
                "bytes": sum(p.stat().st_size for p in tmp.rglob("*.safetensors"))}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        tmp.chmod(0o755)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    meta["cached"] = False
    return folder, meta


# --------------------------------------------------------------------------------------------------
# 4. timing whole processes
# --------------------------------------------------------------------------------------------------

_WRAPPER = (
    "import resource, subprocess, sys\n"
    "rc = subprocess.call(sys.argv[2:])\n"
    "ru = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "open(sys.argv[1], 'w').write(f'{ru.ru_maxrss} {ru.ru_utime + ru.ru_stime}')\n"
    "sys.exit(rc)\n"
)


class GpuMemory:
    """Peak GPU memory in use while running, sampled every 0.1 s (NVML, else nvidia-smi); None without a GPU."""

    def __init__(self) -> None:
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._read = self._reader()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _reader() -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            return lambda: sum(pynvml.nvmlDeviceGetMemoryInfo(h).used for h in handles) / 2**20
        except Exception:  # noqa: BLE001 - fall back to nvidia-smi
            pass
        if shutil.which("nvidia-smi") is None:
            return None

        def smi() -> float:
            out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True, timeout=10).stdout
            return float(sum(float(v) for v in out.split()))

        return smi

    def _loop(self) -> None:
        base = self._read()
        while not self._stop.is_set():
            try:
                used = self._read() - base
            except Exception:  # noqa: BLE001
                return
            self.peak_mb = used if self.peak_mb is None else max(self.peak_mb, used)
            self._stop.wait(0.1)

    def __enter__(self) -> GpuMemory:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


@dataclass
class Run:
    label: str
    cmd: list[str]
    rc: int | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    peak_rss_mb: float | None = None
    gpu_peak_mb: float | None = None
    timed_out: bool = False
    checks: dict[str, Any] = field(default_factory=dict)
    stderr_tail: str = ""


def timed(label: str, cmd: list[str], timeout: float, env: dict[str, str]) -> Run:
    """Run ``cmd`` as its own process group; wall time, peak RSS and CPU of it and its children, GPU peak."""
    run = Run(label, cmd)
    with tempfile.NamedTemporaryFile("r", suffix=".rusage") as report, GpuMemory() as gpu:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _WRAPPER, report.name, *cmd], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            run.timed_out = True
        run.wall_s = round(time.perf_counter() - t0, 2)
        run.rc = proc.returncode
        text = Path(report.name).read_text().split()
    run.gpu_peak_mb = None if gpu.peak_mb is None else round(gpu.peak_mb)
    if len(text) == 2:
        run.peak_rss_mb, run.cpu_s = round(int(text[0]) / 1024), round(float(text[1]), 1)
    run.stderr_tail = (err or "").strip()[-800:]
    status = "TIMEOUT" if run.timed_out else f"rc {run.rc}"
    print(f"  {label}: {run.wall_s} s wall, {run.peak_rss_mb} MB RSS, GPU {run.gpu_peak_mb} MB, {status}", flush=True)
    if run.rc and not run.timed_out:
        print("    " + run.stderr_tail.replace("\n", "\n    "), flush=True)
    return run


def check_spectrum(pair: Path, out: Path, device: str) -> dict[str, Any]:
    """σ of three modules against ``torch.linalg.svdvals`` of the float64 ΔW (on ``device``), and run.json facts."""
    import torch
    from safetensors import safe_open

    info = json.loads((out / "run.json").read_text())
    index = json.loads((pair / "base" / "model.safetensors.index.json").read_text())["weight_map"]
    worst = 0.0
    with np.load(out / "spectra.npz") as spectra:
        for module in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "lm_head"):
            name = f"{module}.weight"
            with safe_open(pair / "base" / index[name], "pt") as fb, \
                    safe_open(pair / "finetuned" / index[name], "pt") as ff:
                delta = ff.get_tensor(name).to(device, torch.float64) - fb.get_tensor(name).to(device, torch.float64)
            ref = torch.linalg.svdvals(delta).cpu().numpy()
            worst = max(worst, float(np.max(np.abs(spectra[module] - ref)) / ref[0]))
    return {"max_rel_err_3_modules": worst, "compute_s": info["seconds"]["compute"],
            "executor": info.get("executor"), "methods": sorted(set(info["methods_by_shape"].values()))}


def check_extract(out: Path) -> dict[str, Any]:
    import pandas as pd

    table = pd.read_csv(out / "extract.csv")
    info = json.loads((out / "run.json").read_text())
    lora = table[table["role"] == "lora"]
    return {"worst_ratio": float(lora["ratio"].max()), "modules": int(len(lora)),
            "compute_s": info["seconds"]["compute"], "methods": info["adapter"]["methods"]}


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------


def table(runs: list[Run]) -> str:
    head = f"{'command':<44} {'wall s':>8} {'CPU s':>8} {'peak RSS MB':>11} {'GPU MB':>8} {'≤ 60 s':>7}  check"
    lines = [head, "-" * len(head)]
    for r in runs:
        ok = "-" if r.wall_s is None or r.timed_out or r.rc else ("ok" if r.wall_s <= TARGET_S else "MISS")
        check = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.checks.items()
                          if k in ("max_rel_err_3_modules", "worst_ratio", "compute_s"))
        state = " TIMEOUT" if r.timed_out else (f" rc={r.rc}" if r.rc else "")
        lines.append(f"{r.label:<44} {r.wall_s or 0:>8.1f} {r.cpu_s or 0:>8.1f} {r.peak_rss_mb or 0:>11} "
                     f"{'-' if r.gpu_peak_mb is None else r.gpu_peak_mb:>8} {ok:>7}  {check}{state}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("/tmp/rankscope-gpu-check"), help="Pair and outputs go here.")
    p.add_argument("--device", default="cuda", help="Device of the timed commands (and of the generation).")
    p.add_argument("--tiny", action="store_true", help="A 2-layer pair of hidden 96 (a dry run of every step).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the generated weights.")
    p.add_argument("--rank", type=int, default=64, help="extract --rank.")
    p.add_argument("--workers-variants", default="4", help="Also time each command with these --workers (comma-"
                   "separated; empty: only the default).")
    p.add_argument("--timeout", type=float, default=200.0, help="Seconds before one timed command is stopped.")
    p.add_argument("--budget", type=float, default=570.0, help="Seconds for the whole script; later runs that "
                   "would not fit are skipped.")
    p.add_argument("--skip-tests", action="store_true", help="Do not run tests/test_cuda.py.")
    p.add_argument("--no-install", action="store_true", help="Never call pip.")
    p.add_argument("--json", type=Path, default=None, help="Also write everything measured here.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.monotonic()
    print("1. environment", flush=True)
    env_info = check_environment(not args.no_install)
    print("  " + json.dumps(env_info), flush=True)
    if env_info["missing"]:
        print(f"  cannot run without: {', '.join(env_info['missing'])}", flush=True)
        return 2
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    report: dict[str, Any] = {"environment": env_info, "args": {k: str(v) for k, v in vars(args).items()}}
    if not args.skip_tests:
        print("2. tests/test_cuda.py", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout + 100)
        tail = proc.stdout.strip().splitlines()[-12:]
        print("  " + "\n  ".join(tail), flush=True)
        report["tests"] = {"rc": proc.returncode, "seconds": round(time.perf_counter() - t0, 1), "tail": tail}
    print("3. pair", flush=True)
    pair, meta = ensure_pair(args.data, args.tiny, args.seed, args.device)
    made = "cached" if meta["cached"] else f"generated in {meta['generation_seconds']} s"
    print(f"  {pair}: {meta['parameters'] / 1e9:.2f}B parameters, {meta['bytes'] / 1e9:.1f} GB, {made}", flush=True)
    report["pair"] = {"path": str(pair), **meta}
    print("4. timings", flush=True)
    variants: list[int | None] = [None] + [int(w) for w in args.workers_variants.split(",") if w.strip()]
    cli = [sys.executable, "-m", "rankscope.cli"]
    base, ft = str(pair / "base"), str(pair / "finetuned")
    plans = []
    for workers in variants:
        extra = [] if workers is None else ["--workers", str(workers)]
        tag = "" if workers is None else f" --workers {workers}"
        out = args.data / f"out-spectrum-{workers or 'default'}"
        plans.append((f"spectrum --device {args.device} --no-plots{tag}", out, "spectrum",
                      [*cli, "spectrum", base, ft, "-o", str(out), "--device", args.device, "--no-plots", "-q",
                       "--overwrite", *extra]))
    for workers in variants:
        extra = [] if workers is None else ["--workers", str(workers)]
        tag = "" if workers is None else f" --workers {workers}"
        out = args.data / f"out-extract-{workers or 'default'}"
        plans.append((f"extract --rank {args.rank} --device {args.device}{tag}", out, "extract",
                      [*cli, "extract", base, ft, "--rank", str(args.rank), "-o", str(out), "--device", args.device,
                       "-q", "--overwrite", *extra]))
    order = [plans[0], plans[len(variants)]] + [p for i, p in enumerate(plans) if i not in (0, len(variants))]
    runs, skipped = [], []
    for label, out, kind, cmd in order:  # the two default runs first: they are the targets
        left = args.budget - (time.monotonic() - start)
        if left < 30:
            skipped.append(label)
            continue
        shutil.rmtree(out, ignore_errors=True)
        run = timed(label, cmd, min(args.timeout, left - 10), env)
        if run.rc == 0:
            try:
                run.checks = check_spectrum(pair, out, args.device) if kind == "spectrum" else check_extract(out)
            except Exception as exc:  # noqa: BLE001 - a check that breaks is reported, not fatal
                run.checks = {"error": f"{type(exc).__name__}: {exc}"}
        runs.append(run)
    print()
    print(table(runs))
    if skipped:
        print(f"skipped (budget of {args.budget:.0f} s): {', '.join(skipped)}")
    report["runs"] = [asdict(r) for r in runs]
    report["skipped"] = skipped
    report["seconds"] = round(time.monotonic() - start, 1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    failed = any(r.rc for r in runs) or report.get("tests", {}).get("rc", 0) not in (0, 5)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
