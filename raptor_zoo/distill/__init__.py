"""Trajectory distillation of a teacher ViT into a Raptor: losses, the distillation task, fidelity evaluation.

The loops live here so the recipe (recipes/distill.py), the benchmarks and the demo share them:

* :func:`trajectory_distance`, :func:`teacher_forcing_weight` - the objective's pieces (docs/design.md §5);
* :class:`TrajectoryDistillationTask` - ``forward(images, step) -> {'loss', 'tf_loss', 'ar_loss', 'tf_weight',
  'output'}`` for stage 'phase' (one block on its segment) or 'joint' (all blocks through all L steps);
* :func:`stage_plan` - the paper's two-stage schedule or a single joint stage, as a list of :class:`StageSpec`;
* :func:`freeze_for_distillation` - embedding, head and untrained blocks frozen;
* :func:`evaluate_fidelity` / :func:`plot_fidelity` - per-layer cosine and R², accuracy recovery.
"""
from .evaluate import evaluate_fidelity, fidelity_summary, paper_r2, plot_fidelity, raptor_trajectory
from .losses import (
    DISTANCES,
    PAPER_JOINT_TOKEN_WEIGHTS,
    PAPER_PHASE_TOKEN_WEIGHTS,
    TOKEN_GROUPS,
    resolve_token_weights,
    teacher_forcing_weight,
    token_distance,
    token_group_slices,
    trajectory_distance,
)
from .stages import SCHEDULES, StageSpec, parse_phase_index, stage_plan
from .task import (
    EMBEDDING_PARAMETER_PREFIXES,
    HEAD_PARAMETER_PREFIXES,
    OBJECTIVES,
    STAGES,
    TEACHER_PRECISIONS,
    TrajectoryDistillationTask,
    freeze_for_distillation,
)

__all__ = [
    "DISTANCES",
    "EMBEDDING_PARAMETER_PREFIXES",
    "HEAD_PARAMETER_PREFIXES",
    "OBJECTIVES",
    "PAPER_JOINT_TOKEN_WEIGHTS",
    "PAPER_PHASE_TOKEN_WEIGHTS",
    "SCHEDULES",
    "STAGES",
    "StageSpec",
    "TEACHER_PRECISIONS",
    "TOKEN_GROUPS",
    "TrajectoryDistillationTask",
    "evaluate_fidelity",
    "fidelity_summary",
    "parse_phase_index",
    "freeze_for_distillation",
    "paper_r2",
    "plot_fidelity",
    "raptor_trajectory",
    "resolve_token_weights",
    "stage_plan",
    "teacher_forcing_weight",
    "token_distance",
    "token_group_slices",
    "trajectory_distance",
]
