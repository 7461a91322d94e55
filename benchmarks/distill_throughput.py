#!/usr/bin/env python3
r"""Training-step throughput of Raptor trajectory distillation, with its breakdown and a single-model bound.

For a distillation config of recipes/distill.py (read with the recipe's own DistillConfig, so defaults and
validation are the recipe's), every stage of its plan is timed with the real loop pieces: the recipe's
`TrajectoryDistillationTask` forward (teacher trajectory under no_grad + student TF / AR), `loss.backward()`,
gradient clipping and the AdamW step. Each step is split into teacher / student forward / backward /
optimiser step (synchronised timers around each part), and compared with the bound

    teacher forward + student forward-backward at the measured single-model speed,

each scaled by the block applications the stage runs (teacher blocks up to the segment end; student
applications of the segment, twice while both the TF and AR terms are computed). Efficiency = bound / step.

Teacher and student are random-initialised (speed does not depend on the weights), the data are synthetic
normalised images already on the device, phases are not discovered (the schedule is the config's explicit one,
else the paper's boundaries scaled to the teacher depth), and the loop runs without Accelerate wrappers.

    python benchmarks/distill_throughput.py --config recipes/configs/digits_k2.yaml --device cpu
    python benchmarks/distill_throughput.py --config recipes/configs/dinov2_vits14_reg4_k2.yaml --device cpu \
        --img-size 56 --batch-size 8
    python benchmarks/distill_throughput.py --config recipes/configs/dinov2_vits14_reg4_k2.yaml --device cuda

Writes distill_<config>[_<img>px].json / .md into --out (default benchmarks/results/<device>-<date>/).
"""
import argparse
import datetime
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from raptor_zoo.bench import device_slug, environment_info, resolve_device, write_json
from raptor_zoo.distill import TrajectoryDistillationTask, freeze_for_distillation, stage_plan
from raptor_zoo.models.raptor_vit import (
    PAPER_PHASE_BOUNDARIES,
    RaptorVisionTransformer,
    even_block_schedule,
    scaled_paper_schedule,
)
from raptor_zoo.recipes.distill import DistillConfig
from raptor_zoo.teachers import load_teacher
from raptor_zoo.training import config_to_dict, parse_config

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def load_distill_config(config: Path, overrides: list[str]) -> Any:
    """The recipe's DistillConfig parsed from ``config`` and CLI-style ``overrides`` (recipe validation applies)."""
    if not config.is_file():
        raise FileNotFoundError(f"--config {config} does not exist; e.g. recipes/configs/digits_k2.yaml.")
    return parse_config(DistillConfig, ["--config", str(config), *overrides])


