"""peft AdaLoRA adapters as input: read as their equivalent LoRA, analysed by ``lora``, resized to plain LoRA.

The reference is peft itself: the adapter is saved by peft's ``save_pretrained`` (its triplets cut by the final
rank pattern, one module keeping none), loaded back with ``PeftModel.from_pretrained``, and every module's
``get_delta_weight`` (float64) is what rankscope's reading must reproduce.  ``resize`` must write a LoRA adapter
that peft loads and whose merged update is the float64 best rank-r approximation of that ΔW.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from click.testing import CliRunner  # noqa: E402

from rankscope.cli import main  # noqa: E402
from rankscope.errors import RankscopeError  # noqa: E402
from rankscope.io.adapters import read_adapter  # noqa: E402

INIT_R = 4


def _classifier(bert: Path) -> torch.nn.Module:
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(bert, num_labels=2).eval()


@pytest.fixture(scope="module")
def adalora_adapter(bert, tmp_path_factory) -> Path:
    """A peft-saved AdaLoRA adapter on query/value/dense of a tiny BERT, random triplets, a planted rank pattern."""
    from peft import AdaLoraConfig, get_peft_model

    config = AdaLoraConfig(task_type="SEQ_CLS", init_r=INIT_R, target_r=2, lora_alpha=6,
                           target_modules=["query", "value", "dense"], total_step=10, tinit=1, tfinal=2)
    model = get_peft_model(_classifier(bert), config)
    gen = torch.Generator().manual_seed(7)
    pattern = {}
    with torch.no_grad():
        names = [n for n, m in model.base_model.model.named_modules() if hasattr(m, "lora_E") and "default" in m.lora_E]
        for i, name in enumerate(names):
            module = model.base_model.model.get_submodule(name)
            for p in (module.lora_A["default"], module.lora_B["default"], module.lora_E["default"]):
                p.copy_(torch.randn(p.shape, generator=gen))
            pattern[f"{name}.lora_E"] = [False] * INIT_R if i == 1 else [j <= i % INIT_R for j in range(INIT_R)]
    model.peft_config["default"].rank_pattern = pattern
    folder = tmp_path_factory.mktemp("adalora") / "adapter"
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def peft_deltas(bert, adalora_adapter) -> dict[str, np.ndarray]:
    """Every module's ΔW as peft computes it for the loaded adapter (float64)."""
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(_classifier(bert), adalora_adapter)
    out = {}
    for name, module in loaded.base_model.model.named_modules():
        if hasattr(module, "lora_E") and "default" in module.lora_E:
            out[name] = module.get_delta_weight("default").double().numpy()
    return out


def test_reading_equals_peft_loaded_delta(adalora_adapter, peft_deltas):
    ad = read_adapter(adalora_adapter)
    assert ad.adalora and len(ad.empty_modules) == 1
    assert set(ad.modules) | set(ad.empty_modules) == set(peft_deltas)
    for name, delta in peft_deltas.items():
        if name in ad.empty_modules:
            assert np.count_nonzero(delta) == 0
            continue
        module = ad.modules[name]
        np.testing.assert_allclose(module.delta(), delta, rtol=0, atol=1e-6 * np.abs(delta).max())  # peft: float32
        assert module.scale == pytest.approx(6 / (INIT_R + 1e-5)) and module.alpha / module.r == module.scale
        reference = np.linalg.svd(delta, compute_uv=False)  # of peft's float32 product: agreement to float32 rounding
        np.testing.assert_allclose(module.singular_values()[: module.r], reference[: module.r], atol=1e-6 * reference[0])
        assert np.all(reference[module.r:] < 1e-5 * reference[0])


