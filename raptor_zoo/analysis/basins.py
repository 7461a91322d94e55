"""Angular basins and self-correction: perturb the token states at one depth, continue the dynamics, and measure
the angle to the unperturbed trajectory layer by layer, per token type.

A ``continue_fn(state, start_layer)`` maps a state x_start ``[B, N, D]`` to the states of layers start..L
``[B, L − start + 1, N, D]`` (the given state first); :func:`continue_fn_for` builds one from a Teacher (its blocks)
or a Raptor (``forward_steps``). The dynamics are autonomous in the state, so a perturbation that is undone
(the angle shrinks with depth) means the trajectory is attracted back: an angular basin.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from ..plotting import GROUP_COLORS, annotate_cells, finish_figure
from .dynamics import draw_phase_boundaries
from .layout import TokenLayout, check_trajectory, unit

__all__ = [
    "ContinueFn", "PERTURBATIONS", "continue_fn_for", "perturb", "angle_to_reference", "self_correction",
    "basin_map", "default_start_layers", "plot_self_correction", "plot_basin_map",
]

ContinueFn = Callable[[torch.Tensor, int], torch.Tensor]
PERTURBATIONS = ("noise", "swap")


def continue_fn_for(model: Any) -> tuple[ContinueFn, int]:
    """``(continue_fn, depth L)`` for a Raptor (``forward_steps``), a Teacher or a timm ViT (``blocks``)."""
    if hasattr(model, "forward_steps") and hasattr(model, "depth"):
        depth = int(model.depth)

        def continue_raptor(state: torch.Tensor, start_layer: int) -> torch.Tensor:
            states = [state]
            for step in range(start_layer, depth):
                states.append(model.forward_steps(states[-1], step, step + 1))
            return torch.stack(states, dim=1)

        return continue_raptor, depth
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise TypeError(f"{type(model).__name__} has neither forward_steps (a Raptor) nor blocks (a Teacher or "
                        "timm ViT); pass a continue_fn(state, start_layer) instead.")
    depth = len(blocks)

    def continue_blocks(state: torch.Tensor, start_layer: int) -> torch.Tensor:
        states = [state]
        for block in list(blocks)[start_layer:]:
            states.append(block(states[-1]))
        return torch.stack(states, dim=1)

    return continue_blocks, depth


def perturb(
        state: torch.Tensor,
        scale: float,
        perturbation: str = "noise",
        generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A perturbed copy of a state ``[B, N, D]``.

    ``noise``: every token gets x + scale · ||x|| · ε/||ε||, ε Gaussian (relative norm ``scale``; the initial angle
    is about arctan(scale)). ``swap``: each token is, with probability ``scale``, replaced by the same-position token
    of the next image in the batch (images must differ; a full swap just continues the other image's trajectory).
    """
    if perturbation not in PERTURBATIONS:
        raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {perturbation!r}.")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}.")
    if perturbation == "noise":
        noise = torch.randn(state.shape, generator=generator, dtype=state.dtype).to(state.device)
        return state + scale * state.norm(dim=-1, keepdim=True) * unit(noise)
    if scale > 1:
        raise ValueError(f"scale is the fraction of swapped tokens for perturbation='swap'; got {scale} > 1.")
    if state.shape[0] < 2:
        raise ValueError("perturbation='swap' needs at least 2 images in the batch.")
    chosen = torch.rand(state.shape[:2], generator=generator).to(state.device) < scale
    return torch.where(chosen[..., None], state.roll(1, dims=0), state)


def angle_to_reference(states: torch.Tensor, reference: torch.Tensor, layout: TokenLayout) -> dict[str, np.ndarray]:
    """Mean angle (radians) between x̂ and the reference x̂ per layer, per token type: {type: [layers]}."""
    cosine = (unit(states.double()) * unit(reference.double())).sum(-1).clamp(-1.0, 1.0)
    angle = torch.arccos(cosine)  # [B, S, N]
    return {name: angle[:, :, index].mean(dim=(0, 2)).cpu().numpy()
            for name, index in layout.groups(states.shape[2]).items()}


