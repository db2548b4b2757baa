"""Synthetic text classification tasks built offline from a seeded generator (tasks with headroom over LoRA).

``entity-facts``: a capacity-bound task.  ``ENTITIES`` invented people (two pronounceable made-up words each,
e.g. ``"Velor Kastimbe"``, drawn without repetition) are each given one of ``len(COUNTRIES)`` home countries,
exactly balanced (a seeded permutation of an equal number of each label).  Every fact is written in
``len(TEMPLATES)`` sentence templates that never name the country (``"{name} was born there."``); the label is
the country.  Nothing in a sentence but the name tells the label, so a model must *store* the entity → label
map (many independent facts: capacity), and because the templates are split into disjoint train, validation
and test sets (seeded), it must store it so that it carries over to phrasings it never saw.

Splits: every entity appears in every split, each with its own templates (a seeded choice of ``TRAIN_TEMPLATES``
for train, ``VALIDATION_TEMPLATES`` for validation and ``TEST_TEMPLATES`` for test; the remaining templates are not
used), so train has ``ENTITIES × TRAIN_TEMPLATES`` examples (1,600) and the labels of every split are exactly
balanced.  Each split is shuffled.  Everything is a function of the seed (``split_seed`` of
:func:`rankscope.training.data.load_task`); no randomness outside ``numpy.random.default_rng(seed)``.

The sizes are chosen so that the task has headroom over low-rank LoRA on MiniLM-L6 within 200 steps: with 400 facts
(about the hidden size, 384) seen in 4 phrasings each, full fine-tuning reaches ~0.9 test accuracy and uniform
rank-2 LoRA ~0.8 in a first calibration (200 facts in 8 phrasings: both reach 1.0, no headroom; 1,000 facts in 2
phrasings, 8 labels: both stay at chance).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

ENTITIES = 400
"""Number of invented people (facts) of ``entity-facts``."""
COUNTRIES = ("Norway", "Chile", "Kenya", "Japan")
"""The label names (home countries), in label order."""
TEMPLATES = (
    "{name} was born there.",
    "{name} grew up in that country.",
    "The passport of {name} was issued at home.",
    "Everyone knows where {name} comes from.",
    "{name} often travels back to the homeland.",
    "The family of {name} still lives there.",
    "{name} speaks the language of that place.",
    "As a child, {name} went to school in that nation.",
    "Ask {name} about the home country.",
    "{name} is a citizen of that state.",
    "People say {name} is from there.",
    "The hometown of {name} lies in that land.",
)
"""Sentence templates; none names a country, so only the entity carries the label."""
TRAIN_TEMPLATES = 4
VALIDATION_TEMPLATES = 2
TEST_TEMPLATES = 2
ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "tr", "v",
          "z", "th", "sh", "ch")
VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ou")
CODAS = ("", "", "n", "r", "l", "s", "m", "nd", "st", "x")


@dataclass(frozen=True)
class SyntheticTask:
    """A generated task's parameters (the registry entry of :data:`SYNTHETIC_TASKS`)."""

    description: str
    entities: int = ENTITIES
    labels: tuple[str, ...] = COUNTRIES
    templates: tuple[str, ...] = TEMPLATES
    train_templates: int = TRAIN_TEMPLATES
    validation_templates: int = VALIDATION_TEMPLATES
    test_templates: int | None = TEST_TEMPLATES  # None: every template left after train and validation


SYNTHETIC_TASKS: dict[str, SyntheticTask] = {
    "entity-facts": SyntheticTask(f"{ENTITIES} invented people x {len(COUNTRIES)} home countries, "
                                  f"{len(TEMPLATES)} templates (test templates held out)"),
}
"""Built-in generated tasks by name (registered in :mod:`rankscope.training.data`)."""


@dataclass
class Generated:
    """A generated task: label names and (texts, labels) of the three splits, plus what made them."""

    label_names: list[str]
    splits: dict[str, tuple[list[str], list[int]]]
    info: dict[str, Any] = field(default_factory=dict)


def invented_word(rng: np.random.Generator, syllables: int) -> str:
    """A capitalised pronounceable word of ``syllables`` onset+vowel syllables and a final coda."""
    word = "".join(ONSETS[rng.integers(len(ONSETS))] + VOWELS[rng.integers(len(VOWELS))] for _ in range(syllables))
    return (word + CODAS[rng.integers(len(CODAS))]).capitalize()


def entity_names(rng: np.random.Generator, n: int, forbidden: Sequence[str] = ()) -> list[str]:
    """``n`` distinct two-word names (2–3 syllables each), in the order drawn; a name containing one of
    ``forbidden`` (the label names, case-insensitive) is drawn again."""
    names: list[str] = []
    seen: set[str] = set()
    banned = [f.lower() for f in forbidden]
    while len(names) < n:
        name = f"{invented_word(rng, int(rng.integers(2, 4)))} {invented_word(rng, int(rng.integers(2, 4)))}"
        if name not in seen and not any(b in name.lower() for b in banned):
            seen.add(name)
            names.append(name)
    return names


def template_split(n_templates: int, n_train: int, n_validation: int, rng: np.random.Generator) -> dict[str, list[int]]:
    """Disjoint template indices of the train, validation and test splits (a seeded permutation)."""
    order = [int(i) for i in rng.permutation(n_templates)]
    return {"train": sorted(order[:n_train]), "validation": sorted(order[n_train:n_train + n_validation]),
            "test": sorted(order[n_train + n_validation:])}


def generate(name: str, seed: int = 0) -> Generated:
    """The examples of the generated task ``name`` for ``seed`` (the same seed gives the same task)."""
    spec = SYNTHETIC_TASKS[name]
    if spec.entities % len(spec.labels):
        raise ValueError(f"{name}: {spec.entities} entities do not split evenly into {len(spec.labels)} labels")
    if spec.train_templates + spec.validation_templates >= len(spec.templates):
        raise ValueError(f"{name}: no template left for the test split")
    rng = np.random.default_rng(seed)
    names = entity_names(rng, spec.entities, spec.labels)
    labels = rng.permutation(np.repeat(np.arange(len(spec.labels)), spec.entities // len(spec.labels)))
    chosen = template_split(len(spec.templates), spec.train_templates, spec.validation_templates, rng)
    if spec.test_templates is not None:
        chosen["test"] = chosen["test"][:spec.test_templates]
    splits = {}
    for split, templates in chosen.items():
        rows = [(spec.templates[t].format(name=entity), int(label))
                for entity, label in zip(names, labels, strict=True) for t in templates]
        order = rng.permutation(len(rows))
        splits[split] = ([rows[i][0] for i in order], [rows[i][1] for i in order])
    info = {"source": "generated (rankscope.training.synthetic)", "generator_seed": seed, "entities": spec.entities,
            "templates": {split: [spec.templates[t] for t in idx] for split, idx in chosen.items()}}
    return Generated(list(spec.labels), splits, info)
