"""Timing one model, in the manner of timm's ``benchmark.py``: :class:`InferenceRunner` (warm-up, synchronised
iterations, rounds of latencies) and :func:`benchmark_inference` (one model at one batch size, dtype and mode, with
timm's out-of-memory batch step-down).

Modes: ``eager``, ``compile`` (``torch.compile``) and ``cudagraphs`` (``torch.compile(mode='reduce-overhead')``,
CUDA only); dtypes: ``fp32`` and ``bf16`` (autocast).
"""
from __future__ import annotations

import gc
import logging
import math
import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn as nn
from timm.utils import check_batch_size_retry, decay_batch_step

from raptor_zoo_cli.options import DTYPES, MODES

from ..flops import count_flops, count_params
from .environment import device_name, resolve_device

__all__ = [
    "MODES", "DTYPES", "MEMORY_KIND", "prepare_model", "InferenceRunner", "summarise_latencies",
    "benchmark_inference",
]

_logger = logging.getLogger(__name__)

MEMORY_KIND = {
    "cuda": "cuda_max_allocated: weights + the largest rise of torch.cuda.max_memory_allocated during the "
            "model's own calls (warm-up included)",
    "cpu": None,
}


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"{name} must be one of {tuple(valid)}, got {value!r}.")


def _check_mode_device(mode: str, device: torch.device) -> None:
    _check_choice("mode", mode, MODES)
    if mode == "cudagraphs" and device.type != "cuda":
        raise ValueError("mode 'cudagraphs' (torch.compile mode='reduce-overhead') needs a CUDA device; "
                         "use mode 'eager' or 'compile' on CPU.")


def prepare_model(model: nn.Module, mode: str) -> Callable[..., Any]:
    """The callable to time: the module itself, ``torch.compile(model)``, or CUDA graphs via 'reduce-overhead'."""
    _check_choice("mode", mode, MODES)
    if mode == "eager":
        return model
    return torch.compile(model, mode="reduce-overhead" if mode == "cudagraphs" else "default", dynamic=False)


class _StepsForward(nn.Module):
    """``model(x, num_steps=num_steps)`` as a module: a fixed anytime depth that torch.compile specialises on."""

    def __init__(self, model: nn.Module, num_steps: int) -> None:
        super().__init__()
        self.model = model
        self.num_steps = num_steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, num_steps=self.num_steps)


def _is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in message or "can't allocate memory" in message)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".strip()
    return text if len(text) <= 500 else text[:497] + "..."


def _param_bytes(model: nn.Module) -> int:
    seen = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    seen.update({id(b): b.numel() * b.element_size() for b in model.buffers()})
    return sum(seen.values())


def _free_memory(device: torch.device) -> None:
    """Return cached CUDA memory between cells (a no-op on CPU, where freed tensors go back at once)."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


class InferenceRunner:
    """Runs one model at one (batch size, dtype, mode) and collects synchronised per-iteration latencies.

    ``warmup`` includes compilation in the compiled modes (its wall time is kept as ``warmup_s``); each
    ``time_round`` appends one round of latencies (ms). On CUDA each step is bracketed by events after a
    synchronise, so a step's latency includes launch overhead; on CPU ``time.perf_counter`` brackets it.
    """

    def __init__(
            self,
            model: nn.Module,
            batch_size: int,
            img_size: int,
            device: str | torch.device,
            dtype: str = "fp32",
            mode: str = "eager",
            num_steps: int | None = None,
            in_chans: int | None = None,
    ) -> None:
        self.device = resolve_device(device)
        _check_choice("dtype", dtype, DTYPES)
        _check_mode_device(mode, self.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.model = model.eval().to(self.device)
        self.batch_size = batch_size
        self.img_size = img_size
        self.dtype = dtype
        self.mode = mode
        self.num_steps = num_steps
        in_chans = in_chans or getattr(model, "in_chans", 3)
        target = _StepsForward(self.model, num_steps) if num_steps is not None else self.model
        self.model_fn = prepare_model(target, mode)
        self.inputs = torch.randn(batch_size, in_chans, img_size, img_size, device=self.device)
        self.round_latencies_ms: list[list[float]] = []
        self.warmup_s: float | None = None
        self.peak_memory_mb: float | None = None
        self._param_bytes = _param_bytes(self.model)

    def _autocast(self):
        if self.dtype == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _call(self) -> None:
        if self.mode == "cudagraphs":
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), self._autocast():
            self.model_fn(self.inputs)

    def _track_memory(self, run: Callable[[], Any]) -> Any:
        if self.device.type != "cuda":
            return run()
        torch.cuda.synchronize(self.device)
        before = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        result = run()
        torch.cuda.synchronize(self.device)
        rise = torch.cuda.max_memory_allocated(self.device) - before
        peak = (self._param_bytes + max(rise, 0)) / 2 ** 20
        self.peak_memory_mb = peak if self.peak_memory_mb is None else max(self.peak_memory_mb, peak)
        return result

    def warmup(self, iters: int) -> float:
        """Run ``iters`` untimed calls (at least one: it compiles); returns their wall time in seconds."""
        def run() -> None:
            for _ in range(max(iters, 1)):
                self._call()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        start = time.perf_counter()
        self._track_memory(run)
        self.warmup_s = time.perf_counter() - start
        return self.warmup_s

    def _timed_call(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            self._call()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
        start_time = time.perf_counter()
        self._call()
        return (time.perf_counter() - start_time) * 1e3

    def time_round(self, iters: int) -> list[float]:
        """Time ``iters`` calls; the round's latencies (ms) are also appended to ``round_latencies_ms``."""
        latencies = self._track_memory(lambda: [self._timed_call() for _ in range(iters)])
        self.round_latencies_ms.append(latencies)
        return latencies

    def summary(self) -> dict[str, Any]:
        latencies = [ms for round_ in self.round_latencies_ms for ms in round_]
        out = summarise_latencies(latencies, self.batch_size)
        out.update(
            round_img_per_sec=[self.batch_size * 1e3 / statistics.median(r) for r in self.round_latencies_ms],
            warmup_s=self.warmup_s,
            peak_memory_mb=self.peak_memory_mb,
            memory_kind=MEMORY_KIND[self.device.type])
        return out


