"""On a GPU: the torch float64 Gram route, extract, compare and the one-thread-per-GPU executor against the CPU.

Skipped unless ``torch.cuda.is_available()`` (``benchmarks/gpu_check.py`` runs this file on a GPU machine).
Spectra on ``cuda`` must equal the CPU's float64 LAPACK route to ``1e-6·σ₁`` (the Gram route's bound is
``~√(n·ε)·σ₁``) on a planted pair with tall, wide and square matrices larger than the streaming slices; the
extracted adapters must merge to the same rank-r updates; with two or more GPUs, ``--device cuda`` must use
every one of them and give the results of one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg
import torch

from rankscope.compare import compare
from rankscope.extract import extract
from rankscope.numerics.linalg import torch_spectrum
from rankscope.pairing.executors import LocalExecutor, make_executor
from rankscope.spectrum import spectrum

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = {"model.layers.0.mlp.up_proj": (640, 192), "model.layers.0.mlp.down_proj": (192, 640),
          "model.layers.0.self_attn.q_proj": (192, 192), "model.layers.1.self_attn.q_proj": (192, 192),
          "model.layers.1.mlp.up_proj": (640, 192), "model.layers.1.mlp.down_proj": (192, 640)}


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A float32 pair whose ΔW = U diag(s) Vᵀ has a known, decaying spectrum (and its float64 reference)."""
    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("cuda-pair")
    rng = np.random.default_rng(11)
    base, ft, ref = {}, {}, {}
    for i, (module, (m, n)) in enumerate(SHAPES.items()):
        k = min(m, n)
        s = 0.05 * (0.9 + 0.02 * i) ** np.arange(k)
        u = np.linalg.qr(rng.standard_normal((m, k)))[0]
        v = np.linalg.qr(rng.standard_normal((n, k)))[0]
        w = (0.02 * rng.standard_normal((m, n))).astype(np.float32)
        base[f"{module}.weight"] = w
        ft[f"{module}.weight"] = (w + (u * s) @ v.T).astype(np.float32)
        ref[module] = scipy.linalg.svdvals(ft[f"{module}.weight"].astype(np.float64) - w.astype(np.float64))
    folders = []
    for name, tensors in (("base", base), ("ft", ft)):
        folder = root / name
        folder.mkdir()
        save_file(tensors, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
        folders.append(folder)
    return folders[0], folders[1], ref


def assert_close(got: dict, want: dict, bound: float = 1e-6) -> None:
    assert set(got) == set(want)
    for module, ref in want.items():
        np.testing.assert_allclose(got[module], ref, rtol=0, atol=bound * max(ref[0], 1e-30), err_msg=module)


def test_torch_spectrum_on_cuda_streams_tall_and_wide_slices():
    rng = np.random.default_rng(3)
    for shape in ((900, 130), (130, 900)):
        a = rng.standard_normal(shape)
        blocks = [a[i:i + 100] for i in range(0, shape[0], 100)]
        sigma = torch_spectrum(iter(blocks), *shape, "cuda", block_bytes=8 * 130 * 7)  # slices of 7 rows/columns
        ref = scipy.linalg.svdvals(a)
        np.testing.assert_allclose(sigma, ref, rtol=0, atol=1e-9 * ref[0])


def test_spectrum_on_cuda_equals_cpu(planted, make_pair):
    base, ft, ref = planted
    gpu = spectrum(base, ft, device="cuda")
    cpu = spectrum(base, ft, device="cpu")
    assert set(gpu.table["method"]) == {"torch"}
    assert_close(gpu.spectra, ref)
    assert_close(gpu.spectra, cpu.spectra)
    pair = make_pair("llama", "sharded", "bf16")
    assert_close(spectrum(pair.base, pair.finetuned, device="cuda:0").spectra,
                 spectrum(pair.base, pair.finetuned).spectra)


def test_extract_on_cuda_equals_cpu(planted):
    base, ft, _ = planted
    gpu = extract(base, ft, rank=8, device="cuda", check_model="never")
    cpu = extract(base, ft, rank=8, device="cpu", check_model="never")
    assert set(gpu.tensors) == set(cpu.tensors)
    for key in [k for k in cpu.tensors if k.endswith("lora_B.weight")]:
        a_key = key.replace("lora_B", "lora_A")
        merged_gpu = gpu.tensors[key].astype(np.float64) @ gpu.tensors[a_key].astype(np.float64)
        merged_cpu = cpu.tensors[key].astype(np.float64) @ cpu.tensors[a_key].astype(np.float64)
        np.testing.assert_allclose(merged_gpu, merged_cpu, rtol=0, atol=1e-5 * np.abs(merged_cpu).max(), err_msg=key)
    np.testing.assert_allclose(gpu.table["rel_error"], cpu.table["rel_error"], rtol=1e-5)
    np.testing.assert_allclose(gpu.table["optimal_rel_error"], cpu.table["optimal_rel_error"], rtol=1e-6)


def test_compare_on_cuda_equals_cpu(planted, tmp_path):
    base, ft, _ = planted
    adapter = tmp_path / "adapter"
    extract(base, ft, rank=4, check_model="never").save(adapter)
    gpu = compare(base, ft, adapter, device="cuda", phi_max=16, k=4)
    cpu = compare(base, ft, adapter, phi_max=16, k=4)
    for key, grid in cpu.phi.items():
        np.testing.assert_allclose(gpu.phi[key], grid, rtol=0, atol=1e-8, err_msg=key)
    for column in ("energy_both", "energy_optimal", "cosine", "amp_full_r", "amp_lora_r"):
        np.testing.assert_allclose(gpu.table[column], cpu.table[column], rtol=1e-8, err_msg=column)
    assert gpu.info["device"] == "cuda"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two or more GPUs")
def test_every_gpu_is_used_and_gives_the_results_of_one(planted):
    base, ft, ref = planted
    runner = make_executor("local", "cuda")
    assert isinstance(runner, LocalExecutor) and len(runner.devices) == torch.cuda.device_count()
    multi = spectrum(base, ft, executor=runner)
    assert len(set(runner.assignment.values())) >= 2
    assert multi.info["executor"]["devices"] == [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    assert_close(multi.spectra, ref)
    assert_close(multi.spectra, spectrum(base, ft, device="cuda:0").spectra)


def test_ray_tasks_get_a_gpu(planted):
    ray = pytest.importorskip("ray")
    base, ft, ref = planted
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        result = spectrum(base, ft, device="cuda", executor="ray")
    finally:
        ray.shutdown()
    assert result.info["executor"]["task_device"] == "cuda" and result.info["executor"]["gpus"] >= 1
    assert set(result.table["method"]) == {"torch"}
    assert_close(result.spectra, ref)
