"""Low-rank structure of the per-layer updates Δ_ℓ = x_ℓ − x_{ℓ−1} (tokens × D, one matrix per image)."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ..plotting import MODEL_STYLES, finish_figure, plot_token_groups
from .dynamics import _boundaries_for, as_labelled, draw_phase_boundaries
from .layout import TokenLayout, check_trajectory, unit

__all__ = ["stable_rank", "effective_rank", "update_ranks", "plot_update_ranks"]

_EPS = 1e-12


def stable_rank(matrices: torch.Tensor) -> torch.Tensor:
    """r_s = ||Δ||_F² / ||Δ||_2² of each matrix ``[..., T, D]`` (1 for rank one, up to min(T, D)); 0 for Δ = 0."""
    singular = torch.linalg.svdvals(matrices.double())
    squared = singular.pow(2)
    return squared.sum(-1) / squared[..., 0].clamp_min(_EPS)


def effective_rank(matrices: torch.Tensor) -> torch.Tensor:
    """r_e = exp(H(p)), p_i = σ_i / Σ σ_j (Roy & Vetterli, 2007) of each matrix ``[..., T, D]``; 1 for rank one."""
    singular = torch.linalg.svdvals(matrices.double())
    p = singular / singular.sum(-1, keepdim=True).clamp_min(_EPS)
    entropy = -(p * torch.log(p.clamp_min(_EPS))).sum(-1)
    return torch.exp(entropy)


def update_ranks(trajectory: torch.Tensor, layout: TokenLayout, directions: bool = False) -> dict[str, Any]:
    """Stable and effective rank of Δ_ℓ (ℓ = 1..L) per token type, averaged over images.

    Δ_ℓ restricted to a token type is a ``[T, D]`` matrix per image; types with a single token (the class token)
    are rank one by construction and left out; ``all`` covers every token. ``directions=True`` uses the angular
    update x̂_ℓ − x̂_{ℓ−1} (the paper's variant) instead of the raw one. Returns ``layers`` (1..L), ``stable_rank``
    and ``effective_rank`` {type: [L]}, ``max_rank`` {type: min(T, D)}.
    """
    trajectory = check_trajectory(trajectory, layout)
    states = unit(trajectory) if directions else trajectory
    updates = states[:, 1:] - states[:, :-1]  # [B, L, N, D]
    num_tokens, dim = updates.shape[2], updates.shape[3]
    groups = {name: index for name, index in layout.groups(num_tokens).items() if name != "cls"}
    groups["all"] = slice(0, num_tokens)
    result: dict[str, Any] = {"layers": np.arange(1, trajectory.shape[1]), "directions": directions,
                              "stable_rank": {}, "effective_rank": {}, "max_rank": {}}
    for name, index in groups.items():
        block = updates[:, :, index]
        if block.shape[2] < 2:
            continue
        result["stable_rank"][name] = stable_rank(block).mean(0).cpu().numpy()
        result["effective_rank"][name] = effective_rank(block).mean(0).cpu().numpy()
        result["max_rank"][name] = min(block.shape[2], dim)
    return result


def plot_update_ranks(
        results: Mapping[str, Any],
        phase_boundaries: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        path: str | Path | None = None,
        title: str | None = None,
) -> Figure:
    """Stable rank and effective rank of Δ_ℓ per token type against the layer (one line style per model)."""
    labelled = as_labelled(results, "stable_rank")
    figure = Figure(figsize=(10, 4.2))
    axes = figure.subplots(1, 2)
    for (label, result), style in zip(labelled.items(), MODEL_STYLES):
        suffix = f" ({label})" if label else ""
        layers = np.asarray(result["layers"])
        for ax, key in zip(axes, ("stable_rank", "effective_rank")):
            plot_token_groups(ax, layers, result[key], style, suffix,
                              label=lambda name: f"{name} (max {result['max_rank'][name]})")
            draw_phase_boundaries(ax, _boundaries_for(phase_boundaries, label), style)
    kind = "x̂_ℓ − x̂_ℓ−1" if next(iter(labelled.values()))["directions"] else "x_ℓ − x_ℓ−1"
    axes[0].set_ylabel("stable rank ||Δ||_F² / ||Δ||_2²")
    axes[0].set_title(f"stable rank of Δ_ℓ = {kind}")
    axes[1].set_ylabel("effective rank exp H(σ / Σσ)")
    axes[1].set_title("effective rank")
    for ax in axes:
        ax.set_ylim(bottom=0)
    return finish_figure(figure, axes, path, title)
