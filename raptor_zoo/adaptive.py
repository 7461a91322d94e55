"""Adaptive depth: per-image early exit on a model's step loop (Raptor schedule or teacher blocks).

A Raptor applies its k blocks L times; a teacher applies L blocks. Both can stop early: after each step the
final norm and head read the current state (as anytime inference does, ``num_steps=m``), a cheap criterion
scores every image, and an image whose score is below ``threshold`` *leaves the batch*: its logits are kept,
the remaining images carry on with a smaller batch, so the compute really shrinks. The outputs rejoin in the
input order.

One halting loop, :func:`adaptive_forward`, runs every model through a :class:`DepthStepper`:

* :class:`RecurrentStepper` wraps any model with the recurrent interface :class:`RecurrentModel`
  (``_embed``, ``forward_steps(x, start, stop)``, ``norm``, ``forward_head``, ``depth``, ``block_schedule``,
  ``phase_boundaries``), which the Raptor offers;
* :class:`TeacherStepper` wraps a :class:`~raptor_zoo.teachers.Teacher` (or a plain timm ViT): embed, block l,
  final norm + head.

Criteria (score per image; the image exits when ``score < threshold``, so ``threshold=0`` never exits):

* ``'confidence'``: 1 - max softmax probability of the head at this step (default);
* ``'prob_change'``: total-variation distance between this step's and the previous step's softmax;
* ``'feature_change'``: ||f_t - f_{t-1}|| / ||f_t|| of the pooled pre-logit features f.

No image exits before ``min_steps`` (default: the end of the Raptor's first phase, ``phase_boundaries[1]``;
a teacher takes ``phase_boundaries`` or ``min_steps`` explicitly) and none runs past ``max_steps``
(default L; ``threshold=0, max_steps=m`` is fixed-depth anytime inference).

``torch.compile``: compile the blocks, not the loop (``for block in model.blocks: block.compile(dynamic=True)``).
The loop's early exits are data-dependent and each exit changes the batch size, so a compiled block sees many
batch sizes; ``dynamic=True`` compiles one shape-generic graph per block instead of recompiling per batch size
(without it dynamo specialises on the first size and recompiles once into a dynamic graph when the size changes).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import nn

__all__ = [
    "CRITERIA",
    "DEFAULT_CRITERION",
    "RecurrentModel",
    "DepthStepper",
    "RecurrentStepper",
    "TeacherStepper",
    "AdaptiveOutput",
    "as_stepper",
    "adaptive_forward",
    "halting_scores",
    "exit_steps_for",
    "calibrate_threshold",
]

DEFAULT_CRITERION = "confidence"


@runtime_checkable
class RecurrentModel(Protocol):
    """What a model offers to get per-image halting: the Raptor's recurrent step interface."""

    depth: int
    block_schedule: Sequence[int]
    norm: nn.Module

    @property
    def phase_boundaries(self) -> Sequence[int]:
        """Cumulative phase ends (0, b_1, ..., L)."""

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> token state x_0."""

    def forward_steps(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run steps start..stop-1 (0-based) on state x_start."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Normed tokens -> logits (or pooled pre-logit features)."""


@runtime_checkable
class DepthStepper(Protocol):
    """One model seen as embed -> step 0..L-1 -> finish; what :func:`adaptive_forward` runs."""

    depth: int
    phase_boundaries: Sequence[int] | None

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised images [B, C, H, W] -> token state x_0."""

    def step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        """Apply step ``step`` (0-based) to state x_step, giving x_{step+1}."""

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """Token state -> logits: final norm, pooling, head."""

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Token state -> pooled pre-logit features: final norm, pooling."""


class RecurrentStepper:
    """A :class:`DepthStepper` over any :class:`RecurrentModel` (the Raptor)."""

    def __init__(self, model: RecurrentModel) -> None:
        self.model = model
        self.depth = int(model.depth)
        self.phase_boundaries: Sequence[int] | None = tuple(model.phase_boundaries)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.model._embed(images)

    def step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return self.model.forward_steps(x, step, step + 1)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self._features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self._features(x), pre_logits=True)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        finish = getattr(self.model, "finish", None)  # a family's final norm, class attention or neck
        return finish(x) if finish is not None else self.model.norm(x)


