"""Benchmark subspace training on MiniLM-L6 and the fast Walsh–Hadamard transform, side by side in one run.

1. Training steps on the bundled MiniLM-L6 (``bundled:minilm-base`` with a 2-class head, 22.7M
   parameters, all of them in the subspace): the same fixed batch of ``--batch`` Rotten Tomatoes
   snippets (padded to their longest), forward + backward + optimizer step.  Each Fastfood subspace
   step (AdamW over θ_d only) at d ∈ {10³, 10⁴, 10⁵}, for every layout (``blocked``, the default;
   ``global``; ``per-tensor``), is timed in turns with a plain step (AdamW over every parameter, as
   ``rankscope train --method full``), and the default layout once more with SAID and once on its torch
   path (what runs without a C compiler): ``--repeats`` pairs after ``--warmup``, medians and their ratio,
   so the drift of a shared machine falls on both alike.  A dense subspace step at d = 10³ does not fit
   at D = 22.7M: it is reported as the extrapolated cost of generating P, which is why dense is for
   small models.  Target: the Fastfood step (default layout) costs ≤ 1.5× the plain step.
2. The projection alone: ``θ₀ + P θ_d`` for every MiniLM tensor (blocked layout), forward and forward +
   backward, on the native kernels and on the torch path.
3. FWHT throughput (float32, batch 1) at L = 2^12 … 2^24: rankscope's transform (the native C kernel of
   ``rankscope/subspace/native.py`` when it is built), the torch GEMM-pass transform it falls back to,
   the radix-2 butterfly loop, and a dense Hadamard matmul ``H @ x`` where ``H`` fits (L ≤ 2^13); GB/s
   counts the 4·L bytes of the vector transformed per second.  Target: ≥ 1 GB/s.

Usage::

    .venv/bin/python benchmarks/subspace.py [--repeats 7] [--batch 16] [--layouts blocked,global,per-tensor]
        [--skip-steps] [--json out.json] [--device cpu]

``RANKSCOPE_NATIVE=0`` times the torch path of every step instead of the native kernels.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

TARGETS = {"step_ratio": 1.5, "fwht_gb_s": 1.0}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# --------------------------------------------------------------------------------------------------
# training steps
# --------------------------------------------------------------------------------------------------


def minilm_batch(batch: int, device: torch.device):
    from rankscope.subspace.tasks import TextTask
    from rankscope.training.engine import collate, encode

    task = TextTask("rotten-tomatoes", max_train=batch, max_eval=8)
    data = encode(task.data.train, task.tokenizer, 128)
    tensors = collate(data, list(range(batch)), task.tokenizer.pad_token_id)
    return task, {k: v.to(device) for k, v in tensors.items()}


def step_fn(model, batch, device: torch.device):
    from rankscope.training.engine import logits_of, make_optimizer

    model.to(device).train()
    optimizer = make_optimizer(model, 1e-5, 0.01)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(logits_of(model, batch), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def interleaved_medians(fns: list, repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Median seconds of each function, timed in turns (a, b, a, b, …) so machine drift hits all alike."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times, strict=True):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(bucket) for bucket in times]


def bench_projection(args, device: torch.device, model) -> list[dict]:
    """``θ₀ + P θ_d`` for every MiniLM tensor, forward and forward + backward, native and torch path."""
    from rankscope.subspace import native
    from rankscope.subspace.projections import FastfoodProjection

    bases = [p.detach().to(device) for p in model.parameters()]
    grads = [torch.randn(b.numel(), generator=torch.Generator().manual_seed(i)).to(device) for i, b in enumerate(bases)]
    D = sum(b.numel() for b in bases)  # noqa: N806
    rows = []
    print(f"Fastfood θ₀ + P θ_d over the {len(bases)} MiniLM tensors (blocked layout), median of {args.repeats}")
    print(f"  {'d':>8} {'path':>10} {'forward':>9} {'fwd + bwd':>10}")
    for d in (1_000, 10_000, 100_000):
        proj = FastfoodProjection(D, d, 0).to(device)
        theta = torch.zeros(d, device=device, requires_grad=True)

        def forward(proj=proj, theta=theta) -> None:
            with torch.no_grad():
                proj.offset_pieces(theta, bases)

        def both(proj=proj, theta=theta) -> None:
            torch.autograd.backward(proj.offset_pieces(theta, bases), grads)

        paths = [("native", contextlib.nullcontext)] if native.usable(theta.detach()) else []
        for path, context in [*paths, ("torch", native.disabled)]:
            with context():
                fwd = median_time(forward, args.repeats, 1, device)
                total = median_time(both, args.repeats, 1, device)
            rows.append({"d": d, "path": path, "forward_seconds": fwd, "forward_backward_seconds": total})
            print(f"  {d:>8,} {path:>10} {fwd * 1e3:6.0f} ms {total * 1e3:7.0f} ms", flush=True)
        del proj
    return rows


def bench_steps(args, device: torch.device, task, batch) -> list[dict]:
    from rankscope.subspace import native
    from rankscope.subspace.wrapper import SubspaceModel

    rows = []
    plain_step = step_fn(task.build(0), batch, device)
    D = sum(p.numel() for p in task.build(0).parameters())  # noqa: N806
    print(f"MiniLM-L6, D = {D:,}, batch {args.batch} × {batch['input_ids'].shape[1]} tokens, device {device}; "
          f"each subspace step timed in turns with a plain step (AdamW over all parameters)")
    print(f"  {'step':<36} {'subspace':>9} {'plain':>9} {'ratio':>7}")

    def against_plain(step: str, label: str, d: int, torch_path: bool = False, **options) -> None:
        model = SubspaceModel(task.build(0), d, projection="fastfood", seed=0, **options)
        inner = step_fn(model, batch, device)

        def subspace_step() -> None:
            with native.disabled() if torch_path else contextlib.nullcontext():
                inner()

        seconds, plain = interleaved_medians([subspace_step, plain_step], args.repeats, args.warmup, device)
        rows.append({"step": step, "d": d, "seconds": seconds, "plain_seconds": plain, "ratio": seconds / plain})
        print(f"  {f'{label}, d = {d:,}':<36} {seconds * 1e3:6.0f} ms {plain * 1e3:6.0f} ms {seconds / plain:6.2f}×",
              flush=True)

    for layout in args.layouts.split(","):
        for d in (1_000, 10_000, 100_000):
            against_plain(f"fastfood {layout}", f"fastfood {layout}", d, layout=layout)
    for d in (1_000, 10_000, 100_000):  # SAID: one λ per tensor on top (m = 105 of the d)
        against_plain("fastfood blocked, SAID", "  same, SAID", d, layout="blocked", mode="said")
    if native.available():  # the torch fallback of the default layout, for comparison
        for d in (1_000, 10_000, 100_000):
            against_plain("fastfood blocked, torch path", "  same, torch path", d, torch_path=True, layout="blocked")
    # dense at d = 10^3 is D·d = 2.3e10 Gaussians per product: time one column block and extrapolate
    from rankscope.subspace.projections import DenseProjection

    plain = statistics.median(r["plain_seconds"] for r in rows) if rows else median_time(plain_step, 3, 1, device)
    dense = DenseProjection(D, 1_000, 0)
    t0 = time.perf_counter()
    dense.column_block(0)
    per_block = time.perf_counter() - t0
    extrapolated = 2 * per_block * dense.n_blocks  # forward and backward regenerate every block
    rows.append({"step": "dense (streamed, extrapolated)", "d": 1_000, "seconds": extrapolated,
                 "plain_seconds": plain, "ratio": extrapolated / plain})
    print(f"  {'dense streamed, d = 1,000 (extrap.)':<36} {extrapolated:6.0f} s  {plain * 1e3:6.0f} ms "
          f"{extrapolated / plain:6.0f}×")
    return rows


# --------------------------------------------------------------------------------------------------
# FWHT throughput
# --------------------------------------------------------------------------------------------------


def bench_fwht(args, device: torch.device) -> list[dict]:
    from rankscope.subspace import native
    from rankscope.subspace.fwht import fwht, fwht_butterfly, hadamard

    rows = []
    kernel = "native C" if native.usable(torch.zeros(1, device=device)) else "(native off)"
    print(f"FWHT throughput (float32, {device}, batch 1): GB/s of the vector transformed")
    print(f"  {'L':>6} {'rankscope fwht':>15} {'torch GEMM passes':>18} {'radix-2 loop':>13} {'dense H @ x':>12}")
    print(f"  {'':>6} {kernel:>15}")
    for bits in (12, 14, 16, 18, 20, 22, 24):
        length = 1 << bits
        x = torch.randn(length, device=device)
        reps = max(3, min(args.repeats * 4, (1 << 26) // length))
        with torch.no_grad():
            ours = median_time(lambda x=x: fwht(x), reps, 2, device)
            with native.disabled():
                gemm = median_time(lambda x=x: fwht(x), reps, 2, device)
            loop = median_time(lambda x=x: fwht_butterfly(x), max(3, reps // 4), 1, device)
            dense = None
            if bits <= 13:
                h = hadamard(length, device=device)
                dense = median_time(lambda h=h, x=x: h @ x, reps, 2, device)
        gb = 4 * length / 1e9
        row = {"L": length, "fwht_gb_s": gb / ours, "torch_gemm_gb_s": gb / gemm, "butterfly_gb_s": gb / loop,
               "dense_gb_s": None if dense is None else gb / dense, "fwht_ms": ours * 1e3, "kernel": kernel}
        rows.append(row)
        dense_text = f"{row['dense_gb_s']:12.3f}" if dense is not None else f"{'-':>12}"
        print(f"  {'2^' + str(bits):>6} {row['fwht_gb_s']:15.2f} {row['torch_gemm_gb_s']:18.2f} "
              f"{row['butterfly_gb_s']:13.2f} {dense_text}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-steps", action="store_true", help="Only the FWHT throughput.")
    parser.add_argument("--layouts", default="blocked,global,per-tensor", help="Fastfood layouts to time (comma-separated).")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    fwht_rows = bench_fwht(args, device)
    projection_rows, step_rows = [], []
    if not args.skip_steps:
        task, batch = minilm_batch(args.batch, device)
        projection_rows = bench_projection(args, device, task.build(0))
        step_rows = bench_steps(args, device, task, batch)
    print("targets (default layout, blocked):")
    for row in step_rows:
        if row["step"] == "fastfood blocked":
            verdict = "met" if row["ratio"] <= TARGETS["step_ratio"] else "MISSED"
            print(f"  Fastfood step / plain step at d = {row['d']:,}: {row['ratio']:.2f}× "
                  f"(target ≤ {TARGETS['step_ratio']}×) {verdict}")
    peak = max(r["fwht_gb_s"] for r in fwht_rows)
    verdict = "met" if peak >= TARGETS["fwht_gb_s"] else "MISSED"
    print(f"  FWHT peak throughput {peak:.2f} GB/s (target ≥ {TARGETS['fwht_gb_s']} GB/s) {verdict}")
    if args.json:
        args.json.write_text(json.dumps({"steps": step_rows, "projection": projection_rows, "fwht": fwht_rows,
                                          "targets": TARGETS}, indent=2))


if __name__ == "__main__":
    main()
