"""One throughput run from parsed flags (``benchmarks/throughput.py`` and ``raptor-zoo bench``): the flags resolved
into :class:`BenchSettings` with the device-dependent defaults, :func:`compare_teacher_raptor`, then JSON, Markdown
and PNG. The flags themselves are declared without torch in ``raptor_zoo_cli.options.add_bench_arguments``."""
from __future__ import annotations

import argparse
import datetime
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from raptor_zoo_cli.options import CPU_BATCH_SIZES, GPU_BATCH_SIZES, MODES

from .compare import _resolve_pairs, compare_teacher_raptor
from .environment import device_slug, environment_info, resolve_device
from .results import markdown_table, plot_throughput, write_json, write_markdown
from .runners import _check_mode_device

__all__ = ["BenchSettings", "resolve_bench_settings", "bench_command"]

_CPU_MEMORY_NOTE = ("peak memory is not measured on CPU (the allocator reuses freed memory, so an RSS delta is not a "
                    "per-model peak): peak_memory_mb is None")


@dataclass
class BenchSettings:
    """Resolved settings of one ``bench`` run (device-dependent defaults filled in)."""
    teacher: str | None
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
    anytime_steps: list[int] | None
    anytime_batch_size: int | None
    quick: bool
    out: str
    plot: bool
    retry_oom: bool
    matmul_precision: str
    num_threads: int | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_bench_settings(args: argparse.Namespace) -> BenchSettings:
    """Fill the device-dependent defaults and validate every flag before any model is built."""
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    notes = list(args.note or [])
    if args.modes:
        modes = list(dict.fromkeys(args.modes))
    elif on_gpu:
        modes = list(MODES)
    elif args.quick:
        modes = ["eager"]
        notes.append("CPU --quick: eager mode only (pass --modes eager compile to add torch.compile)")
    else:
        modes = ["eager", "compile"]
    for mode in modes:
        _check_mode_device(mode, device)
    dtypes = list(dict.fromkeys(args.dtypes or (["bf16", "fp32"] if on_gpu else ["fp32"])))
    batch_sizes = list(args.batch_sizes or (GPU_BATCH_SIZES if on_gpu else CPU_BATCH_SIZES))
    if any(b < 1 for b in batch_sizes):
        raise ValueError(f"--batch-sizes must all be >= 1, got {batch_sizes}.")
    # (warmup, iters, rounds) by (GPU, quick)
    defaults = {(True, False): (10, 20, 5), (True, True): (3, 10, 3),
                (False, False): (2, 5, 5), (False, True): (1, 2, 3)}
    warmup, iters, rounds = defaults[(on_gpu, bool(args.quick))]
    warmup = warmup if args.warmup is None else args.warmup
    iters = iters if args.iters is None else args.iters
    rounds = rounds if args.rounds is None else args.rounds
    if warmup < 0 or iters < 1 or rounds < 1:
        raise ValueError(f"need --warmup >= 0, --iters >= 1, --rounds >= 1; got {warmup}, {iters}, {rounds}.")
    if args.img_size < 1:
        raise ValueError(f"--img-size must be >= 1, got {args.img_size}.")
    if args.num_threads is not None and args.num_threads < 1:
        raise ValueError(f"--num-threads must be >= 1, got {args.num_threads}.")
    k = list(args.k or ([] if args.arch else [2]))
    if args.teacher is None and not args.arch:
        raise ValueError("pass --teacher (a timm ViT name, e.g. vit_small_patch14_reg4_dinov2) or --arch "
                         "(a registered Raptor, e.g. raptor_vit_small_patch14_reg4_dinov2_k2).")
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
    out = args.out or str(Path(args.default_results_dir) / f"{device_slug(device)}-{datetime.date.today():%Y%m%d}")
    return BenchSettings(
        teacher=args.teacher, k=k, arch=list(args.arch or []), device=str(device), batch_sizes=batch_sizes,
        modes=modes, dtypes=dtypes, img_size=args.img_size, warmup=warmup, iters=iters, rounds=rounds,
        anytime_steps=anytime_steps, anytime_batch_size=anytime_batch_size, quick=bool(args.quick), out=out,
        plot=not args.no_plot, retry_oom=not args.no_retry_oom, matmul_precision=args.matmul_precision,
        num_threads=args.num_threads, notes=notes)


def _anytime_depth(args: argparse.Namespace) -> int:
    """Depth L of the teacher named by the flags (built on the meta device)."""
    import timm

    from ..models.archs import REGISTERED_RAPTOR_ARCHS
    teacher = args.teacher or REGISTERED_RAPTOR_ARCHS[args.arch[0]]["teacher"]
    with torch.device("meta"):
        return len(timm.create_model(teacher, pretrained=False, img_size=args.img_size).blocks)


def _run_stem(settings: BenchSettings) -> str:
    """File stem of a run: throughput_<teacher>_k<k values>_<modes>_<dtypes>_b<batch sizes>, so runs split by model,
    mode, dtype or batch size (benchmarks/run_gpu.py's parts) do not overwrite each other."""
    from ..models.archs import REGISTERED_RAPTOR_ARCHS
    teacher = settings.teacher or REGISTERED_RAPTOR_ARCHS[settings.arch[0]]["teacher"]

    def label(arch: str) -> str:
        spec = REGISTERED_RAPTOR_ARCHS[arch]
        rank = spec.get("relax_rank", 0)
        return f"{spec['k']}" + (f"r{rank}" if rank else "")

    ks = list(dict.fromkeys([*map(str, settings.k), *map(label, settings.arch)]))
    return (f"throughput_{teacher}_k{'-'.join(ks)}_{'-'.join(settings.modes)}_{'-'.join(settings.dtypes)}"
            f"_b{'-'.join(map(str, settings.batch_sizes))}")


def bench_command(args: argparse.Namespace) -> dict[str, Path]:
    """Run the side-by-side benchmark from parsed flags; write JSON, Markdown and PNG; return their paths."""
    settings = resolve_bench_settings(args)
    for note in settings.notes:
        print(f"note: {note}")
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
    environment["bench_wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(settings.out)
    stem = _run_stem(settings)
    paths = {"json": write_json(rows, out / f"{stem}.json", environment, settings.to_dict(), settings.notes)}
    if settings.plot:
        paths["png"] = plot_throughput(rows, out / f"{stem}.png")
    paths["md"] = write_markdown(rows, out / f"{stem}.md", environment, settings.to_dict(), settings.notes,
                                 plot_name=paths["png"].name if "png" in paths else None)
    print(markdown_table([r for r in rows if r.get("cell", "main") == "main"]))
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return paths
