"""Tiny text models and an easy data set, shared by the training and subspace tests.

A bare ``BertModel`` (like MiniLM: no classification head) with a WordPiece tokenizer, a tiny
``GPT2LMHeadModel`` with an eos but no pad token, and a CSV of 120 reviews whose label is decided by
the presence of positive words (separable by a bag of words).
"""

from __future__ import annotations

import random
from pathlib import Path

import torch

HIDDEN = 32
POSITIVE = ["good", "great", "fine", "superb", "lovely", "nice"]
NEGATIVE = ["bad", "awful", "poor", "dull", "ugly", "weak"]
NEUTRAL = ["the", "movie", "film", "was", "plot", "actors", "a", "really", "quite", "story"]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_folder(root: Path) -> Path:
    """A bare ``BertModel`` (like MiniLM: no classification head) and a WordPiece tokenizer."""
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = {w: i for i, w in enumerate(SPECIALS + POSITIVE + NEGATIVE + NEUTRAL)}
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)
    BertModel(config).save_pretrained(root)
    BertTokenizer(vocab=vocab).save_pretrained(root)
    return root


def gpt2_folder(root: Path) -> Path:
    """A tiny ``GPT2LMHeadModel`` with a word-level tokenizer that has an eos but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<eos>", "<unk>"] + POSITIVE + NEGATIVE + NEUTRAL)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", unk_token="<unk>")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(vocab), n_embd=HIDDEN, n_layer=2, n_head=2, n_positions=32,
                        bos_token_id=0, eos_token_id=0)
    GPT2LMHeadModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def write_easy_csv(path: Path) -> Path:
    """120 reviews: label ``pos`` iff the text holds positive words (separable by a bag of words)."""
    rng = random.Random(0)
    rows = ["review,sentiment"]
    for i in range(120):
        label = "pos" if i % 2 else "neg"
        words = rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2) + rng.sample(NEUTRAL, rng.randint(2, 6))
        rng.shuffle(words)
        rows.append(f"{' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path
