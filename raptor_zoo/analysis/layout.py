"""Token layout of a ViT state and the shared helpers of the analyses (unit directions, JSON conversion)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = ["TokenLayout", "TOKEN_GROUPS", "unit", "check_trajectory", "to_jsonable"]

TOKEN_GROUPS = ("cls", "registers", "patches")
_EPS = 1e-12


@dataclass(frozen=True)
class TokenLayout:
    """Where each token type sits in a state ``[N, D]``: class token first (if any), then registers, then patches.

    This is the timm / DINOv2 layout: ``num_prefix_tokens`` prefix tokens, the registers last among them.
    """

    num_prefix_tokens: int = 1
    num_reg_tokens: int = 0
    has_class_token: bool = True

    def __post_init__(self) -> None:
        if self.num_reg_tokens < 0 or self.num_prefix_tokens < int(self.has_class_token) + self.num_reg_tokens:
            raise ValueError(
                f"Inconsistent token layout: num_prefix_tokens={self.num_prefix_tokens} must be >= has_class_token "
                f"({int(self.has_class_token)}) + num_reg_tokens ({self.num_reg_tokens}), num_reg_tokens >= 0.")

    @classmethod
    def from_model(cls, model: Any) -> TokenLayout:
        """The layout of a Teacher, a Raptor or any timm ViT (``num_prefix_tokens``, ``num_reg_tokens``, ``has_class_token``)."""
        missing = [name for name in ("num_prefix_tokens", "num_reg_tokens", "has_class_token") if not hasattr(model, name)]
        if missing:
            raise TypeError(f"{type(model).__name__} lacks {missing}; pass a Teacher, a Raptor, a timm ViT or a TokenLayout.")
        return cls(int(model.num_prefix_tokens), int(model.num_reg_tokens), bool(model.has_class_token))

    def groups(self, num_tokens: int) -> dict[str, slice]:
        """Token positions of each type present (``cls``, ``registers``, ``patches``) in a state of ``num_tokens`` tokens."""
        if num_tokens <= self.num_prefix_tokens:
            raise ValueError(
                f"A state of {num_tokens} tokens has no patch tokens after {self.num_prefix_tokens} prefix tokens; "
                "check the token layout (TokenLayout.from_model(model)).")
        groups = {}
        if self.has_class_token:
            groups["cls"] = slice(0, 1)
        if self.num_reg_tokens:
            groups["registers"] = slice(self.num_prefix_tokens - self.num_reg_tokens, self.num_prefix_tokens)
        groups["patches"] = slice(self.num_prefix_tokens, num_tokens)
        return groups


def unit(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Directions ``x / ||x||`` along ``dim`` (zero vectors stay zero)."""
    return x / x.norm(dim=dim, keepdim=True).clamp_min(_EPS)


def check_trajectory(
        trajectory: Any, layout: TokenLayout, name: str = "trajectory", double: bool = True) -> torch.Tensor:
    """Validate a trajectory ``[B, L + 1, N, D]`` (states 0..L) and return it detached (in float64 by default)."""
    if not isinstance(trajectory, torch.Tensor):
        trajectory = torch.as_tensor(np.asarray(trajectory))
    if trajectory.ndim != 4:
        raise ValueError(f"{name} must be a tensor [batch, L + 1 states, tokens, dim]; got shape {tuple(trajectory.shape)}.")
    if trajectory.shape[1] < 2:
        raise ValueError(f"{name} has {trajectory.shape[1]} state(s); at least 2 (x_0 and x_L) are needed.")
    layout.groups(trajectory.shape[2])
    trajectory = trajectory.detach()
    return trajectory.double() if double else trajectory


def to_jsonable(value: Any) -> Any:
    """numpy arrays / scalars / tensors inside dicts and lists -> plain JSON types (NaN -> None)."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value
