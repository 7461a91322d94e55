"""Dynamical interpretability of ViT trajectories (depth as time), for any teacher and any Raptor.

Every measure is a function of a trajectory ``[B, L + 1, N, D]`` and a :class:`TokenLayout`:
directional convergence, angular speed and patch coherence per token type (:mod:`.dynamics`), class basins,
stable / effective rank of the per-layer updates (:mod:`.ranks`), perturbation self-correction and basin maps
(:mod:`.basins`), and the layer-distance phase view (:mod:`.phase_view`). :func:`analyze_models` runs them all
and :func:`save_analysis` writes JSON + PNGs; ``raptor-zoo analyze`` is the command line.
"""
from .basins import (
    PERTURBATIONS,
    ContinueFn,
    angle_to_reference,
    basin_map,
    continue_fn_for,
    default_start_layers,
    perturb,
    plot_basin_map,
    plot_self_correction,
    self_correction,
)
from .dynamics import (
    angular_speed,
    class_basins,
    directional_convergence,
    patch_coherence,
    plot_class_basins,
    plot_token_dynamics,
    token_dynamics,
    update_coherence,
)
from .layout import TOKEN_GROUPS, TokenLayout, to_jsonable, unit
from .phase_view import layer_distances, phase_view, plot_phase_view
from .ranks import effective_rank, plot_update_ranks, stable_rank, update_ranks
from .report import AnalysisConfig, analyze_models, analyze_trajectory, model_trajectory, save_analysis

__all__ = [
    "TokenLayout", "TOKEN_GROUPS", "unit", "to_jsonable",
    "directional_convergence", "angular_speed", "patch_coherence", "update_coherence", "token_dynamics",
    "class_basins", "plot_token_dynamics", "plot_class_basins",
    "stable_rank", "effective_rank", "update_ranks", "plot_update_ranks",
    "ContinueFn", "PERTURBATIONS", "continue_fn_for", "perturb", "angle_to_reference", "self_correction",
    "basin_map", "default_start_layers", "plot_self_correction", "plot_basin_map",
    "layer_distances", "phase_view", "plot_phase_view",
    "AnalysisConfig", "model_trajectory", "analyze_trajectory", "analyze_models", "save_analysis",
]
