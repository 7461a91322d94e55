"""Run every analysis on one or more models (a teacher and its Raptor) and write JSON + PNG figures."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .basins import PERTURBATIONS, basin_map, continue_fn_for, plot_basin_map, plot_self_correction
from .dynamics import class_basins, plot_class_basins, plot_token_dynamics, token_dynamics
from .layout import TokenLayout, to_jsonable
from .phase_view import phase_view, plot_phase_view
from .ranks import plot_update_ranks, update_ranks

__all__ = ["AnalysisConfig", "model_trajectory", "analyze_trajectory", "analyze_models", "save_analysis"]


@dataclass
class AnalysisConfig:
    """Settings of :func:`analyze_models`.

    Attributes:
        start_layers: perturbation depths of the basin map (default: 4 spread over 0..L−1).
        scales: perturbation sizes (relative norm for ``noise``, fraction of tokens for ``swap``).
        perturbation: ``noise`` or ``swap``.
        k: phases for the phase view (default: the Raptor's number of unique blocks, else 2).
        metric: layer distance of the phase view (see :class:`raptor_zoo.phases.LayerDistanceAccumulator`).
        angular_updates: stable / effective rank of x̂_ℓ − x̂_ℓ−1 instead of x_ℓ − x_ℓ−1.
        seed: perturbation seed.
    """

    start_layers: Sequence[int] | None = None
    scales: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0)
    perturbation: str = "noise"
    k: int | None = None
    metric: str = "cls_patchmean"
    angular_updates: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.perturbation not in PERTURBATIONS:
            raise ValueError(f"perturbation must be one of {PERTURBATIONS}, got {self.perturbation!r}.")
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ValueError(f"scales must be a non-empty list of sizes > 0, got {list(self.scales)}.")
        if self.perturbation == "swap" and any(s > 1 for s in self.scales):
            raise ValueError(f"swap scales are fractions of tokens in (0, 1]; got {list(self.scales)}.")


def model_trajectory(model: Any, images: torch.Tensor) -> torch.Tensor:
    """States x_0..x_L ``[B, L + 1, N, D]`` of a Teacher (``trajectory``) or a Raptor (``forward_steps``)."""
    with torch.no_grad():
        if hasattr(model, "trajectory"):
            return model.trajectory(images)
        if hasattr(model, "forward_steps"):
            from ..distill.evaluate import raptor_trajectory

            return raptor_trajectory(model, images)
    raise TypeError(f"{type(model).__name__} is neither a Teacher (trajectory) nor a Raptor (forward_steps).")


def analyze_trajectory(
        trajectory: torch.Tensor,
        layout: TokenLayout,
        labels: Any | None = None,
        continue_fn: Any | None = None,
        config: AnalysisConfig | None = None,
        progress: bool = True,
) -> dict[str, Any]:
    """Token dynamics, update ranks, class basins (with ``labels``) and the basin map (with ``continue_fn``)."""
    config = config or AnalysisConfig()
    result: dict[str, Any] = {
        "token_dynamics": token_dynamics(trajectory, layout),
        "update_ranks": update_ranks(trajectory, layout, directions=config.angular_updates),
    }
    if labels is not None and len(np.unique(np.asarray(labels))) > 1:
        result["class_basins"] = class_basins(trajectory, labels, layout)
    if continue_fn is not None:
        result["basin_map"] = basin_map(continue_fn, trajectory, layout, config.start_layers, config.scales,
                                        config.perturbation, config.seed, progress)
    return result


def analyze_models(
        models: Mapping[str, Any],
        images: torch.Tensor,
        labels: Any | None = None,
        config: AnalysisConfig | None = None,
        progress: bool = True,
) -> dict[str, Any]:
    """Every analysis on every model of ``{label: Teacher or Raptor}`` (same token layout and depth), on ``images``.

    Returns ``{"models": {label: analyze_trajectory(...)}, "phase_view": ..., "phase_boundaries": {label: ...},
    "layout": ..., "num_images": B}``. Phase boundaries: a Raptor's are its schedule's, a teacher's its k-phase
    max-cut.
    """
    if not models:
        raise ValueError("models is empty; pass {label: Teacher or Raptor}.")
    config = config or AnalysisConfig()
    layouts = {label: TokenLayout.from_model(model) for label, model in models.items()}
    layout = next(iter(layouts.values()))
    if any(other != layout for other in layouts.values()):
        raise ValueError(f"The models have different token layouts {layouts}; analyse them separately.")
    schedule = next((tuple(m.phase_boundaries) for m in models.values() if hasattr(m, "forward_steps")), None)
    k = config.k or (len(schedule) - 1 if schedule else 2)
    trajectories = {label: model_trajectory(model, images) for label, model in models.items()}
    results: dict[str, Any] = {"models": {}, "layout": asdict(layout), "num_images": int(images.shape[0]),
                               "config": asdict(config)}
    for label, model in models.items():
        continue_fn, _ = continue_fn_for(model)
        results["models"][label] = analyze_trajectory(trajectories[label], layout, labels, continue_fn, config, progress)
    results["phase_view"] = phase_view(trajectories, layout, k=k, schedule_boundaries=schedule, metric=config.metric)
    results["phase_boundaries"] = {
        label: list(schedule) if hasattr(model, "forward_steps") else
        list(results["phase_view"]["models"][label]["phase_boundaries"])
        for label, model in models.items()}
    return results


def save_analysis(results: Mapping[str, Any], out_dir: str | Path, title: str | None = None) -> dict[str, Path]:
    """Write ``analysis.json`` and the figures of an :func:`analyze_models` result; return their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models = results["models"]
    boundaries = results.get("phase_boundaries")
    paths = {"json": out / "analysis.json"}
    paths["json"].write_text(json.dumps(to_jsonable(results), indent=1))
    prefix = f"{title}: " if title else ""
    paths["token_dynamics"] = out / "token_dynamics.png"
    plot_token_dynamics({label: r["token_dynamics"] for label, r in models.items()}, boundaries,
                        paths["token_dynamics"], title=prefix + "token dynamics")
    paths["update_ranks"] = out / "update_ranks.png"
    plot_update_ranks({label: r["update_ranks"] for label, r in models.items()}, boundaries,
                      paths["update_ranks"], title=prefix + "low-rank updates")
    with_classes = {label: r["class_basins"] for label, r in models.items() if "class_basins" in r}
    if with_classes:
        paths["class_basins"] = out / "class_basins.png"
        plot_class_basins(with_classes, boundaries, paths["class_basins"], title=prefix + "class basins")
    for label, result in models.items():
        if "basin_map" in result:
            own = boundaries.get(label) if boundaries else None
            paths[f"self_correction_{label}"] = out / f"self_correction_{label}.png"
            plot_self_correction(result["basin_map"], phase_boundaries=own, path=paths[f"self_correction_{label}"],
                                 title=prefix + label)
            paths[f"basin_map_{label}"] = out / f"basin_map_{label}.png"
            plot_basin_map(result["basin_map"], paths[f"basin_map_{label}"], title=prefix + label)
    if "phase_view" in results:
        paths["phase_view"] = out / "phase_view.png"
        plot_phase_view(results["phase_view"], paths["phase_view"], title=title)
    return paths
