"""Inference benchmarks of Raptors against their teachers, in the manner of timm's ``benchmark.py``.

* :func:`benchmark_inference` times one model: warm-up, then synchronised iterations (CUDA events with a
  synchronise per step on GPU, ``time.perf_counter`` on CPU), median / p90 latency, img/s, peak memory, params
  and FLOPs; an out-of-memory batch steps down (timm's ``decay_batch_step``) and other failures are recorded
  in ``error`` instead of raised.
* :func:`compare_teacher_raptor` measures a teacher and its Raptor(s) *side by side*: per cell (mode, dtype,
  batch size) every model is warmed up, then timed in rounds whose order alternates (ABBA), so machine drift hits
  all of them; the Raptor / teacher ratios are taken per round and reported as median and min-max over rounds.
  Anytime rows time the Raptor stopping after ``num_steps`` < L block applications.
* :func:`flops_row`: FLOPs (= 2 x multiply-accumulates, ``torch.utils.flop_counter`` under the math SDPA backend,
  on the meta device) and parameters of a Raptor against its teacher, with the SwiGLU variant and the
  depth-scaling overhead; the model cards call it.
* Writers: JSON (environment and settings included), Markdown tables and a PNG plot.

``benchmarks/throughput.py`` and ``raptor-zoo bench`` are :func:`add_bench_arguments` + :func:`bench_command`.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import math
import os
import platform
import re
import statistics
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
import torch.nn as nn
from timm.utils import check_batch_size_retry, decay_batch_step

from .flops import count_flops, count_params, relaxation_overhead

__all__ = [
    'MODES', 'DTYPES', 'GPU_BATCH_SIZES', 'CPU_BATCH_SIZES', 'FLOPS_CONVENTION', 'MEMORY_KIND',
    'BenchSettings', 'InferenceRunner', 'resolve_device', 'device_name', 'device_slug', 'environment_info',
    'prepare_model', 'summarise_latencies', 'benchmark_inference', 'ratio_stats', 'compare_teacher_raptor',
    'flops_row', 'write_json', 'markdown_table', 'write_markdown', 'plot_throughput', 'add_bench_arguments',
    'resolve_bench_settings', 'bench_command',
]

_logger = logging.getLogger(__name__)

MODES = ('eager', 'compile', 'cudagraphs')
DTYPES = ('fp32', 'bf16')
GPU_BATCH_SIZES = (1, 8, 64, 256)
CPU_BATCH_SIZES = (1, 8)
FLOPS_CONVENTION = (
    'FLOPs = 2 x multiply-accumulates, counted by torch.utils.flop_counter (matmuls, convolutions, attention) '
    'under the math SDPA backend on the meta device; element-wise ops (norms, activations, gains) are not counted.')
MEMORY_KIND = {
    'cuda': 'cuda_max_allocated: weights + the largest rise of torch.cuda.max_memory_allocated during the '
            "model's own calls (warm-up included)",
    'cpu': None,
}
_CPU_MEMORY_NOTE = ('peak memory is not measured on CPU (the allocator reuses freed memory, so an RSS delta is not a '
                    'per-model peak): peak_memory_mb is None')


# ---------------------------------------------------------------------------------------------- environment

def resolve_device(device: Union[str, torch.device, None] = None) -> torch.device:
    """'auto' / None -> cuda when available, else cpu; anything else as torch.device (CUDA must exist)."""
    if device is None or str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ValueError(f'--device {device} was asked but CUDA is not available here; use --device cpu.')
    if device.type not in ('cpu', 'cuda'):
        raise ValueError(f"device must be 'cpu', 'cuda[:i]' or 'auto', got {str(device)!r}.")
    return device


def _cpu_model_name() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or 'unknown CPU'


def device_name(device: Union[str, torch.device]) -> str:
    """Human-readable device: the GPU name, or the CPU model with its core count."""
    device = torch.device(device)
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    return f'{_cpu_model_name()} ({os.cpu_count()} cores)'


def device_slug(device: Union[str, torch.device]) -> str:
    """Short file-name form of the device: 'nvidia-h100-80gb-hbm3', 'cpu-amd-epyc-2c'."""
    device = torch.device(device)
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
    else:
        name = f'cpu {_cpu_model_name()} {os.cpu_count()}c'
    return re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')


def environment_info(device: Union[str, torch.device]) -> dict[str, Any]:
    """Device, library versions, date and host facts written beside every result."""
    import timm

    from . import __version__
    device = torch.device(device)
    info: dict[str, Any] = {
        'device': device_name(device),
        'device_type': device.type,
        'device_slug': device_slug(device),
        'date': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'torch': torch.__version__,
        'timm': timm.__version__,
        'raptor_zoo': __version__,
        'python': platform.python_version(),
        'host_cpu_count': os.cpu_count(),
        'torch_num_threads': torch.get_num_threads(),
        'float32_matmul_precision': torch.get_float32_matmul_precision(),
    }
    if device.type == 'cuda':
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2 ** 30, 1))
    return info


# ---------------------------------------------------------------------------------------------- one model

def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f'{name} must be one of {tuple(valid)}, got {value!r}.')


def _check_mode_device(mode: str, device: torch.device) -> None:
    _check_choice('mode', mode, MODES)
    if mode == 'cudagraphs' and device.type != 'cuda':
        raise ValueError("mode 'cudagraphs' (torch.compile mode='reduce-overhead') needs a CUDA device; "
                         "use mode 'eager' or 'compile' on CPU.")


def prepare_model(model: nn.Module, mode: str) -> Callable[..., Any]:
    """The callable to time: the module itself, ``torch.compile(model)``, or CUDA graphs via 'reduce-overhead'."""
    _check_choice('mode', mode, MODES)
    if mode == 'eager':
        return model
    return torch.compile(model, mode='reduce-overhead' if mode == 'cudagraphs' else 'default', dynamic=False)


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
    return isinstance(error, RuntimeError) and ('out of memory' in message or "can't allocate memory" in message)


def _error_text(error: BaseException) -> str:
    text = f'{type(error).__name__}: {error}'.strip()
    return text if len(text) <= 500 else text[:497] + '...'


def _param_bytes(model: nn.Module) -> int:
    seen = {id(p): p.numel() * p.element_size() for p in model.parameters()}
    seen.update({id(b): b.numel() * b.element_size() for b in model.buffers()})
    return sum(seen.values())


def _free_memory(device: torch.device) -> None:
    """Return cached CUDA memory between cells (a no-op on CPU, where freed tensors go back at once)."""
    if device.type == 'cuda':
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
            device: Union[str, torch.device],
            dtype: str = 'fp32',
            mode: str = 'eager',
            num_steps: Optional[int] = None,
            in_chans: Optional[int] = None,
    ) -> None:
        self.device = resolve_device(device)
        _check_choice('dtype', dtype, DTYPES)
        _check_mode_device(mode, self.device)
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
        self.model = model.eval().to(self.device)
        self.batch_size = batch_size
        self.img_size = img_size
        self.dtype = dtype
        self.mode = mode
        self.num_steps = num_steps
        in_chans = in_chans or getattr(model, 'in_chans', 3)
        target = _StepsForward(self.model, num_steps) if num_steps is not None else self.model
        self.model_fn = prepare_model(target, mode)
        self.inputs = torch.randn(batch_size, in_chans, img_size, img_size, device=self.device)
        self.round_latencies_ms: list[list[float]] = []
        self.warmup_s: Optional[float] = None
        self.peak_memory_mb: Optional[float] = None
        self._param_bytes = _param_bytes(self.model)

    def _autocast(self):
        if self.dtype == 'bf16':
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    def _call(self) -> None:
        if self.mode == 'cudagraphs':
            torch.compiler.cudagraph_mark_step_begin()
        with torch.no_grad(), self._autocast():
            self.model_fn(self.inputs)

    def _track_memory(self, run: Callable[[], Any]) -> Any:
        if self.device.type != 'cuda':
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
            if self.device.type == 'cuda':
                torch.cuda.synchronize(self.device)

        start = time.perf_counter()
        self._track_memory(run)
        self.warmup_s = time.perf_counter() - start
        return self.warmup_s

    def _timed_call(self) -> float:
        if self.device.type == 'cuda':
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
        raise ValueError('no latencies to summarise: time at least one iteration.')
    ordered = sorted(latencies_ms)
    p90_index = min(len(ordered) - 1, max(0, math.ceil(0.9 * len(ordered)) - 1))
    median = statistics.median(ordered)
    return {
        'latency_ms_median': median,
        'latency_ms_p90': ordered[p90_index],
        'latency_ms_mean': statistics.fmean(ordered),
        'latency_ms_min': ordered[0],
        'latency_ms_max': ordered[-1],
        'img_per_sec': batch_size * 1e3 / median,
        'timed_iters': len(ordered),
    }


def _model_flops(model: nn.Module, img_size: int, num_steps: Optional[int]) -> int:
    """FLOPs of one image; counted on the model's own device under the math SDPA backend."""
    in_chans = getattr(model, 'in_chans', 3)
    kwargs = {} if num_steps is None else {'num_steps': num_steps}
    return count_flops(model, (in_chans, img_size, img_size), batch_size=1, **kwargs)


