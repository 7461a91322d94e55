"""Per-step attention maps of a Raptor: the L softmax(q k^T / sqrt(d)) a timm ``RaptorVisionTransformer`` computes.

A Raptor applies k unique blocks L times, so the attention maps people draw from a ViT (DINOv2's class-token heads)
exist once per unrolled step, not once per module. :func:`attention_maps` collects them with a forward pre-hook on
each shared block (``model.unique_blocks[j]``): the hook sees the step's block input, and :func:`attention_probs`
recomputes that step's attention probabilities from it with the block's own ``norm1``, ``attn.qkv`` (plus the step's
low-rank adapters for a relaxed Raptor), ``attn.q_norm`` and ``attn.k_norm``. Only the public surface of the model is
used (``unique_blocks``, ``step_adapters``, ``forward_features``), whatever loop runs the steps.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["attention_probs", "attention_maps", "cls_attention_maps"]


def attention_probs(
        block: nn.Module,
        x: torch.Tensor,
        adapters: dict[str, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention probabilities [B, heads, N, N] of timm block ``block`` on its input tokens ``x`` [B, N, D].

    ``adapters`` are a relaxed Raptor step's low-rank tensors (``qkv_a`` [r, D], ``qkv_b`` [3D, r]), as
    ``RaptorVisionTransformer.step_adapters(step)`` returns them; a boolean ``attn_mask`` marks keys to keep, a float
    one is added to the logits (as ``F.scaled_dot_product_attention`` reads masks).
    """
    attn = block.attn
    if getattr(attn, "gate", None) is not None:
        raise ValueError("gated attention blocks are not supported by attention_probs.")
    tokens = block.norm1(x)
    batch, num_tokens, _ = tokens.shape
    # the shared weight itself (a relaxed step's qkv.weight reads W + B A while that step runs)
    qkv = F.linear(tokens, attn.qkv._parameters["weight"], attn.qkv.bias)
    if adapters and "qkv_a" in adapters:
        qkv = qkv + F.linear(F.linear(tokens, adapters["qkv_a"]), adapters["qkv_b"])
    qkv = qkv.reshape(batch, num_tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    logits = (q * attn.scale) @ k.transpose(-2, -1)
    if attn_mask is not None:
        logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
    return logits.softmax(dim=-1)


def attention_maps(model: Any, x: torch.Tensor, num_steps: int | None = None) -> list[torch.Tensor]:
    """The attention probabilities of each unrolled step: ``num_steps`` (default L) tensors [B, heads, N, N].

    ``model`` is a timm ``RaptorVisionTransformer`` (or anything with its ``unique_blocks``, ``step_adapters`` and
    ``forward_features(x, num_steps=...)``); ``x`` a normalised image batch. Token order is timm's: cls, registers,
    patches. Gradients flow when called with them enabled.
    """
    maps: list[torch.Tensor] = []

    def record(block: nn.Module, args: tuple[Any, ...]) -> None:
        maps.append(attention_probs(block, args[0], model.step_adapters(len(maps))))

    handles = [block.register_forward_pre_hook(record) for block in model.unique_blocks]
    try:
        model.forward_features(x, num_steps=num_steps)
    finally:
        for handle in handles:
            handle.remove()
    expected = model.depth if num_steps is None else num_steps
    if len(maps) != expected:
        raise RuntimeError(
            f"recorded {len(maps)} block applications but the model ran {expected} steps; attention_maps needs a "
            "model that applies each step's block once per forward (turn off gradient checkpointing).")
    return maps


def cls_attention_maps(model: Any, x: torch.Tensor, num_steps: int | None = None) -> torch.Tensor:
    """Class-token attention over the patches of each step, as image grids: [L, B, heads, H/p, W/p]."""
    if not getattr(model, "has_class_token", True):
        raise ValueError("cls_attention_maps needs a model with a class token (class_token=True).")
    maps = attention_maps(model, x, num_steps=num_steps)
    grid_h, grid_w = model.patch_embed.dynamic_feat_size(tuple(x.shape[-2:]))
    prefix = model.num_prefix_tokens
    return torch.stack([step[:, :, 0, prefix:].reshape(*step.shape[:2], grid_h, grid_w) for step in maps])