def summarise_latencies(latencies_ms: Sequence[float], batch_size: int) -> dict[str, Any]:
    """Median, p90, mean, min and max latency (ms) and img/s (batch size / median latency)."""
    if not latencies_ms:
        raise ValueError("no latencies to summarise: time at least one iteration.")
    ordered = sorted(latencies_ms)
    p90_index = min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))
    median = statistics.median(ordered)
    return {
        "latency_ms_median": median,
        "latency_ms_p90": ordered[p90_index],
        "latency_ms_mean": statistics.fmean(ordered),
        "latency_ms_min": ordered[0],
        "latency_ms_max": ordered[-1],
        "img_per_sec": batch_size * 1e3 / median,
        "timed_iters": len(ordered),
    }


def _model_flops(model: nn.Module, img_size: int, num_steps: int | None) -> int:
    """FLOPs of one image; counted on the model's own device under the math SDPA backend."""
    in_chans = getattr(model, "in_chans", 3)
    kwargs = {} if num_steps is None else {"num_steps": num_steps}
    return count_flops(model, (in_chans, img_size, img_size), batch_size=1, **kwargs)


def benchmark_inference(
        model: nn.Module,
        batch_size: int,
        img_size: int,
        device: str | torch.device | None = None,
        dtype: str = "fp32",
        mode: str = "eager",
        warmup: int = 10,
        iters: int = 40,
        num_steps: int | None = None,
        flops: int | None = None,
        count_model_flops: bool = True,
        retry_oom: bool = True,
        name: str | None = None,
) -> dict[str, Any]:
    """Inference latency / throughput of ``model`` on random ``[batch_size, C, img_size, img_size]`` inputs.

    Returns a dict: ``model, batch_size`` (after any OOM step-down), ``requested_batch_size, img_size, device,
    dtype, mode, num_steps, warmup, iters, latency_ms_median, latency_ms_p90, latency_ms_mean, latency_ms_min,
    latency_ms_max, img_per_sec, timed_iters, warmup_s, peak_memory_mb, memory_kind, param_count, gflops`` (per
    image; ``flops`` if given, else counted once at batch 1 unless ``count_model_flops`` is False) and ``error``
    (None, or the failure as text: an OOM at batch 1, or any other exception).
    """
    device = resolve_device(device)
    _check_choice("dtype", dtype, DTYPES)
    _check_mode_device(mode, device)
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch_size >= 1, iters >= 1, warmup >= 0; got {batch_size}, {iters}, {warmup}.")
    row: dict[str, Any] = dict(
        model=name or type(model).__name__, batch_size=batch_size, requested_batch_size=batch_size,
        img_size=img_size, device=device_name(device), dtype=dtype, mode=mode, num_steps=num_steps,
        warmup=warmup, iters=iters, param_count=count_params(model), gflops=None, error=None)
    if flops is None and count_model_flops:
        try:
            flops = _model_flops(model.to(device), img_size, num_steps)
        except Exception as error:  # recorded, the timing still runs
            row["flops_error"] = _error_text(error)
    row["gflops"] = None if flops is None else flops / 1e9
    while True:
        runner = None
        try:
            runner = InferenceRunner(model, batch_size, img_size, device, dtype, mode, num_steps=num_steps)
            runner.warmup(warmup)
            runner.time_round(iters)
            row.update(runner.summary(), batch_size=batch_size)
            row.pop("round_img_per_sec")
            return row
        except Exception as error:
            error_text = _error_text(error)
            del runner
            _free_memory(device)
            next_batch = decay_batch_step(batch_size) if retry_oom and _is_oom(error) else 0
            if next_batch and check_batch_size_retry(error_text):
                _logger.warning("%s at batch size %d: retrying with %d.", error_text, batch_size, next_batch)
                batch_size = next_batch
                continue
            row.update(error=error_text, batch_size=batch_size)
            return row

