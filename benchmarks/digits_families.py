# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""Raptors beyond timm's VisionTransformer: k = 2 Raptors of two digits teachers of different families, side by side
(docs/teachers.md, "Evidence beyond VisionTransformer").

* `digits-vit`: the embedded teacher (timm VisionTransformer, DINOv2 shape);
* `vit_digits_patch8_reg4_dinov3`: the same size in DINOv3's shape (timm Eva: 2-D RoPE, 4 registers,
  LayerScale), trained here with recipes/train_teacher.py and recipes/configs/digits_teacher_dinov3.yaml.

Each teacher gets k = 2 Raptors distilled with recipes/configs/digits_k2.yaml for every seed; a run records the
held-out accuracy recovery and the per-layer cosine to the teacher's trajectory.

    python benchmarks/digits_families.py                  # 2 teachers x 3 seeds (about 40 min on 2 CPU cores)
    python benchmarks/digits_families.py --steps 600      # a longer budget (runs named ...-600steps)
    python benchmarks/digits_families.py --report-only    # tables and plot from the finished runs
    python benchmarks/digits_families.py --quick          # a few steps per run (tests)

Resumable: a finished run leaves its record in <out-dir>/runs/; an interrupted one continues from its checkpoint.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from study_digits import _repo_path, write_json_atomic  # noqa: E402

from raptor_zoo.plotting import finish_figure  # noqa: E402
from raptor_zoo.recipes.distill import DistillConfig, training_function  # noqa: E402
from raptor_zoo.recipes.train_teacher import TrainTeacherConfig  # noqa: E402
from raptor_zoo.recipes.train_teacher import training_function as train_teacher_function  # noqa: E402
from raptor_zoo.training import parse_config  # noqa: E402

TEACHERS = {"digits-vit": None, "vit_digits_patch8_reg4_dinov3": "recipes/configs/digits_teacher_dinov3.yaml"}
"""Teacher name -> the config that trains it (None: shipped with the package)."""


@dataclass
class FamiliesConfig:
    """k = 2 Raptors of digits teachers of two families, several seeds each."""
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"group": "Grid", "help": "Raptor seeds"})
    raptor_config: str = field(default="recipes/configs/digits_k2.yaml", metadata={
        "group": "Runs", "help": "config of every Raptor (teacher and seed set per run)"})
    steps: int | None = field(default=None, metadata={
        "group": "Runs", "help": "distillation steps; none = the Raptor config's (300)"})
    teachers: tuple[str, ...] = field(default=tuple(TEACHERS), metadata={
        "group": "Runs", "help": "teachers to distil from (of: " + ", ".join(TEACHERS) + ")"})
    quick: bool = field(default=False, metadata={"group": "Runs", "help": "a few steps per run (tests)"})
    work_dir: str = field(default="outputs/digits_families", metadata={
        "group": "Output", "help": "trained teacher and Raptors (not committed)"})
    out_dir: str = field(default="benchmarks/results/digits_families", metadata={
        "group": "Output", "help": "run records, summary.json, tables.md and the plot"})
    report_only: bool = field(default=False, metadata={"group": "Output", "help": "only rebuild the report"})


def teacher_source(config: FamiliesConfig, name: str) -> str:
    """The teacher to distil from: the embedded one, or a folder trained here (resumably) by its recipe."""
    if TEACHERS[name] is None:
        return name
    output_dir = Path(config.work_dir) / name
    if not (output_dir / "metrics.json").is_file():
        argv = ["--config", str(_repo_path(TEACHERS[name])), "--output-dir", str(output_dir), "--resume", "latest"]
        if config.quick:
            argv += ["--max-steps", "3", "--eval-every-epochs", "1"]
        train_teacher_function(parse_config(TrainTeacherConfig, argv))
    return str(output_dir)


def run_name(config: FamiliesConfig, name: str, seed: int) -> str:
    return f"{name}-k2-s{seed}" + (f"-{config.steps}steps" if config.steps else "")


