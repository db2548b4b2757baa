"""Subspace training: FWHT, projections, the DID/SAID wrapper, the d90 search and its CLI.

References are independent of rankscope: ``scipy.linalg.hadamard`` for the transform, explicit
matrices built here from the stored Fastfood factors, autograd of the plain model for gradients,
and Li et al.'s closed-form answer (exactly 10) for the toy problem.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from click.testing import CliRunner
from torch import nn

from rankscope.cli import main
from rankscope.errors import RankscopeError
from rankscope.subspace.fwht import fwht, fwht_butterfly, pass_plan
from rankscope.subspace.intrinsic import IntrinsicDimResult, SearchConfig, StudyOptions, intrinsic_dimension, run_study
from rankscope.subspace.projections import (
    DenseProjection,
    FastfoodProjection,
    SparseProjection,
    make_projection,
)
from rankscope.subspace.search import find_d90
from rankscope.subspace.wrapper import SubspaceModel

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------------
# FWHT
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [1, 2, 4, 16, 32, 128, 1024, 4096])
def test_fwht_equals_the_hadamard_matrix_product(length):
    x = torch.randn(5, length, dtype=torch.float64, generator=torch.Generator().manual_seed(length))
    hadamard = torch.from_numpy(scipy.linalg.hadamard(length).astype(np.float64))
    expected = x @ hadamard.T
    scale = max(1.0, float(expected.abs().max()))
    assert torch.allclose(fwht(x), expected, atol=1e-12 * scale, rtol=0)
    assert torch.allclose(fwht_butterfly(x), expected, atol=1e-12 * scale, rtol=0)
    assert torch.allclose(fwht(x[0]), expected[0], atol=1e-12 * scale, rtol=0)  # 1-D input


@pytest.mark.parametrize("length", [8, 2**10, 2**17])
def test_fwht_is_its_own_inverse_up_to_scale(length):
    x = torch.randn(2, length, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(fwht(fwht(x)) / length, x, atol=1e-12, rtol=0)


def test_fwht_long_rows_match_the_reference_and_leave_the_input_alone():
    x = torch.randn(3, 2**16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    before = x.clone()
    assert torch.allclose(fwht(x), fwht_butterfly(x), atol=1e-9, rtol=0)
    assert torch.equal(x, before)


def test_fwht_gradient_is_the_transform_of_the_gradient():
    x = torch.randn(64, dtype=torch.float64, requires_grad=True)
    g = torch.randn(64, dtype=torch.float64)
    fwht(x).backward(g)
    hadamard = torch.from_numpy(scipy.linalg.hadamard(64).astype(np.float64))
    assert torch.allclose(x.grad, hadamard.T @ g, atol=1e-12)


def test_fwht_rejects_non_power_of_two_lengths():
    with pytest.raises(ValueError, match="power-of-two"):
        fwht(torch.zeros(12))


def test_pass_plan_covers_every_bit_once():
    for bits in range(0, 27):
        plan = pass_plan(bits)
        assert sum(plan) == bits and all(1 <= k <= 4 for k in plan)


# --------------------------------------------------------------------------------------------------
# projections
# --------------------------------------------------------------------------------------------------


def _explicit_fastfood(proj: FastfoodProjection) -> torch.Tensor:
    """P rebuilt block by block from its stored factors as s·H G Π H B (dense matrices, float64)."""
    rows = []
    for i, block in enumerate(proj.blocks):
        f = proj.factors(i)
        L = block.length  # noqa: N806
        H = torch.from_numpy(scipy.linalg.hadamard(L).astype(np.float64))  # noqa: N806
        B = torch.zeros(L, dtype=torch.float64)  # noqa: N806
        B[: proj.n] = f["B"].double()
        Pi = torch.zeros(L, L, dtype=torch.float64)  # noqa: N806
        Pi[torch.arange(L), f["Pi"]] = 1.0  # (Π y)_i = y_{Π(i)}
        full = H @ torch.diag(f["sG"].double()) @ Pi @ H @ torch.diag(B)
        rows.append(full[: block.rows, : proj.d])
    return torch.cat(rows)


@pytest.mark.parametrize("layout,sizes", [("global", None), ("blocked", None), ("per-tensor", [300, 200, 100, 37])])
def test_fastfood_equals_the_product_of_its_factors(layout, sizes):
    proj = FastfoodProjection(637, 20, seed=3, layout=layout, tensor_sizes=sizes, block_bits=8)
    assert torch.allclose(proj.matrix().double(), _explicit_fastfood(proj), atol=1e-5)


@pytest.mark.parametrize("kind,options", [("dense", {}), ("dense", {"max_dense_elements": 0}), ("sparse", {})])
def test_dense_and_sparse_columns_have_unit_norm_exactly(kind, options):
    proj = DenseProjection(5000, 64, seed=1, **options) if kind == "dense" else SparseProjection(5000, 64, seed=1)
    norms = proj.matrix().double().norm(dim=0)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-6)


def test_streamed_dense_is_the_same_matrix_as_stored_dense():
    stored = DenseProjection(3000, 40, seed=5, block_elements=3000 * 7)
    streamed = DenseProjection(3000, 40, seed=5, block_elements=3000 * 7, max_dense_elements=0)
    assert stored.stored and not streamed.stored and stored.n_blocks == 6
    assert torch.equal(stored.matrix(), streamed.matrix())


def test_sparse_projection_is_very_sparse():
    D = 40_000  # noqa: N806
    proj = SparseProjection(D, 50, seed=0)
    per_column = proj.nnz / 50
    expected = math.sqrt(D)  # density 1/sqrt(D)
    assert abs(per_column - expected) < 4 * math.sqrt(expected / 50) + 1


@pytest.mark.parametrize("layout", ["global", "blocked", "per-tensor"])
def test_fastfood_columns_have_unit_norm_in_expectation(layout):
    """Mean squared column norm over many seeds and columns is 1 within 5 standard errors."""
    sizes = [700, 500, 300, 300] if layout == "per-tensor" else None
    values = []
    for seed in range(30):
        proj = make_projection("fastfood", 1800, 16, seed, layout=layout, tensor_sizes=sizes, block_bits=9)
        values.append(proj.matrix().double().square().sum(dim=0))
    sq = torch.cat(values)
    stderr = float(sq.std()) / math.sqrt(sq.numel())
    assert abs(float(sq.mean()) - 1.0) < 5 * stderr + 1e-9
    assert float(sq.std()) < 0.2  # and each column is close to unit norm, not just on average


@pytest.mark.parametrize("kind", ["dense", "sparse", "fastfood"])
def test_same_seed_same_projection_other_seed_other_projection(kind):
    a = make_projection(kind, 2000, 30, seed=11).matrix()
    b = make_projection(kind, 2000, 30, seed=11).matrix()
    c = make_projection(kind, 2000, 30, seed=12).matrix()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_projection_rejects_bad_dimensions_and_kinds():
    for d in (0, -3, 2001):
        with pytest.raises(RankscopeError, match="--d"):
            make_projection("dense", 2000, d)
    with pytest.raises(RankscopeError, match="--projection"):
        make_projection("gaussian", 2000, 10)
    with pytest.raises(RankscopeError, match="--layout"):
        make_projection("fastfood", 2000, 10, layout="diagonal")


# --------------------------------------------------------------------------------------------------
# the wrapper: gradients, SAID, equivalence with direct training
# --------------------------------------------------------------------------------------------------


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _data(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def _flat_grad_at(module: nn.Module, params: dict[str, torch.Tensor], names: list[str], x, y) -> torch.Tensor:
    """∇θ of the plain model at θ = params (no rankscope code), flattened in ``names`` order."""
    leaves = {n: p.detach().clone().requires_grad_(True) for n, p in params.items()}
    loss = nn.functional.cross_entropy(torch.func.functional_call(module, leaves, (x,)), y)
    grads = torch.autograd.grad(loss, [leaves[n] for n in names])
    return torch.cat([g.reshape(-1) for g in grads])


@pytest.mark.parametrize("kind,options", [("dense", {}), ("fastfood", {"layout": "per-tensor"}),
                                          ("fastfood", {"layout": "blocked"}), ("sparse", {})])
def test_gradient_wrt_theta_d_is_P_transpose_times_the_parameter_gradient(kind, options):
    x, y = _data()
    model = SubspaceModel(_mlp(), 12, projection=kind, seed=4, **options)
    with torch.no_grad():
        model.theta_d.copy_(torch.randn(12, generator=torch.Generator().manual_seed(9)) * 0.3)
    nn.functional.cross_entropy(model(x), y).backward()
    P = model.projection.matrix()  # noqa: N806
    theta = {n: p.detach() for n, p in model.current_parameters().items()}
    expected = P.T @ _flat_grad_at(model.module, theta, model.names, x, y)
    assert torch.allclose(model.theta_d.grad, expected, atol=1e-5, rtol=1e-4)


def test_streamed_dense_gradient_matches_the_stored_one():
    x, y = _data()
    grads = []
    for limit in (1 << 28, 0):
        model = SubspaceModel(_mlp(), 10, projection="dense", seed=2)
        model.projection = DenseProjection(model.D, 10, seed=2, max_dense_elements=limit, block_elements=model.D * 3)
        with torch.no_grad():
            model.theta_d.fill_(0.1)
        nn.functional.cross_entropy(model(x), y).backward()
        grads.append(model.theta_d.grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_theta_zero_reproduces_the_base_model_and_only_theta_d_trains():
    x, _ = _data()
    base = _mlp()
    expected = base(x)
    model = SubspaceModel(base, 20, seed=0)
    assert torch.equal(model(x), expected)
    trainable = [(n, p.numel()) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [("theta_d", 20)]


def test_said_lambda_gradient_is_the_projected_slice_dot_the_tensor_gradient():
    x, y = _data()
    model = SubspaceModel(_mlp(), 12, mode="said", projection="dense", seed=1)
    assert model.m == 4 and model.theta_d.numel() == 8 and model.lambdas.numel() == 4
    with torch.no_grad():
        model.theta_d.copy_(torch.linspace(-0.5, 0.5, 8))
        model.lambdas.copy_(torch.tensor([1.0, 0.5, 2.0, -1.0]))
    nn.functional.cross_entropy(model(x), y).backward()
    theta = {n: p.detach() for n, p in model.current_parameters().items()}
    grad = _flat_grad_at(model.module, theta, model.names, x, y)
    delta = model.projection.matrix() @ model.theta_d.detach()
    offsets = np.cumsum([0, *model.sizes])
    expected = torch.stack([delta[a:b] @ grad[a:b] for a, b in zip(offsets[:-1], offsets[1:], strict=True)])
    assert torch.allclose(model.lambdas.grad, expected, atol=1e-5, rtol=1e-4)
    scale = torch.repeat_interleave(model.lambdas.detach(), torch.tensor(model.sizes))
    assert torch.allclose(model.theta_d.grad, model.projection.matrix().T @ (scale * grad), atol=1e-5, rtol=1e-4)


def test_said_with_no_projected_dimensions_trains_only_the_lambdas():
    x, y = _data()
    base = _mlp()
    expected = base(x).detach()
    model = SubspaceModel(base, 4, mode="said")  # m = 4 tensors, d − m = 0
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad and p.numel()}
    assert trainable == {"lambdas": 4} and model.theta_d.numel() == 0 and model.projection is None
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    # λ scales a zero update: the function cannot change, whatever the λ's become
    assert torch.equal(model(x), expected)
    with pytest.raises(RankscopeError, match="SAID needs d >= m = 4"):
        SubspaceModel(_mlp(), 3, mode="said")


def test_full_dimensional_orthonormal_subspace_trains_like_direct_training():
    """d = D with an orthonormal dense P: gradient descent on θ_d is gradient descent on θ."""
    x, y = _data(3)
    direct = _mlp(1)
    D = sum(p.numel() for p in direct.parameters())  # noqa: N806
    wrapped = SubspaceModel(_mlp(1), D, projection="dense", seed=0)
    q, _ = torch.linalg.qr(wrapped.projection.stored_matrix().double())
    wrapped.projection._matrix = q.float()
    losses = []
    for model in (direct, wrapped):
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for _ in range(200):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses.append(float(nn.functional.cross_entropy(model(x), y)))
    with torch.no_grad():
        first = float(nn.functional.cross_entropy(_mlp(1)(x), y))
    assert losses[0] < 0.5 * first  # training did something
    assert abs(losses[0] - losses[1]) < 1e-4 * max(1.0, losses[0])


def test_direct_parameters_stay_trainable_outside_the_subspace():
    base = _mlp()
    model = SubspaceModel(base, 5, direct=["2.weight", "2.bias"])
    assert model.D == 6 * 8 + 8 and "2.weight" not in model.names
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["module.2.bias", "module.2.weight", "theta_d"]
    assert model.describe()["direct_params"] == 8 * 3 + 3


def test_direct_parameters_get_their_own_learning_rate_in_both_training_loops():
    from rankscope.training.engine import make_optimizer

    model = SubspaceModel(_mlp(), 5, direct=["2.weight", "2.bias"], direct_lr=0.123)
    optimizer = make_optimizer(model, 0.01, 0.01)
    lrs = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    assert lrs[id(model.theta_d)] == 0.01
    assert lrs[id(model.module[2].weight)] == lrs[id(model.module[2].bias)] == 0.123
    assert len(lrs) == 3
    assert make_optimizer(SubspaceModel(_mlp(), 5), 0.01, 0.0).param_groups[0]["lr"] == 0.01


def test_wrapper_rejects_models_without_parameters_and_bad_selections():
    with pytest.raises(RankscopeError, match="no parameters"):
        SubspaceModel(nn.ReLU(), 1)
    with pytest.raises(RankscopeError, match="--include"):
        SubspaceModel(_mlp(), 2, include=["["])
    with pytest.raises(RankscopeError, match="no parameter of the model is left"):
        SubspaceModel(_mlp(), 2, include=["^nothing$"])
    with pytest.raises(RankscopeError, match="--mode"):
        SubspaceModel(_mlp(), 2, mode="lora")


def test_hugging_face_classifier_in_a_subspace_with_the_head_trained_directly(tmp_path):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16, num_labels=2)
    hf = BertForSequenceClassification(config).eval()
    ids = torch.randint(0, 50, (4, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    expected = hf(input_ids=ids, attention_mask=mask).logits
    head = [n for n, _ in hf.named_parameters() if n.startswith("classifier.")]
    model = SubspaceModel(hf, 100, mode="said", direct=head)
    out = model(input_ids=ids, attention_mask=mask)
    assert torch.allclose(out.logits, expected, atol=1e-6)
    out.logits.sum().backward()
    assert model.theta_d.grad is not None and hf.classifier.weight.grad is not None
    assert all(p.grad is None for n, p in hf.named_parameters() if not n.startswith("classifier."))


# --------------------------------------------------------------------------------------------------
# the search
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("answer", [1, 2, 7, 10, 37, 100, 999, 1000])
@pytest.mark.parametrize("start", [1, 10, 500])
def test_find_d90_finds_the_step_of_a_monotone_metric(answer, start):
    calls = []

    def metric(d):
        calls.append(d)
        return 1.0 if d >= answer else d / (2 * answer)

    outcome = find_d90(metric, 0.9, 1, 1000, d_start=start, factor=2.0, tolerance=0.0)
    assert outcome.d90 == answer
    lo, hi = outcome.bracket
    assert hi == answer and lo == answer - 1
    assert len(calls) == len(set(calls))  # no d is evaluated twice
    assert len(calls) <= 2 * math.log2(1000) + 2


def test_find_d90_tolerance_and_unreachable_target():
    outcome = find_d90(lambda d: float(d >= 300), 0.5, 1, 10_000, d_start=10, factor=2.0, tolerance=0.25)
    lo, hi = outcome.bracket
    assert outcome.d90 == hi and hi >= 300 and lo < 300 and hi / lo <= 1.25
    never = find_d90(lambda d: 0.0, 0.5, 1, 64, d_start=4, factor=2.0)
    assert never.d90 is None and never.bracket == (64, None)


def test_toy_problem_intrinsic_dimension_is_exactly_ten(tmp_path):
    result = intrinsic_dimension("toy", tmp_path / "toy", modes=("did", "said"), seeds=3, d_start=1, factor=2.0,
                                 tolerance=0.0)
    did, said = result.result["modes"]["did"], result.result["modes"]["said"]
    assert did["d90"] == 10 and did["bracket"] == [9, 10]
    assert said["d90"] == 11  # the one λ of the single tensor counts inside d
    runs = result.runs
    assert (runs[(runs["mode"] == "did") & (runs["d"] == 10)]["metric"] == 1.0).all()
    assert (runs[(runs["mode"] == "did") & (runs["d"] == 9)]["metric"] < 0.5).all()
    assert result.result["baseline"]["mean"] == 1.0


def test_search_writes_its_files_and_resumes_from_the_cache(tmp_path):
    out = tmp_path / "toy"
    runner = CliRunner()
    args = ["intrinsic-dim", "--task", "toy", "--seeds", "2", "--d-start", "4", "--tolerance", "0", "-o", str(out)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    for name in ("runs.csv", "result.json", "run.json", "search.json", "figures/intrinsic-dim.png"):
        assert (out / name).is_file(), name
    result = json.loads((out / "result.json").read_text())
    assert result["modes"]["did"]["d90"] == 10 and result["convention"] == "relative"
    info = json.loads((out / "run.json").read_text())
    assert info["seeds"] == [0, 1] and "versions" in info and info["seconds"]["total"] > 0
    assert json.loads((out / "search.json").read_text())["key"] == DEFAULT_KEY
    cached = sorted(p.name for p in (out / "runs").iterdir())
    # an interrupted search: the final files are missing and one run never finished
    (out / "result.json").unlink()
    (out / "run.json").unlink()
    (out / "runs" / "did-d10-s1.json").unlink()
    again = runner.invoke(main, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("(cached)") == len(cached) - 1
    assert sorted(p.name for p in (out / "runs").iterdir()) == cached
    assert json.loads((out / "result.json").read_text())["modes"]["did"]["d90"] == 10
    # other settings refuse the cache unless --restart
    changed = runner.invoke(main, [*args, "--projection", "dense"])
    assert changed.exit_code == 2 and "different search (changed: projection)" in changed.output
    restarted = runner.invoke(main, [*args, "--projection", "dense", "--restart"])
    assert restarted.exit_code == 0, restarted.output and "(cached)" not in restarted.output
    replot = runner.invoke(main, ["plot", str(out)])
    assert replot.exit_code == 0 and "intrinsic-dim.png" in replot.output


DEFAULT_KEY = "30df66bad1adf72f"
"""``SearchConfig().key()`` as computed before the options became keyword-built objects (search.json keys)."""
OTHER = {"task": "digits", "model": "x/y", "data": "d.csv", "projection": "dense", "layout": "global", "head": "direct",
         "head_lr": 0.01, "include": ["a", "b"], "exclude": ["c"], "epochs": 3, "lr": 0.5, "baseline_lr": 1e-3,
         "batch_size": 32, "split_seed": 7, "max_train": 100, "max_eval": 50, "max_length": 64, "text_column": "t",
         "label_column": "l"}


def test_the_run_cache_key_is_unchanged():
    """The cache key of finished runs: the same settings keep the same hash (pinned from the earlier code)."""
    from dataclasses import fields

    assert [f.name for f in fields(SearchConfig)] == [*OTHER, "lr_rule"]  # order and names are the key
    assert SearchConfig().key() == DEFAULT_KEY
    assert SearchConfig(**OTHER).key() == "be55c217c7434ffe"
    from pathlib import Path

    as_given = SearchConfig(**{**OTHER, "include": ("a", "b"), "exclude": ("c",), "data": Path("d.csv")})
    assert as_given.key() == "be55c217c7434ffe"  # tuples and paths as the API or click pass them


def test_cli_options_and_api_keywords_are_the_fields_of_the_option_objects():
    """intrinsic-dim's click options, the keywords of intrinsic_dimension and the dataclasses cannot drift."""
    import inspect
    from dataclasses import MISSING, fields

    from rankscope.cli.intrinsic_dim import MODES_OF, RUN_OPTIONS, intrinsic_dim_cmd, split_options

    def default(f):
        return f.default_factory() if f.default is MISSING else f.default

    config = {f.name: default(f) for f in fields(SearchConfig) if f.name != "lr_rule"}
    study = {f.name: default(f) for f in fields(StudyOptions)}
    run = {name: p.default for name, p in inspect.signature(run_study).parameters.items()
           if p.kind is p.KEYWORD_ONLY}
    given = intrinsic_dim_cmd.make_context("intrinsic-dim", ["-o", "out"]).params  # what the command receives
    clicked = {name: value for name, value in given.items() if name != "debug"}
    assert set(clicked) == {*config, *(set(study) - {"modes"}), "mode", *RUN_OPTIONS}
    assert set(RUN_OPTIONS) - {"out", "quiet"} <= set(run)
    for name, value in clicked.items():
        if name in config or name in study:
            expected = config.get(name, study.get(name))
            assert (list(value) if isinstance(value, tuple) else value) == expected, name
    assert list(MODES_OF[clicked["mode"]]) == study["modes"]
    built, options, _ = split_options(clicked)  # the objects the command builds, by name
    assert built == SearchConfig() and options == StudyOptions()
    with pytest.raises(TypeError, match="bogus"):
        split_options({**clicked, "bogus": 1})  # an option that fills neither object is a bug, caught at once
    assert clicked["device"] == run["device"]
    api = {name: p.default for name, p in inspect.signature(intrinsic_dimension).parameters.items()}
    assert set(api) == {*config, *study, *run, "out"}
    for name, value in api.items():
        if name in config or name in study:
            expected = config.get(name, study.get(name))
            assert (list(value) if isinstance(value, tuple) else value) == expected, name
        elif name in run:
            assert value == run[name], name