class SyncTimer:
    """Wall-clock seconds with the device synchronised at both ends (perf_counter on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def _autocast(device: torch.device, mixed_precision: str):
    if mixed_precision == "no":
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[mixed_precision])


def _median_ms(values: list[float]) -> float:
    return statistics.median(values) * 1e3


def single_model_steps(teacher, student: RaptorVisionTransformer, images: torch.Tensor, config: Any,
                       mixed_precision: str) -> dict[str, Callable[[], None]]:
    """The two single-model calls of the bound: teacher forward (no_grad, teacher precision) and the student's
    forward-backward alone with every block trainable (the stage's requires_grad restored and gradients dropped
    afterwards)."""
    device_type = images.device.type

    def teacher_forward() -> None:
        precision = (torch.autocast(device_type=device_type, dtype=torch.bfloat16)
                     if config.teacher_precision == "bf16" else torch.autocast(device_type, enabled=False))
        with torch.no_grad(), precision:
            teacher.model.forward_features(images)

    def student_forward_backward() -> None:
        stage_flags = [p.requires_grad for p in student.parameters()]
        freeze_for_distillation(student)
        with _autocast(images.device, mixed_precision):
            features = student.forward_features(images)
        features.float().pow(2).mean().backward()
        student.zero_grad(set_to_none=True)
        for param, flag in zip(student.parameters(), stage_flags):
            param.requires_grad_(flag)

    return {"teacher_forward": teacher_forward, "student_forward_backward": student_forward_backward}


def student_schedule(config: Any, depth: int) -> tuple[tuple[int, ...], str]:
    """(block_schedule, where it came from): the config's, else the paper's boundaries scaled to the depth (k = 2..4),
    else even; phases are not discovered on a random-init teacher."""
    if config.block_schedule:
        return tuple(config.block_schedule), "config"
    if config.k in PAPER_PHASE_BOUNDARIES:
        return scaled_paper_schedule(depth, config.k), "the paper's boundaries scaled to the depth"
    return even_block_schedule(depth, config.k), "even"


def config_stages(config: Any, k: int) -> list:
    """The recipe's stage plan for the config's schedule and a k-block student."""
    return stage_plan(
        config.schedule, k, config.max_steps, phase_index=config.phase_index,
        phase_max_steps=config.phase_max_steps, phase_objective=config.phase_objective,
        joint_objective=config.joint_objective, phase_token_weights=config.phase_token_weights,
        last_phase_token_weights=config.last_phase_token_weights, joint_token_weights=config.joint_token_weights)


def measure_points(stage, config: Any) -> list[tuple[str, int]]:
    """(label, stage step) pairs to time: both TF and AR terms (mid-anneal) and the later AR-only steps."""
    if stage.objective != "tf_ar":
        return [(stage.objective, 0)]
    anneal_steps = config.tf_anneal_ratio * stage.max_steps
    return [("tf+ar (annealing)", int(anneal_steps / 2)), ("after anneal", stage.max_steps - 1)]


def benchmark_stage(student, teacher, stage, step: int, images: torch.Tensor, config: Any, mixed_precision: str,
                    warmup: int, rounds: int, timer: SyncTimer) -> dict[str, Any]:
    """One stage at one stage step: ``rounds`` rounds, each timing (in rotating order) a plain training step
    (one synchronise), an instrumented step (breakdown), the teacher forward and the student forward-backward
    alone, so machine drift hits the step and its bound alike."""
    device = images.device
    task = TrajectoryDistillationTask(
        student, teacher, tf_anneal_ratio=config.tf_anneal_ratio, tf_min=config.tf_min, distance=config.distance,
        input_noise_std=config.input_noise_std, teacher_precision=config.teacher_precision, **stage.task_kwargs())
    task.train()
    trainable = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    teacher_times: list[float] = []
    teacher_targets = task.teacher_targets

    def timed_teacher_targets(batch: torch.Tensor) -> torch.Tensor:
        start = timer.now()
        targets = teacher_targets(batch)
        teacher_times.append(timer.now() - start)
        return targets

    last: dict[str, Any] = {}

    def train_step(marks: Callable[[], float] | None = None) -> dict[str, float | None]:
        with _autocast(device, mixed_precision):
            out = task(images, step=step)
        t_forward = marks() if marks else None
        out["loss"].backward()
        t_backward = marks() if marks else None
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        last.update(tf_weight=out["tf_weight"], terms=[n for n in ("tf_loss", "ar_loss") if out[n] is not None])
        return {"forward": t_forward, "backward": t_backward}

    parts: dict[str, list[float]] = {
        "plain_step": [], "teacher": [], "student_forward": [], "backward": [], "optimizer_step": [],
        "instrumented_step": [], "teacher_forward": [], "student_forward_backward": []}

    def plain() -> None:
        start = timer.now()
        train_step()
        parts["plain_step"].append(timer.now() - start)

    def instrumented() -> None:
        task.teacher_targets = timed_teacher_targets  # instance attribute: the real forward calls it
        try:
            start = timer.now()
            marks = train_step(timer.now)
            end = timer.now()
        finally:
            del task.teacher_targets
        parts["teacher"].append(teacher_times[-1])
        parts["student_forward"].append(marks["forward"] - start - teacher_times[-1])
        parts["backward"].append(marks["backward"] - marks["forward"])
        parts["optimizer_step"].append(end - marks["backward"])
        parts["instrumented_step"].append(end - start)

    def single(name: str, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            start = timer.now()
            fn()
            parts[name].append(timer.now() - start)
        return run

    calls = [plain, instrumented, *(single(name, fn) for name, fn in
                                    single_model_steps(teacher, student, images, config, mixed_precision).items())]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for call in calls:
        for _ in range(warmup):
            call()
    for values in parts.values():
        values.clear()
    for round_index in range(rounds):
        shift = round_index % len(calls)
        for call in calls[shift:] + calls[:shift]:
            call()
    start_layer, stop_layer = task.segment
    both_terms = len(last["terms"]) == 2
    median_ms = {name: _median_ms(values) for name, values in parts.items()}
    return {
        "stage": stage.name, "objective": stage.objective, "stage_step": step, "tf_weight": last["tf_weight"],
        "terms": last["terms"], "segment": [start_layer, stop_layer], "teacher_blocks_run": stop_layer,
        "student_block_applications": (stop_layer - start_layer) * (2 if both_terms else 1),
        "batch_size": images.shape[0], "rounds": rounds, "step_ms": median_ms["plain_step"],
        "img_per_sec": images.shape[0] * 1e3 / median_ms["plain_step"],
        "breakdown_ms": {name: median_ms[name] for name in
                         ("teacher", "student_forward", "backward", "optimizer_step", "instrumented_step")},
        "single_model_ms": {name: median_ms[name] for name in ("teacher_forward", "student_forward_backward")},
        "trainable_params": sum(p.numel() for p in trainable),
        "peak_memory_mb": torch.cuda.max_memory_allocated(device) / 2 ** 20 if device.type == "cuda" else None,
    }


def add_bound(row: dict[str, Any], depth: int) -> None:
    """The single-model bound, scaled by the stage's block applications, and the efficiency bound / step."""
    single = row["single_model_ms"]
    bound_ms = (single["teacher_forward"] * row["teacher_blocks_run"] / depth
                + single["student_forward_backward"] * row["student_block_applications"] / depth)
    row.update(bound_ms=bound_ms, bound_img_per_sec=row["batch_size"] * 1e3 / bound_ms,
               efficiency=bound_ms / row["step_ms"])