def run_raptor(config: FamiliesConfig, name: str, seed: int) -> dict[str, Any]:
    output_dir = Path(config.work_dir) / f"raptor-{run_name(config, name, seed)}"
    argv = ["--config", str(_repo_path(config.raptor_config)), "--teacher", teacher_source(config, name),
            "--seed", str(seed), "--output-dir", str(output_dir), "--resume", "latest", "--cpu"]
    if config.steps:
        argv += ["--max-steps", str(config.steps)]
    if config.quick:
        argv += ["--max-steps", "4", "--phase-images", "64", "--max-train-images", "256"]
    metrics = training_function(parse_config(DistillConfig, argv))
    return {"teacher": name, "seed": seed, "block_schedule": metrics["training"]["block_schedule"],
            "teacher_accuracy": metrics["teacher_accuracy"], "raptor_accuracy": metrics["raptor_accuracy"],
            "recovery": metrics["recovery"], "mean_cosine": metrics["mean_cosine"]["all"],
            "cosine_per_layer": metrics["cosine"]["all"], "steps": metrics["training"]["steps"],
            "train_time_s": metrics["training"]["train_time_s"], "date": time.strftime("%Y-%m-%d", time.gmtime())}


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for key in sorted({(r["teacher"], r["steps"]) for r in records}, key=lambda k: (list(TEACHERS).index(k[0]), k[1])):
        name, steps = key
        group = [r for r in records if (r["teacher"], r["steps"]) == key]
        recovery = np.array([r["recovery"] for r in group])
        cosine = np.array([r["mean_cosine"] for r in group])
        summary[f"{name} @ {steps} steps"] = {
            "teacher": name, "steps": steps, "runs": len(group), "teacher_accuracy": group[0]["teacher_accuracy"],
            "recovery_mean": float(recovery.mean()), "recovery_sd": float(recovery.std(ddof=1)) if len(group) > 1 else 0.0,
            "mean_cosine_mean": float(cosine.mean()), "mean_cosine_sd": float(cosine.std(ddof=1)) if len(group) > 1 else 0.0,
            "cosine_per_layer": np.mean([r["cosine_per_layer"] for r in group], axis=0).tolist(),
            "block_schedules": sorted({str(r["block_schedule"]) for r in group}),
        }
    return summary


def format_table(summary: dict[str, Any]) -> str:
    lines = ["| teacher | family | steps | teacher accuracy | k = 2 recovery (mean ± sd) | mean per-layer cosine | runs |",
             "|---|---|---|---|---|---|---|"]
    family = {"digits-vit": "VisionTransformer", "vit_digits_patch8_reg4_dinov3": "Eva (DINOv3 shape)"}
    for row in summary.values():
        lines.append(f"| `{row['teacher']}` | {family[row['teacher']]} | {row['steps']} | {100 * row['teacher_accuracy']:.1f}% | "
                     f"{100 * row['recovery_mean']:.1f} ± {100 * row['recovery_sd']:.1f}% | "
                     f"{row['mean_cosine_mean']:.4f} ± {row['mean_cosine_sd']:.4f} | {row['runs']} |")
    return "\n".join(lines)


def plot_cosine(summary: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 3.8))
    ax = figure.subplots()
    for name, row in summary.items():
        ax.plot(range(len(row["cosine_per_layer"])), row["cosine_per_layer"], marker=".", label=name)
    ax.set_ylabel("cosine to the teacher's state (all tokens)")
    finish_figure(figure, [ax], path, "k = 2 Raptors of digits-vit and vit_digits_patch8_reg4_dinov3")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    config = parse_config(FamiliesConfig, list(sys.argv[1:] if argv is None else argv))
    runs_dir = Path(config.out_dir) / "runs"
    if not config.report_only:
        for name in reversed(config.teachers):  # the trained family first: the shipped one is the reference
            for seed in config.seeds:
                path = runs_dir / f"{run_name(config, name, seed)}.json"
                if not path.is_file():
                    write_json_atomic(path, run_raptor(config, name, seed))
    records = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("*.json"))]
    summary = summarise(records)
    write_json_atomic(Path(config.out_dir) / "summary.json", summary)
    table = format_table(summary)
    (Path(config.out_dir) / "tables.md").write_text(
        "# k = 2 Raptors of two digits teacher families\n\n" + table + "\n")
    plot_cosine(summary, Path(config.out_dir) / "cosine_per_layer.png")
    print(table)
    return summary


if __name__ == "__main__":
    main()
