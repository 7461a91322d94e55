"""Trajectory distillation as a module, in the shape of timm's ``timm/task`` API (docs/design.md §5).

:class:`TrajectoryDistillationTask` holds the student Raptor (trained) and the frozen teacher beside it;
``forward(images, step)`` returns a dict with ``loss`` plus its parts, so one training loop (the recipe, the
benchmarks, the demo) drives every stage:

* ``stage="phase"``: one phase block alone on its segment ``[b_{j-1}, b_j]`` (paper stage 1);
* ``stage="joint"``: all k blocks chained from ``t_0`` through all L steps (paper stage 2).

and every objective: teacher forcing (TF, each step fed the teacher's state), autoregressive rollout (AR, each
step fed the student's own previous output, full backprop), or the paper's mix ``λ·TF + (1 − λ)·AR`` with λ
annealed from 1 to ``tf_min`` over the first ``tf_anneal_ratio`` of training. A term whose weight is 0 is not
computed. The teacher trajectory is computed once per batch, under ``torch.no_grad()``, and shared by both terms.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, Literal

import torch
import torch.nn as nn

from ..models.families import EMBEDDING_PARAMETER_PREFIXES, HEAD_PARAMETER_PREFIXES
from .losses import (
    DISTANCES,
    Distance,
    TokenWeights,
    resolve_token_weights,
    teacher_forcing_weight,
    trajectory_distance,
)

__all__ = [
    "STAGES",
    "OBJECTIVES",
    "TEACHER_PRECISIONS",
    "EMBEDDING_PARAMETER_PREFIXES",
    "HEAD_PARAMETER_PREFIXES",
    "freeze_for_distillation",
    "TrajectoryDistillationTask",
]

_logger = logging.getLogger(__name__)

Stage = Literal["phase", "joint"]
Objective = Literal["tf_ar", "ar", "tf"]
TeacherPrecision = Literal["fp32", "bf16"]
STAGES = ("phase", "joint")
OBJECTIVES = ("tf_ar", "ar", "tf")
TEACHER_PRECISIONS = ("fp32", "bf16")



def _block_index(name: str, step_block_indices: tuple[int, ...] = ()) -> int | None:
    """The unique block a parameter belongs to: ``blocks.{j}.*``, or ``relax.{step}.*`` (that step's block)."""
    if name.startswith("blocks."):
        return int(name.split(".", 2)[1])
    if name.startswith("relax.") and step_block_indices:
        return step_block_indices[int(name.split(".", 2)[1])]
    return None


def freeze_for_distillation(
        student: nn.Module,
        trainable_blocks: Iterable[int] | None = None,
        train_embedding: bool = False,
        train_head: bool = False,
        train_adapters_only: bool = False,
) -> list[str]:
    """Set ``requires_grad`` for distillation; returns the names of the trainable parameters.

    The embedding (patch_embed, cls/register tokens, pos_embed, norm_pre) and the final norm + head are frozen
    unless asked; of the unique blocks only ``trainable_blocks`` (default all) train, so DDP sees no unused
    parameters. A relaxed Raptor's per-step adapters (``relax.{step}``) train with their step's block; with
    ``train_adapters_only`` they are all that trains (the shared blocks of a trained pure Raptor stay fixed).
    Other student parameters (not in a block) train only when every block does.
    """
    num_blocks = student.num_unique_blocks
    trainable = set(range(num_blocks)) if trainable_blocks is None else {int(j) for j in trainable_blocks}
    bad = sorted(j for j in trainable if not 0 <= j < num_blocks)
    if bad:
        raise ValueError(f"trainable_blocks {bad} out of range: the student has {num_blocks} blocks (0..{num_blocks - 1}).")
    if train_adapters_only and getattr(student, "relax", None) is None:
        raise ValueError("train_adapters_only needs a relaxed Raptor (relax_rank > 0); this student has no adapters. "
                         "Set --relax-rank (e.g. 4) or drop --train-adapters-only.")
    step_block_indices = tuple(getattr(student, "step_block_indices", ()))
    names = []
    for name, param in student.named_parameters():
        index = _block_index(name, step_block_indices)
        if train_adapters_only:
            requires_grad = name.startswith("relax.") and index in trainable
        elif index is not None:
            requires_grad = index in trainable
        elif name.startswith(EMBEDDING_PARAMETER_PREFIXES):
            requires_grad = train_embedding
        elif name.startswith(HEAD_PARAMETER_PREFIXES):
            requires_grad = train_head
        else:
            requires_grad = len(trainable) == num_blocks
        param.requires_grad_(requires_grad)
        if requires_grad:
            names.append(name)
    return names


class TrajectoryDistillationTask(nn.Module):
    """Distil a teacher ViT's trajectory into a Raptor: ``forward(images, step) -> dict``.

    Returned keys: ``loss`` (the scalar to backpropagate), ``tf_loss`` and ``ar_loss`` (None when not computed:
    a term whose weight is 0 is skipped), ``tf_weight`` (λ, a float) and ``output`` (the student's states of the
    segment, ``[B, T, N, D]``: the AR rollout, or the teacher-forced predictions when AR is not computed).

    The teacher is a submodule (it moves with ``.to()``) but stays frozen, in eval mode, and out of
    ``state_dict()``, so checkpoints hold the student only. Wrap the whole task with ``accelerator.prepare``:
    DDP syncs only the trainable student parameters.
    """

    def __init__(
            self,
            student: nn.Module,
            teacher: nn.Module,
            *,
            stage: Stage = "joint",
            phase_index: int | None = None,
            objective: Objective = "tf_ar",
            max_steps: int | None = None,
            tf_anneal_ratio: float = 0.25,
            tf_min: float = 0.0,
            distance: Distance = "mse",
            token_weights: TokenWeights | None = None,
            last_layers_weight: float = 1.0,
            last_layers: int = 1,
            input_noise_std: float = 0.0,
            teacher_precision: TeacherPrecision = "fp32",
            freeze: bool = True,
            train_adapters_only: bool = False,
    ) -> None:
        """
        Args:
            student: a Raptor of any family (``blocks``, ``block_schedule``, ``phase_boundaries``,
                ``step_block_indices``, ``step_drop_path``) whose depth equals the teacher's.
            teacher: a raptor_zoo Teacher (``trajectory``, ``depth``, token layout attributes).
            stage: 'phase' (block ``phase_index`` alone on its segment) or 'joint' (all blocks, layers 0..L).
            phase_index: the phase block to train when stage='phase' (0-based).
            objective: 'tf_ar' (λ·TF + (1 − λ)·AR, λ annealed), 'ar' (λ = 0) or 'tf' (λ = 1).
            max_steps: steps of this stage; needed by 'tf_ar' to anneal λ.
            tf_anneal_ratio: fraction of max_steps over which λ falls from 1 to tf_min (paper: 0.25).
            tf_min: floor of λ (paper: 0).
            distance: 'mse' or 'cosine' (1 − cosine per token).
            token_weights: (w_cls, w_reg, w_patch) group weights, None for a plain mean over tokens.
            last_layers_weight: weight of the model's last ``last_layers`` layers (the ones a probe or head reads)
                against 1 for every other layer of the segment; the loss is the weighted mean over its layers.
            last_layers: how many of the last layers ``last_layers_weight`` applies to.
            input_noise_std: σ of Gaussian noise added to every block input while training (paper: 0).
            teacher_precision: 'fp32' targets (autocast disabled for the teacher) or 'bf16' (teacher under
                bf16 autocast, targets cast back to fp32).
            freeze: apply :func:`freeze_for_distillation` (embedding, head and untrained blocks frozen).
            train_adapters_only: with ``freeze``, train only a relaxed Raptor's per-step adapters.
        """
        super().__init__()
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}.")
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}.")
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")
        if teacher_precision not in TEACHER_PRECISIONS:
            raise ValueError(f"teacher_precision must be one of {TEACHER_PRECISIONS}, got {teacher_precision!r}.")
        for attribute in ("blocks", "block_schedule", "phase_boundaries", "step_block_indices", "depth"):
            if not hasattr(student, attribute):
                raise TypeError(
                    f"student {type(student).__name__} has no {attribute!r}; pass a Raptor "
                    "(e.g. raptor_zoo.from_teacher(teacher, k=2)).")
        for attribute in ("trajectory", "depth", "num_prefix_tokens", "num_reg_tokens", "has_class_token"):
            if not hasattr(teacher, attribute):
                raise TypeError(
                    f"teacher {type(teacher).__name__} has no {attribute!r}; pass a raptor_zoo Teacher "
                    "(raptor_zoo.teachers.load_teacher(...)).")
        if student.depth != teacher.depth:
            raise ValueError(
                f"The student runs {student.depth} steps (block_schedule {tuple(student.block_schedule)}) but the "
                f"teacher has depth {teacher.depth}; the schedule must sum to the teacher depth.")
        num_blocks = student.num_unique_blocks
        if stage == "phase":
            if phase_index is None or not 0 <= int(phase_index) < num_blocks:
                raise ValueError(
                    f"stage='phase' needs phase_index in 0..{num_blocks - 1} (the student has {num_blocks} phases), "
                    f"got {phase_index!r}.")
            phase_index = int(phase_index)
        elif phase_index is not None:
            raise ValueError(f"phase_index applies to stage='phase' only; got phase_index={phase_index} with stage='joint'.")
        if objective == "tf_ar" and (max_steps is None or max_steps < 1):
            raise ValueError(f"objective='tf_ar' anneals over the stage's steps: pass max_steps >= 1, got {max_steps!r}.")
        if input_noise_std < 0:
            raise ValueError(f"input_noise_std must be >= 0, got {input_noise_std}.")
        if last_layers_weight <= 0 or not 1 <= last_layers <= student.depth:
            raise ValueError(f"last_layers_weight must be > 0 and last_layers in 1..{student.depth}; got "
                             f"{last_layers_weight} and {last_layers}.")
        # validates the schedule's arguments once, up front
        teacher_forcing_weight(0, max_steps or 1, tf_anneal_ratio, tf_min)

        self.student = student
        self.teacher = teacher
        self.stage = stage
        self.phase_index = phase_index
        self.objective = objective
        self.max_steps = max_steps
        self.tf_anneal_ratio = tf_anneal_ratio
        self.tf_min = tf_min
        self.distance = distance
        self.token_weights = resolve_token_weights(token_weights)
        self.input_noise_std = input_noise_std
        self.teacher_precision = teacher_precision
        boundaries = tuple(student.phase_boundaries)
        if stage == "phase":
            self.segment = (boundaries[phase_index], boundaries[phase_index + 1])
            self.trainable_blocks = (phase_index,)
        else:
            self.segment = (0, student.depth)
            self.trainable_blocks = tuple(range(num_blocks))
        # per produced layer of the segment (layers start+1..stop); None = every layer alike
        produced = range(self.segment[0] + 1, self.segment[1] + 1)
        weights = [last_layers_weight if layer > student.depth - last_layers else 1.0 for layer in produced]
        self.layer_weights = weights if len(set(weights)) > 1 else None
        if freeze:
            freeze_for_distillation(student, self.trainable_blocks, train_adapters_only=train_adapters_only)
        self.teacher.requires_grad_(False).eval()
        self.register_load_state_dict_post_hook(_ignore_missing_teacher_keys)
        _logger.info(
            "TrajectoryDistillationTask: stage=%s segment=%s objective=%s distance=%s token_weights=%s",
            stage, self.segment, objective, distance, self.token_weights)

    # ------------------------------------------------------------------ state: the student only

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        """The task's state without the frozen teacher's weights (they come from the teacher's own source)."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        for key in [key for key in state if key.startswith(f"{prefix}teacher.")]:
            del state[key]
        return state

    def train(self, mode: bool = True) -> TrajectoryDistillationTask:
        super().train(mode)
        self.teacher.eval()
        return self

    def get_eval_model(self) -> nn.Module:
        """The student, as timm tasks expose their evaluation model."""
        return self.student

    # ------------------------------------------------------------------ pieces

    def tf_weight(self, step: int) -> float:
        """λ at ``step`` (stage-local optimiser step)."""
        if self.objective == "tf":
            return 1.0
        if self.objective == "ar":
            return 0.0
        return teacher_forcing_weight(step, self.max_steps, self.tf_anneal_ratio, self.tf_min)

    def teacher_targets(self, images: torch.Tensor) -> torch.Tensor:
        """Teacher states ``t_start..t_stop`` of the segment, ``[B, T + 1, N, D]`` in float32, without gradients."""
        start, stop = self.segment
        device_type = images.device.type
        if self.teacher_precision == "bf16":
            precision = torch.autocast(device_type=device_type, dtype=torch.bfloat16)
        else:
            precision = torch.autocast(device_type=device_type, enabled=False)
        with torch.no_grad(), precision:
            states = self.teacher.trajectory(images, layers=list(range(start, stop + 1)))
        return states.float()

    def _step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """One student block application: unrolled step ``step`` (0-based) producing layer t = step + 1.

        Goes through the model's own step loop, so drop path, checkpointing and per-step adapters apply as in
        inference.
        """
        if self.training and self.input_noise_std > 0:
            x = x + self.input_noise_std * torch.randn_like(x)
        return self.student.forward_steps(x, step, step + 1)

    def teacher_forced_states(self, targets: torch.Tensor) -> torch.Tensor:
        """TF predictions ``x̂_l = R_phase(l)(t_{l-1}, l)`` for every layer of the segment, ``[B, T, N, D]``."""
        start, stop = self.segment
        return torch.stack([self._step(targets[:, step - start], step) for step in range(start, stop)], dim=1)

    def rollout(self, x_start: torch.Tensor) -> torch.Tensor:
        """AR states from ``x_start`` through the segment (full backprop), ``[B, T, N, D]``."""
        start, stop = self.segment
        states = []
        x = x_start
        for step in range(start, stop):
            x = self._step(x, step)
            states.append(x)
        return torch.stack(states, dim=1)

    def trajectory_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The configured distance between predicted and teacher states ``[B, T, N, D]`` of the segment's layers."""
        teacher = self.teacher
        layout = dict(num_prefix_tokens=teacher.num_prefix_tokens, num_reg_tokens=teacher.num_reg_tokens,
                      has_class_token=teacher.has_class_token)
        if self.layer_weights is None:
            return trajectory_distance(pred, target, self.distance, self.token_weights, **layout)
        per_layer = torch.stack([trajectory_distance(pred[:, t], target[:, t], self.distance, self.token_weights,
                                                     **layout) for t in range(pred.shape[1])])
        weights = per_layer.new_tensor(self.layer_weights)
        return (weights * per_layer).sum() / weights.sum()

    # ------------------------------------------------------------------ forward

    def forward(self, images: torch.Tensor | None = None, step: int = 0,
                trajectory: torch.Tensor | None = None) -> dict[str, Any]:
        """Loss of one batch at stage-local optimiser ``step`` (it sets λ).

        ``trajectory`` (the teacher's states ``[B, L + 1, N, D]`` of the batch, e.g. from a
        :class:`~raptor_zoo.distill.trajectory_cache.TrajectoryCache`) replaces the teacher's forward on ``images``.
        """
        if (images is None) == (trajectory is None):
            raise ValueError("Pass the batch's images or its cached teacher trajectory, not both and not neither.")
        if trajectory is None:
            targets = self.teacher_targets(images)
        else:
            start, stop = self.segment
            targets = trajectory[:, start:stop + 1].float()
        tf_weight = self.tf_weight(step)
        loss = targets.new_zeros(())
        tf_loss = ar_loss = output = None
        if tf_weight > 0:
            tf_states = self.teacher_forced_states(targets)
            tf_loss = self.trajectory_loss(tf_states, targets[:, 1:])
            loss = loss + tf_weight * tf_loss
            output = tf_states
        if tf_weight < 1:
            ar_states = self.rollout(targets[:, 0])
            ar_loss = self.trajectory_loss(ar_states, targets[:, 1:])
            loss = loss + (1.0 - tf_weight) * ar_loss
            output = ar_states
        return {"loss": loss, "tf_loss": tf_loss, "ar_loss": ar_loss, "tf_weight": tf_weight, "output": output}

    def extra_repr(self) -> str:
        return (f"stage={self.stage!r}, segment={self.segment}, objective={self.objective!r}, "
                f"distance={self.distance!r}, token_weights={self.token_weights}, layer_weights={self.layer_weights}")


def _ignore_missing_teacher_keys(module: nn.Module, incompatible_keys: Any) -> None:
    """Teacher weights are not part of the task's state: loading it strictly must not ask for them."""
    missing = incompatible_keys.missing_keys
    missing[:] = [key for key in missing if not (key.startswith("teacher.") or ".teacher." in key)]