def markdown_report(rows: list[dict[str, Any]], environment: dict[str, Any], settings: dict[str, Any],
                    notes: list[str]) -> str:
    lines = [f"# Distillation throughput: {settings['config']}", "",
             "- " + "; ".join(f"{key}: {value}" for key, value in environment.items()),
             "- settings: " + "; ".join(f"{key}={value}" for key, value in settings.items()),
             *[f"- {note}" for note in notes], "",
             "| stage | point | λ | segment | student applications | img/s | step ms | teacher ms | student fwd ms "
             "| backward ms | optimiser ms | teacher fwd alone ms | student fwd-bwd alone ms | bound ms "
             "| bound img/s | efficiency |",
             "|" + "---|" * 16]
    for r in rows:
        b, single = r["breakdown_ms"], r["single_model_ms"]
        lines.append("| " + " | ".join([
            r["stage"], r["point"], f"{r['tf_weight']:.2f}", f"{r['segment'][0]}–{r['segment'][1]}",
            str(r["student_block_applications"]), f"{r['img_per_sec']:.1f}", f"{r['step_ms']:.1f}",
            f"{b['teacher']:.1f}", f"{b['student_forward']:.1f}", f"{b['backward']:.1f}", f"{b['optimizer_step']:.1f}",
            f"{single['teacher_forward']:.1f}", f"{single['student_forward_backward']:.1f}",
            f"{r['bound_ms']:.1f}", f"{r['bound_img_per_sec']:.1f}", f"{r['efficiency']:.2f}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", required=True, help="a recipes/distill.py YAML config (required)")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda' or 'auto' (default: auto)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="teacher_img_size override, e.g. 56 for a ViT-S/14 on CPU (default: the config's)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default: the config's)")
    parser.add_argument("--relax-rank", type=int, default=None,
                        help="rank of per-step low-rank adapters (relaxed Raptor); default: the config's")
    parser.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default=None,
                        help="student autocast (default: the config's on GPU, 'no' on CPU)")
    parser.add_argument("--stages", nargs="+", default=None,
                        help="stage names of the plan to time, e.g. phase_0 joint (default: all)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="untimed calls of each timed thing per point (default: 3 GPU, 1 CPU)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds per point; each times a plain step, an instrumented step, the teacher forward "
                             "and the student forward-backward once (default: 20 GPU, 3 CPU)")
    parser.add_argument("--num-threads", type=int, default=None,
                        help="torch.set_num_threads; 1 avoids oversubscription on a shared CPU (default: torch's)")
    parser.add_argument("--out", default=None, help=f"output folder (default: {RESULTS_DIR}/<device>-<YYYYmmdd>)")
    parser.add_argument("--note", action="append", default=[], help="a line written into the results (repeatable)")
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
    except ValueError as error:
        parser.error(str(error))
    on_gpu = device.type == "cuda"
    notes = list(args.note)
    overrides = ["--no-teacher-pretrained", "--synthetic-data"]
    if args.img_size is not None:
        overrides += ["--teacher-img-size", str(args.img_size)]
    if args.batch_size is not None:
        overrides += ["--batch-size", str(args.batch_size)]
    if args.relax_rank is not None:
        overrides += ["--relax-rank", str(args.relax_rank)]
    try:
        config = load_distill_config(Path(args.config), overrides)
    except (FileNotFoundError, ValueError) as error:
        parser.error(str(error))
    mixed_precision = args.mixed_precision or (config.mixed_precision if on_gpu else "no")
    if mixed_precision != config.mixed_precision:
        notes.append(f"mixed precision {mixed_precision} instead of the config's {config.mixed_precision}"
                     + ("" if args.mixed_precision else " (CPU default)"))
    if mixed_precision == "fp16":
        parser.error("--mixed-precision fp16 needs a GradScaler, which this benchmark does not run; use bf16 or no.")
    warmup = args.warmup if args.warmup is not None else (3 if on_gpu else 1)
    rounds = args.rounds if args.rounds is not None else (20 if on_gpu else 3)
    if warmup < 0 or rounds < 1:
        parser.error(f"need --warmup >= 0 and --rounds >= 1, got {warmup} and {rounds}.")
    if args.num_threads is not None:
        if args.num_threads < 1:
            parser.error(f"--num-threads must be >= 1, got {args.num_threads}.")
        torch.set_num_threads(args.num_threads)

    teacher = load_teacher(config.teacher, pretrained=False, img_size=config.teacher_img_size,
                           **config.teacher_kwargs).to(device)
    depth = teacher.depth
    schedule, source = student_schedule(config, depth)
    notes.append(f"block_schedule {schedule} from the config" if source == "config" else
                 f"phases not discovered (random-init teacher): block_schedule {schedule}, {source}")
    student = RaptorVisionTransformer.from_teacher(
        teacher, block_schedule=schedule, block_type=config.block_type, init=config.init, t_scale=config.t_scale,
        drop_path_rate=config.drop_path_rate, relax_rank=config.relax_rank, relax_init=config.relax_init,
        relax_targets=config.relax_targets).to(device)
    if config.grad_checkpointing:
        student.set_grad_checkpointing(True)
    stages = config_stages(config, len(schedule))
    if args.stages:
        unknown = sorted(set(args.stages) - {stage.name for stage in stages})
        if unknown:
            parser.error(f"--stages {unknown} not in the plan; its stages are {[stage.name for stage in stages]}.")
        stages = [stage for stage in stages if stage.name in args.stages]

    torch.manual_seed(config.seed)
    images = torch.randn(config.batch_size, *teacher.data_config["input_size"], device=device)
    timer = SyncTimer(device)
    environment = environment_info(device)
    points = [(stage, label, step) for stage in stages for label, step in measure_points(stage, config)]
    rows = []
    for stage, label, step in tqdm(points, desc="distill throughput"):
        row = benchmark_stage(student, teacher, stage, step, images, config, mixed_precision, warmup, rounds, timer)
        row["point"] = label
        add_bound(row, depth)
        rows.append(row)

    config_path = Path(args.config)
    img_size = teacher.img_size[0]
    settings = {"config": str(args.config), "teacher": config.teacher, "img_size": img_size,
                "batch_size": config.batch_size, "block_schedule": list(schedule), "block_type": config.block_type,
                "relax_rank": config.relax_rank, "schedule": config.schedule, "mixed_precision": mixed_precision,
                "teacher_precision": config.teacher_precision, "grad_checkpointing": config.grad_checkpointing,
                "warmup": warmup, "rounds": rounds}
    notes += ["teacher and student random-initialised; synthetic normalised images already on the device; plain "
              "PyTorch loop (task forward, backward, clip_grad_norm_, AdamW) without Accelerate wrappers",
              "breakdown: synchronised timers around the teacher trajectory, the student forward (TF/AR + loss), "
              "backward, and clip + optimiser step; img/s and step ms come from plain steps with one synchronise "
              "per step; all medians over rounds that time every call once, in rotating order",
              "bound = teacher forward x (teacher blocks run / L) + student forward-backward x (student block "
              "applications / L), from single-model timings at the same batch in the same rounds; "
              "efficiency = bound / step"]
    out = Path(args.out or RESULTS_DIR / f"{device_slug(device)}-{datetime.date.today():%Y%m%d}")
    stem = (f"distill_{config_path.stem}" + (f"_r{config.relax_rank}" if config.relax_rank else "")
            + ("" if args.img_size is None else f"_{img_size}px"))
    payload_settings = dict(settings, distill_config=config_to_dict(config))
    json_path = write_json(rows, out / f"{stem}.json", environment, payload_settings, notes)
    report = markdown_report(rows, environment, settings, notes)
    md_path = out / f"{stem}.md"
    md_path.write_text(report)
    print(report)
    print(f"wrote json: {json_path}\nwrote md: {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