class TeacherStepper:
    """A :class:`DepthStepper` over a :class:`~raptor_zoo.teachers.Teacher`: embed, block l, final norm + head.

    A teacher has no phases of its own; pass ``phase_boundaries`` (e.g. the distilled Raptor's, or
    ``raptor_zoo.phases.discover(...).phase_boundaries``) to give it the Raptor's default minimum depth.
    """

    def __init__(self, teacher: nn.Module, phase_boundaries: Sequence[int] | None = None) -> None:
        from .teachers import Teacher

        self.teacher = teacher if isinstance(teacher, Teacher) else Teacher(teacher)
        if not self.teacher.family.state_only_blocks:
            raise NotImplementedError(
                f"adaptive depth steps a teacher block by block with the state alone; a {self.teacher.family.name} "
                "teacher's blocks also take per-step arguments (RoPE, relative-position bias, grid), which the "
                "teacher stepper does not pass yet. Its Raptor steps fine: pass the Raptor.")
        self.depth = self.teacher.depth
        if phase_boundaries is not None:
            phase_boundaries = tuple(int(b) for b in phase_boundaries)
            if (len(phase_boundaries) < 2 or phase_boundaries[0] != 0 or phase_boundaries[-1] != self.depth
                    or any(a >= b for a, b in zip(phase_boundaries, phase_boundaries[1:]))):
                raise ValueError(
                    f"phase_boundaries must rise strictly from 0 to the teacher depth {self.depth} "
                    f"(e.g. (0, {self.depth // 2}, {self.depth})); got {phase_boundaries}.")
        self.phase_boundaries = phase_boundaries

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher.embed(images)

    def step(self, x: torch.Tensor, step: int) -> torch.Tensor:
        return self.teacher.blocks[step](x)

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.forward_head_from_state(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher.model.forward_head(self.teacher.finish(x), pre_logits=True)


def as_stepper(model: nn.Module | DepthStepper, phase_boundaries: Sequence[int] | None = None
               ) -> DepthStepper:
    """The :class:`DepthStepper` of ``model``: a stepper as is, a Raptor-like model, a Teacher or a timm ViT."""
    from timm.models.vision_transformer import VisionTransformer

    from .teachers import Teacher

    if isinstance(model, DepthStepper):
        stepper = model
    elif isinstance(model, RecurrentModel):
        stepper = RecurrentStepper(model)
    elif isinstance(model, (Teacher, VisionTransformer)):
        return TeacherStepper(model, phase_boundaries)
    else:
        raise TypeError(
            f"adaptive depth needs a DepthStepper (embed, step, finish, features, depth), a model with the recurrent "
            f"interface (_embed, forward_steps, norm, forward_head, depth, block_schedule, phase_boundaries), a "
            f"raptor_zoo Teacher or a timm VisionTransformer; got {type(model).__module__}.{type(model).__name__}.")
    if phase_boundaries is not None:
        raise ValueError("phase_boundaries is only taken for a teacher; this model has its own.")
    return stepper


# ---------------------------------------------------------------------------------------------- criteria

def _confidence(logits: torch.Tensor, features: torch.Tensor | None, previous: torch.Tensor | None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
    return 1.0 - logits.float().softmax(-1).amax(-1), None


def _prob_change(logits: torch.Tensor, features: torch.Tensor | None, previous: torch.Tensor | None
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    probs = logits.float().softmax(-1)
    if previous is None:
        return torch.full(probs.shape[:1], math.inf, device=probs.device), probs
    return 0.5 * (probs - previous).abs().sum(-1), probs


def _feature_change(logits: torch.Tensor, features: torch.Tensor | None, previous: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    features = features.float()
    if previous is None:
        return torch.full(features.shape[:1], math.inf, device=features.device), features
    change = torch.linalg.vector_norm(features - previous, dim=-1)
    return change / torch.linalg.vector_norm(features, dim=-1).clamp_min(1e-12), features


@dataclass(frozen=True)
class _Criterion:
    """Score function ``(logits, features, previous) -> (score per image, state carried to the next step)``."""
    score: Callable[..., tuple[torch.Tensor, torch.Tensor | None]]
    needs_logits: bool
    needs_previous: bool
    description: str


CRITERIA: dict[str, _Criterion] = {
    "confidence": _Criterion(_confidence, True, False, "1 - max softmax probability of the head"),
    "prob_change": _Criterion(_prob_change, True, True, "total-variation distance between consecutive softmaxes"),
    "feature_change": _Criterion(
        _feature_change, False, True, "relative L2 change of the pooled pre-logit features between steps"),
}
"""Halting criteria by name: each scores images (>= 0, lower = more settled); an image exits when score < threshold."""


# ---------------------------------------------------------------------------------------------- halting loop

@dataclass
class AdaptiveOutput:
    """Logits [B, C] in input order, the step (1..L) at which each image exited, and the batch size per step."""
    logits: torch.Tensor
    exit_steps: torch.Tensor
    batch_sizes: list[int]

    @property
    def block_applications(self) -> int:
        """Block applications spent on the batch: the sum of the exit steps."""
        return int(self.exit_steps.sum())

    @property
    def mean_steps(self) -> float:
        return float(self.exit_steps.float().mean())


def _check_knobs(stepper: DepthStepper, threshold: float, criterion: str, min_steps: int | None,
                 max_steps: int | None) -> tuple[int, int]:
    """Validate the knobs; return (min_steps, max_steps) with the defaults filled in."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0 \
            or math.isinf(threshold):
        raise ValueError(f"threshold must be a finite number >= 0 (0 = never exit early); got {threshold!r}.")
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown halting criterion {criterion!r}; use one of {sorted(CRITERIA)}.")
    depth = stepper.depth
    if max_steps is None:
        max_steps = depth
    if isinstance(max_steps, bool) or not isinstance(max_steps, int) or not 1 <= max_steps <= depth:
        raise ValueError(f"max_steps={max_steps!r} is out of range; use 1 <= max_steps <= L = {depth}.")
    if min_steps is None:
        if stepper.phase_boundaries is None:
            raise ValueError(
                "This model has no phase boundaries to take the default min_steps from (the end of the first "
                "phase); pass min_steps=m (e.g. the Raptor's phase_boundaries[1]) or, for a teacher, "
                "phase_boundaries=raptor.phase_boundaries.")
        min_steps = min(int(stepper.phase_boundaries[1]), max_steps)
    if isinstance(min_steps, bool) or not isinstance(min_steps, int) or not 1 <= min_steps <= max_steps:
        raise ValueError(f"min_steps={min_steps!r} is out of range; use 1 <= min_steps <= max_steps = {max_steps}.")
    return min_steps, max_steps


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[0] == 0:
        found = f"shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be a non-empty normalised [B, C, H, W] tensor; got {found}.")


def adaptive_forward(
        model: nn.Module | DepthStepper,
        images: torch.Tensor,
        threshold: float,
        criterion: str = DEFAULT_CRITERION,
        min_steps: int | None = None,
        max_steps: int | None = None,
        phase_boundaries: Sequence[int] | None = None,
) -> AdaptiveOutput:
    """Classify ``images`` with a per-image depth: each image stops once its halting score drops below ``threshold``.

    Args:
        model: a Raptor (or any :class:`RecurrentModel`), a Teacher / timm ViT, or a :class:`DepthStepper`.
        images: normalised images [B, C, H, W].
        threshold: exit when the criterion's score < threshold; 0 runs every image to ``max_steps``.
        criterion: one of :data:`CRITERIA` (default 'confidence').
        min_steps: no exit before this many steps (default: the end of the first phase, ``phase_boundaries[1]``).
        max_steps: every image still running stops here (default L).
        phase_boundaries: a teacher's phases (e.g. its Raptor's), for the default ``min_steps``.

    Returns:
        :class:`AdaptiveOutput`: logits in input order, each image's exit step, the batch size of every step run.
        An image that runs to L steps gets exactly the logits of ``model(images)`` whenever the batch did not shrink.
    """
    stepper = as_stepper(model, phase_boundaries)
    min_steps, max_steps = _check_knobs(stepper, threshold, criterion, min_steps, max_steps)
    _check_images(images)
    rule = CRITERIA[criterion]
    x = stepper.embed(images)
    batch = x.shape[0]
    active = torch.arange(batch, device=x.device)
    exit_steps = torch.full((batch,), max_steps, dtype=torch.long, device=x.device)
    logits_out: torch.Tensor | None = None
    previous: torch.Tensor | None = None
    batch_sizes: list[int] = []
    for step in range(max_steps):
        batch_sizes.append(x.shape[0])
        x = stepper.step(x, step)
        depth = step + 1
        last = depth == max_steps
        scored = threshold > 0 and not last and depth >= min_steps - (1 if rule.needs_previous else 0)
        if not scored and not last:
            continue
        logits = stepper.finish(x) if (rule.needs_logits or last) else None
        if logits_out is None and logits is not None:
            logits_out = logits.new_empty((batch, logits.shape[-1]))
        if last:
            logits_out[active] = logits
            break
        features = stepper.features(x) if criterion == "feature_change" else None
        score, previous = rule.score(logits, features, previous)
        if depth < min_steps:
            continue
        done = score < threshold
        if not bool(done.any()):
            continue
        done_logits = logits[done] if logits is not None else stepper.finish(x[done])
        if logits_out is None:
            logits_out = done_logits.new_empty((batch, done_logits.shape[-1]))
        logits_out[active[done]] = done_logits
        exit_steps[active[done]] = depth
        keep = ~done
        if not bool(keep.any()):
            break
        x, active = x[keep], active[keep]
        previous = previous[keep] if previous is not None else None
    return AdaptiveOutput(logits=logits_out, exit_steps=exit_steps, batch_sizes=batch_sizes)


def halting_scores(
        model: nn.Module | DepthStepper,
        images: torch.Tensor,
        criterion: str = DEFAULT_CRITERION,
        phase_boundaries: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-depth pass on the whole batch: halting scores [B, L] (inf where undefined) and logits [B, L, C] per step."""
    if criterion not in CRITERIA:
        raise ValueError(f"Unknown halting criterion {criterion!r}; use one of {sorted(CRITERIA)}.")
    _check_images(images)
    stepper = as_stepper(model, phase_boundaries)
    rule = CRITERIA[criterion]
    x = stepper.embed(images)
    previous: torch.Tensor | None = None
    scores, step_logits = [], []
    for step in range(stepper.depth):
        x = stepper.step(x, step)
        logits = stepper.finish(x)
        features = stepper.features(x) if criterion == "feature_change" else None
        score, previous = rule.score(logits, features, previous)
        scores.append(score)
        step_logits.append(logits)
    return torch.stack(scores, 1), torch.stack(step_logits, 1)


def exit_steps_for(scores: torch.Tensor, threshold: float, min_steps: int, max_steps: int) -> torch.Tensor:
    """Exit step (1-based) of every image given its per-step scores [B, L]: what :func:`adaptive_forward` picks."""
    steps = torch.arange(1, scores.shape[1] + 1, device=scores.device)
    exits = (scores < threshold) & (steps >= min_steps) & (steps < max_steps)
    exits[:, max_steps - 1] = True
    return exits.float().argmax(1) + 1


def calibrate_threshold(
        model: nn.Module | DepthStepper,
        images: torch.Tensor,
        target_mean_steps: float,
        criterion: str = DEFAULT_CRITERION,
        min_steps: int | None = None,
        phase_boundaries: Sequence[int] | None = None,
) -> float:
    """The largest threshold whose mean exit step on ``images`` stays at or above ``target_mean_steps``.

    A target mean depth as the knob instead of a threshold: calibrate on held-in images, then run
    :func:`adaptive_forward` with the returned threshold (shrinking batches may move a score by float rounding).
    """
    stepper = as_stepper(model, phase_boundaries)
    min_steps, max_steps = _check_knobs(stepper, 0.0, criterion, min_steps, None)
    if not min_steps <= target_mean_steps <= max_steps:
        raise ValueError(
            f"target_mean_steps={target_mean_steps!r} is out of range; use min_steps = {min_steps} <= "
            f"target_mean_steps <= L = {max_steps}.")
    scores, _ = halting_scores(stepper, images, criterion)
    eligible = scores[:, min_steps - 1:max_steps - 1]  # exits at L happen whatever the threshold
    # thresholds just above each candidate score (in the scores' dtype), ascending; the mean exit step never rises
    candidates = torch.unique(eligible[torch.isfinite(eligible)])
    thresholds = torch.nextafter(candidates, torch.full_like(candidates, math.inf)).tolist()

    def mean_steps(threshold: float) -> float:
        return float(exit_steps_for(scores, threshold, min_steps, max_steps).float().mean())

    low, high = 0, len(thresholds)
    while low < high:
        middle = (low + high) // 2
        if mean_steps(thresholds[middle]) >= target_mean_steps:
            low = middle + 1
        else:
            high = middle
    return 0.0 if low == 0 else thresholds[low - 1]
