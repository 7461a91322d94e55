"""Token-specific dynamics on the unit sphere: directional convergence, angular speed, patch coherence, class basins.

Depth is time. Token norms grow with depth, so every measure is taken on directions x̂ = x / ||x||, per token type
(class token, registers, patches). All functions take a trajectory ``[B, L + 1, N, D]`` (states x_0..x_L, as
``Teacher.trajectory`` and ``raptor_trajectory`` return) and a :class:`TokenLayout`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from ..plotting import MODEL_STYLES, finish_figure, plot_token_groups
from .layout import TokenLayout, check_trajectory, unit

__all__ = [
    "directional_convergence", "angular_speed", "patch_coherence", "update_coherence", "token_dynamics",
    "class_basins", "plot_token_dynamics", "plot_class_basins", "draw_phase_boundaries", "as_labelled",
]


def directional_convergence(trajectory: torch.Tensor) -> np.ndarray:
    """γ_ℓ = ⟨x̂_ℓ, x̂_L⟩ per image, layer and token: ``[B, L + 1, N]`` (γ_L = 1)."""
    directions = unit(trajectory.detach().double())
    return (directions * directions[:, -1:]).sum(-1).cpu().numpy()


def angular_speed(trajectory: torch.Tensor) -> np.ndarray:
    """s_ℓ = arccos⟨x̂_{ℓ+1}, x̂_ℓ⟩ in radians per image, step ℓ = 0..L−1 and token: ``[B, L, N]``."""
    directions = unit(trajectory.detach().double())
    cosine = (directions[:, 1:] * directions[:, :-1]).sum(-1).clamp(-1.0, 1.0)
    return torch.arccos(cosine).cpu().numpy()


def _coherence(vectors: torch.Tensor) -> torch.Tensor:
    """mean_i ⟨v̂_i, normalise(mean_j v_j)⟩ over the token axis (-2) of ``[..., T, D]``."""
    mean_direction = unit(vectors.mean(dim=-2, keepdim=True))
    return (unit(vectors) * mean_direction).sum(-1).mean(-1)


def patch_coherence(trajectory: torch.Tensor, layout: TokenLayout) -> np.ndarray:
    """κ_ℓ = mean_i ⟨x̂_i, normalise(mean_j x_j)⟩ over the patch tokens, per image and state: ``[B, L + 1]``."""
    trajectory = check_trajectory(trajectory, layout)
    return _coherence(trajectory[:, :, layout.groups(trajectory.shape[2])["patches"]]).cpu().numpy()


def update_coherence(trajectory: torch.Tensor, layout: TokenLayout) -> np.ndarray:
    """The same coherence for the patch updates Δ_ℓ = x_ℓ − x_{ℓ−1}, ℓ = 1..L: ``[B, L]``."""
    trajectory = check_trajectory(trajectory, layout)
    patches = trajectory[:, :, layout.groups(trajectory.shape[2])["patches"]]
    return _coherence(patches[:, 1:] - patches[:, :-1]).cpu().numpy()


def token_dynamics(trajectory: torch.Tensor, layout: TokenLayout) -> dict[str, Any]:
    """Per-token-type summaries (means over images and the tokens of each type) of γ_ℓ, s_ℓ and coherence.

    Returns ``layers`` (0..L), ``convergence`` {type: [L + 1]}, ``angular_speed`` {type: [L]} (radians, step ℓ → ℓ+1,
    plotted at ℓ + 1), ``angular_speed_std`` {type: [L]} (spread over images and tokens), ``patch_coherence``
    [L + 1], ``update_coherence`` [L] (layers 1..L) and ``num_images``.
    """
    trajectory = check_trajectory(trajectory, layout)
    groups = layout.groups(trajectory.shape[2])
    gamma = directional_convergence(trajectory)
    speed = angular_speed(trajectory)
    return {
        "layers": np.arange(trajectory.shape[1]),
        "convergence": {name: gamma[:, :, index].mean(axis=(0, 2)) for name, index in groups.items()},
        "angular_speed": {name: speed[:, :, index].mean(axis=(0, 2)) for name, index in groups.items()},
        "angular_speed_std": {name: speed[:, :, index].std(axis=(0, 2)) for name, index in groups.items()},
        "patch_coherence": patch_coherence(trajectory, layout).mean(axis=0),
        "update_coherence": update_coherence(trajectory, layout).mean(axis=0),
        "num_images": int(trajectory.shape[0]),
    }


def class_basins(trajectory: torch.Tensor, labels: Any, layout: TokenLayout) -> dict[str, Any]:
    """Class-dependent angular basins of the global token (class token, else the patch mean) at every depth.

    Per state ℓ: ``within`` = mean over images of ⟨x̂, ĉ_y⟩ (ĉ_y the normalised mean direction of the image's own
    class y), ``between`` = mean cosine to the other classes' mean directions, ``centroid_accuracy`` = fraction of
    images whose nearest class mean direction is their own (leave-one-out means, so a single image is not its own
    basin). Compact class basins show as within → 1 with between well below it.
    """
    trajectory = check_trajectory(trajectory, layout)
    labels = torch.as_tensor(np.asarray(labels)).long().reshape(-1)
    if labels.shape[0] != trajectory.shape[0]:
        raise ValueError(f"labels has {labels.shape[0]} entries but the trajectory {trajectory.shape[0]} images.")
    classes, labels = torch.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise ValueError(f"class_basins needs images of at least 2 classes; got only class {classes.tolist()}.")
    groups = layout.groups(trajectory.shape[2])
    token = "cls" if "cls" in groups else "patch mean"
    vectors = trajectory[:, :, 0] if token == "cls" else trajectory[:, :, groups["patches"]].mean(2)
    directions = unit(vectors)  # [B, S, D]
    one_hot = torch.nn.functional.one_hot(labels, len(classes)).double()  # [B, C]
    sums = torch.einsum("bc,bsd->csd", one_hot, directions)  # [C, S, D]
    counts = one_hot.sum(0)
    means = unit(sums)
    cosine = torch.einsum("bsd,csd->bsc", directions, means)  # [B, S, C]
    own = cosine.gather(2, labels.view(-1, 1, 1).expand(-1, cosine.shape[1], 1)).squeeze(2)
    others = (cosine.sum(2) - own) / (len(classes) - 1)
    loo_sums = sums.unsqueeze(0) - one_hot[:, :, None, None] * directions[:, None]  # [B, C, S, D]
    loo_cosine = torch.einsum("bsd,bcsd->bsc", directions, unit(loo_sums))
    empty = (counts.unsqueeze(0) - one_hot) == 0  # classes left empty without the image
    loo_cosine = loo_cosine.masked_fill(empty[:, None, :], -float("inf"))
    accuracy = (loo_cosine.argmax(2) == labels[:, None]).double().mean(0)
    return {
        "layers": np.arange(trajectory.shape[1]),
        "token": token,
        "classes": classes.cpu().numpy(),
        "within": own.mean(0).cpu().numpy(),
        "between": others.mean(0).cpu().numpy(),
        "centroid_accuracy": accuracy.cpu().numpy(),
        "num_images": int(trajectory.shape[0]),
    }


# ------------------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------------------

def as_labelled(results: Mapping[str, Any], key: str) -> dict[str, Mapping[str, Any]]:
    """``{label: result}`` from one result (it has ``key``) or a mapping of them."""
    return {"": results} if key in results else dict(results)


def draw_phase_boundaries(ax: Any, phase_boundaries: Sequence[int] | None, style: str = "--") -> None:
    """Vertical lines at the inner phase boundaries (layer b: last layer of a phase)."""
    for boundary in list(phase_boundaries or ())[1:-1]:
        ax.axvline(boundary + 0.5, color="black", linestyle=style, linewidth=0.8, alpha=0.6)


def _boundaries_for(phase_boundaries: Any, label: str) -> Sequence[int] | None:
    if isinstance(phase_boundaries, Mapping):
        return phase_boundaries.get(label)
    return phase_boundaries


def plot_token_dynamics(
        results: Mapping[str, Any],
        phase_boundaries: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        path: str | Path | None = None,
        title: str | None = None,
) -> Figure:
    """Three panels against depth: γ_ℓ and angular speed per token type, and patch / update coherence.

    ``results`` is one :func:`token_dynamics` result or ``{label: result}`` (one line style per label, e.g. teacher
    solid, Raptor dashed). ``phase_boundaries`` (one tuple, or one per label) are drawn as vertical lines.
    """
    labelled = as_labelled(results, "convergence")
    figure = Figure(figsize=(15, 4.2))
    axes = figure.subplots(1, 3)
    for (label, result), style in zip(labelled.items(), MODEL_STYLES):
        suffix = f" ({label})" if label else ""
        layers = np.asarray(result["layers"])
        plot_token_groups(axes[0], layers, result["convergence"], style, suffix)
        plot_token_groups(axes[1], layers[1:], {name: np.degrees(values) for name, values in
                                                result["angular_speed"].items()}, style, suffix)
        axes[2].plot(layers, result["patch_coherence"], style, color="tab:blue", marker=".", label="states" + suffix)
        axes[2].plot(layers[1:], result["update_coherence"], style, color="tab:orange", marker=".",
                     label="updates Δ" + suffix)
    for index, (label, _) in enumerate(labelled.items()):
        for ax in axes:
            draw_phase_boundaries(ax, _boundaries_for(phase_boundaries, label), MODEL_STYLES[index % 4])
    axes[0].set_ylabel("γ_ℓ = ⟨x̂_ℓ, x̂_L⟩")
    axes[0].set_title("directional convergence")
    axes[1].set_ylabel("s_ℓ = ∠(x̂_ℓ, x̂_ℓ−1)  [degrees]")
    axes[1].set_title("angular speed")
    axes[2].set_ylabel("mean ⟨v̂_i, mean direction⟩")
    axes[2].set_title("patch coherence")
    return finish_figure(figure, axes, path, title)


def plot_class_basins(
        results: Mapping[str, Any],
        phase_boundaries: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        path: str | Path | None = None,
        title: str | None = None,
) -> Figure:
    """Within- and between-class cosine and nearest-class-mean accuracy of the global token vs depth."""
    labelled = as_labelled(results, "within")
    figure = Figure(figsize=(10, 4.2))
    axes = figure.subplots(1, 2)
    for (label, result), style in zip(labelled.items(), MODEL_STYLES):
        suffix = f" ({label})" if label else ""
        layers = np.asarray(result["layers"])
        axes[0].plot(layers, result["within"], style, color="tab:green", marker=".", label="own class" + suffix)
        axes[0].plot(layers, result["between"], style, color="tab:purple", marker=".", label="other classes" + suffix)
        axes[1].plot(layers, result["centroid_accuracy"], style, color="black", marker=".", label=label or None)
        draw_phase_boundaries(axes[0], _boundaries_for(phase_boundaries, label), style)
        draw_phase_boundaries(axes[1], _boundaries_for(phase_boundaries, label), style)
    token = next(iter(labelled.values()))["token"]
    axes[0].set_ylabel(f"cosine of the {token} to class mean directions")
    axes[0].set_title("class basins")
    axes[1].set_ylabel("nearest class-mean direction accuracy")
    axes[1].set_ylim(0, 1.02)
    axes[1].set_title("basin purity")
    return finish_figure(figure, axes, path, title)
