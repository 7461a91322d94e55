"""Teacher against Raptor: measured side by side (:func:`compare_teacher_raptor`) and counted (:func:`flops_row`).

Side by side: per cell (mode, dtype, batch size) every model is warmed up, then timed in rounds whose order
alternates (ABBA), so machine drift hits all of them; the Raptor / teacher ratios are taken per round and reported
as median and min-max over rounds. Anytime rows time the Raptor stopping after ``num_steps`` < L block applications.
"""
from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from timm.utils import check_batch_size_retry, decay_batch_step

from raptor_zoo_cli.options import CPU_BATCH_SIZES, GPU_BATCH_SIZES

from ..flops import FLOPS_CONVENTION, count_flops, count_params, flops_table
from .environment import resolve_device
from .runners import (
    DTYPES,
    InferenceRunner,
    _check_choice,
    _check_mode_device,
    _error_text,
    _free_memory,
    _is_oom,
    _model_flops,
)

__all__ = ["GPU_BATCH_SIZES", "CPU_BATCH_SIZES", "ratio_stats", "compare_teacher_raptor", "flops_row"]

_logger = logging.getLogger(__name__)


def ratio_stats(numerators: Sequence[float | None], denominators: Sequence[float | None]) -> dict[str, Any]:
    """Per-round ratios numerator / denominator: median, min, max and their count (pairs with a None skipped)."""
    if len(numerators) != len(denominators):
        raise ValueError(f"ratio_stats needs paired rounds, got {len(numerators)} and {len(denominators)} values.")
    ratios = [n / d for n, d in zip(numerators, denominators) if n is not None and d]
    if not ratios:
        return {"median": None, "min": None, "max": None, "rounds": 0}
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": len(ratios)}


@dataclass
class _Entry:
    """One model measured in a cell: the teacher, a Raptor, or a Raptor stopped after num_steps (anytime)."""
    name: str
    role: str  # 'teacher' | 'raptor' | 'anytime'
    model: nn.Module
    depth: int
    k: int | None = None
    block_schedule: tuple[int, ...] | None = None
    num_steps: int | None = None
    param_count: int = 0
    flops: int | None = None


def _create_teacher(teacher: str | nn.Module, img_size: int) -> tuple[str, nn.Module]:
    import timm
    if isinstance(teacher, nn.Module):
        return type(teacher).__name__, teacher
    if not timm.is_model(teacher):
        raise ValueError(f'Unknown timm teacher architecture {teacher!r}; see timm.list_models("vit_*").')
    return teacher, timm.create_model(teacher, pretrained=False, img_size=img_size)


def _resolve_pairs(
        teacher: str | nn.Module | None,
        k: int | Sequence[int] | None,
        arch: str | Sequence[str] | None,
) -> tuple[str | nn.Module, list[dict[str, Any]]]:
    """(teacher, [{'arch' | 'k'}]) from a teacher + k list, or registered arch names sharing one teacher."""
    from ..models.archs import REGISTERED_RAPTOR_ARCHS as known
    archs = [arch] if isinstance(arch, str) else list(arch or ())
    ks = [k] if isinstance(k, int) else list(k or ())
    if archs:
        unknown = [a for a in archs if a not in known]
        if unknown:
            raise ValueError(f'Unknown Raptor arch(s) {unknown}; registered: timm.list_models("raptor_*").')
        teachers = {known[a]["teacher"] for a in archs}
        if teacher is None and len(teachers) == 1:
            teacher = teachers.pop()
        elif teacher is None or (isinstance(teacher, str) and teachers != {teacher}):
            raise ValueError(f"archs {archs} belong to teachers {sorted(teachers)}; compare one teacher per run.")
        return teacher, [{"arch": a} for a in archs] + [{"k": value} for value in ks]
    if teacher is None:
        raise ValueError("Pass a teacher (a timm ViT name such as vit_small_patch14_reg4_dinov2) or a Raptor arch.")
    if not ks:
        raise ValueError("Pass k (number of unique blocks, e.g. 2) or a registered Raptor arch.")
    return teacher, [{"k": value} for value in ks]