def _check_start(start_layer: int, depth: int) -> int:
    if isinstance(start_layer, bool) or not isinstance(start_layer, (int, np.integer)):
        raise TypeError(f"start_layer must be an int, got {type(start_layer).__name__}.")
    if not 0 <= start_layer < depth:
        raise ValueError(f"start_layer={start_layer} is out of range; perturbations go at a layer in 0..{depth - 1} "
                         f"(there must be blocks left to run up to L={depth}).")
    return int(start_layer)


@torch.no_grad()
def self_correction(
        continue_fn: ContinueFn,
        trajectory: torch.Tensor,
        layout: TokenLayout,
        start_layer: int,
        scale: float = 0.1,
        perturbation: str = "noise",
        seed: int = 0,
) -> dict[str, Any]:
    """Perturb x_start of every image, continue to layer L, and return the angle to the clean run per layer.

    ``trajectory`` ``[B, L + 1, N, D]`` supplies the clean x_start; the clean continuation is recomputed by
    ``continue_fn`` in the same batch, so both runs share the numerics. Returns ``layers`` (start..L), ``angle``
    {type: [L − start + 1]} in radians, ``contraction`` {type: final angle / initial angle} (< 1: the trajectory
    bends back toward the clean one), and the settings.
    """
    trajectory = check_trajectory(trajectory, layout, double=False)  # continue_fn runs in the model's dtype
    depth = trajectory.shape[1] - 1
    start_layer = _check_start(start_layer, depth)
    generator = torch.Generator().manual_seed(seed)
    clean = trajectory[:, start_layer]
    perturbed = perturb(clean, scale, perturbation, generator)
    runs = continue_fn(torch.cat([clean, perturbed]), start_layer)
    expected = (2 * clean.shape[0], depth - start_layer + 1, *clean.shape[1:])
    if tuple(runs.shape) != expected:
        raise ValueError(f"continue_fn(state, {start_layer}) returned shape {tuple(runs.shape)}; expected {expected} "
                         f"(the states of layers {start_layer}..{depth}, the given state first).")
    clean_run, perturbed_run = runs.split(clean.shape[0])
    angle = angle_to_reference(perturbed_run, clean_run, layout)
    return {
        "start_layer": start_layer,
        "scale": float(scale),
        "perturbation": perturbation,
        "layers": np.arange(start_layer, depth + 1),
        "angle": angle,
        "contraction": {name: float(values[-1] / max(values[0], 1e-12)) for name, values in angle.items()},
    }


def default_start_layers(depth: int, count: int = 4) -> list[int]:
    """``count`` perturbation depths spread over 0..L−1 (always including 0 and L−1 when count > 1)."""
    return sorted({int(round(value)) for value in np.linspace(0, depth - 1, min(count, depth))})


def basin_map(
        continue_fn: ContinueFn,
        trajectory: torch.Tensor,
        layout: TokenLayout,
        start_layers: Sequence[int] | None = None,
        scales: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0),
        perturbation: str = "noise",
        seed: int = 0,
        progress: bool = True,
) -> dict[str, Any]:
    """:func:`self_correction` on a grid of perturbation depths × sizes.

    Returns ``start_layers``, ``scales``, ``initial_angle`` / ``final_angle`` / ``contraction`` {type: [S, C]}
    (radians; contraction = final / initial) and ``curves`` (the per-layer angles of every run, [S][C] {type: [...]}).
    """
    trajectory = check_trajectory(trajectory, layout, double=False)  # continue_fn runs in the model's dtype
    depth = trajectory.shape[1] - 1
    start_layers = default_start_layers(depth) if start_layers is None else [_check_start(s, depth) for s in start_layers]
    if not scales:
        raise ValueError("scales is empty; pass at least one perturbation size.")
    groups = list(layout.groups(trajectory.shape[2]))
    shape = (len(start_layers), len(scales))
    initial = {name: np.zeros(shape) for name in groups}
    final = {name: np.zeros(shape) for name in groups}
    curves: list[list[dict[str, np.ndarray]]] = [[{} for _ in scales] for _ in start_layers]
    grid = [(i, j) for i in range(len(start_layers)) for j in range(len(scales))]
    for i, j in tqdm(grid, desc=f"basin map ({perturbation})", unit="run", disable=not progress):
        run = self_correction(continue_fn, trajectory, layout, start_layers[i], scales[j], perturbation, seed + i)
        curves[i][j] = run["angle"]
        for name in groups:
            initial[name][i, j] = run["angle"][name][0]
            final[name][i, j] = run["angle"][name][-1]
    return {
        "start_layers": np.asarray(start_layers),
        "scales": np.asarray(scales, dtype=np.float64),
        "perturbation": perturbation,
        "depth": depth,
        "initial_angle": initial,
        "final_angle": final,
        "contraction": {name: final[name] / np.maximum(initial[name], 1e-12) for name in groups},
        "curves": curves,
    }


