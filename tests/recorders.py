"""Test helpers that observe a Raptor from outside: which unique block runs at each unrolled application, the
stochastic-depth rate reaching timm's `drop_path` there, and FLOP counts written out by hand.

They hook public surfaces only (the shared block modules, timm's `drop_path` function wherever it was imported), so
they keep working when the model's internal step loop is rewritten.
"""
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn as nn
from timm.layers import drop as timm_drop


def shared_blocks(model: nn.Module) -> list[nn.Module]:
    """Each block module once: a Raptor's k shared blocks (its `blocks` presents L step views of them)."""
    return list(getattr(model, "unique_blocks", None) or model.blocks)


@contextmanager
def record_block_calls(model: nn.Module) -> Iterator[list[int]]:
    """Yield a list that collects, in call order, the index of the shared block of every block application."""
    calls: list[int] = []
    handles = [block.register_forward_pre_hook(lambda module, args, j=j: calls.append(j))
               for j, block in enumerate(shared_blocks(model))]
    try:
        yield calls
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def record_drop_rates(model: nn.Module, monkeypatch) -> Iterator[list[list[tuple]]]:
    """Yield a list with one entry per block application (in call order): the (drop_prob, training) of every call
    to timm's `drop_path` made during that application.

    timm's function is replaced in every loaded module that bound it by name (`from timm.layers import drop_path`,
    timm's own `DropPath` module), so the rate is recorded however a block reaches stochastic depth.
    """
    original = timm_drop.drop_path
    applications: list[list[tuple]] = []

    def recording_drop_path(x, drop_prob: float = 0., training: bool = False, scale_by_keep: bool = True):
        assert applications, "drop_path called outside a block application"
        applications[-1].append((float(drop_prob), bool(training)))
        return original(x, drop_prob, training, scale_by_keep)

    for module in list(sys.modules.values()):
        if module is not None and getattr(module, "__dict__", {}).get("drop_path") is original:
            monkeypatch.setattr(module, "drop_path", recording_drop_path)
    handles = [block.register_forward_pre_hook(lambda module, args: applications.append([]))
               for block in shared_blocks(model)]
    try:
        yield applications
    finally:
        for handle in handles:
            handle.remove()


def assert_drop_rates(applications: list[list[tuple]], expected: Sequence[float], training: bool = True) -> None:
    """Application l used exactly the rate expected[l] (a rate-0 step may skip drop_path altogether)."""
    assert len(applications) == len(expected), (len(applications), len(expected))
    for step, (calls, rate) in enumerate(zip(applications, expected)):
        rates = sorted({prob for prob, _ in calls})
        if rate > 0:
            assert calls, f"step {step}: no drop_path call, expected rate {rate}"
        assert all(abs(prob - rate) <= 1e-6 for prob in rates), f"step {step}: drop_path got {rates}, expected {rate}"
        assert all(flag == training for _, flag in calls), f"step {step}: drop_path got training != {training}"


def depth_scale_flops(dim: int, depth: int, hidden: int = 16) -> int:
    """FLOPs the depth-scale MLPs add to a forward pass: per step Linear(1 -> hidden), SiLU, Linear(hidden -> 3D).

    Counted as torch.utils.flop_counter counts them: 2 x multiply-accumulates of the matmuls, bias adds and the
    activation free.
    """
    return depth * (2 * 1 * hidden + 2 * hidden * 3 * dim)


def adapter_flops(teacher_block: nn.Module, rank: int, targets: Sequence[str], tokens: int, depth: int) -> int:
    """FLOPs of rank-r adapters x A^T B^T on the `targets` linear layers of every step: 2 r (in + out) per token."""
    layers = {"qkv": teacher_block.attn.qkv, "proj": teacher_block.attn.proj, "fc1": teacher_block.mlp.fc1,
              "fc2": teacher_block.mlp.fc2}
    per_token = sum(2 * rank * (layers[t].in_features + layers[t].out_features) for t in targets)
    return depth * tokens * per_token


def counted_flops(model: nn.Module, input_size: Sequence[int]) -> int:
    """torch.utils.flop_counter's count of one forward pass on one image, attention under the math SDPA backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    param = next(model.parameters())
    x = torch.randn(1, *input_size, device=param.device, dtype=param.dtype)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return counter.get_total_flops()
