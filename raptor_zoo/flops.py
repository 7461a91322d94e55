"""FLOP and parameter counting with `torch.utils.flop_counter` (FLOPs = 2 x multiply-accumulates).

Attention is counted under the math SDPA backend: on CPU tensors the fused SDPA kernel counts as 0 FLOPs,
which would under-report attention. Models on the meta device are counted without allocating weights.
:func:`flops_table` is the teacher-vs-Raptor count that the model cards and the FLOPs benchmark both show.
"""
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["FLOPS_CONVENTION", "count_flops", "count_params", "relaxation_overhead", "flops_table"]

FLOPS_CONVENTION = (
    "FLOPs = 2 x multiply-accumulates, counted by torch.utils.flop_counter (matmuls, convolutions, attention) "
    "under the math SDPA backend on the meta device; element-wise ops (norms, activations, gains) are not counted.")


def count_flops(model: nn.Module, input_size: Sequence[int] | None = None, batch_size: int = 1, **forward_kwargs: Any) -> int:
    """FLOPs of one forward pass of `model` on a batch of `batch_size` images of `input_size` (C, H, W).

    `input_size` defaults to the model's `pretrained_cfg['input_size']`. Runs on the model's device (use the
    meta device for large models) in eval mode, without gradients.
    """
    if input_size is None:
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if "input_size" not in cfg:
            raise ValueError(f"{type(model).__name__} has no pretrained_cfg input_size; pass input_size=(C, H, W).")
        input_size = cfg["input_size"]
    param = next(model.parameters())
    x = torch.randn(batch_size, *input_size, device=param.device, dtype=param.dtype)
    was_training = model.training
    # FlopCounterMode's module tracker asserts on module inputs made from parameters that require grad (CaiT's
    # class token), even under no_grad: count with gradients off everywhere
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    model.eval().requires_grad_(False)
    try:
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model(x, **forward_kwargs)
    finally:
        model.train(was_training)
        for name, p in model.named_parameters():
            p.requires_grad_(requires_grad[name])
    return counter.get_total_flops()


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor counted once)."""
    seen = {}
    for p in module.parameters():
        if not trainable_only or p.requires_grad:
            seen[id(p)] = p.numel()
    return sum(seen.values())


def relaxation_overhead(raptor: nn.Module, input_size: Sequence[int] | None = None) -> dict[str, Any]:
    """What a relaxed Raptor's per-step adapters add over the same pure Raptor: parameters and FLOPs per image.

    Both models are rebuilt on the meta device from ``raptor.model_args`` (architecture, not weights); a pure
    Raptor (``relax_rank`` 0) adds nothing. Fractions are of the pure Raptor's total and of its shared blocks.
    """
    if not getattr(raptor, "relax_rank", 0):  # a pure Raptor: nothing to rebuild or count
        return {"relax_rank": 0, "relax_targets": [], "relax_params": 0, "relax_params_fraction": 0.0,
                "relax_params_fraction_of_blocks": 0.0, "relax_flops": 0, "relax_flops_fraction": 0.0}
    args = dict(raptor.model_args)
    relax_rank = int(args["relax_rank"])
    pure_args = {key: value for key, value in args.items() if key not in ("relax_rank", "relax_targets")}
    if input_size is None:
        input_size = (raptor.pretrained_cfg or {}).get("input_size")
    from .models.raptor_timm import raptor_from_model_args

    with torch.device("meta"):
        relaxed, pure = raptor_from_model_args(args), raptor_from_model_args(pure_args)
    relaxed_flops, pure_flops = count_flops(relaxed, input_size), count_flops(pure, input_size)
    extra_params = count_params(relaxed) - count_params(pure)
    return {
        "relax_rank": relax_rank,
        "relax_targets": list(args.get("relax_targets", ())),
        "relax_params": extra_params,
        "relax_params_fraction": extra_params / count_params(pure),
        "relax_params_fraction_of_blocks": extra_params / count_params(pure.blocks),
        "relax_flops": relaxed_flops - pure_flops,
        "relax_flops_fraction": (relaxed_flops - pure_flops) / pure_flops,
    }


def _ratio(numerator: int | None, denominator: int | None) -> float | None:
    return None if numerator is None or not denominator else numerator / denominator


def flops_table(raptor: nn.Module, teacher: nn.Module | None, input_size: Sequence[int]) -> dict[str, Any]:
    """FLOPs per image and parameters of a Raptor against its teacher, both counted at ``input_size`` (C, H, W).

    Count models built on the meta device (architecture, not weights). Keys: ``raptor_flops``, ``raptor_params``,
    ``raptor_block_params`` (its k shared blocks); ``teacher_flops``, ``teacher_params``, ``teacher_block_params``
    and the ratios ``flops_ratio``, ``params_ratio``, ``block_params_ratio`` (all None without a teacher); and
    :func:`relaxation_overhead`'s ``relax_*`` keys (zeros for a pure Raptor).
    """
    raptor_flops, raptor_params = count_flops(raptor, input_size), count_params(raptor)
    raptor_block_params = count_params(raptor.blocks)
    teacher_flops = teacher_params = teacher_block_params = None
    if teacher is not None:
        teacher_flops, teacher_params = count_flops(teacher, input_size), count_params(teacher)
        teacher_block_params = count_params(teacher.blocks)
    return {
        "input_size": list(input_size),
        "raptor_flops": raptor_flops,
        "raptor_params": raptor_params,
        "raptor_block_params": raptor_block_params,
        "teacher_flops": teacher_flops,
        "teacher_params": teacher_params,
        "teacher_block_params": teacher_block_params,
        "flops_ratio": _ratio(raptor_flops, teacher_flops),
        "params_ratio": _ratio(raptor_params, teacher_params),
        "block_params_ratio": _ratio(raptor_block_params, teacher_block_params),
        **relaxation_overhead(raptor, input_size),
    }