def benchmark_inference(
        model: nn.Module,
        batch_size: int,
        img_size: int,
        device: Union[str, torch.device, None] = None,
        dtype: str = 'fp32',
        mode: str = 'eager',
        warmup: int = 10,
        iters: int = 40,
        num_steps: Optional[int] = None,
        flops: Optional[int] = None,
        count_model_flops: bool = True,
        retry_oom: bool = True,
        name: Optional[str] = None,
) -> dict[str, Any]:
    """Inference latency / throughput of ``model`` on random ``[batch_size, C, img_size, img_size]`` inputs.

    Returns a dict: ``model, batch_size`` (after any OOM step-down), ``requested_batch_size, img_size, device,
    dtype, mode, num_steps, warmup, iters, latency_ms_median, latency_ms_p90, latency_ms_mean, latency_ms_min,
    latency_ms_max, img_per_sec, timed_iters, warmup_s, peak_memory_mb, memory_kind, param_count, gflops`` (per
    image; ``flops`` if given, else counted once at batch 1 unless ``count_model_flops`` is False) and ``error``
    (None, or the failure as text: an OOM at batch 1, or any other exception).
    """
    device = resolve_device(device)
    _check_choice('dtype', dtype, DTYPES)
    _check_mode_device(mode, device)
    if batch_size < 1 or iters < 1 or warmup < 0:
        raise ValueError(f'need batch_size >= 1, iters >= 1, warmup >= 0; got {batch_size}, {iters}, {warmup}.')
    row: dict[str, Any] = dict(
        model=name or type(model).__name__, batch_size=batch_size, requested_batch_size=batch_size,
        img_size=img_size, device=device_name(device), dtype=dtype, mode=mode, num_steps=num_steps,
        warmup=warmup, iters=iters, param_count=count_params(model), gflops=None, error=None)
    if flops is None and count_model_flops:
        try:
            flops = _model_flops(model.to(device), img_size, num_steps)
        except Exception as error:  # recorded, the timing still runs
            row['flops_error'] = _error_text(error)
    row['gflops'] = None if flops is None else flops / 1e9
    while True:
        runner = None
        try:
            runner = InferenceRunner(model, batch_size, img_size, device, dtype, mode, num_steps=num_steps)
            runner.warmup(warmup)
            runner.time_round(iters)
            row.update(runner.summary(), batch_size=batch_size)
            row.pop('round_img_per_sec')
            return row
        except Exception as error:
            error_text = _error_text(error)
            del runner
            _free_memory(device)
            next_batch = decay_batch_step(batch_size) if retry_oom and _is_oom(error) else 0
            if next_batch and check_batch_size_retry(error_text):
                _logger.warning('%s at batch size %d: retrying with %d.', error_text, batch_size, next_batch)
                batch_size = next_batch
                continue
            row.update(error=error_text, batch_size=batch_size)
            return row


# ---------------------------------------------------------------------------------------------- side by side

def ratio_stats(numerators: Sequence[Optional[float]], denominators: Sequence[Optional[float]]) -> dict[str, Any]:
    """Per-round ratios numerator / denominator: median, min, max and their count (pairs with a None skipped)."""
    if len(numerators) != len(denominators):
        raise ValueError(f'ratio_stats needs paired rounds, got {len(numerators)} and {len(denominators)} values.')
    ratios = [n / d for n, d in zip(numerators, denominators) if n is not None and d]
    if not ratios:
        return {'median': None, 'min': None, 'max': None, 'rounds': 0}
    return {'median': statistics.median(ratios), 'min': min(ratios), 'max': max(ratios), 'rounds': len(ratios)}


