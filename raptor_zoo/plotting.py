"""The plotting steps every figure of raptor_zoo shares: per-token-type lines against depth, annotated heatmap
cells, and the common finish (axes, title, layout, PNG). Figures are built without pyplot (no GUI backend)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

__all__ = ["GROUP_COLORS", "MODEL_STYLES", "plot_token_groups", "annotate_cells", "finish_figure"]

GROUP_COLORS = {"cls": "tab:red", "registers": "tab:green", "patches": "tab:blue", "all": "tab:gray"}
"""Colour of each token type (``TokenLayout.groups`` names, plus ``all``) in every plot."""
MODEL_STYLES = ("-", "--", ":", "-.")
"""Line style of each model in a comparison (teacher solid, Raptor dashed, ...)."""


def plot_token_groups(
        ax: Any,
        layers: np.ndarray,
        values: Mapping[str, Any],
        style: str = "-",
        suffix: str = "",
        label: Callable[[str], str] = str,
) -> None:
    """One line per token type (``{name: values}``) against ``layers``, coloured by ``GROUP_COLORS``, labelled
    ``label(name) + suffix``."""
    for name, series in values.items():
        ax.plot(layers, series, style, color=GROUP_COLORS[name], marker=".", label=label(name) + suffix)


def annotate_cells(ax: Any, values: np.ndarray, template: str, threshold: float | None = None) -> None:
    """Write ``template.format(values[i, j])`` in the cells of a heatmap; with ``threshold``, black text above it
    and white below."""
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            color = None if threshold is None else ("black" if values[i, j] > threshold else "white")
            ax.text(j, i, template.format(values[i, j]), ha="center", va="center", fontsize=7, color=color)


def finish_figure(
        figure: Figure,
        axes: Iterable[Any],
        path: str | Path | None,
        title: str | None,
        xlabel: str = "layer ℓ",
        dpi: int = 110,
) -> Figure:
    """Shared finish of the line plots: x label, grid and legend (when lines are labelled) on every panel, the
    title, tight layout, and the PNG at ``path`` when given."""
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=dpi)
    return figure