def test_lora_command_reads_it(adalora_adapter, peft_deltas, tmp_path):
    import pandas as pd

    result = CliRunner().invoke(main, ["lora", str(adalora_adapter), "-o", str(tmp_path / "spec"), "--no-plots", "-q"])
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "spec" / "run.json").read_text())
    described = json.dumps(run)
    assert '"peft_type": "ADALORA"' in described and '"empty_modules": 1' in described
    table = pd.read_csv(tmp_path / "spec" / "modules.csv")
    spectra = np.load(tmp_path / "spec" / "spectra.npz")
    assert len(table) == len(peft_deltas) - 1
    for _, row in table.iterrows():
        reference = np.linalg.svd(peft_deltas[row["module"]], compute_uv=False)
        assert row["r"] == int(np.sum(reference > 1e-5 * reference[0]))
        key = next(k for k in spectra.files if row["module"] in k)
        np.testing.assert_allclose(spectra[key][: row["r"]], reference[: row["r"]], atol=1e-6 * reference[0])


def test_zero_alpha_is_read_as_peft_loads_it(adalora_adapter, bert, tmp_path):
    """``lora_alpha = 0``: peft's loader scales a module keeping k triplets by k/(init_r + 1e-5)."""
    import shutil

    from peft import PeftModel

    folder = tmp_path / "alpha0"
    shutil.copytree(adalora_adapter, folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["lora_alpha"] = 0
    (folder / "adapter_config.json").write_text(json.dumps(config))
    loaded = PeftModel.from_pretrained(_classifier(bert), folder)
    ad = read_adapter(folder)
    for name, module in loaded.base_model.model.named_modules():
        if name in ad.modules:
            delta = module.get_delta_weight("default").double().numpy()
            np.testing.assert_allclose(ad.modules[name].delta(), delta, rtol=0, atol=1e-6 * np.abs(delta).max())


def test_resize_writes_plain_lora_at_the_best_rank_r(adalora_adapter, peft_deltas, bert, tmp_path):
    from peft import PeftModel

    out = tmp_path / "resized"
    result = CliRunner().invoke(main, ["resize", str(adalora_adapter), "--rule", "avg-rank:1", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and "init_r" not in config and "tinit" not in config
    merged = PeftModel.from_pretrained(_classifier(bert), out).merge_and_unload()
    base = dict(_classifier(bert).named_modules())
    weights = dict(merged.named_modules())
    table = {row["module"]: row for row in _csv(out / "resize.csv")}
    assert set(table) == set(peft_deltas) - set(read_adapter(adalora_adapter).empty_modules)
    for name, row in table.items():
        got = weights[name].weight.detach().double().numpy() - base[name].weight.detach().double().numpy()
        u, s, vt = np.linalg.svd(peft_deltas[name])
        k = int(row["r_after"])
        best = (u[:, :k] * s[:k]) @ vt[:k]
        np.testing.assert_allclose(got, best, rtol=1e-4, atol=1e-5 * s[0])
    both = CliRunner().invoke(main, ["compare-adapters", str(adalora_adapter), str(out), "-o", str(tmp_path / "cmp"),
                                     "--no-plots", "-q"])
    assert both.exit_code == 0, both.output


def _csv(path: Path) -> list[dict[str, str]]:
    import csv

    with path.open() as handle:
        return list(csv.DictReader(handle))


def test_a_rank_pattern_that_does_not_match_the_weights_is_one_error(adalora_adapter, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(adalora_adapter, bad)
    config = json.loads((bad / "adapter_config.json").read_text())
    key = next(k for k, v in config["rank_pattern"].items() if any(v))
    config["rank_pattern"][key] = [True] * INIT_R if sum(config["rank_pattern"][key]) < INIT_R else [False] * INIT_R
    (bad / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(RankscopeError, match="rank mismatch for AdaLoRA module"):
        read_adapter(bad)
    config["rank_pattern"][key] = [True]
    (bad / "adapter_config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(main, ["resize", str(bad), "--rule", "avg-rank:1", "-o", str(tmp_path / "o"), "-q"])
    assert result.exit_code == 2 and "list of 4 booleans" in result.output and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