@dataclass
class _Entry:
    """One model measured in a cell: the teacher, a Raptor, or a Raptor stopped after num_steps (anytime)."""
    name: str
    role: str  # 'teacher' | 'raptor' | 'anytime'
    model: nn.Module
    depth: int
    k: Optional[int] = None
    block_schedule: Optional[tuple[int, ...]] = None
    num_steps: Optional[int] = None
    param_count: int = 0
    flops: Optional[int] = None


def _create_teacher(teacher: Union[str, nn.Module], img_size: int) -> tuple[str, nn.Module]:
    import timm
    if isinstance(teacher, nn.Module):
        return type(teacher).__name__, teacher
    if not timm.is_model(teacher):
        raise ValueError(f'Unknown timm teacher architecture {teacher!r}; see timm.list_models("vit_*").')
    return teacher, timm.create_model(teacher, pretrained=False, img_size=img_size)


def _resolve_pairs(
        teacher: Union[str, nn.Module, None],
        k: Union[int, Sequence[int], None],
        arch: Union[str, Sequence[str], None],
) -> tuple[Union[str, nn.Module], list[dict[str, Any]]]:
    """(teacher, [{'arch' | 'k'}]) from a teacher + k list, or registered arch names sharing one teacher."""
    from .models.raptor_vit import REGISTERED_RAPTOR_ARCHS as known
    archs = [arch] if isinstance(arch, str) else list(arch or ())
    ks = [k] if isinstance(k, int) else list(k or ())
    if archs:
        unknown = [a for a in archs if a not in known]
        if unknown:
            raise ValueError(f'Unknown Raptor arch(s) {unknown}; registered: timm.list_models("raptor_*").')
        teachers = {known[a]['teacher'] for a in archs}
        if teacher is None and len(teachers) == 1:
            teacher = teachers.pop()
        elif teacher is None or (isinstance(teacher, str) and teachers != {teacher}):
            raise ValueError(f'archs {archs} belong to teachers {sorted(teachers)}; compare one teacher per run.')
        return teacher, [{'arch': a} for a in archs] + [{'k': value} for value in ks]
    if teacher is None:
        raise ValueError('Pass a teacher (a timm ViT name such as vit_small_patch14_reg4_dinov2) or a Raptor arch.')
    if not ks:
        raise ValueError('Pass k (number of unique blocks, e.g. 2) or a registered Raptor arch.')
    return teacher, [{'k': value} for value in ks]


def _create_raptor(spec: dict[str, Any], teacher_model: nn.Module, img_size: int) -> tuple[str, nn.Module]:
    import timm

    from .models.raptor_vit import create_raptor_from_vit
    if 'arch' in spec:
        return spec['arch'], timm.create_model(spec['arch'], pretrained=False, img_size=img_size)
    model = create_raptor_from_vit(teacher_model, k=spec['k'])
    return f"raptor_k{spec['k']}", model


def _meta_copy_flops(factory: Callable[[], nn.Module], img_size: int, num_steps: Sequence[Optional[int]]) -> list[int]:
    """FLOPs per image of a model built by ``factory`` on the meta device, for each num_steps."""
    with torch.device('meta'):
        model = factory()
    return [_model_flops(model, img_size, steps) for steps in num_steps]


def _default_anytime_steps(depth: int) -> list[int]:
    return sorted({min(depth - 1, max(1, round(depth * f))) for f in (0.25, 0.5, 0.75)})


def _build_entries(
        teacher: Union[str, nn.Module],
        specs: list[dict[str, Any]],
        img_size: int,
        anytime_steps: Optional[Sequence[int]],
        count_model_flops: bool,
) -> tuple[str, list[_Entry], dict[int, list[_Entry]]]:
    """Teacher and Raptor entries (weights random-initialised) plus anytime entries per Raptor index."""
    teacher_name, teacher_model = _create_teacher(teacher, img_size)
    depth = len(teacher_model.blocks)
    teacher_flops = None
    if count_model_flops:
        teacher_flops = (_meta_copy_flops(lambda: _create_teacher(teacher, img_size)[1], img_size, [None])[0]
                         if isinstance(teacher, str) else _model_flops(teacher_model, img_size, None))
    entries = [_Entry(teacher_name, 'teacher', teacher_model.eval(), depth, param_count=count_params(teacher_model),
                      flops=teacher_flops)]
    anytime: dict[int, list[_Entry]] = {}
    for spec in specs:
        name, raptor = _create_raptor(spec, teacher_model, img_size)
        if raptor.depth != depth:
            raise ValueError(f'{name} runs {raptor.depth} steps but the teacher {teacher_name} has depth {depth}.')
        steps = list(_default_anytime_steps(depth) if anytime_steps is None else anytime_steps)
        bad = [m for m in steps if not 1 <= m < depth]
        if bad:
            raise ValueError(f'anytime steps {bad} out of range: use 1 <= num_steps < L = {depth}.')
        flops = [None] * (len(steps) + 1)
        if count_model_flops:
            # the Raptor rebuilt on the meta device (create_raptor_from_vit reads the teacher's architecture only)
            flops = _meta_copy_flops(lambda: _create_raptor(spec, teacher_model, img_size)[1], img_size, [None, *steps])
        k = len(raptor.block_schedule)
        schedule = tuple(raptor.block_schedule)
        entries.append(_Entry(name, 'raptor', raptor.eval(), depth, k, schedule, None, count_params(raptor), flops[0]))
        anytime[len(entries) - 1] = [
            _Entry(f'{name}@{m}', 'anytime', raptor, depth, k, schedule, m, count_params(raptor), f)
            for m, f in zip(steps, flops[1:])]
    return teacher_name, entries, anytime


