"""Distillation schedules as a list of stages (docs/design.md §5, docs/method.md §4.2).

``two_stage`` (the paper's): stage 1 trains each phase block alone on its segment with the TF→AR anneal
(plain MSE, the last phase cls-weighted .34/.33/.33), stage 2 chains all k blocks from ``t_0`` through all L
steps, autoregressively, weighted .45/.10/.45. ``joint``: a single joint stage with the TF→AR anneal (useful on
small budgets). Every stage has its own step budget, optimiser and learning-rate schedule.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from .losses import PAPER_JOINT_TOKEN_WEIGHTS, PAPER_PHASE_TOKEN_WEIGHTS, resolve_token_weights
from .task import OBJECTIVES

__all__ = ["SCHEDULES", "StageSpec", "stage_plan", "parse_phase_index"]

Schedule = Literal["two_stage", "joint"]
SCHEDULES = ("two_stage", "joint")


@dataclass(frozen=True)
class StageSpec:
    """One stage of a distillation run: what trains, on which objective and loss, for how many steps."""
    name: str
    stage: Literal["phase", "joint"]
    phase_index: int | None
    objective: Literal["tf_ar", "ar", "tf"]
    token_weights: tuple[float, float, float] | None
    max_steps: int

    def task_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of TrajectoryDistillationTask for this stage."""
        return dict(stage=self.stage, phase_index=self.phase_index, objective=self.objective,
                    token_weights=self.token_weights, max_steps=self.max_steps)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["token_weights"] = list(self.token_weights) if self.token_weights is not None else None
        return data


def parse_phase_index(phase_index: str | int | None, k: int) -> int | None:
    """``'all'``/None -> None (every phase, one after the other), else a 0-based phase index < k."""
    if phase_index is None or str(phase_index).lower() == "all":
        return None
    try:
        index = int(phase_index)
    except ValueError:
        raise ValueError(f"phase_index must be 'all' or an int in 0..{k - 1}, got {phase_index!r}.") from None
    if not 0 <= index < k:
        raise ValueError(f"phase_index {index} is out of range for k={k} phases; use 'all' or 0..{k - 1}.")
    return index


def _weights(value: Sequence[float] | None) -> tuple[float, float, float] | None:
    if value is None:
        return None
    resolve_token_weights(value)
    return tuple(float(v) for v in value)


def stage_plan(
        schedule: Schedule,
        k: int,
        max_steps: int,
        phase_index: str | int | None = "all",
        phase_max_steps: int | None = None,
        phase_objective: str = "tf_ar",
        joint_objective: str | None = None,
        phase_token_weights: Sequence[float] | None = None,
        last_phase_token_weights: Sequence[float] | None = PAPER_PHASE_TOKEN_WEIGHTS,
        joint_token_weights: Sequence[float] | None = PAPER_JOINT_TOKEN_WEIGHTS,
) -> list[StageSpec]:
    """The stages of a run, in order.

    ``two_stage``: one ``phase_j`` stage per phase (or only ``phase_index``; the joint stage then needs every
    block and is left to a later run), each of ``phase_max_steps`` (default ``max_steps``), then ``joint`` of
    ``max_steps``. ``joint``: one joint stage. ``joint_objective`` defaults to 'ar' in the two-stage schedule
    (the paper's stage 2) and to 'tf_ar' in the single-stage one. Token weights (w_cls, w_reg, w_patch), None
    for plain MSE: ``phase_token_weights`` for phases before the last, ``last_phase_token_weights`` for the last.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}.")
    for name, objective in (("phase_objective", phase_objective), ("joint_objective", joint_objective)):
        if objective is not None and objective not in OBJECTIVES:
            raise ValueError(f"{name} must be one of {OBJECTIVES}, got {objective!r}.")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    for name, steps in (("max_steps", max_steps), ("phase_max_steps", phase_max_steps)):
        if steps is not None and steps < 1:
            raise ValueError(f"{name} must be >= 1, got {steps}.")
    joint_weights = _weights(joint_token_weights)
    if schedule == "joint":
        if phase_index is not None and str(phase_index).lower() != "all":
            raise ValueError(f"phase_index={phase_index!r} applies to schedule='two_stage' only; use 'all'.")
        return [StageSpec("joint", "joint", None, joint_objective or "tf_ar", joint_weights, max_steps)]
    only = parse_phase_index(phase_index, k)
    phases = range(k) if only is None else [only]
    stages = [
        StageSpec(
            f"phase_{j}", "phase", j, phase_objective,
            _weights(last_phase_token_weights if j == k - 1 else phase_token_weights),
            phase_max_steps or max_steps)
        for j in phases
    ]
    if only is None:
        stages.append(StageSpec("joint", "joint", None, joint_objective or "ar", joint_weights, max_steps))
    return stages

