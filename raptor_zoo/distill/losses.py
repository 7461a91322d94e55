"""Trajectory distances and the teacher-forcing schedule of Raptor distillation (docs/design.md §5, docs/method.md §4.1).

Token states are ``[..., N, D]`` tensors laid out as timm's ViTs: class token (if any), registers, patches.
A distance is a mean, so the distance of a stacked trajectory ``[B, T, N, D]`` equals the mean of its per-layer
distances: the autoregressive loss "averaged over every produced layer" is one call.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

__all__ = [
    "DISTANCES",
    "TOKEN_GROUPS",
    "PAPER_PHASE_TOKEN_WEIGHTS",
    "PAPER_JOINT_TOKEN_WEIGHTS",
    "resolve_token_weights",
    "token_group_slices",
    "token_distance",
    "trajectory_distance",
    "teacher_forcing_weight",
]

Distance = Literal["mse", "cosine"]
DISTANCES = ("mse", "cosine")
TOKEN_GROUPS = ("cls", "registers", "patches")
TokenWeights = Sequence[float] | Mapping[str, float]

# The paper's token-group weights (cls, registers, patches): stage 1 uses them for the last phase only
# (the other phases use plain MSE), stage 2 (joint) uses the second set.
PAPER_PHASE_TOKEN_WEIGHTS = (0.34, 0.33, 0.33)
PAPER_JOINT_TOKEN_WEIGHTS = (0.45, 0.10, 0.45)

_GROUP_ALIASES = {"cls": "cls", "reg": "registers", "registers": "registers", "patch": "patches", "patches": "patches"}


def resolve_token_weights(token_weights: TokenWeights | None) -> dict[str, float] | None:
    """``(w_cls, w_reg, w_patch)`` or a mapping with keys cls / reg(isters) / patch(es) -> ``{group: weight}``."""
    if token_weights is None:
        return None
    if isinstance(token_weights, Mapping):
        unknown = sorted(set(token_weights) - set(_GROUP_ALIASES))
        if unknown:
            raise ValueError(
                f"Unknown token group(s) {unknown} in token_weights; use keys {sorted(_GROUP_ALIASES)}.")
        weights = {group: 0.0 for group in TOKEN_GROUPS}
        for key, value in token_weights.items():
            weights[_GROUP_ALIASES[key]] = float(value)
    else:
        values = list(token_weights)
        if len(values) != 3:
            raise ValueError(
                f"token_weights must be (w_cls, w_reg, w_patch) (3 values), got {len(values)}: {values}.")
        weights = dict(zip(TOKEN_GROUPS, (float(v) for v in values)))
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"token_weights must be >= 0 with a positive sum, got {weights}.")
    return weights


def token_group_slices(
        num_tokens: int,
        num_prefix_tokens: int = 1,
        num_reg_tokens: int = 0,
        has_class_token: bool = True,
) -> dict[str, slice]:
    """Token index ranges of the groups a model has: ``cls`` (index 0), ``registers``, ``patches``."""
    num_cls = 1 if has_class_token else 0
    if num_cls + num_reg_tokens != num_prefix_tokens:
        raise ValueError(
            f"num_prefix_tokens={num_prefix_tokens} must equal class token ({num_cls}) + registers ({num_reg_tokens}).")
    if num_tokens <= num_prefix_tokens:
        raise ValueError(f"{num_tokens} tokens leave no patch tokens after {num_prefix_tokens} prefix tokens.")
    groups = {}
    if num_cls:
        groups["cls"] = slice(0, 1)
    if num_reg_tokens:
        groups["registers"] = slice(num_cls, num_prefix_tokens)
    groups["patches"] = slice(num_prefix_tokens, num_tokens)
    return groups


def token_distance(pred: torch.Tensor, target: torch.Tensor, distance: Distance = "mse") -> torch.Tensor:
    """Per-token distance ``[..., N]``: mean squared error over D, or 1 - cosine similarity (0 when aligned)."""
    if distance == "mse":
        return (pred - target).pow(2).mean(dim=-1)
    if distance == "cosine":
        return 1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)
    raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}.")


def trajectory_distance(
        pred: torch.Tensor,
        target: torch.Tensor,
        distance: Distance = "mse",
        token_weights: TokenWeights | None = None,
        num_prefix_tokens: int = 1,
        num_reg_tokens: int = 0,
        has_class_token: bool = True,
) -> torch.Tensor:
    """Scalar distance between predicted and target token states ``[..., N, D]`` (any leading dims).

    Without ``token_weights``: the mean over every token of :func:`token_distance` (for MSE, the mean over all
    elements). With ``token_weights`` (w_cls, w_reg, w_patch): ``sum_g w_g * mean_g`` over the token groups the
    model has; a missing group (e.g. registers) drops out and the remaining weights are rescaled to the same total.
    Computed in float32 whatever the input dtype.
    """
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must have the same shape.")
    if pred.ndim < 2:
        raise ValueError(f"token states must be [..., N, D], got shape {tuple(pred.shape)}.")
    per_token = token_distance(pred.float(), target.float(), distance)
    weights = resolve_token_weights(token_weights)
    if weights is None:
        return per_token.mean()
    groups = token_group_slices(pred.shape[-2], num_prefix_tokens, num_reg_tokens, has_class_token)
    present = {group: weights[group] for group in groups}
    present_total = sum(present.values())
    if present_total <= 0:
        raise ValueError(f"token_weights {weights} give zero weight to every group the model has ({sorted(groups)}).")
    scale = sum(weights.values()) / present_total
    loss = per_token.new_zeros(())
    for group, weight in present.items():
        if weight:
            loss = loss + (scale * weight) * per_token[..., groups[group]].mean()
    return loss


def teacher_forcing_weight(step: int, max_steps: int, tf_anneal_ratio: float = 0.25, tf_min: float = 0.0) -> float:
    """Weight λ of the teacher-forcing term: ``max(tf_min, 1 - step / (tf_anneal_ratio * max_steps))``.

    Linear from 1 to ``tf_min`` over the first ``tf_anneal_ratio`` of training (the paper: 25%, then pure AR).
    ``tf_anneal_ratio=0`` means no teacher forcing at all (λ = tf_min).
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}.")
    if not 0.0 <= tf_anneal_ratio <= 1.0:
        raise ValueError(f"tf_anneal_ratio must lie in [0, 1], got {tf_anneal_ratio}.")
    if not 0.0 <= tf_min <= 1.0:
        raise ValueError(f"tf_min must lie in [0, 1], got {tf_min}.")
    if tf_anneal_ratio == 0.0:
        return float(tf_min)
    return float(max(tf_min, 1.0 - step / (tf_anneal_ratio * max_steps)))
