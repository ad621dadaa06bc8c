"""Figures of the CBED application: one example stack per crystal system, the confusion matrix, per-class accuracy."""
from __future__ import annotations

import os

import numpy as np

from ..train.plot import new_figure, save_png


def examples(result, systems):
    """The three zone-axis patterns (preprocessed, log scale) of one held-out material per crystal system."""
    stacks = result.arrays["examples"]
    fig = new_figure(figsize=(7, 2.1 * len(systems)), layout="constrained")
    axes = fig.subplots(len(systems), 3)
    for s, name in enumerate(systems):
        for v in range(3):
            ax = axes[s, v]
            ax.imshow(stacks[s, v], cmap="inferno", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if v == 0:
                ax.set_ylabel(name)
    return fig


def confusion(result, systems):
    """Crystal system: true (rows) against predicted (columns), counts on held-out materials."""
    c = result.arrays["confusion"]
    fig = new_figure(figsize=(6.5, 5.5), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(c, cmap="Blues")
    for i in range(len(c)):
        for j in range(len(c)):
            if c[i, j]:
                ax.text(j, i, str(c[i, j]), ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(systems)), systems, rotation=45, ha="right")
    ax.set_yticks(range(len(systems)), systems)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    m = result.metrics
    ax.set_title(f"top-1 {m['system_accuracy']:.2f} (majority {m['majority_system_accuracy']:.2f}, "
                 f"nearest neighbour {m['nearest_neighbour_system_accuracy']:.2f})")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def per_class(result, systems):
    """Accuracy per crystal system on held-out materials."""
    fig = new_figure(figsize=(6.5, 3.5), layout="constrained")
    ax = fig.subplots()
    ax.bar(np.arange(len(systems)), result.arrays["system_accuracy_per_class"])
    ax.set_xticks(range(len(systems)), systems, rotation=45, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    return fig


def save_figures(result, folder: str, systems) -> dict:
    """Every figure as a PNG in ``folder`` (``systems``: the crystal systems' names, in class order); {name: path}."""
    figures = {"examples": examples, "confusion": confusion, "per_class": per_class}
    return {name: save_png(make(result, systems), os.path.join(folder, f"{name}.png"))
            for name, make in figures.items()}
