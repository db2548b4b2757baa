"""Shared fixtures: tiny checkpoint pairs with a *planted* ΔW, and an independent float64 reference.

Every pair is built here from a tiny Hugging Face model (BERT, GPT-2, Llama; hidden size 32, two
layers, vocabulary 100) created with ``AutoModel*.from_config`` under a fixed torch seed.  The
fine-tuned copy is ``W_base + ΔW`` with ``ΔW = U diag(s) Vᵀ`` for random orthonormal ``U, V``
(seeded numpy) and a known spectrum ``s`` for every 2-D weight, one module with ``ΔW = 0`` exactly,
and small known deltas on the 1-D parameters (one of them exactly zero).

The reference (:func:`reference`) never goes through rankscope: it reads both checkpoints with
``safetensors`` / ``torch.load``, forms ``ΔW`` in float64, orients GPT-2 ``Conv1D`` weights as
``out x in`` and takes ``scipy.linalg.svdvals``.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MPLBACKEND", "Agg")

import json  # noqa: E402
import re  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.linalg  # noqa: E402
import torch  # noqa: E402

HIDDEN = 32
VOCAB = 100
EXTRA_TOKENS = 8
ARCHS = ("bert", "gpt2", "llama")
FORMATS = ("single", "sharded", "bin", "bin-sharded")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
STORED_DTYPE = {"fp32": "F32", "bf16": "BF16", "fp16": "F16"}

# Prefix of the *tensor names* on each side (base, finetuned); the reference strips these.  BERT
# compares a bare ``BertModel`` with ``BertForSequenceClassification`` (``bert.`` prefix); GPT-2 and
# Llama compare the same class on both sides, so (README: "when the two checkpoints use different
# model prefixes ... the prefix is dropped") their names keep ``transformer.`` / ``model.``.
PREFIXES = {"bert": ("", "bert."), "gpt2": ("", ""), "llama": ("", ""), "llama-bare": ("", "model.")}

# Module (reference name) whose ΔW is planted exactly zero, and a 1-D parameter with zero delta.
ZERO_MATRIX = {
    "bert": "pooler.dense",
    "gpt2": "transformer.h.1.attn.c_proj",
    "llama": "model.layers.1.self_attn.o_proj",
    "llama-bare": "layers.1.self_attn.o_proj",
}
ZERO_VECTOR = {
    "bert": "pooler.dense.bias",
    "gpt2": "transformer.h.1.attn.c_proj.bias",
    "llama": "model.norm",
    "llama-bare": "norm",
}

# Expected ``kind`` of every in-block module, keyed by the path inside the block.
KINDS = {
    "bert": {
        "attention.self.query": "query",
        "attention.self.key": "key",
        "attention.self.value": "value",
        "attention.output.dense": "attention.output.dense",
        "intermediate.dense": "intermediate.dense",
        "output.dense": "output.dense",
    },
    "gpt2": {"attn.c_attn": "c_attn", "attn.c_proj": "attn.c_proj", "mlp.c_fc": "c_fc", "mlp.c_proj": "mlp.c_proj"},
    "llama": {
        "self_attn.q_proj": "q_proj",
        "self_attn.k_proj": "k_proj",
        "self_attn.v_proj": "v_proj",
        "self_attn.o_proj": "o_proj",
        "mlp.gate_proj": "gate_proj",
        "mlp.up_proj": "up_proj",
        "mlp.down_proj": "down_proj",
    },
}
KINDS["llama-bare"] = KINDS["llama"]
BLOCK = {"bert": r"encoder\.layer\.(\d+)\.", "gpt2": r"(?:^|\.)h\.(\d+)\.", "llama": r"(?:^|\.)layers\.(\d+)\."}
BLOCK["llama-bare"] = BLOCK["llama"]
CONV1D_LEAVES = ("c_attn", "c_proj", "c_fc")


# --------------------------------------------------------------------------------------------------
# model construction
# --------------------------------------------------------------------------------------------------


def _config(arch: str, vocab: int):
    from transformers import BertConfig, GPT2Config, LlamaConfig

    if arch == "bert":
        return BertConfig(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=40, type_vocab_size=2)
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab, n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=40,
                          bos_token_id=0, eos_token_id=0)
    if arch.startswith("llama"):
        return LlamaConfig(vocab_size=vocab, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=40,
                           tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    raise ValueError(arch)


def _models(arch: str, grow_vocab: bool):
    """(base model, finetuned model) with fresh random weights (fixed torch seeds)."""
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    ft_vocab = VOCAB + EXTRA_TOKENS if grow_vocab else VOCAB
    if arch == "bert":
        base_cls, ft_cls = AutoModel, AutoModelForSequenceClassification
    elif arch == "llama-bare":
        base_cls, ft_cls = AutoModel, AutoModelForCausalLM
    else:
        base_cls = ft_cls = AutoModelForCausalLM
    torch.manual_seed(1234)
    base = base_cls.from_config(_config(arch, VOCAB))
    torch.manual_seed(4321)
    ft = ft_cls.from_config(_config(arch, ft_vocab))
    return base.float().eval(), ft.float().eval()


def planted_spectrum(index: int, k: int) -> np.ndarray:
    """The known singular values planted in the ``index``-th matrix (length ``k`` = min(m, n))."""
    a = 0.05 * (1 + 0.1 * (index % 7))
    pattern = index % 3
    i = np.arange(k, dtype=np.float64)
    if pattern == 0:  # geometric decay, full rank
        return a * 0.8**i
    if pattern == 1:  # a few large values, then exact zeros (rank 3)
        s = np.zeros(k)
        s[:3] = a * np.array([1.0, 0.6, 0.3])
        return s
    return a * (1.0 - i / k) + 0.05 * a  # slow linear decay, high effective rank


def _orthonormal(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.sign(np.diag(r))


@dataclass
class Pair:
    """A base / finetuned checkpoint pair written to disk, with what was planted in it."""

    arch: str
    fmt: str
    dtype: str
    base: Path
    finetuned: Path
    grow_vocab: bool
    planted: dict[str, np.ndarray] = field(default_factory=dict)  # module -> ΔW (out x in), float64
    planted_s: dict[str, np.ndarray] = field(default_factory=dict)  # module -> s (descending)
    planted_vec: dict[str, np.ndarray] = field(default_factory=dict)  # 1-D module -> delta
    _ref: dict | None = None

    @property
    def id(self) -> str:
        return f"{self.arch}-{self.fmt}-{self.dtype}" + ("-grow" if self.grow_vocab else "")

    @property
    def zero_module(self) -> str:
        return ZERO_MATRIX[self.arch]

    @property
    def zero_vector(self) -> str:
        return ZERO_VECTOR[self.arch]

    def reference(self) -> dict[str, RefModule]:
        if self._ref is None:
            self._ref = reference(self.base, self.finetuned, self.arch)
        return self._ref


def _core(name: str, prefix: str) -> str:
    return name[len(prefix):] if prefix and name.startswith(prefix) else name


def module_of(name: str) -> str:
    return name[: -len(".weight")] if name.endswith(".weight") else name


def is_conv1d(arch: str, module: str) -> bool:
    return arch == "gpt2" and module.rsplit(".", 1)[-1] in CONV1D_LEAVES


def _plant(base, ft, arch: str, seed: int) -> tuple[dict, dict, dict]:
    """Randomise base 1-D params, then set ft = base + planted ΔW (in place); return what was planted."""
    rng = np.random.default_rng(seed)
    bp, fp = PREFIXES[arch]
    base_params = {module_of(_core(n, bp)): p for n, p in base.named_parameters()}
    planted, planted_s, planted_vec = {}, {}, {}
    with torch.no_grad():
        # Realistic base: biases and norm scales are not at their (zero / one) initial values.
        for p in base_params.values():
            if p.dim() == 1:
                p.add_(torch.from_numpy(rng.normal(0.0, 0.05, p.shape[0])).float())
        index = 0
        for name, p in ft.named_parameters():  # deduplicated: tied lm_head is skipped
            module = module_of(_core(name, fp))
            b = base_params.get(module)
            if b is None:
                continue  # e.g. the classifier head, only in the fine-tune
            w = b.detach().double().numpy()
            if p.dim() == 2:
                conv = is_conv1d(arch, module)
                oriented = w.T if conv else w
                m, n = oriented.shape
                k = min(m, n)
                s = np.zeros(k) if module == ZERO_MATRIX[arch] else planted_spectrum(index, k)
                index += 1
                delta = (_orthonormal(rng, m, k) * s) @ _orthonormal(rng, n, k).T
                planted[module], planted_s[module] = delta, s
                new = oriented + delta
                new = new.T if conv else new
                rows = new.shape[0]
                p[:rows] = torch.from_numpy(new).float()  # extra vocabulary rows keep their random init
            else:
                is_zero = module == ZERO_VECTOR[arch]
                delta = np.zeros(p.shape[0]) if is_zero else rng.normal(0.0, 0.01, p.shape[0])
                planted_vec[module] = delta
                p[:] = torch.from_numpy(w + delta).float()
    return planted, planted_s, planted_vec


def _to_bin(folder: Path, shards: int) -> None:
    """Replace the safetensors weights of ``folder`` by ``pytorch_model.bin`` (optionally sharded + index)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    state = {}
    for f in files:
        state.update(load_file(f))
        f.unlink()
    for f in folder.glob("*.safetensors.index.json"):
        f.unlink()
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return
    names = sorted(state)
    weight_map = {}
    for i in range(shards):
        fname = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n] for n in names[i::shards]}
        torch.save(part, folder / fname)
        weight_map.update(dict.fromkeys(part, fname))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _save(model, folder: Path, fmt: str, dtype: str) -> None:
    model = model.to(DTYPES[dtype])
    if fmt == "sharded":
        model.save_pretrained(folder, max_shard_size="12KB")
        assert (folder / "model.safetensors.index.json").is_file()
        assert len(list(folder.glob("model-*.safetensors"))) >= 3
    else:
        model.save_pretrained(folder)
    if fmt == "bin":
        _to_bin(folder, 1)
    elif fmt == "bin-sharded":
        _to_bin(folder, 3)