def test_the_result_protocol_save_load_table_summary(tmp_path):
    out = tmp_path / "toy"
    result = intrinsic_dimension("toy", out, grid=[5, 10], seeds=1)
    assert result.table is result.runs and len(result.table) == 3  # baseline, d = 5, d = 10
    loaded = IntrinsicDimResult.load(out)
    as_json = json.loads(json.dumps(result.result))  # evaluated d: JSON object keys are text
    assert loaded.table.to_csv(index=False) == result.table.to_csv(index=False) and loaded.result == as_json
    assert loaded.info["config"] == result.info["config"] and loaded.info["options"] == result.info["options"]
    assert loaded.summary_text() == result.summary_text()
    # a result computed without a folder is saved as a complete result folder (search.json included)
    bare = intrinsic_dimension("toy", None, grid=[5, 10], seeds=1)
    bare.save(tmp_path / "saved")
    for name in ("runs.csv", "result.json", "run.json", "search.json", "figures/intrinsic-dim.png"):
        assert (tmp_path / "saved" / name).is_file(), name
    again = IntrinsicDimResult.load(tmp_path / "saved")
    assert again.result == json.loads(json.dumps(bare.result)) and again.table.to_csv(index=False) == bare.table.to_csv(index=False)
    assert json.loads((tmp_path / "saved" / "search.json").read_text())["key"] == DEFAULT_KEY
    replot = CliRunner().invoke(main, ["plot", str(tmp_path / "saved")])
    assert replot.exit_code == 0, replot.output
    # the folder rules of every command: another search's folder is refused
    other = intrinsic_dimension("toy", None, grid=[10], seeds=1, projection="dense")
    with pytest.raises(RankscopeError, match="different search"):
        other.save(out)


