"""Phase view: the layer-distance heatmaps of several trajectories (teacher, Raptor) side by side, with the
max-cut phases found in each and the Raptor's block schedule drawn on top (distances and partitions from
:mod:`raptor_zoo.phases`)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from ..phases import LayerDistanceAccumulator, contiguous_partition, divisive_partition
from .layout import TokenLayout, check_trajectory

__all__ = ["layer_distances", "phase_view", "plot_phase_view"]


def layer_distances(trajectory: torch.Tensor, layout: TokenLayout, metric: str = "cls_patchmean") -> np.ndarray:
    """The ``[L, L]`` layer distance matrix (layers 1..L) of a trajectory ``[B, L + 1, N, D]``."""
    trajectory = check_trajectory(trajectory, layout)
    accumulator = LayerDistanceAccumulator(
        trajectory.shape[1] - 1, metric=metric, num_prefix_tokens=layout.num_prefix_tokens,
        num_reg_tokens=layout.num_reg_tokens, has_class_token=layout.has_class_token)
    return accumulator.update(trajectory).compute()


def _max_cut_boundaries(distance: np.ndarray, k: int) -> tuple[int, ...]:
    """Phase boundaries of the paper's divisive max-cut, or the contiguous DP when divisive is not contiguous."""
    partition = divisive_partition(distance, k)
    if partition.phase_boundaries is None:
        partition = contiguous_partition(distance, k)
    return tuple(int(b) for b in partition.phase_boundaries)


def phase_view(
        trajectories: Mapping[str, torch.Tensor],
        layout: TokenLayout,
        k: int = 2,
        schedule_boundaries: Sequence[int] | None = None,
        metric: str = "cls_patchmean",
) -> dict[str, Any]:
    """Distance matrix and max-cut phase boundaries (k phases) of each trajectory ``{label: [B, L + 1, N, D]}``.

    ``schedule_boundaries`` (a Raptor's ``phase_boundaries``, (0, b_1, ..., L)) are kept for the plot. Returns
    ``{label: {"distance": [L, L], "phase_boundaries": (0, ..., L)}}`` plus ``k``, ``metric`` and
    ``schedule_boundaries``.
    """
    if not trajectories:
        raise ValueError("trajectories is empty; pass {label: trajectory}.")
    view: dict[str, Any] = {"k": int(k), "metric": metric,
                            "schedule_boundaries": None if schedule_boundaries is None else list(schedule_boundaries),
                            "models": {}}
    for label, trajectory in trajectories.items():
        distance = layer_distances(trajectory, layout, metric)
        if not 1 <= k <= distance.shape[0]:
            raise ValueError(f"k={k} phases is out of range for depth {distance.shape[0]}; use 1 <= k <= L.")
        view["models"][label] = {"distance": distance, "phase_boundaries": _max_cut_boundaries(distance, k)}
    return view


def _box_phases(ax: Any, boundaries: Sequence[int], color: str, style: str, label: str) -> None:
    for index, (start, end) in enumerate(zip(boundaries, boundaries[1:])):
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), end - start, end - start, fill=False, edgecolor=color,
                               linestyle=style, linewidth=2.0, label=label if index == 0 else None))


def plot_phase_view(view: Mapping[str, Any], path: str | Path | None = None, title: str | None = None) -> Figure:
    """One heatmap per model on a shared colour scale; red boxes: its max-cut phases, white dashed: the schedule."""
    models = view["models"]
    figure = Figure(figsize=(5.2 * len(models) + 0.8, 5))
    axes = np.atleast_1d(figure.subplots(1, len(models)))
    vmax = max(float(np.max(entry["distance"])) for entry in models.values())
    image = None
    for ax, (label, entry) in zip(axes, models.items()):
        distance = np.asarray(entry["distance"])
        depth = distance.shape[0]
        image = ax.imshow(distance, cmap="viridis", vmin=0.0, vmax=vmax, interpolation="nearest")
        ticks = list(range(0, depth, 1 if depth <= 24 else int(np.ceil(depth / 20))))
        ax.set_xticks(ticks, [str(t + 1) for t in ticks])
        ax.set_yticks(ticks, [str(t + 1) for t in ticks])
        _box_phases(ax, entry["phase_boundaries"], "red", "-", f"max-cut phases {tuple(entry['phase_boundaries'])}")
        if view.get("schedule_boundaries"):
            _box_phases(ax, view["schedule_boundaries"], "white", "--",
                        f"Raptor schedule {tuple(view['schedule_boundaries'])}")
        ax.set_xlabel("layer")
        ax.set_ylabel("layer")
        ax.set_title(label)
        ax.legend(fontsize=7, loc="upper right")
    colorbar = figure.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02)
    colorbar.set_label(f"{view['metric']} distance")
    figure.suptitle((title + ": " if title else "") + f"layer distances and k={view['k']} phases")
    if path is not None:
        figure.savefig(path, dpi=110, bbox_inches="tight")
    return figure