def build_pair(root: Path, arch: str, fmt: str, dtype: str, grow_vocab: bool = False) -> Pair:
    base, ft = _models(arch, grow_vocab)
    planted, planted_s, planted_vec = _plant(base, ft, arch, seed=7)
    pair = Pair(arch, fmt, dtype, root / "base", root / "finetuned", grow_vocab, planted, planted_s, planted_vec)
    _save(base, pair.base, fmt, dtype)
    _save(ft, pair.finetuned, fmt, dtype)
    return pair


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from threads, OpenMP barriers crawl when the CPU is shared, and runs that are
    compared with each other need the same thread count (``pytestmark = pytest.mark.usefixtures(...)``)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def bert(tmp_path_factory) -> Path:
    """A tiny random BERT classifier folder with its tokenizer (:func:`tiny_text.bert_folder`)."""
    from tiny_text import bert_folder

    return bert_folder(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    """A tiny random GPT-2 folder with its tokenizer (:func:`tiny_text.gpt2_folder`)."""
    from tiny_text import gpt2_folder

    return gpt2_folder(tmp_path_factory.mktemp("tiny-gpt2"))


@pytest.fixture(scope="module")
def easy_csv(tmp_path_factory) -> Path:
    """The separable review/sentiment CSV task (:func:`tiny_text.write_easy_csv`)."""
    from tiny_text import write_easy_csv

    return write_easy_csv(tmp_path_factory.mktemp("easy") / "easy.csv")


@pytest.fixture(scope="session")
def make_pair(tmp_path_factory):
    """``make_pair(arch, fmt="single", dtype="fp32", grow_vocab=False)`` -> cached :class:`Pair`."""
    cache: dict[tuple, Pair] = {}

    def make(arch: str, fmt: str = "single", dtype: str = "fp32", grow_vocab: bool = False) -> Pair:
        key = (arch, fmt, dtype, grow_vocab)
        if key not in cache:
            root = tmp_path_factory.mktemp(f"{arch}-{fmt}-{dtype}{'-grow' if grow_vocab else ''}")
            cache[key] = build_pair(root, arch, fmt, dtype, grow_vocab)
        return cache[key]

    return make


# --------------------------------------------------------------------------------------------------
# independent float64 reference
# --------------------------------------------------------------------------------------------------


def load_state(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All floating tensors of a HF folder as float64 numpy arrays, plus their stored dtype names."""
    import safetensors.numpy
    import safetensors.torch

    names = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.float64: "F64"}
    state: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    st_files = sorted(folder.glob("*.safetensors"))
    if st_files:
        for f in st_files:
            tensors = safetensors.torch.load_file(f)
            bf16 = {n for n, t in tensors.items() if t.dtype == torch.bfloat16}
            if not bf16:  # numpy cannot hold bfloat16; everything else is read with safetensors.numpy
                for n, a in safetensors.numpy.load_file(f).items():
                    if np.issubdtype(a.dtype, np.floating):
                        state[n] = a.astype(np.float64)
                        dtypes[n] = {np.dtype("float32"): "F32", np.dtype("float16"): "F16",
                                     np.dtype("float64"): "F64"}[a.dtype]
                continue
            for n, t in tensors.items():
                if t.is_floating_point():
                    state[n] = t.to(torch.float64).numpy()
                    dtypes[n] = names[t.dtype]
        return state, dtypes
    for f in sorted(folder.glob("pytorch_model*.bin")):
        for n, t in torch.load(f, map_location="cpu", weights_only=True).items():
            if t.is_floating_point():
                state[n] = t.to(torch.float64).numpy()
                dtypes[n] = names[t.dtype]
    assert state, f"no weights found in {folder}"
    return state, dtypes


@dataclass
class RefModule:
    module: str
    layer: int | None
    kind: str
    rows: int
    cols: int
    dtype: str
    base: np.ndarray  # oriented (out x in) for matrices; 1-D for vectors
    delta: np.ndarray
    sigma: np.ndarray | None  # scipy svdvals of delta (float64, descending); None for vectors

    @property
    def is_matrix(self) -> bool:
        return self.base.ndim == 2


def expected_layer_kind(arch: str, module: str) -> tuple[int | None, str]:
    m = re.search(BLOCK[arch], module)
    if not m:
        return None, module
    return int(m.group(1)), KINDS[arch].get(module[m.end():], module[m.end():])


def reference(base_dir: Path, ft_dir: Path, arch: str) -> dict[str, RefModule]:
    base, dtypes = load_state(base_dir)
    ft, _ = load_state(ft_dir)
    bp, fp = PREFIXES[arch]
    ft_core = {_core(n, fp): a for n, a in ft.items()}
    out: dict[str, RefModule] = {}
    for name, b in base.items():
        core = _core(name, bp)
        f = ft_core.get(core)
        if f is None:
            continue
        module = module_of(core)
        common = min(b.shape[0], f.shape[0])
        b, f = b[:common], f[:common]
        delta = f - b
        layer, kind = expected_layer_kind(arch, module)
        if b.ndim == 2:
            if is_conv1d(arch, module):
                b, delta = b.T, delta.T
            sigma = scipy.linalg.svdvals(delta)
            out[module] = RefModule(module, layer, kind, b.shape[0], b.shape[1], dtypes[name], b, delta, sigma)
        else:
            out[module] = RefModule(module, layer, kind, b.size, 1, dtypes[name], b, delta, None)
    return out


# --------------------------------------------------------------------------------------------------
# metric formulas, written again (the tests never call rankscope.numerics.metrics for expected values)
# --------------------------------------------------------------------------------------------------


def ref_stable_rank(s: np.ndarray) -> float:
    return 0.0 if s.size == 0 or s.max() == 0 else float((s**2).sum() / s.max() ** 2)


def ref_effective_rank(s: np.ndarray) -> float:
    if s.sum() == 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum()))


def ref_energy_rank_bounds(s: np.ndarray, tau: float, slack: float = 1e-9) -> tuple[int, int]:
    """(lowest, highest) smallest-k with cumulative energy >= tau when the cumulative sum may be off by ``slack``."""
    e = s.astype(np.float64) ** 2
    if e.sum() == 0:
        return 0, 0
    c = np.cumsum(e) / e.sum()

    def first(t: float) -> int:
        hit = np.nonzero(c >= t)[0]
        return int(hit[0]) + 1 if hit.size else c.size

    return first(tau - slack), first(tau + slack)


def ref_omega(beta: float) -> float:
    return 0.56 * beta**3 - 0.95 * beta**2 + 1.82 * beta + 1.43


def ref_gd_rank_bounds(s: np.ndarray, rows: int, cols: int, slack: float = 0.0) -> tuple[int, int]:
    """Gavish–Donoho count ``#{σ > ω(β)·median(σ)}``; with ``slack`` (absolute on σ), the range it can take."""
    if s.size == 0 or s.max() == 0:
        return 0, 0
    beta = min(rows, cols) / max(rows, cols)
    w = ref_omega(beta)
    thr = w * np.median(s)
    lo = int(np.sum(s > thr + slack * (1 + w)))
    hi = int(np.sum(s > thr - slack * (1 + w)))
    return lo, hi