def test_absolute_convention_and_grid(tmp_path):
    result = intrinsic_dimension("toy", None, grid=[5, 10, 20], target_absolute=0.95, seeds=1)
    did = result.result["modes"]["did"]
    assert result.result["convention"] == "absolute" and result.result["target"] == 0.95
    assert did["d90"] == 10 and did["bracket"] == [5, 10]
    assert sorted(did["evaluated"]) == [5, 10, 20]


def test_digits_subspace_training_learns(tmp_path):
    result = intrinsic_dimension("digits", None, grid=[200], baseline=1.0, epochs=8, seeds=1)
    accuracy = result.runs.iloc[0]["metric"]
    assert 0.6 < accuracy <= 1.0  # 200 random directions of 9,034 already classify most digits (chance 0.1)


@pytest.mark.parametrize("args,message", [
    (["--d", "0"], "--d: every subspace dimension must be at least 1, got 0"),
    (["--d", "1001"], "at most D = 1,000"),
    (["--d-start", "-5"], "--d-start"),
    (["--d-max", "5000"], "--d-max: the subspace dimension must be at most D = 1,000"),
    (["--task", "digits", "--mode", "said", "--d", "3,50"], "--d: SAID needs d >= m = 6 (one λ per tensor), got 3"),
    (["--projection", "gaussian"], "--projection: unknown projection 'gaussian'"),
    (["--layout", "diagonal"], "--layout: unknown Fastfood layout"),
    (["--task", "imagenet"], "--task: unknown task 'imagenet'"),
    (["--include", "^nothing$"], "no parameter of the model is left in the subspace"),
    (["--head", "frozen"], "--head: unknown choice"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--d", "ten"], "not a comma-separated list of integers"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["intrinsic-dim", "--task", "toy", *args, "-o", str(out)])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not (out / "result.json").exists()


def test_output_folder_that_is_not_a_result_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["intrinsic-dim", "--task", "toy", "--d", "10", "-o", str(out)])
    assert result.exit_code == 2 and "not empty and is not a rankscope result" in result.output
    assert (out / "notes.txt").read_text() == "keep me"


def test_text_task_on_a_hugging_face_checkpoint_through_the_training_engine(tmp_path):
    """The text path end to end: a CSV task on a tiny BERT, baseline plus DID and SAID runs, head trained directly."""
    from tiny_text import bert_folder, write_easy_csv

    model = bert_folder(tmp_path / "bert")
    data = write_easy_csv(tmp_path / "easy.csv")
    result = CliRunner().invoke(main, [
        "intrinsic-dim", "--task", "easy", "--data", str(data), "--text-column", "review", "--label-column", "sentiment",
        "--model", str(model), "--mode", "both",
        "--head", "direct", "--d", "300", "--epochs", "2", "--batch-size", "8", "--max-length", "16", "-q",
        "-o", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "out" / "result.json").read_text())
    assert runs["head"] == "direct" and runs["m"] is not None and runs["D"] < runs["D_model"]
    table = (tmp_path / "out" / "runs.csv").read_text().splitlines()
    header = table[0].split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in table[1:]]
    assert {r["mode"] for r in rows} == {"full", "did", "said"}
    head_params = 32 * 2 + 2
    for r in rows:
        assert 0.0 <= float(r["metric"]) <= 1.0
        if r["mode"] != "full":
            assert int(r["trainable"]) == 300 + head_params  # d plus the directly trained head
