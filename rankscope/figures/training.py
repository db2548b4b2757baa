"""The figure of a training run (``rankscope train``): ``learning_curves.png``, drawn from ``metrics.json``.

Left: the validation loss at every evaluation (``history``) and the training loss, the mean over each epoch
(``train_loss_by_epoch``), against epochs.  Right: the validation metric at every evaluation — accuracy for a
classifier, perplexity (log scale) for a causal LM.  A dotted line marks the evaluation whose weights were kept
(``best_step``, when ``weights`` is ``best``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .style import note_panel, pyplot, save_figure


def render_learning_curves(metrics: Mapping[str, Any], path: Path) -> str:
    """``learning_curves.png`` of a run's metrics (the ``metrics.json`` dict); returns the file name."""
    plt, _ = pyplot()
    history = list(metrics.get("history") or [])
    fig, (loss_ax, metric_ax) = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    if not history:
        note_panel(loss_ax, "no evaluation was recorded (history is empty)")
        note_panel(metric_ax, "no evaluation was recorded")
        return save_figure(fig, path)
    epochs = np.array([h["epoch"] for h in history], dtype=float)
    loss_ax.plot(epochs, [h["validation_loss"] for h in history], marker="o", color="C0",
                 label="validation loss, every evaluation")
    train = list(metrics.get("train_loss_by_epoch") or [])
    if train:
        done = float(metrics.get("epochs_completed") or len(train))
        x = np.minimum(np.arange(1, len(train) + 1, dtype=float), done)
        loss_ax.plot(x, train, marker="s", color="C1", label="training loss, mean over each epoch")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("cross-entropy (nats, mean per target token)" if "validation_perplexity" in history[0]
                       else "cross-entropy (nats, mean per example)")
    loss_ax.set_title("loss")
    loss_ax.legend(loc="best", fontsize=8)
    if "validation_accuracy" in history[0]:
        metric_ax.plot(epochs, [100 * h["validation_accuracy"] for h in history], marker="o", color="C2")
        metric_ax.set_ylabel("validation accuracy (%)")
        metric_ax.set_ylim(0, 100)
        metric_ax.set_title("validation accuracy")
    else:
        metric_ax.plot(epochs, [h["validation_perplexity"] for h in history], marker="o", color="C2")
        metric_ax.set_yscale("log")
        metric_ax.set_ylabel("validation perplexity (log scale; lower is better)")
        metric_ax.set_title("validation perplexity")
    metric_ax.set_xlabel("epoch")
    best = next((h for h in history if h["step"] == metrics.get("best_step")), None)
    if metrics.get("weights") == "best" and best is not None:
        for ax in (loss_ax, metric_ax):
            ax.axvline(best["epoch"], color="0.4", ls=":", lw=1.2)
        metric_ax.annotate(f"kept: step {best['step']}", (best["epoch"], 0.02), xycoords=("data", "axes fraction"),
                           xytext=(4, 0), textcoords="offset points", fontsize=8, color="0.3")
    fig.suptitle(f"Learning curves: {metrics.get('method', '')} fine-tuning on {metrics.get('task', '')} "
                 f"({metrics.get('steps', 0)} steps, {len(history)} evaluations)", fontsize=12)
    return save_figure(fig, path)
