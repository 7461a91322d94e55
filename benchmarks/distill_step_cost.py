#!/usr/bin/env python3
"""What a distillation step costs three ways, side by side in one run (issue 25, item 3):

* ``on-the-fly``: the recipe as it runs by default: the teacher's trajectory computed on every batch;
* ``cached``: the teacher's trajectories of a fixed image set computed once (``--trajectory-cache``, fp16 or fp32)
  and read back, so a step is the student's forward and backward alone;
* ``compiled``: on-the-fly with ``torch.compile`` of the student's unique blocks and the teacher's blocks.

The same student and optimiser step as recipes/distill.py (``TrajectoryDistillationTask``, AdamW, grad clip), for
every stage of the config's plan, with the modes interleaved round by round so a busy machine slows them alike.
Prints the median s/step per stage and mode, the ratios to on-the-fly, the cache's bytes per image and build time,
and the compile time; writes JSON and a Markdown table.

    python benchmarks/distill_step_cost.py --config recipes/configs/real_teacher_cpu_k2.yaml   # after prepare.py
    python benchmarks/distill_step_cost.py --config recipes/configs/digits_k2.yaml --rounds 3
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from raptor_zoo.data import TransformedDataset, build_transform, load_image_dataset, random_subset
from raptor_zoo.distill import TrajectoryDistillationTask, stage_plan
from raptor_zoo.distill.trajectory_cache import TrajectoryCache
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer, even_block_schedule
from raptor_zoo.recipes.distill import DistillConfig
from raptor_zoo.teachers import load_teacher
from raptor_zoo.training import parse_config

REPO_ROOT = Path(__file__).resolve().parent.parent
MODES = ("on-the-fly", "cached", "compiled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO_ROOT / "recipes" / "configs" / "real_teacher_cpu_k2.yaml",
                        help="recipes/distill.py config whose teacher, data, batch and stages are timed (default: "
                             "real_teacher_cpu_k2.yaml)")
    parser.add_argument("--images", type=int, default=256, help="images of the cached set (default: 256)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per stage, mode and round (default: 3)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of all modes (default: 2)")
    parser.add_argument("--cache-dtype", choices=("fp16", "fp32"), default="fp16", help="cache storage (default: fp16)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to time (default: all)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default: 1, one core)")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "benchmarks" / "results" / "distill_step_cost",
                        help="folder of the JSON and Markdown results")
    return parser.parse_args(argv)


def timed_steps(task: TrajectoryDistillationTask, batches: list[dict[str, torch.Tensor]], steps: int) -> list[float]:
    """Seconds of ``steps`` optimiser steps (forward, backward, clip, AdamW) on the given batches, after one warm-up."""
    trainable = [p for p in task.student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4)
    times = []
    for index in range(steps + 1):
        start = time.perf_counter()
        out = task(**batches[index % len(batches)], step=index)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index:
            times.append(time.perf_counter() - start)
    return times


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = parse_config(DistillConfig, ["--config", str(args.config)])
    teacher = load_teacher(config.teacher, pretrained=config.teacher_pretrained, img_size=config.teacher_img_size)
    dataset, subset = random_subset(load_image_dataset(config.dataset, split=config.train_split), args.images)
    images = TransformedDataset(dataset, build_transform(teacher.data_config, is_training=False))
    k = len(config.block_schedule) if config.block_schedule else config.k
    schedule = config.block_schedule or even_block_schedule(teacher.depth, k)
    stages = stage_plan(config.schedule, k, max(config.max_steps, 1), config.phase_index, config.phase_max_steps,
                        config.phase_objective, config.joint_objective, config.phase_token_weights,
                        config.last_phase_token_weights, config.joint_token_weights)
    result: dict[str, Any] = {"config": args.config.name, "teacher": teacher.name, "input_size": teacher.data_config[
        "input_size"], "batch_size": config.batch_size, "block_schedule": list(schedule), "threads": args.threads,
        "date": datetime.date.today().isoformat(), "images": subset["count"], "stages": {}}
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        cache = TrajectoryCache.open_or_build(folder, teacher, images, {"benchmark": True}, dtype=args.cache_dtype)
        result["cache"] = {"dtype": args.cache_dtype, "bytes_per_image": cache.bytes_per_image,
                           "build_s_per_image": (time.perf_counter() - start) / len(cache)}
        batch_indices = [list(range(i, i + config.batch_size)) for i in range(0, len(cache) - config.batch_size + 1,
                                                                                config.batch_size)][:4]
        image_batches = [{"images": torch.stack([images[i][0] for i in idx])} for idx in batch_indices]
        cached_batches = [{"trajectory": torch.stack([cache[i] for i in idx])} for idx in batch_indices]
        student = RaptorVisionTransformer.from_teacher(teacher, block_schedule=schedule)
        compiled_student = RaptorVisionTransformer.from_teacher(teacher, block_schedule=schedule)
        compile_s, compiled_teacher = None, teacher
        if "compiled" in args.modes:
            start = time.perf_counter()
            for block in compiled_student.unique_blocks:
                block.compile()
            compiled_teacher = load_teacher(config.teacher, pretrained=config.teacher_pretrained,
                                            img_size=config.teacher_img_size)
            for block in compiled_teacher.blocks:
                block.compile()
            warm = TrajectoryDistillationTask(compiled_student, compiled_teacher, **stages[-1].task_kwargs())
            timed_steps(warm, image_batches, 1)
            compile_s = time.perf_counter() - start
        result["compile_s"] = compile_s
        for stage in stages:
            times: dict[str, list[float]] = {mode: [] for mode in args.modes}
            for _ in range(args.rounds):
                for mode in args.modes:
                    model = compiled_student if mode == "compiled" else student
                    mode_teacher = compiled_teacher if mode == "compiled" else teacher
                    task = TrajectoryDistillationTask(model, mode_teacher, **stage.task_kwargs())
                    task.train()
                    times[mode] += timed_steps(task, cached_batches if mode == "cached" else image_batches, args.steps)
            medians = {mode: statistics.median(values) for mode, values in times.items()}
            base = medians.get("on-the-fly")
            result["stages"][stage.name] = {mode: {"s_per_step": value, "ratio_to_on_the_fly": value / base if base
                                                   else None} for mode, value in medians.items()}
    lines = [f"# Distillation step cost: {teacher.name}, {args.config.name}", "",
             f"batch {config.batch_size}, input {tuple(teacher.data_config['input_size'])}, schedule {tuple(schedule)}, "
             f"{args.threads} thread(s), {args.rounds} interleaved rounds of {args.steps} steps, {result['date']}.", "",
             f"Cache: {args.cache_dtype}, {cache.bytes_per_image / 2 ** 20:.3f} MiB per image "
             f"({cache.bytes_per_image * 10_000 / 2 ** 30:.1f} GiB per 10,000 images), built at "
             f"{result['cache']['build_s_per_image'] * 1e3:.1f} ms per image."
             + (f" torch.compile of the blocks: {compile_s:.0f} s before the first step." if compile_s else ""), "",
             "| stage | " + " | ".join(f"{mode} s/step (ratio)" for mode in args.modes) + " |",
             "|---|" + "---|" * len(args.modes)]
    for name, row in result["stages"].items():
        lines.append(f"| {name} | " + " | ".join(
            f"{row[mode]['s_per_step']:.2f}" + (f" ({row[mode]['ratio_to_on_the_fly']:.2f}x)"
                                                if row[mode]["ratio_to_on_the_fly"] else "") for mode in args.modes)
            + " |")
    table = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.config.stem
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return result


if __name__ == "__main__":
    main()
