"""FLOP and parameter counting with `torch.utils.flop_counter` (FLOPs = 2 x multiply-accumulates).

Attention is counted under the math SDPA backend: on CPU tensors the fused SDPA kernel counts as 0 FLOPs,
which would under-report attention. Models on the meta device are counted without allocating weights.
"""
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ['count_flops', 'count_params']


def count_flops(model: nn.Module, input_size: Optional[Sequence[int]] = None, batch_size: int = 1, **forward_kwargs: Any) -> int:
    """FLOPs of one forward pass of `model` on a batch of `batch_size` images of `input_size` (C, H, W).

    `input_size` defaults to the model's `pretrained_cfg['input_size']`. Runs on the model's device (use the
    meta device for large models) in eval mode, without gradients.
    """
    if input_size is None:
        cfg = getattr(model, 'pretrained_cfg', None) or {}
        if 'input_size' not in cfg:
            raise ValueError(f'{type(model).__name__} has no pretrained_cfg input_size; pass input_size=(C, H, W).')
        input_size = cfg['input_size']
    param = next(model.parameters())
    x = torch.randn(batch_size, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, **forward_kwargs)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    seen = {}
    for p in module.parameters():
        if not trainable_only or p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())