# ------------------------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------------------------

def plot_self_correction(
        result: Mapping[str, Any],
        scale_index: int | None = None,
        phase_boundaries: Sequence[int] | None = None,
        path: str | Path | None = None,
        title: str | None = None,
) -> Figure:
    """Angle to the clean trajectory vs layer, one panel per token type, one line per perturbation depth.

    ``result`` is a :func:`basin_map` result; ``scale_index`` picks the perturbation size (default: the middle one).
    """
    scales = np.asarray(result["scales"])
    scale_index = len(scales) // 2 if scale_index is None else scale_index
    groups = list(result["final_angle"])
    figure = Figure(figsize=(4.5 * len(groups), 4))
    axes = np.atleast_1d(figure.subplots(1, len(groups)))
    colors = [f"C{i}" for i in range(len(result["start_layers"]))]
    for ax, name in zip(axes, groups):
        for i, start in enumerate(result["start_layers"]):
            angles = np.degrees(result["curves"][i][scale_index][name])
            ax.plot(np.arange(start, start + len(angles)), angles, color=colors[i], marker=".",
                    label=f"perturbed at layer {start}")
        draw_phase_boundaries(ax, phase_boundaries)
        ax.set_title(f"{name}", color=GROUP_COLORS[name])
        ax.set_ylabel("angle to the clean trajectory [degrees]")
    return finish_figure(figure, axes, path, (title + ": " if title else "")
                         + f"self-correction, {result['perturbation']} perturbation of size {scales[scale_index]:g}")


def plot_basin_map(
        result: Mapping[str, Any],
        path: str | Path | None = None,
        title: str | None = None,
) -> Figure:
    """Heatmaps (depth × perturbation size) of the contraction final/initial angle per token type.

    Blue (< 1): the perturbation shrinks by layer L (inside the basin); red (> 1): it grows. Cells show the final
    angle in degrees.
    """
    groups = list(result["contraction"])
    figure = Figure(figsize=(4.3 * len(groups) + 0.8, 0.45 * len(result["start_layers"]) + 2.8))
    axes = np.atleast_1d(figure.subplots(1, len(groups)))
    ratios = np.concatenate([np.log2(np.maximum(result["contraction"][name], 1e-6)).ravel() for name in groups])
    bound = max(float(np.abs(ratios).max()), 1e-3)
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-bound, vmax=bound)
    image = None
    for ax, name in zip(axes, groups):
        log_ratio = np.log2(np.maximum(result["contraction"][name], 1e-6))
        image = ax.imshow(log_ratio, cmap="coolwarm", norm=norm, aspect="auto", interpolation="nearest")
        annotate_cells(ax, np.degrees(result["final_angle"][name]), "{:.1f}°")
        ax.set_xticks(range(len(result["scales"])), [f"{s:g}" for s in result["scales"]])
        ax.set_yticks(range(len(result["start_layers"])), [str(s) for s in result["start_layers"]])
        ax.set_xlabel("perturbation size" + (" (relative norm)" if result["perturbation"] == "noise" else
                                             " (fraction swapped)"))
        ax.set_ylabel("perturbed at layer")
        ax.set_title(name, color=GROUP_COLORS[name])
    colorbar = figure.colorbar(image, ax=list(axes), fraction=0.03, pad=0.02)
    colorbar.set_label("log2(final angle / initial angle)")
    figure.suptitle((title + ": " if title else "") + f"angular basin map (final angle at layer {result['depth']})")
    if path is not None:
        figure.savefig(path, dpi=110, bbox_inches="tight")
    return figure