def _run_cell(
        entries: list[_Entry],
        batch_size: int,
        img_size: int,
        device: torch.device,
        dtype: str,
        mode: str,
        warmup: int,
        iters: int,
        rounds: int,
) -> list[dict[str, Any]]:
    """Warm every entry up, then time ``rounds`` rounds in alternating order; OOM propagates to the caller."""
    runners: list[Optional[InferenceRunner]] = []
    errors: list[Optional[str]] = []
    for entry in entries:
        try:
            runner = InferenceRunner(entry.model, batch_size, img_size, device, dtype, mode, num_steps=entry.num_steps)
            runner.warmup(warmup)
            runners.append(runner)
            errors.append(None)
        except Exception as error:
            if _is_oom(error):
                raise
            runners.append(None)
            errors.append(_error_text(error))
    for round_index in range(rounds):
        order = list(range(len(entries)))
        for index in (order if round_index % 2 == 0 else reversed(order)):
            runner = runners[index]
            if runner is None:
                continue
            try:
                runner.time_round(iters)
            except Exception as error:
                if _is_oom(error):
                    raise
                runners[index] = None
                errors[index] = _error_text(error)
    results = []
    for runner, error in zip(runners, errors):
        results.append({'error': error} if runner is None else dict(runner.summary(), error=None))
    return results


def _reset_compiled_state(mode: str) -> None:
    if mode != 'eager':
        torch._dynamo.reset()


def compare_teacher_raptor(
        teacher: Union[str, nn.Module, None] = None,
        k: Union[int, Sequence[int], None] = 2,
        arch: Union[str, Sequence[str], None] = None,
        batch_sizes: Optional[Sequence[int]] = None,
        modes: Optional[Sequence[str]] = None,
        dtypes: Optional[Sequence[str]] = None,
        img_size: int = 224,
        device: Union[str, torch.device, None] = None,
        warmup: int = 10,
        iters: int = 20,
        rounds: int = 5,
        anytime_steps: Optional[Sequence[int]] = None,
        anytime_batch_size: Optional[int] = None,
        anytime_dtypes: Optional[Sequence[str]] = None,
        count_model_flops: bool = True,
        retry_oom: bool = True,
        progress: bool = True,
) -> list[dict[str, Any]]:
    """Teacher and Raptor(s) timed side by side for every (mode, dtype, batch size) cell: one row per model.

    Both models are random-initialised (speed does not depend on the weights). ``k`` may list several values
    (each a Raptor of ``teacher`` with the paper's phase boundaries scaled to its depth), ``arch`` names
    registered Raptor architectures (their teacher is implied). Raptor rows carry ``img_per_sec_ratio`` and
    ``latency_ratio`` (Raptor / teacher: median over rounds, with ``*_min`` / ``*_max``). Anytime cells
    (rows with ``cell='anytime'``) time the teacher, the full Raptor(s) and each Raptor stopped after
    ``anytime_steps`` (role 'anytime'; default L/4, L/2, 3L/4; ``[]`` for none) in the same rounds, at
    ``anytime_batch_size`` (default 64 if measured, else the largest batch size) in ``anytime_dtypes``
    (default the first dtype), in every mode. A cell that runs out of memory is retried at a smaller batch
    size for all of its models (``requested_batch_size`` keeps the asked one); other failures set ``error``.
    """
    from tqdm.auto import tqdm

    device = resolve_device(device)
    batch_sizes = tuple(batch_sizes or (GPU_BATCH_SIZES if device.type == 'cuda' else CPU_BATCH_SIZES))
    modes = tuple(modes or (('eager', 'compile', 'cudagraphs') if device.type == 'cuda' else ('eager',)))
    dtypes = tuple(dtypes or (('bf16', 'fp32') if device.type == 'cuda' else ('fp32',)))
    for mode in modes:
        _check_mode_device(mode, device)
    for dtype in dtypes:
        _check_choice('dtype', dtype, DTYPES)
    if any(b < 1 for b in batch_sizes) or rounds < 1 or iters < 1 or warmup < 0:
        raise ValueError(f'need batch sizes >= 1, rounds >= 1, iters >= 1, warmup >= 0; got {batch_sizes}, '
                         f'{rounds}, {iters}, {warmup}.')
    anytime_dtypes = tuple(anytime_dtypes or dtypes[:1])
    if anytime_batch_size is None:
        anytime_batch_size = 64 if 64 in batch_sizes else max(batch_sizes)
    teacher, specs = _resolve_pairs(teacher, k, arch)
    teacher_name, entries, anytime = _build_entries(teacher, specs, img_size, anytime_steps, count_model_flops)
    anytime_entries = [e for group in anytime.values() for e in group]

    cells = [(mode, dtype, b) for mode in modes for dtype in dtypes for b in batch_sizes]
    extra = [(mode, dtype, anytime_batch_size) for mode in modes for dtype in anytime_dtypes] if anytime_entries else []
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(cells) + len(extra), desc=f'bench {teacher_name}', disable=not progress)
    for cell_index, (mode, dtype, requested) in enumerate(cells + extra):
        is_anytime = cell_index >= len(cells)
        cell_entries = [*entries, *anytime_entries] if is_anytime else entries
        batch_size = requested
        bar.set_postfix_str(f'{mode} {dtype} b{requested}{" anytime" if is_anytime else ""}')
        while True:
            try:
                results = _run_cell(cell_entries, batch_size, img_size, device, dtype, mode, warmup, iters, rounds)
                break
            except Exception as error:
                _reset_compiled_state(mode)
                _free_memory(device)
                next_batch = decay_batch_step(batch_size) if retry_oom and _is_oom(error) else 0
                if next_batch and check_batch_size_retry(str(error)):
                    _logger.warning('%s at batch size %d: retrying the cell at %d.', _error_text(error),
                                    batch_size, next_batch)
                    batch_size = next_batch
                    continue
                results = [{'error': _error_text(error)} for _ in cell_entries]
                break
        _reset_compiled_state(mode)
        _free_memory(device)
        teacher_rounds = results[0].get('round_img_per_sec')
        for entry, result in zip(cell_entries, results):
            row = dict(
                teacher=teacher_name, model=entry.name, role=entry.role, cell='anytime' if is_anytime else 'main',
                k=entry.k, block_schedule=list(entry.block_schedule) if entry.block_schedule else None,
                num_steps=entry.num_steps if entry.num_steps is not None else entry.depth, depth=entry.depth,
                mode=mode, dtype=dtype, img_size=img_size, requested_batch_size=requested, batch_size=batch_size,
                warmup=warmup, iters_per_round=iters, rounds=rounds, param_count=entry.param_count,
                gflops=None if entry.flops is None else entry.flops / 1e9)
            row.update(result)
            if entry.role != 'teacher':
                ours = result.get('round_img_per_sec')
                if ours and teacher_rounds and len(ours) == len(teacher_rounds):
                    speed = ratio_stats(ours, teacher_rounds)
                    latency = ratio_stats([1 / v for v in ours], [1 / v for v in teacher_rounds])
                else:
                    speed = latency = ratio_stats([], [])
                row.update(img_per_sec_ratio=speed['median'], img_per_sec_ratio_min=speed['min'],
                           img_per_sec_ratio_max=speed['max'], latency_ratio=latency['median'],
                           latency_ratio_min=latency['min'], latency_ratio_max=latency['max'],
                           ratio_rounds=speed['rounds'])
            rows.append(row)
        bar.update()
    bar.close()
    return rows


