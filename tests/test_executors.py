"""The executors: every GPU of one machine (faked on the CPU) and Ray give the local executor's results, bit for bit.

A local Ray cluster (2 CPUs, no dashboard) is started once for the module.  ``spectrum``, ``extract`` and
``compare`` run on a planted Llama pair (conftest) with ``executor="ray"`` and with the local executor at two
workers (single-threaded BLAS, as inside a Ray task); σ arrays, LoRA factors and φ grids must be equal
(``np.array_equal``) and the CSV files byte for byte once the ``seconds`` column is dropped.  The scheduling of
:class:`LocalExecutor` is checked with fake device lists: jobs go to every worker, each pinned to its device,
largest first.  A checkpoint path that a Ray worker cannot see, a worker that dies (retried), a missing Ray and
the options' errors are one line each.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rankscope.compare import compare
from rankscope.errors import RankscopeError
from rankscope.extract import extract
from rankscope.io.checkpoints import open_checkpoint
from rankscope.pairing import executors
from rankscope.pairing.align import align
from rankscope.pairing.executors import LocalExecutor, RayExecutor, cost, largest_first, make_executor
from rankscope.spectrum import analyse_pair, spectrum

ray = pytest.importorskip("ray")  # a dev dependency: pip install -e .[dev]


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster for this module (the analyses join it: ``ray.is_initialized()``)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture
def pair(make_pair):
    """Sharded bf16 safetensors: a checkpoint of several files, opened by folder."""
    return make_pair("llama", "sharded", "bf16")


def csv_without(path: Path, drop: tuple[str, ...] = ("seconds",)) -> str:
    """The CSV text of ``path`` without the timing columns."""
    rows = list(csv.reader(path.read_text().splitlines()))
    keep = [i for i, name in enumerate(rows[0]) if name not in drop]
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[r[i] for i in keep] for r in rows])
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# Ray against the local executor
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "gram"])
def test_spectrum_on_ray_is_bit_identical_to_local(cluster, pair, tmp_path, method):
    local = spectrum(pair.base, pair.finetuned, method=method, workers=2)
    remote = spectrum(pair.base, pair.finetuned, method=method, executor="ray")
    assert set(remote.spectra) == set(local.spectra) and len(local.spectra) >= 15
    for module, sigma in local.spectra.items():
        assert np.array_equal(remote.spectra[module], sigma), module
    local.save(tmp_path / "local", plots=False)
    remote.save(tmp_path / "ray", plots=False)
    for name in ("modules.csv", "vectors.csv"):
        assert csv_without(tmp_path / "ray" / name) == csv_without(tmp_path / "local" / name), name
    assert "seconds" in (tmp_path / "ray" / "modules.csv").read_text().splitlines()[0]
    described = json.loads((tmp_path / "ray" / "run.json").read_text())["executor"]
    assert described["name"] == "ray" and described["nodes"] == 1 and described["cpus"] == 2
    assert described["task_device"] == "cpu" and described["gpus"] == 0
    assert local.info["executor"] == {"name": "local", "devices": ["cpu"], "workers": 2}
    # and the σ are right, not only equal: the planted spectra, to float64 round-off of bf16 inputs
    ref = pair.reference()
    for module, sigma in remote.spectra.items():
        np.testing.assert_allclose(sigma, ref[module].sigma, rtol=0, atol=1e-9 * max(ref[module].sigma[0], 1e-30))


def test_extract_on_ray_is_bit_identical_to_local(cluster, pair, tmp_path):
    local = extract(pair.base, pair.finetuned, rank=4, workers=2)
    remote = extract(pair.base, pair.finetuned, rank=4, executor="ray")
    assert set(remote.tensors) == set(local.tensors) and len(local.tensors) >= 10
    for key, value in local.tensors.items():
        assert np.array_equal(remote.tensors[key], value), key
    local.save(tmp_path / "local")
    remote.save(tmp_path / "ray")
    assert csv_without(tmp_path / "ray" / "extract.csv") == csv_without(tmp_path / "local" / "extract.csv")
    assert remote.info["executor"]["name"] == "ray" and remote.info["options"]["workers"] is None


def test_compare_on_ray_is_bit_identical_to_local(cluster, pair, tmp_path):
    adapter = tmp_path / "adapter"
    extract(pair.base, pair.finetuned, rank=3, workers=2).save(adapter)
    local = compare(pair.base, pair.finetuned, adapter, workers=2, phi_max=8, k=4)
    remote = compare(pair.base, pair.finetuned, adapter, executor="ray", phi_max=8, k=4)
    assert set(remote.phi) == set(local.phi) and len(local.phi) >= 20
    for key, grid in local.phi.items():
        assert np.array_equal(remote.phi[key], grid), key
    local.save(tmp_path / "local", plots=False)
    remote.save(tmp_path / "ray", plots=False)
    for name in ("compare.csv", "amplification.csv", "intruders.csv"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    assert remote.info["executor"]["name"] == "ray" and local.info["executor"]["workers"] == 2


def test_cli_spectrum_and_recommend_with_ray(cluster, pair, tmp_path):
    from rankscope.cli import main

    runner = CliRunner()
    out = tmp_path / "spec"
    result = runner.invoke(main, ["spectrum", str(pair.base), str(pair.finetuned), "-o", str(out), "--no-plots",
                                  "-q", "--executor", "ray"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "run.json").read_text())["executor"]["name"] == "ray"
    plan = tmp_path / "plan"
    result = runner.invoke(main, ["recommend", str(pair.base), str(pair.finetuned), "-o", str(plan), "--no-plots",
                                  "-q", "--executor", "ray"])
    assert result.exit_code == 0, result.output
    on_the_fly = json.loads((plan / "spectrum" / "run.json").read_text())
    assert on_the_fly["executor"]["name"] == "ray"
    with np.load(plan / "spectrum" / "spectra.npz") as spectra, np.load(out / "spectra.npz") as direct:
        assert len(spectra.files) >= 14  # all but the embeddings and the LM head
        assert all(np.array_equal(spectra[k], direct[k]) for k in spectra.files)


def test_recommend_api_takes_the_executor_like_spectrum(cluster, pair):
    from rankscope.ranks import recommend

    remote = recommend(pair.base, pair.finetuned, rule="budget:20k", executor="ray")
    local = recommend(pair.base, pair.finetuned, rule="budget:20k", workers=2)
    assert remote.spectrum.info["executor"]["name"] == "ray" and local.spectrum.info["executor"]["name"] == "local"
    assert remote.table["rank"].tolist() == local.table["rank"].tolist()
    with pytest.raises(RankscopeError, match="--ray-address only applies"):
        recommend(pair.base, pair.finetuned, executor="local", ray_address="127.0.0.1:6379")


def test_a_path_a_worker_cannot_see_is_one_line_naming_path_and_node(cluster, pair, tmp_path):
    from safetensors.numpy import save_file

    base, ft = tmp_path / "base", tmp_path / "ft"
    shutil.copytree(pair.base, base)
    shutil.copytree(pair.finetuned, ft)
    with open_checkpoint(base) as b, open_checkpoint(ft) as f:
        jobs = [p for p in align(b, f).pairs if p.is_matrix][:3]
        os.rename(ft, tmp_path / "moved")  # the driver's open files still read; the path is gone
        with pytest.raises(RankscopeError) as err:
            RayExecutor().run(jobs, analyse_pair, (b, f), ((0.9,), "auto"))
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{ft.resolve()}: not found on Ray node ")
        assert ray.get_runtime_context().get_node_id() in message and "shared filesystem" in message
        # another checkpoint at that path: the worker's copy does not hold the driver's tensor
        ft.mkdir()
        save_file({jobs[0].finetuned.name: np.zeros((3, 3), np.float32)}, str(ft / "model.safetensors"))
        with pytest.raises(RankscopeError, match="the nodes see different files") as err:
            RayExecutor().run(jobs[:1], analyse_pair, (b, f), ((0.9,), "auto"))
        assert f"'{jobs[0].finetuned.name}' is F32 [3, 3] on Ray node" in str(err.value)


def _dies_once(pair, base, ft, device, marker: str) -> str:
    """Kills its worker process the first time it runs for the first job (Ray must retry it)."""
    if pair.module.endswith("q_proj") and pair.layer == 0 and not os.path.exists(marker):
        Path(marker).write_text("died")
        os._exit(1)
    return f"{pair.module}@{device}"


def test_a_lost_worker_is_retried(cluster, pair, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the work function travels by value
    marker = tmp_path / "died-once"
    with open_checkpoint(pair.base) as b, open_checkpoint(pair.finetuned) as f:
        jobs = [p for p in align(b, f).pairs if p.is_matrix]
        results = RayExecutor().run(jobs, _dies_once, (b, f), (str(marker),))
    assert marker.read_text() == "died"
    assert results == {p.module: f"{p.module}@cpu" for p in jobs}


def test_missing_ray_is_one_line_saying_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError
    with pytest.raises(RankscopeError, match=r"pip install 'rankscope\[ray\]'") as err:
        make_executor("ray", "cpu")
    assert "\n" not in str(err.value)


def test_option_errors_are_one_line(pair, tmp_path):
    from rankscope.cli import main

    with pytest.raises(RankscopeError, match="--executor: 'dask'"):
        make_executor("dask", "cpu")
    with pytest.raises(RankscopeError, match="--ray-address only applies with --executor ray"):
        make_executor("local", "cpu", ray_address="auto")
    with pytest.raises(RankscopeError, match="--device tpu"):
        make_executor("ray", "tpu")
    result = CliRunner().invoke(main, ["spectrum", str(pair.base), str(pair.finetuned), "-o", str(tmp_path / "x"),
                                       "--ray-address", "auto"])
    assert result.exit_code == 2 and "--ray-address only applies with --executor ray" in result.output
    assert not (tmp_path / "x").exists()


# --------------------------------------------------------------------------------------------------
# every GPU of one machine: the scheduling, on fake device lists
# --------------------------------------------------------------------------------------------------


def test_jobs_spread_over_every_device_each_pinned_to_its_worker(pair):
    barrier = threading.Barrier(2, timeout=20)  # both workers must be running a job at the same time
    seen: dict[str, tuple[str, str]] = {}
    first = threading.local()

    def work(p, base, ft, device, tag):
        if not getattr(first, "done", False):
            first.done = True
            barrier.wait()
        seen[p.module] = (device, threading.current_thread().name)
        return f"{tag}:{p.module}:{device}"

    with open_checkpoint(pair.base) as b, open_checkpoint(pair.finetuned) as f:
        jobs = align(b, f).pairs
        runner = LocalExecutor(devices=("gpu-a", "gpu-b"))
        results = runner.run(jobs, work, (b, f), ("t",))
    assert runner.workers == 2 and runner.slots == ["gpu-a", "gpu-b"]
    assert set(runner.assignment.values()) == {0, 1}
    for p in jobs:
        device = runner.slots[runner.assignment[p.module]]
        assert results[p.module] == f"t:{p.module}:{device}" and seen[p.module][0] == device
    threads = {}
    for device, thread in seen.values():
        threads.setdefault(device, set()).add(thread)
    assert all(len(names) == 1 for names in threads.values())  # one thread per device
    assert runner.describe() == {"name": "local", "devices": ["gpu-a", "gpu-b"], "workers": 2}


def test_jobs_start_largest_first(pair):
    order = []
    with open_checkpoint(pair.base) as b, open_checkpoint(pair.finetuned) as f:
        jobs = align(b, f).pairs
        LocalExecutor(devices=("cpu",)).run(jobs, lambda p, *_: order.append(p), (b, f))
    costs = [cost(p) for p in order]
    assert costs == sorted(costs, reverse=True) and costs[0] > costs[-1]
    assert order == largest_first(jobs)


def test_two_fake_devices_give_the_results_of_two_local_workers(pair):
    fake = LocalExecutor(devices=("cpu", "cpu"))
    two = spectrum(pair.base, pair.finetuned, executor=fake)
    local = spectrum(pair.base, pair.finetuned, workers=2)
    assert fake.assignment and set(fake.assignment.values()) <= {0, 1}
    for module, sigma in local.spectra.items():
        assert np.array_equal(two.spectra[module], sigma), module
    cols = [c for c in local.table.columns if c != "seconds"]
    assert two.table[cols].equals(local.table[cols])


def test_cuda_without_index_means_every_visible_gpu(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert executors.local_devices("cuda") == ["cuda:0", "cuda:1", "cuda:2"]
    assert executors.local_devices("cuda:1") == ["cuda:1"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert executors.local_devices("cuda") == ["cuda"]
    runner = LocalExecutor(devices=("cuda:0", "cuda:1", "cuda:2"), workers=4)
    assert runner.slots == ["cuda:0", "cuda:1", "cuda:2", "cuda:0"] and runner.device == "cuda"