def _create_raptor(spec: dict[str, Any], teacher_model: nn.Module, img_size: int) -> tuple[str, nn.Module]:
    import timm

    from ..models.raptor_vit import create_raptor_from_vit
    if "arch" in spec:
        return spec["arch"], timm.create_model(spec["arch"], pretrained=False, img_size=img_size)
    model = create_raptor_from_vit(teacher_model, k=spec["k"])
    return f"raptor_k{spec['k']}", model


def _meta_copy_flops(factory: Callable[[], nn.Module], img_size: int, num_steps: Sequence[int | None]) -> list[int]:
    """FLOPs per image of a model built by ``factory`` on the meta device, for each num_steps."""
    with torch.device("meta"):
        model = factory()
    return [_model_flops(model, img_size, steps) for steps in num_steps]


def _default_anytime_steps(depth: int) -> list[int]:
    return sorted({min(depth - 1, max(1, round(depth * f))) for f in (0.25, 0.5, 0.75)})


def _build_entries(
        teacher: str | nn.Module,
        specs: list[dict[str, Any]],
        img_size: int,
        anytime_steps: Sequence[int] | None,
        count_model_flops: bool,
) -> tuple[str, list[_Entry], dict[int, list[_Entry]]]:
    """Teacher and Raptor entries (weights random-initialised) plus anytime entries per Raptor index."""
    teacher_name, teacher_model = _create_teacher(teacher, img_size)
    depth = len(teacher_model.blocks)
    teacher_flops = None
    if count_model_flops:
        teacher_flops = (_meta_copy_flops(lambda: _create_teacher(teacher, img_size)[1], img_size, [None])[0]
                         if isinstance(teacher, str) else _model_flops(teacher_model, img_size, None))
    entries = [_Entry(teacher_name, "teacher", teacher_model.eval(), depth, param_count=count_params(teacher_model),
                      flops=teacher_flops)]
    anytime: dict[int, list[_Entry]] = {}
    for spec in specs:
        name, raptor = _create_raptor(spec, teacher_model, img_size)
        if raptor.depth != depth:
            raise ValueError(f"{name} runs {raptor.depth} steps but the teacher {teacher_name} has depth {depth}.")
        steps = list(_default_anytime_steps(depth) if anytime_steps is None else anytime_steps)
        bad = [m for m in steps if not 1 <= m < depth]
        if bad:
            raise ValueError(f"anytime steps {bad} out of range: use 1 <= num_steps < L = {depth}.")
        flops = [None] * (len(steps) + 1)
        if count_model_flops:
            # the Raptor rebuilt on the meta device (create_raptor_from_vit reads the teacher's architecture only)
            flops = _meta_copy_flops(lambda: _create_raptor(spec, teacher_model, img_size)[1], img_size, [None, *steps])
        k = len(raptor.block_schedule)
        schedule = tuple(raptor.block_schedule)
        entries.append(_Entry(name, "raptor", raptor.eval(), depth, k, schedule, None, count_params(raptor), flops[0]))
        anytime[len(entries) - 1] = [
            _Entry(f"{name}@{m}", "anytime", raptor, depth, k, schedule, m, count_params(raptor), f)
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
    runners: list[InferenceRunner | None] = []
    errors: list[str | None] = []
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
        results.append({"error": error} if runner is None else dict(runner.summary(), error=None))
    return results


def _reset_compiled_state(mode: str) -> None:
    if mode != "eager":
        torch._dynamo.reset()


def compare_teacher_raptor(
        teacher: str | nn.Module | None = None,
        k: int | Sequence[int] | None = 2,
        arch: str | Sequence[str] | None = None,
        batch_sizes: Sequence[int] | None = None,
        modes: Sequence[str] | None = None,
        dtypes: Sequence[str] | None = None,
        img_size: int = 224,
        device: str | torch.device | None = None,
        warmup: int = 10,
        iters: int = 20,
        rounds: int = 5,
        anytime_steps: Sequence[int] | None = None,
        anytime_batch_size: int | None = None,
        anytime_dtypes: Sequence[str] | None = None,
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
    batch_sizes = tuple(batch_sizes or (GPU_BATCH_SIZES if device.type == "cuda" else CPU_BATCH_SIZES))
    modes = tuple(modes or (("eager", "compile", "cudagraphs") if device.type == "cuda" else ("eager",)))
    dtypes = tuple(dtypes or (("bf16", "fp32") if device.type == "cuda" else ("fp32",)))
    for mode in modes:
        _check_mode_device(mode, device)
    for dtype in dtypes:
        _check_choice("dtype", dtype, DTYPES)
    if any(b < 1 for b in batch_sizes) or rounds < 1 or iters < 1 or warmup < 0:
        raise ValueError(f"need batch sizes >= 1, rounds >= 1, iters >= 1, warmup >= 0; got {batch_sizes}, "
                         f"{rounds}, {iters}, {warmup}.")
    anytime_dtypes = tuple(anytime_dtypes or dtypes[:1])
    if anytime_batch_size is None:
        anytime_batch_size = 64 if 64 in batch_sizes else max(batch_sizes)
    teacher, specs = _resolve_pairs(teacher, k, arch)
    teacher_name, entries, anytime = _build_entries(teacher, specs, img_size, anytime_steps, count_model_flops)
    anytime_entries = [e for group in anytime.values() for e in group]

    cells = [(mode, dtype, b) for mode in modes for dtype in dtypes for b in batch_sizes]
    extra = [(mode, dtype, anytime_batch_size) for mode in modes for dtype in anytime_dtypes] if anytime_entries else []
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(cells) + len(extra), desc=f"bench {teacher_name}", disable=not progress)
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
                    _logger.warning("%s at batch size %d: retrying the cell at %d.", _error_text(error),
                                    batch_size, next_batch)
                    batch_size = next_batch
                    continue
                results = [{"error": _error_text(error)} for _ in cell_entries]
                break
        _reset_compiled_state(mode)
        _free_memory(device)
        teacher_rounds = results[0].get("round_img_per_sec")
        for entry, result in zip(cell_entries, results):
            row = dict(
                teacher=teacher_name, model=entry.name, role=entry.role, cell="anytime" if is_anytime else "main",
                k=entry.k, block_schedule=list(entry.block_schedule) if entry.block_schedule else None,
                num_steps=entry.num_steps if entry.num_steps is not None else entry.depth, depth=entry.depth,
                mode=mode, dtype=dtype, img_size=img_size, requested_batch_size=requested, batch_size=batch_size,
                warmup=warmup, iters_per_round=iters, rounds=rounds, param_count=entry.param_count,
                gflops=None if entry.flops is None else entry.flops / 1e9)
            row.update(result)
            if entry.role != "teacher":
                ours = result.get("round_img_per_sec")
                if ours and teacher_rounds and len(ours) == len(teacher_rounds):
                    speed = ratio_stats(ours, teacher_rounds)
                    latency = ratio_stats([1 / v for v in ours], [1 / v for v in teacher_rounds])
                else:
                    speed = latency = ratio_stats([], [])
                row.update(img_per_sec_ratio=speed["median"], img_per_sec_ratio_min=speed["min"],
                           img_per_sec_ratio_max=speed["max"], latency_ratio=latency["median"],
                           latency_ratio_min=latency["min"], latency_ratio_max=latency["max"],
                           ratio_rounds=speed["rounds"])
            rows.append(row)
        bar.update()
    bar.close()
    return rows


def flops_row(
        arch_or_model: str | nn.Module,
        teacher: str | nn.Module | None = None,
        img_size: int = 224,
) -> dict[str, Any]:
    """FLOPs and parameters of a Raptor against its teacher (one image at ``img_size``, meta device).

    ``arch_or_model`` is a registered Raptor arch or a Raptor of any family; ``teacher`` (a timm name or a
    module) defaults to the arch's teacher (``REGISTERED_RAPTOR_ARCHS``) or the model's ``raptor_meta['teacher']``.
    The counts are :func:`raptor_zoo.flops.flops_table`'s (the model cards show the same); the row adds the same
    Raptor with the paper's SwiGLU blocks, the cost of depth scaling (``t_scale``) and of relaxation (per-step
    low-rank adapters, ``relax_rank`` > 0; zero for a pure Raptor). A module is rebuilt on the meta device from its
    ``model_args`` (its architecture, not its weights, is counted).
    """
    import timm

    from ..models.archs import REGISTERED_RAPTOR_ARCHS as known
    from ..models.raptor_base import RaptorMixin
    from ..models.raptor_timm import raptor_from_model_args
    if isinstance(arch_or_model, str):
        if arch_or_model not in known:
            raise ValueError(f'Unknown Raptor arch {arch_or_model!r}; registered: timm.list_models("raptor_*").')
        arch = arch_or_model
        model_args = {}
        teacher = teacher if teacher is not None else known[arch]["teacher"]
    elif isinstance(arch_or_model, RaptorMixin):
        arch = getattr(arch_or_model, "pretrained_cfg", {}).get("architecture") or type(arch_or_model).__name__
        model_args = dict(arch_or_model.model_args)
        teacher = teacher if teacher is not None else arch_or_model.raptor_meta.get("teacher")
    else:
        raise TypeError(f"flops_row takes a Raptor arch name or a Raptor model, got "
                        f"{type(arch_or_model).__name__}.")
    if teacher is None:
        raise ValueError(f"{arch}: pass teacher= (a timm name or module); the model records none.")
    model_args["img_size"] = img_size
    input_size = (3, img_size, img_size)

    def build(**overrides: Any) -> nn.Module:
        with torch.device("meta"):
            if isinstance(arch_or_model, str):  # through timm, so the arch's pretrained_cfg (num_classes) applies
                return timm.create_model(arch, pretrained=False, **dict(model_args, **overrides))
            return raptor_from_model_args(dict(model_args, **overrides))

    if isinstance(teacher, str):
        if not timm.is_model(teacher):
            raise ValueError(f'Unknown timm teacher architecture {teacher!r}; see timm.list_models("vit_*").')
        teacher_name = teacher
        with torch.device("meta"):
            teacher_model = timm.create_model(teacher, pretrained=False, img_size=img_size)
    else:
        teacher_model = getattr(teacher, "model", teacher)  # a raptor_zoo Teacher wraps its timm ViT
        teacher_name = getattr(teacher, "name", None) or type(teacher_model).__name__
    raptor = build()
    counted = flops_table(raptor, teacher_model, input_size)
    swiglu = build(block_type="swiglu")
    no_depth_scale = build(t_scale=False)
    teacher_flops, raptor_flops = counted["teacher_flops"], counted["raptor_flops"]
    swiglu_flops, plain_flops = count_flops(swiglu, input_size), count_flops(no_depth_scale, input_size)
    swiglu_params = count_params(swiglu)
    return {
        "arch": arch,
        "teacher": teacher_name,
        "k": len(raptor.block_schedule),
        "block_schedule": list(raptor.block_schedule),
        "depth": raptor.depth,
        "img_size": img_size,
        "teacher_gflops": teacher_flops / 1e9,
        "raptor_gflops": raptor_flops / 1e9,
        **{key: counted[key] for key in ("flops_ratio", "teacher_params", "raptor_params", "params_ratio",
                                         "teacher_block_params", "raptor_block_params", "block_params_ratio")},
        "swiglu_gflops": swiglu_flops / 1e9,
        "swiglu_flops_ratio": swiglu_flops / teacher_flops,
        "swiglu_params": swiglu_params,
        "swiglu_params_ratio": swiglu_params / counted["teacher_params"],
        "depth_scale_flops": raptor_flops - plain_flops,
        "depth_scale_flops_fraction": (raptor_flops - plain_flops) / raptor_flops,
        "depth_scale_params": counted["raptor_params"] - count_params(no_depth_scale),
        "relax_rank": counted["relax_rank"],
        "relax_flops": counted["relax_flops"],
        "relax_flops_fraction": counted["relax_flops"] / raptor_flops,
        "relax_params": counted["relax_params"],
        "relax_params_ratio": counted["relax_params"] / counted["raptor_block_params"],
        "flops_convention": FLOPS_CONVENTION,
    }