# ---------------------------------------------------------------------------------------------- FLOPs table

def _block_params(model: nn.Module) -> int:
    return count_params(model.blocks)


def flops_row(
        arch_or_model: Union[str, nn.Module],
        teacher: Union[str, nn.Module, None] = None,
        img_size: int = 224,
) -> dict[str, Any]:
    """FLOPs and parameters of a Raptor against its teacher (one image at ``img_size``, meta device).

    ``arch_or_model`` is a registered Raptor arch or a RaptorVisionTransformer; ``teacher`` (a timm name or a
    module) defaults to the arch's teacher (``REGISTERED_RAPTOR_ARCHS``) or the model's ``raptor_meta['teacher']``. Also
    reports the same Raptor with the paper's SwiGLU blocks, the cost of depth scaling (``t_scale``) and of
    relaxation (per-step low-rank adapters, ``relax_rank`` > 0; zero for a pure Raptor). A module is rebuilt on the meta device from its ``model_args`` (its architecture, not its weights, is counted).
    """
    import timm

    from .models.raptor_timm import raptor_from_model_args
    from .models.raptor_vit import REGISTERED_RAPTOR_ARCHS as known
    from .models.raptor_vit import RaptorVisionTransformer
    if isinstance(arch_or_model, str):
        if arch_or_model not in known:
            raise ValueError(f'Unknown Raptor arch {arch_or_model!r}; registered: timm.list_models("raptor_*").')
        arch = arch_or_model
        model_args = {}
        teacher = teacher if teacher is not None else known[arch]['teacher']
    elif isinstance(arch_or_model, RaptorVisionTransformer):
        arch = getattr(arch_or_model, 'pretrained_cfg', {}).get('architecture') or type(arch_or_model).__name__
        model_args = dict(arch_or_model.model_args)
        teacher = teacher if teacher is not None else arch_or_model.raptor_meta.get('teacher')
    else:
        raise TypeError(f'flops_row takes a Raptor arch name or a RaptorVisionTransformer, got '
                        f'{type(arch_or_model).__name__}.')
    if teacher is None:
        raise ValueError(f'{arch}: pass teacher= (a timm name or module); the model records none.')
    model_args['img_size'] = img_size
    input_size = (3, img_size, img_size)

    def build(**overrides: Any) -> nn.Module:
        with torch.device('meta'):
            if isinstance(arch_or_model, str):  # through timm, so the arch's pretrained_cfg (num_classes) applies
                return timm.create_model(arch, pretrained=False, **dict(model_args, **overrides))
            return raptor_from_model_args(dict(model_args, **overrides))

    if isinstance(teacher, str):
        if not timm.is_model(teacher):
            raise ValueError(f'Unknown timm teacher architecture {teacher!r}; see timm.list_models("vit_*").')
        teacher_name = teacher
        with torch.device('meta'):
            teacher_model = timm.create_model(teacher, pretrained=False, img_size=img_size)
    else:
        teacher_model = getattr(teacher, 'model', teacher)  # a raptor_zoo Teacher wraps its timm ViT
        teacher_name = getattr(teacher, 'name', None) or type(teacher_model).__name__
    raptor = build()
    swiglu = build(block_type='swiglu')
    no_depth_scale = build(t_scale=False)
    relaxation = relaxation_overhead(raptor, input_size)
    teacher_flops = count_flops(teacher_model, input_size)
    raptor_flops = count_flops(raptor, input_size)
    swiglu_flops = count_flops(swiglu, input_size)
    plain_flops = count_flops(no_depth_scale, input_size)
    teacher_params, raptor_params, swiglu_params = (count_params(m) for m in (teacher_model, raptor, swiglu))
    teacher_block_params, raptor_block_params = _block_params(teacher_model), _block_params(raptor)
    return {
        'arch': arch,
        'teacher': teacher_name,
        'k': len(raptor.block_schedule),
        'block_schedule': list(raptor.block_schedule),
        'depth': raptor.depth,
        'img_size': img_size,
        'teacher_gflops': teacher_flops / 1e9,
        'raptor_gflops': raptor_flops / 1e9,
        'flops_ratio': raptor_flops / teacher_flops,
        'teacher_params': teacher_params,
        'raptor_params': raptor_params,
        'params_ratio': raptor_params / teacher_params,
        'teacher_block_params': teacher_block_params,
        'raptor_block_params': raptor_block_params,
        'block_params_ratio': raptor_block_params / teacher_block_params,
        'swiglu_gflops': swiglu_flops / 1e9,
        'swiglu_flops_ratio': swiglu_flops / teacher_flops,
        'swiglu_params': swiglu_params,
        'swiglu_params_ratio': swiglu_params / teacher_params,
        'depth_scale_flops': raptor_flops - plain_flops,
        'depth_scale_flops_fraction': (raptor_flops - plain_flops) / raptor_flops,
        'depth_scale_params': raptor_params - count_params(no_depth_scale),
        'relax_rank': relaxation['relax_rank'],
        'relax_flops': relaxation['relax_flops'],
        'relax_flops_fraction': relaxation['relax_flops'] / raptor_flops,
        'relax_params': relaxation['relax_params'],
        'relax_params_ratio': relaxation['relax_params'] / raptor_block_params,
        'flops_convention': FLOPS_CONVENTION,
    }


# ---------------------------------------------------------------------------------------------- writers

def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.device):
        return str(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def write_json(
        rows: Sequence[dict[str, Any]],
        path: Union[str, Path],
        environment: Optional[dict[str, Any]] = None,
        settings: Optional[dict[str, Any]] = None,
        notes: Sequence[str] = (),
        extra: Optional[dict[str, Any]] = None,
) -> Path:
    """``{'environment', 'settings', 'notes', **extra, 'rows'}`` as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {'environment': environment or {}, 'settings': settings or {}, 'notes': list(notes), **(extra or {}),
               'rows': list(rows)}
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + '\n')
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return '–'
    if isinstance(value, float):
        return f'{value:,.{digits}f}'
    return str(value)


def _ratio_text(row: dict[str, Any], key: str) -> str:
    median = row.get(key)
    if median is None:
        return '–'
    low, high = row.get(f'{key}_min'), row.get(f'{key}_max')
    return f'{median:.3f} ({low:.3f}–{high:.3f})' if low is not None else f'{median:.3f}'


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Throughput rows as a Markdown table (ratios: median over rounds, min–max in brackets)."""
    header = ('| mode | dtype | batch | model | steps | img/s | median ms | p90 ms | peak MB | GFLOPs/img | params (M) '
              '| img/s ratio | latency ratio |')
    lines = [header, '|' + '---|' * 13]
    for row in rows:
        batch = str(row['batch_size'])
        if row.get('requested_batch_size') not in (None, row['batch_size']):
            batch += f" (asked {row['requested_batch_size']})"
        model = row['model'] + (f" error: {row['error'][:80]}" if row.get('error') else '')
        lines.append('| ' + ' | '.join([
            row['mode'], row['dtype'], batch, model, _fmt(row.get('num_steps')), _fmt(row.get('img_per_sec')),
            _fmt(row.get('latency_ms_median'), 2), _fmt(row.get('latency_ms_p90'), 2),
            _fmt(row.get('peak_memory_mb'), 0), _fmt(row.get('gflops'), 2),
            _fmt(row['param_count'] / 1e6 if row.get('param_count') else None, 2),
            _ratio_text(row, 'img_per_sec_ratio'), _ratio_text(row, 'latency_ratio')]) + ' |')
    return '\n'.join(lines)


def write_markdown(
        rows: Sequence[dict[str, Any]],
        path: Union[str, Path],
        environment: Optional[dict[str, Any]] = None,
        settings: Optional[dict[str, Any]] = None,
        notes: Sequence[str] = (),
        title: str = 'Inference throughput: teacher vs Raptor',
        plot_name: Optional[str] = None,
) -> Path:
    """A Markdown report: environment, settings, notes, the main table and the anytime table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    environment = environment or {}
    lines = [f'# {title}', '']
    if environment:
        lines.append('- ' + '; '.join(f'{key}: {value}' for key, value in environment.items()))
    if settings:
        lines.append('- settings: ' + '; '.join(
            f'{key}={value}' for key, value in settings.items() if key not in ('notes', 'out')))
    lines.extend(f'- {note}' for note in notes)
    lines.append('- ratios are Raptor / teacher, measured side by side in alternating rounds: median (min–max) over '
                 'rounds; latency ratio < 1 and img/s ratio > 1 mean the Raptor is faster.')
    lines += ['', markdown_table([r for r in rows if r.get('cell', 'main') == 'main'])]
    anytime = [r for r in rows if r.get('cell') == 'anytime']
    if anytime:
        lines += ['', '## Anytime inference (Raptor stopped after `num_steps` < L block applications)', '',
                  'Ratios are against the full-depth teacher measured in the same rounds.', '',
                  markdown_table(anytime)]
    if plot_name:
        lines += ['', f'![throughput]({plot_name})']
    path.write_text('\n'.join(lines) + '\n')
    return path


def _plain_log_ticks(ax: Any, xticks: Sequence[int]) -> None:
    """Batch sizes as plain x tick labels on the log x axis instead of 10^x notation."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ax.set_xticks(list(xticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_throughput(rows: Sequence[dict[str, Any]], path: Union[str, Path]) -> Path:
    """PNG: img/s vs batch size per dtype (teacher solid, Raptors dashed, a colour per mode), the Raptor/teacher
    img/s ratio with its min–max over rounds, and anytime img/s vs steps."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    main = [r for r in rows if r.get('cell', 'main') == 'main' and r.get('img_per_sec')]
    anytime = [r for r in rows if r.get('cell') == 'anytime' and r.get('img_per_sec')]
    dtypes = sorted({r['dtype'] for r in main}) or ['fp32']
    modes = [m for m in MODES if any(r['mode'] == m for r in rows)]
    colours = dict(zip(MODES, ('tab:blue', 'tab:orange', 'tab:green')))
    panels = len(dtypes) + 1 + (1 if anytime else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    axes = axes[0]
    models = list(dict.fromkeys(r['model'] for r in main))
    batch_sizes = sorted({r['batch_size'] for r in main})
    styles = ['-', '--', ':', '-.']
    for ax, dtype in zip(axes, dtypes):
        for mode in modes:
            for index, model in enumerate(models):
                points = sorted((r['batch_size'], r['img_per_sec']) for r in main
                                if r['mode'] == mode and r['dtype'] == dtype and r['model'] == model)
                if points:
                    ax.plot(*zip(*points), styles[index % len(styles)], marker='o', color=colours[mode],
                            label=f'{model} {mode}')
        speeds = [r['img_per_sec'] for r in main if r['dtype'] == dtype]
        # a log img/s axis only when the values span a decade (a narrower log axis gets no labelled ticks)
        ax.set(xscale='log', yscale='log' if max(speeds) >= 10 * min(speeds) else 'linear', xlabel='batch size',
               ylabel='img/s', title=f'throughput ({dtype})')
        _plain_log_ticks(ax, batch_sizes)
        ax.grid(True, which='both', alpha=0.3)
        ax.legend(fontsize=7)
    ratio_ax = axes[len(dtypes)]
    for mode in modes:
        for dtype_index, dtype in enumerate(dtypes):
            for model in models:
                points = sorted((r['batch_size'], r['img_per_sec_ratio'], r['img_per_sec_ratio_min'],
                                 r['img_per_sec_ratio_max']) for r in main
                                if r['role'] == 'raptor' and r['mode'] == mode and r['dtype'] == dtype
                                and r['model'] == model and r.get('img_per_sec_ratio') is not None)
                if points:
                    x, y, low, high = zip(*points)
                    ratio_ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, low)], [b - a for a, b in zip(y, high)]],
                                      fmt=styles[dtype_index % len(styles)], marker='o', color=colours[mode],
                                      capsize=3, label=f'{model} {mode} {dtype}')
    ratio_ax.axhline(1.0, color='grey', lw=1)
    ratio_ax.set(xscale='log', xlabel='batch size', ylabel='Raptor / teacher img/s',
                 title='speed ratio (median, min–max over rounds)')
    _plain_log_ticks(ratio_ax, batch_sizes)
    ratio_ax.grid(True, alpha=0.3)
    ratio_ax.legend(fontsize=7)
    if anytime:
        ax = axes[-1]
        for mode in modes:
            for dtype in sorted({r['dtype'] for r in anytime}):
                cell = [r for r in anytime if r['mode'] == mode and r['dtype'] == dtype]
                teacher = [r for r in cell if r['role'] == 'teacher']
                bases = sorted({r['model'].split('@')[0] for r in cell if r['role'] == 'anytime'})
                for index, base in enumerate(bases):
                    points = [(r['num_steps'], r['img_per_sec']) for r in cell
                              if r['role'] != 'teacher' and r['model'].split('@')[0] == base]
                    batch = cell[0]['batch_size']
                    ax.plot(*zip(*sorted(points)), styles[index % len(styles)], marker='o', color=colours[mode],
                            label=f'{base} {mode} {dtype} (batch {batch})')
                if teacher:
                    ax.axhline(teacher[0]['img_per_sec'], color=colours[mode], lw=1, alpha=0.6,
                               label=f"{teacher[0]['model']} (full depth)")
        ax.set(xlabel='block applications run (num_steps)', ylabel='img/s', title='anytime inference')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- command line

@dataclass
class BenchSettings:
    """Resolved settings of one ``bench`` run (device-dependent defaults filled in)."""
    teacher: Optional[str]
    k: list[int]
    arch: list[str]
    device: str
    batch_sizes: list[int]
    modes: list[str]
    dtypes: list[str]
    img_size: int
    warmup: int
    iters: int
    rounds: int
    anytime_steps: Optional[list[int]]
    anytime_batch_size: Optional[int]
    quick: bool
    out: str
    plot: bool
    retry_oom: bool
    matmul_precision: str
    num_threads: Optional[int] = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def add_bench_arguments(parser: argparse.ArgumentParser, default_results_dir: Union[str, Path] = 'benchmarks/results'
                        ) -> argparse.ArgumentParser:
    """Add the throughput benchmark's flags (shared by benchmarks/throughput.py and ``raptor-zoo bench``)."""
    group = parser.add_argument_group('Model parameters')
    group.add_argument('--teacher', default=None,
                       help='timm ViT teacher name, e.g. vit_small_patch14_reg4_dinov2 (default: the --arch teacher)')
    group.add_argument('--k', type=int, nargs='+', default=None,
                       help='unique blocks of the Raptor(s) built from --teacher; several values run side by side '
                            '(default: 2 unless --arch is given)')
    group.add_argument('--arch', nargs='+', default=None,
                       help='registered Raptor arch(s), e.g. raptor_vit_small_patch14_reg4_dinov2_k2 (default: none)')
    group.add_argument('--img-size', type=int, default=224, help='input resolution (default: 224)')
    group = parser.add_argument_group('Benchmark parameters')
    group.add_argument('--device', default='auto', help="'cpu', 'cuda' or 'auto' (default: auto)")
    group.add_argument('--batch-sizes', type=int, nargs='+', default=None,
                       help=f'batch sizes (default: {" ".join(map(str, GPU_BATCH_SIZES))} on GPU, '
                            f'{" ".join(map(str, CPU_BATCH_SIZES))} on CPU)')
    group.add_argument('--modes', nargs='+', choices=MODES, default=None,
                       help='eager, compile (torch.compile) and/or cudagraphs (compile mode reduce-overhead) '
                            '(default: all three on GPU; eager and compile on CPU, eager only with --quick)')
    group.add_argument('--dtypes', nargs='+', choices=DTYPES, default=None,
                       help='fp32 and/or bf16 (autocast) (default: bf16 fp32 on GPU, fp32 on CPU)')
    group.add_argument('--warmup', type=int, default=None, help='warm-up calls per model and cell (default: 10 GPU, '
                       '2 CPU; --quick 3 GPU, 1 CPU)')
    group.add_argument('--iters', type=int, default=None, help='timed calls per model and round (default: 20 GPU, '
                       '5 CPU; --quick 10 GPU, 2 CPU)')
    group.add_argument('--rounds', type=int, default=None,
                       help='alternating rounds per cell (default: 5; --quick 3)')
    group.add_argument('--anytime-steps', type=int, nargs='*', default=None,
                       help='num_steps < L to time the Raptor at (anytime inference); give none to skip '
                            '(default: L/4 L/2 3L/4; L/2 only with --quick on CPU)')
    group.add_argument('--anytime-batch-size', type=int, default=None,
                       help='batch size of the anytime rows (default: 64 if measured, else the largest; '
                            '1 with --quick on CPU)')
    group.add_argument('--matmul-precision', choices=('highest', 'high', 'medium'), default='highest',
                       help='torch.set_float32_matmul_precision for the fp32 rows; high allows TF32 (default: highest)')
    group.add_argument('--num-threads', type=int, default=None,
                       help='torch.set_num_threads for CPU runs; 1 avoids oversubscription on a shared machine '
                            '(default: torch\'s default)')
    group.add_argument('--no-retry-oom', action='store_true',
                       help='record OOM as an error instead of stepping the batch size down (default: retry)')
    group.add_argument('--quick', action='store_true', help='few iterations (on CPU: eager only unless --modes '
                       'is given), for a smoke run (default: off)')
    group = parser.add_argument_group('Output parameters')
    group.add_argument('--out', default=None,
                       help=f'output folder (default: {default_results_dir}/<device>-<YYYYmmdd>)')
    group.add_argument('--note', action='append', default=[],
                       help='a line written into the results, e.g. "2 CPU cores shared with other work" '
                            '(repeatable; default: none)')
    group.add_argument('--no-plot', action='store_true', help='skip the PNG plot (default: plot)')
    parser.set_defaults(default_results_dir=str(default_results_dir))
    return parser


def resolve_bench_settings(args: argparse.Namespace) -> BenchSettings:
    """Fill the device-dependent defaults and validate every flag before any model is built."""
    device = resolve_device(args.device)
    on_gpu = device.type == 'cuda'
    notes = list(args.note or [])
    if args.modes:
        modes = list(dict.fromkeys(args.modes))
    elif on_gpu:
        modes = list(MODES)
    elif args.quick:
        modes = ['eager']
        notes.append('CPU --quick: eager mode only (pass --modes eager compile to add torch.compile)')
    else:
        modes = ['eager', 'compile']
    for mode in modes:
        _check_mode_device(mode, device)
    dtypes = list(dict.fromkeys(args.dtypes or (['bf16', 'fp32'] if on_gpu else ['fp32'])))
    batch_sizes = list(args.batch_sizes or (GPU_BATCH_SIZES if on_gpu else CPU_BATCH_SIZES))
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f'--batch-sizes must all be >= 1, got {batch_sizes}.')
    # (warmup, iters, rounds) by (GPU, quick)
    defaults = {(True, False): (10, 20, 5), (True, True): (3, 10, 3),
                (False, False): (2, 5, 5), (False, True): (1, 2, 3)}
    warmup, iters, rounds = defaults[(on_gpu, bool(args.quick))]
    warmup = warmup if args.warmup is None else args.warmup
    iters = iters if args.iters is None else args.iters
    rounds = rounds if args.rounds is None else args.rounds
    if warmup < 0 or iters < 1 or rounds < 1:
        raise ValueError(f'need --warmup >= 0, --iters >= 1, --rounds >= 1; got {warmup}, {iters}, {rounds}.')
    if args.img_size < 1:
        raise ValueError(f'--img-size must be >= 1, got {args.img_size}.')
    if args.num_threads is not None and args.num_threads < 1:
        raise ValueError(f'--num-threads must be >= 1, got {args.num_threads}.')
    k = list(args.k or ([] if args.arch else [2]))
    if args.teacher is None and not args.arch:
        raise ValueError('pass --teacher (a timm ViT name, e.g. vit_small_patch14_reg4_dinov2) or --arch '
                         '(a registered Raptor, e.g. raptor_vit_small_patch14_reg4_dinov2_k2).')
    _resolve_pairs(args.teacher, k, args.arch)  # validates names before any model is built
    if args.teacher is not None:
        import timm
        if not timm.is_model(args.teacher):
            raise ValueError(f'Unknown timm teacher architecture {args.teacher!r}; see timm.list_models("vit_*").')
    anytime_batch_size = args.anytime_batch_size
    anytime_steps = None if args.anytime_steps is None else list(args.anytime_steps)
    if args.quick and not on_gpu:
        anytime_batch_size = min(batch_sizes) if anytime_batch_size is None else anytime_batch_size
        if anytime_steps is None:
            anytime_steps = [_anytime_depth(args) // 2]
    if not on_gpu:
        notes.append(_CPU_MEMORY_NOTE)
    out = args.out or str(Path(args.default_results_dir) / f'{device_slug(device)}-{datetime.date.today():%Y%m%d}')
    return BenchSettings(
        teacher=args.teacher, k=k, arch=list(args.arch or []), device=str(device), batch_sizes=batch_sizes,
        modes=modes, dtypes=dtypes, img_size=args.img_size, warmup=warmup, iters=iters, rounds=rounds,
        anytime_steps=anytime_steps, anytime_batch_size=anytime_batch_size, quick=bool(args.quick), out=out,
        plot=not args.no_plot, retry_oom=not args.no_retry_oom, matmul_precision=args.matmul_precision,
        num_threads=args.num_threads, notes=notes)


def _anytime_depth(args: argparse.Namespace) -> int:
    """Depth L of the teacher named by the flags (built on the meta device)."""
    import timm

    from .models.raptor_vit import REGISTERED_RAPTOR_ARCHS
    teacher = args.teacher or REGISTERED_RAPTOR_ARCHS[args.arch[0]]['teacher']
    with torch.device('meta'):
        return len(timm.create_model(teacher, pretrained=False, img_size=args.img_size).blocks)


def _run_stem(settings: BenchSettings) -> str:
    """File stem of a run: throughput_<teacher>_k<k values>_<modes>_<dtypes>, so split runs do not collide."""
    from .models.raptor_vit import REGISTERED_RAPTOR_ARCHS
    teacher = settings.teacher or REGISTERED_RAPTOR_ARCHS[settings.arch[0]]['teacher']

    def label(arch: str) -> str:
        spec = REGISTERED_RAPTOR_ARCHS[arch]
        rank = spec['model_args'].get('relax_rank', 0)
        return f"{spec['k']}" + (f"r{rank}" if rank else '')

    ks = list(dict.fromkeys([*map(str, settings.k), *map(label, settings.arch)]))
    return f"throughput_{teacher}_k{'-'.join(map(str, ks))}_{'-'.join(settings.modes)}_{'-'.join(settings.dtypes)}"


def bench_command(args: argparse.Namespace) -> dict[str, Path]:
    """Run the side-by-side benchmark from parsed flags; write JSON, Markdown and PNG; return their paths."""
    settings = resolve_bench_settings(args)
    for note in settings.notes:
        print(f'note: {note}')
    torch.set_float32_matmul_precision(settings.matmul_precision)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    device = torch.device(settings.device)
    environment = environment_info(device)
    start = time.perf_counter()
    rows = compare_teacher_raptor(
        teacher=settings.teacher, k=settings.k, arch=settings.arch, batch_sizes=settings.batch_sizes,
        modes=settings.modes, dtypes=settings.dtypes, img_size=settings.img_size, device=device,
        warmup=settings.warmup, iters=settings.iters, rounds=settings.rounds, anytime_steps=settings.anytime_steps,
        anytime_batch_size=settings.anytime_batch_size, retry_oom=settings.retry_oom)
    environment['bench_wall_s'] = round(time.perf_counter() - start, 1)
    out = Path(settings.out)
    stem = _run_stem(settings)
    paths = {'json': write_json(rows, out / f'{stem}.json', environment, settings.to_dict(), settings.notes)}
    if settings.plot:
        paths['png'] = plot_throughput(rows, out / f'{stem}.png')
    paths['md'] = write_markdown(rows, out / f'{stem}.md', environment, settings.to_dict(), settings.notes,
                                 plot_name=paths['png'].name if 'png' in paths else None)
    print(markdown_table([r for r in rows if r.get('cell', 'main') == 'main']))
    for kind, path in paths.items():
        print(f'wrote {kind}: {path}')
    return paths
