# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""The paper's small-scale findings, checked on the embedded digits data (docs/study_digits.md).

For every stochastic-depth rate x seed it trains a digits teacher (recipes/train_teacher.py with
recipes/configs/digits_teacher.yaml), measures its phase structure (similarity matrix, max-cut phases and
metrics), and distils Raptors for each k (recipes/configs/digits_k2.yaml with k set); optionally relaxed k = 2
Raptors (per-step low-rank adapters, `--relax-ranks`). Every Raptor is scored on the held-out split: accuracy
recovery, per-layer fidelity, and anytime accuracy after m < L steps next to the truncated teacher.

    python benchmarks/study_digits.py                          # default grid: drop path {0, .1, .2} x 3 seeds, k = 2, 3
    python benchmarks/study_digits.py --full                   # k = 1..4 and k = L (the control)
    python benchmarks/study_digits.py --relax-ranks 1 2 4 8    # + relaxed k = 2 on the teachers of --relax-rates
    python benchmarks/study_digits.py --workers 2              # two runs at a time, one thread each
    python benchmarks/study_digits.py --quick                  # a tiny grid in about a minute (tests)
    python benchmarks/study_digits.py --report-only            # tables and plots from what is done so far

Resumable: a finished run leaves its record in <out-dir>/runs/ and is skipped next time; an interrupted one
continues from its last checkpoint in <work-dir>. Workers claim runs with lock files, so several invocations
(or --workers N) share one grid. Outputs in <out-dir>: summary.json, tables.md and the plots.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from raptor_zoo.data import build_transform, load_image_dataset
from raptor_zoo.distill.evaluate import raptor_trajectory
from raptor_zoo.flops import count_flops, count_params, relaxation_overhead
from raptor_zoo.hub import load_pretrained
from raptor_zoo.phases import discover
from raptor_zoo.recipes.distill import DistillConfig, training_function
from raptor_zoo.recipes.train_teacher import TrainTeacherConfig
from raptor_zoo.recipes.train_teacher import training_function as train_teacher_function
from raptor_zoo.teachers import load_teacher
from raptor_zoo.training import parse_config

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass
class StudyConfig:
    """Train digits teachers at several stochastic-depth rates and seeds, distil Raptors, and compare."""
    drop_path_rates: tuple[float, ...] = field(default=(0.0, 0.1, 0.2), metadata={
        "group": "Grid", "help": "teacher stochastic-depth rates"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"group": "Grid", "help": "seeds (teacher and Raptor)"})
    ks: tuple[int, ...] = field(default=(2, 3), metadata={"group": "Grid", "help": "Raptor block counts"})
    full: bool = field(default=False, metadata={"group": "Grid", "help": "k = 1..4 and k = L instead of --ks"})
    relax_ranks: tuple[int, ...] = field(default=(), metadata={
        "group": "Grid", "help": "relaxed k = 2 Raptors at these adapter ranks (issue 11); empty = none"})
    relax_rates: tuple[float, ...] = field(default=(0.0, 0.2), metadata={
        "group": "Grid", "help": "drop-path rates whose teachers get the relaxed Raptors"})
    quick: bool = field(default=False, metadata={
        "group": "Grid", "help": "a tiny grid for tests: rates 0 and .2, one seed, k = 2, a few steps each"})
    teacher_config: str = field(default="recipes/configs/digits_teacher.yaml", metadata={
        "group": "Runs", "help": "base config of every teacher (the rate and seed are set per run)"})
    raptor_config: str = field(default="recipes/configs/digits_k2.yaml", metadata={
        "group": "Runs", "help": "base config of every Raptor (teacher, k, seed, relax_rank set per run)"})
    drop_path_mode: str = field(default="uniform", metadata={
        "group": "Runs", "help": "teacher drop-path profile: uniform (the paper's small-scale setting) or linear"})
    teacher_epochs: int | None = field(default=None, metadata={
        "group": "Runs", "help": "teacher epochs; none = the teacher config's"})
    raptor_steps: int | None = field(default=None, metadata={
        "group": "Runs", "help": "Raptor distillation steps; none = the Raptor config's"})
    phase_images: int = field(default=256, metadata={"group": "Runs", "help": "training images for phase metrics"})
    workers: int = field(default=1, metadata={
        "group": "Runs", "help": "runs in parallel (each in its own process, threads split between them)"})
    work_dir: str = field(default="outputs/study_digits", metadata={
        "group": "Output", "help": "models and checkpoints (large, not committed)"})
    out_dir: str = field(default="benchmarks/results/study_digits", metadata={
        "group": "Output", "help": "run records, summary.json, tables.md and plots"})
    report_only: bool = field(default=False, metadata={
        "group": "Output", "help": "only rebuild the report from the records already in --out-dir"})

    def __post_init__(self):
        if self.quick:
            self.drop_path_rates, self.seeds, self.ks = (0.0, 0.2), (0,), (2,)
            self.relax_rates = tuple(rate for rate in self.relax_rates if rate in self.drop_path_rates)
            self.teacher_epochs, self.raptor_steps, self.phase_images = 1, self.raptor_steps or 4, 64
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}.")
        missing = sorted(set(self.relax_rates) - set(self.drop_path_rates)) if self.relax_ranks else []
        if missing:
            raise ValueError(f"--relax-rates {missing} are not in --drop-path-rates {list(self.drop_path_rates)}; "
                             "relaxed Raptors need those teachers.")
        if any(rank < 1 for rank in self.relax_ranks):
            raise ValueError(f"--relax-ranks must be >= 1 (r = 0 is the pure Raptor, always run), got {self.relax_ranks}.")


# ----------------------------------------------------------------------------------------------------
# The grid: runs, their records, and claiming them
# ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Run:
    """One teacher (k is None) or one Raptor of the grid."""
    rate: float
    seed: int
    k: int | None = None
    relax_rank: int = 0

    @property
    def teacher_name(self) -> str:
        return f"teacher-dp{self.rate:g}-s{self.seed}"

    @property
    def name(self) -> str:
        if self.k is None:
            return self.teacher_name
        return f"raptor-dp{self.rate:g}-s{self.seed}-k{self.k}" + (f"-r{self.relax_rank}" if self.relax_rank else "")


def study_runs(config: StudyConfig, depth: int = 12) -> list[Run]:
    """Every run, in the order they are taken: teachers seed by seed, then Raptors, then relaxed Raptors
    teacher rate by rate in --relax-rates order (ranks in --relax-ranks order), so a cut-short grid is whole
    for the first rate."""
    ks = sorted({1, 2, 3, 4, depth}) if config.full else sorted(set(config.ks))
    teachers = [Run(rate, seed) for seed in config.seeds for rate in config.drop_path_rates]
    raptors = [Run(rate, seed, k) for seed in config.seeds for rate in config.drop_path_rates for k in ks]
    relaxed = [Run(rate, seed, 2, rank) for rate in config.relax_rates for rank in config.relax_ranks
               for seed in config.seeds]
    return teachers + raptors + relaxed


def record_path(config: StudyConfig, run: Run) -> Path:
    return Path(config.out_dir) / "runs" / f"{run.name}.json"


def write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def claim(config: StudyConfig, run: Run) -> bool:
    """Take a run with an exclusive lock file; a lock left by a dead process on this host is taken over."""
    lock = Path(config.work_dir) / "locks" / f"{run.name}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            owner = json.loads(lock.read_text())
        except (OSError, ValueError):
            return False
        if owner.get("host") != socket.gethostname() or _pid_alive(int(owner.get("pid", 0))):
            return False
        lock.unlink(missing_ok=True)
        return claim(config, run)
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": os.getpid(), "host": socket.gethostname()}, handle)
    return True


def release(config: StudyConfig, run: Run) -> None:
    (Path(config.work_dir) / "locks" / f"{run.name}.lock").unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------

def held_out_images(dataset: str, split: str, data_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """A whole split as (images, labels) tensors at a model's data_config, without augmentation."""
    data = load_image_dataset(dataset, split=split)
    transform = build_transform(data_config, is_training=False)
    images = torch.stack([transform(example["image"]) for example in data])
    return images, torch.tensor(data["label"])


@torch.no_grad()
def teacher_anytime_accuracy(teacher, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Accuracy of the teacher truncated after m = 1..L blocks (final norm and head applied to x_m)."""
    trajectory = teacher.trajectory(images)
    return [(teacher.forward_head_from_state(trajectory[:, m]).argmax(-1) == labels).float().mean().item()
            for m in range(1, teacher.depth + 1)]


@torch.no_grad()
def raptor_anytime_accuracy(raptor, images: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Accuracy of the Raptor stopped after m = 1..L steps (its `num_steps` anytime mode)."""
    trajectory = raptor_trajectory(raptor.eval(), images)
    return [(raptor.forward_head(raptor.norm(trajectory[:, m])).argmax(-1) == labels).float().mean().item()
            for m in range(1, raptor.depth + 1)]


def phase_metrics(distance: np.ndarray, scores: list[dict]) -> dict[str, Any]:
    """Phase-structure metrics of a layer distance matrix and its max-cut partitions (docs/method.md §6)."""
    depth = distance.shape[0]
    off_diagonal = distance[~np.eye(depth, dtype=bool)]
    metrics: dict[str, Any] = {"mean_offdiag_distance": float(off_diagonal.mean())}
    for score in scores:
        k = score["k"]
        if k < 2:
            continue
        label = np.zeros(depth, dtype=int)
        for index, phase in enumerate(score["phases"]):
            label[np.asarray(phase) - 1] = index
        same = (label[:, None] == label[None, :]) & ~np.eye(depth, dtype=bool)
        cross = label[:, None] != label[None, :]
        within = float(distance[same].mean()) if same.any() else 0.0
        metrics[f"k{k}"] = {"cut_fraction": score["cut_fraction"], "block_schedule": score["block_schedule"],
                            "within_distance": within, "cross_distance": float(distance[cross].mean()),
                            "contrast": float(distance[cross].mean()) - within}
    return metrics


def train_teacher(config: StudyConfig, run: Run) -> tuple[Any, dict]:
    """Train one teacher with recipes/train_teacher.py (resumable; seeded): (its config, its metrics)."""
    output_dir = Path(config.work_dir) / run.name
    argv = ["--config", str(_repo_path(config.teacher_config)), "--drop-path-rate", str(run.rate),
            "--drop-path-mode", config.drop_path_mode, "--seed", str(run.seed), "--output-dir", str(output_dir),
            "--resume", "latest", "--checkpoint-every", "100", "--keep-checkpoints", "1"]
    if config.teacher_epochs is not None:
        argv += ["--epochs", str(config.teacher_epochs)]
    if config.quick:
        argv += ["--max-steps", "3", "--eval-every-epochs", "1"]
    teacher_config = parse_config(TrainTeacherConfig, argv)
    return teacher_config, train_teacher_function(teacher_config)


def run_teacher(config: StudyConfig, run: Run) -> dict:
    """Train one teacher (resumable), then record its accuracy, phase structure and anytime curve."""
    output_dir = Path(config.work_dir) / run.name
    teacher_config, metrics = train_teacher(config, run)
    teacher = load_teacher(str(output_dir))
    train_images, _ = held_out_images(teacher_config.dataset, teacher_config.train_split, teacher.data_config)
    phases = discover(teacher, train_images[:config.phase_images], k=2, max_k=min(4, teacher.depth), progress=False)
    phases.save(output_dir, stem="phases")
    images, labels = held_out_images(teacher_config.dataset, teacher_config.eval_split, teacher.data_config)
    return {
        "name": run.name, "kind": "teacher", "drop_path_rate": run.rate, "drop_path_mode": config.drop_path_mode,
        "seed": run.seed, "depth": teacher.depth, "held_out_accuracy": metrics["held_out_accuracy"],
        "train_time_s": metrics["train_time_s"], "steps": metrics["steps"],
        "distance": np.asarray(phases.distance).tolist(), "phase_metrics": phase_metrics(phases.distance, phases.scores),
        "anytime_accuracy": teacher_anytime_accuracy(teacher, images, labels),
    }


def run_raptor(config: StudyConfig, run: Run) -> dict:
    """Distil one Raptor from its teacher (resumable), then record fidelity, cost and the anytime curve."""
    teacher_dir = Path(config.work_dir) / run.teacher_name
    output_dir = Path(config.work_dir) / run.name
    while not (teacher_dir / "model.safetensors").is_file():  # a fresh clone: records are committed, models are not
        if claim(config, Run(run.rate, run.seed)):
            try:
                recreate_teacher(config, Run(run.rate, run.seed))
            finally:
                release(config, Run(run.rate, run.seed))
        else:
            time.sleep(5)  # another worker is training it
    argv = ["--config", str(_repo_path(config.raptor_config)), "--teacher", str(teacher_dir), "--k", str(run.k),
            "--seed", str(run.seed), "--relax-rank", str(run.relax_rank), "--output-dir", str(output_dir),
            "--resume", "latest", "--checkpoint-every", "100", "--keep-checkpoints", "1", "--cpu"]
    if config.raptor_steps is not None:
        argv += ["--max-steps", str(config.raptor_steps)]
    if config.quick:
        argv += ["--phase-images", "64", "--max-train-images", "256"]
    distill_config = parse_config(DistillConfig, argv)
    metrics = training_function(distill_config)

    raptor = load_pretrained(str(output_dir)).eval()
    teacher = load_teacher(str(teacher_dir))
    images, labels = held_out_images(distill_config.dataset, distill_config.eval_split, teacher.data_config)
    input_size = tuple(teacher.data_config["input_size"])
    params, flops = count_params(raptor), count_flops(raptor, input_size)
    overhead = relaxation_overhead(raptor, input_size)  # zero for a pure Raptor
    training = metrics["training"]
    return {
        "name": run.name, "kind": "raptor", "drop_path_rate": run.rate, "seed": run.seed, "k": raptor.num_unique_blocks,
        "relax_rank": run.relax_rank, "block_schedule": list(raptor.block_schedule),
        "teacher_accuracy": metrics["teacher_accuracy"], "raptor_accuracy": metrics["raptor_accuracy"],
        "recovery": metrics["recovery"], "agreement": metrics["agreement"],
        "mean_cosine": metrics["mean_cosine"]["all"], "cosine": metrics["cosine"],
        "r2_paper_all_layers": metrics["r2_paper_all_layers"],
        "params": params, "block_params": count_params(raptor.blocks),
        "pure_params": params - overhead["relax_params"], "flops": flops,
        "pure_flops": flops - overhead["relax_flops"], "teacher_flops": count_flops(teacher.model, input_size),
        "steps": training["steps"], "train_time_s": training["train_time_s"],
        "s_per_step": training["train_time_s"] / max(training["steps"], 1),
        "threads": torch.get_num_threads(),
        "anytime_accuracy": raptor_anytime_accuracy(raptor, images, labels),
    }


def recreate_teacher(config: StudyConfig, run: Run) -> None:
    """Train again a teacher whose record is here but whose folder is not; the seeded recipe gives the recorded
    teacher back, checked on its held-out accuracy."""
    recorded = json.loads(record_path(config, run).read_text())["held_out_accuracy"]
    _, metrics = train_teacher(config, run)
    if abs(metrics["held_out_accuracy"] - recorded) > 0.01:
        raise RuntimeError(
            f"{run.name} trained again reaches {metrics['held_out_accuracy']:.4f} held-out accuracy, its record in "
            f"{record_path(config, run)} {recorded:.4f}: not the same teacher (different library versions or "
            "threads?). Re-run the grid from scratch with a new --out-dir to compare like with like.")


def _repo_path(path: str) -> Path:
    return Path(path) if Path(path).is_file() else REPO_ROOT / path


# ----------------------------------------------------------------------------------------------------
# Running the grid
# ----------------------------------------------------------------------------------------------------

def work_through(config: StudyConfig, runs: list[Run]) -> int:
    """Take runs whose inputs are ready until none is left; returns how many this process finished."""
    finished = 0
    while True:
        pending = [run for run in runs if not record_path(config, run).is_file()]
        if not pending:
            return finished
        ready = [run for run in pending if run.k is None
                 or record_path(config, Run(run.rate, run.seed)).is_file()]
        taken = next((run for run in ready if claim(config, run)), None)
        if taken is None:
            time.sleep(5)  # the rest is claimed by other workers, or waits for their teachers
            continue
        try:
            if not record_path(config, taken).is_file():
                record = run_teacher(config, taken) if taken.k is None else run_raptor(config, taken)
                record["date"] = time.strftime("%Y-%m-%d", time.gmtime())
                write_json_atomic(record_path(config, taken), record)
                finished += 1
        finally:
            release(config, taken)


def launch_workers(config: StudyConfig, argv: list[str], runs: list[Run]) -> int:
    """Run `--workers` copies of this script with the threads split between them; show overall progress."""
    threads = max(1, (os.cpu_count() or 1) // config.workers)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log_dir = Path(config.work_dir) / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    workers = []
    for index in range(config.workers):
        log = open(log_dir / f"worker{index}.log", "a")
        command = [sys.executable, str(Path(__file__).resolve()), *argv, "--workers", "1"]  # the last flag wins
        workers.append((subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    done = lambda: sum(record_path(config, run).is_file() for run in runs)  # noqa: E731
    with tqdm(total=len(runs), initial=done(), desc=f"study ({config.workers} workers, logs in {log_dir})") as bar:
        while any(process.poll() is None for process, _ in workers):
            time.sleep(10)
            bar.update(done() - bar.n)
        bar.update(done() - bar.n)
    failed = [index for index, (process, log) in enumerate(workers) if process.wait() != 0]
    for _, log in workers:
        log.close()
    if failed:
        raise RuntimeError(f"worker(s) {failed} failed; see {log_dir}/worker<N>.log. Rerun the same command to resume.")
    return done()


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    config = parse_config(StudyConfig, argv)
    runs = study_runs(config)
    if not config.report_only:
        if config.workers > 1:
            launch_workers(config, argv, runs)
        else:
            work_through(config, runs)
    return write_report(config, runs)


# ----------------------------------------------------------------------------------------------------
# Report: tables, plots and summary.json from the run records
# ----------------------------------------------------------------------------------------------------

def _stats(values: list[float]) -> dict[str, float]:
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "std": std, "n": len(values), "min": min(values), "max": max(values)}


def _pm(stats: dict[str, float], scale: float = 100.0, digits: int = 1, unit: str = "%") -> str:
    if not stats["n"]:
        return "-"
    return f"{scale * stats['mean']:.{digits}f} ± {scale * stats['std']:.{digits}f}{unit} (n={stats['n']})"


def _pearson(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def _spearman(x: list[float], y: list[float]) -> float | None:
    rank = lambda v: np.argsort(np.argsort(v)).astype(float)  # noqa: E731  (no ties expected in measured floats)
    return _pearson(list(rank(np.asarray(x))), list(rank(np.asarray(y)))) if len(x) >= 3 else None


def summarise(teachers: list[dict], raptors: list[dict]) -> dict[str, Any]:
    """Means and spreads over seeds, target checks, and the correlations the paper claims."""
    by_teacher = {(t["drop_path_rate"], t["seed"]): t for t in teachers}
    rates = sorted({t["drop_path_rate"] for t in teachers})
    teacher_rows = []
    for rate in rates:
        group = [t for t in teachers if t["drop_path_rate"] == rate]
        teacher_rows.append({
            "drop_path_rate": rate, "held_out_accuracy": _stats([t["held_out_accuracy"] for t in group]),
            "mean_offdiag_distance": _stats([t["phase_metrics"]["mean_offdiag_distance"] for t in group]),
            "k2_cut_fraction": _stats([t["phase_metrics"]["k2"]["cut_fraction"] for t in group]),
            "k2_contrast": _stats([t["phase_metrics"]["k2"]["contrast"] for t in group]),
            "k2_schedules": sorted({tuple(t["phase_metrics"]["k2"]["block_schedule"]) for t in group}),
            "k3_schedules": sorted({tuple(t["phase_metrics"]["k3"]["block_schedule"]) for t in group
                                    if "k3" in t["phase_metrics"]}),
        })
    pure = [r for r in raptors if r["relax_rank"] == 0]
    raptor_rows = []
    for rate in rates:
        for k in sorted({r["k"] for r in pure}):
            group = [r for r in pure if r["drop_path_rate"] == rate and r["k"] == k]
            if group:
                raptor_rows.append({
                    "drop_path_rate": rate, "k": k, "recovery": _stats([r["recovery"] for r in group]),
                    "raptor_accuracy": _stats([r["raptor_accuracy"] for r in group]),
                    "mean_cosine": _stats([r["mean_cosine"] for r in group]),
                    "cls_final_cosine": _stats([r["cosine"]["cls"][-1] for r in group]),
                    "cosine_per_layer": np.mean([r["cosine"]["all"] for r in group], axis=0).tolist(),
                    "s_per_step": _stats([r["s_per_step"] for r in group])})
    targets = {}
    for k, target in ((2, 0.98), (3, 0.995)):
        rows = [row for row in raptor_rows if row["k"] == k]
        if rows:
            targets[f"k{k}"] = {"target": target, "by_rate": {
                str(row["drop_path_rate"]): {"mean_recovery": row["recovery"]["mean"],
                                             "hit": bool(row["recovery"]["mean"] >= target)} for row in rows}}
    relations = {}
    for k in (2, 3):
        pairs = [(r, by_teacher[(r["drop_path_rate"], r["seed"])]) for r in pure
                 if r["k"] == k and (r["drop_path_rate"], r["seed"]) in by_teacher]
        if len(pairs) < 3:
            continue
        recovery = [r["recovery"] for r, _ in pairs]
        cosine = [r["mean_cosine"] for r, _ in pairs]
        relation = {"n": len(pairs)}
        for label, xs in (("drop_path_rate", [r["drop_path_rate"] for r, _ in pairs]),
                          ("mean_offdiag_distance", [t["phase_metrics"]["mean_offdiag_distance"] for _, t in pairs]),
                          ("k2_contrast", [t["phase_metrics"]["k2"]["contrast"] for _, t in pairs]),
                          ("k2_cut_fraction", [t["phase_metrics"]["k2"]["cut_fraction"] for _, t in pairs])):
            relation[label] = {"pearson_recovery": _pearson(xs, recovery), "spearman_recovery": _spearman(xs, recovery),
                               "pearson_mean_cosine": _pearson(xs, cosine)}
        relations[f"k{k}"] = relation
    anytime = []
    for rate in rates:
        group_t = [t["anytime_accuracy"] for t in teachers if t["drop_path_rate"] == rate]
        row = {"drop_path_rate": rate, "teacher": np.mean(group_t, axis=0).tolist() if group_t else []}
        for k in sorted({r["k"] for r in pure}):
            curves = [r["anytime_accuracy"] for r in pure if r["drop_path_rate"] == rate and r["k"] == k]
            if curves:
                row[f"raptor_k{k}"] = np.mean(curves, axis=0).tolist()
        anytime.append(row)
    relax_rows = []
    for rate in sorted({r["drop_path_rate"] for r in raptors if r["relax_rank"]}):
        base = [r for r in pure if r["drop_path_rate"] == rate and r["k"] == 2]
        base_step = _stats([r["s_per_step"] for r in base])["mean"]
        settings = [(2, 0)] + [(2, rank) for rank in sorted({r["relax_rank"] for r in raptors if r["relax_rank"]})] \
            + [(3, 0)]
        for k, rank in settings:
            group = [r for r in raptors if r["drop_path_rate"] == rate and r["k"] == k and r["relax_rank"] == rank]
            if not group:
                continue
            step = _stats([r["s_per_step"] for r in group])
            relax_rows.append({
                "drop_path_rate": rate, "k": k, "relax_rank": rank, "recovery": _stats([r["recovery"] for r in group]),
                "mean_cosine": _stats([r["mean_cosine"] for r in group]),
                "param_overhead": (group[0]["params"] - group[0]["pure_params"]) / group[0]["pure_params"],
                "block_param_overhead": (group[0]["params"] - group[0]["pure_params"]) / group[0]["block_params"],
                "params": group[0]["params"], "flop_overhead": group[0]["flops"] / group[0]["pure_flops"] - 1,
                "s_per_step": step, "step_time_ratio": step["mean"] / base_step if base_step else None})
    return {"teachers": teacher_rows, "raptors": raptor_rows, "targets": targets, "relations": relations,
            "anytime": anytime, "relaxation": relax_rows}


def format_tables(summary: dict[str, Any]) -> str:
    """The summary as markdown tables (tables.md)."""
    lines = ["## Teachers (held-out accuracy, phase structure)", "",
             "| drop path | teacher accuracy | mean off-diagonal distance | k=2 cut fraction | k=2 contrast "
             "(cross - within) | k=2 schedules | k=3 schedules |", "|---|---|---|---|---|---|---|"]
    for row in summary["teachers"]:
        lines.append(
            f"| {row['drop_path_rate']:g} | {_pm(row['held_out_accuracy'], digits=2)} | "
            f"{_pm(row['mean_offdiag_distance'], 1, 3, '')} | {_pm(row['k2_cut_fraction'], 100, 1)} | "
            f"{_pm(row['k2_contrast'], 1, 3, '')} | {', '.join(map(str, row['k2_schedules']))} | "
            f"{', '.join(map(str, row['k3_schedules']))} |")
    lines += ["", "## Raptors (mean ± std over seeds)", "",
              "| drop path | k | Raptor accuracy | recovery | mean per-layer cosine | cls cosine at layer L | s/step |",
              "|---|---|---|---|---|---|---|"]
    for row in summary["raptors"]:
        lines.append(
            f"| {row['drop_path_rate']:g} | {row['k']} | {_pm(row['raptor_accuracy'], digits=2)} | "
            f"{_pm(row['recovery'], digits=2)} | {_pm(row['mean_cosine'], 1, 4, '')} | "
            f"{_pm(row['cls_final_cosine'], 1, 3, '')} | {_pm(row['s_per_step'], 1, 2, ' s')} |")
    lines += ["", "## Targets", "", "| k | target recovery | drop path | measured mean | hit |", "|---|---|---|---|---|"]
    for key, target in summary["targets"].items():
        for rate, result in target["by_rate"].items():
            lines.append(f"| {key[1:]} | {100 * target['target']:.1f}% | {float(rate):g} | "
                         f"{100 * result['mean_recovery']:.2f}% | {'yes' if result['hit'] else 'no'} |")
    lines += ["", "## Relations over teacher x seed pairs (Pearson / Spearman with recovery; Pearson with cosine)", "",
              "| k | n | predictor | Pearson r (recovery) | Spearman ρ (recovery) | Pearson r (mean cosine) |",
              "|---|---|---|---|---|---|"]
    fmt = lambda v: "-" if v is None else f"{v:+.2f}"  # noqa: E731
    for key, relation in summary["relations"].items():
        for label, values in relation.items():
            if label != "n":
                lines.append(f"| {key[1:]} | {relation['n']} | {label} | {fmt(values['pearson_recovery'])} | "
                             f"{fmt(values['spearman_recovery'])} | {fmt(values['pearson_mean_cosine'])} |")
    lines += ["", "## Anytime accuracy after m of L steps (mean over seeds)", ""]
    for row in summary["anytime"]:
        depth = len(row["teacher"])
        if not depth:
            continue
        steps = sorted({max(1, depth // 3), depth // 2, 2 * depth // 3, depth - 2, depth - 1, depth})
        curves = [name for name in row if name.startswith("raptor_k")]
        lines += [f"Drop path {row['drop_path_rate']:g}:", "",
                  "| m | truncated teacher | " + " | ".join(f"Raptor k={c[8:]}" for c in curves) + " |",
                  "|---" * (2 + len(curves)) + "|"]
        for m in steps:
            lines.append(f"| {m} | {100 * row['teacher'][m - 1]:.1f}% | "
                         + " | ".join(f"{100 * row[c][m - 1]:.1f}%" for c in curves) + " |")
        lines.append("")
    if summary["relaxation"]:
        lines += ["## Relaxation (per-step low-rank adapters), k = 2", "",
                  "| teacher drop path | k | r | recovery | mean per-layer cosine | params (+% of shared blocks) | "
                  "FLOPs overhead | s/step (x pure k=2) |", "|---|---|---|---|---|---|---|---|"]
        for row in summary["relaxation"]:
            ratio = f" ({row['step_time_ratio']:.2f}x)" if row["step_time_ratio"] else ""
            lines.append(
                f"| {row['drop_path_rate']:g} | {row['k']} | {row['relax_rank']} | {_pm(row['recovery'], digits=2)} | "
                f"{_pm(row['mean_cosine'], 1, 4, '')} | {row['params'] / 1e6:.3f} M "
                f"(+{100 * row['block_param_overhead']:.1f}%) | +{100 * row['flop_overhead']:.2f}% | "
                f"{row['s_per_step']['mean']:.2f} s{ratio} |")
    return "\n".join(lines) + "\n"


def _figure(ncols: int = 1, width: float = 5.0, height: float = 3.8):
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * ncols, height), layout="constrained")
    return figure, figure.subplots(1, ncols, squeeze=False)[0]


def plot_report(summary: dict[str, Any], teachers: list[dict], raptors: list[dict], out_dir: Path) -> list[str]:
    """The study's figures as PNGs in out_dir; returns their names."""
    written = []
    pure = [r for r in raptors if r["relax_rank"] == 0]
    rates = sorted({row["drop_path_rate"] for row in summary["teachers"]})

    figure, axes = _figure(len(rates), width=3.6, height=3.4)
    matrices = {rate: [np.asarray(t["distance"]) for t in teachers if t["drop_path_rate"] == rate] for rate in rates}
    vmax = max(np.mean(group, axis=0).max() for group in matrices.values())  # one colour scale for all rates
    for ax, rate in zip(axes, rates):
        image = ax.imshow(np.mean(matrices[rate], axis=0), cmap="magma", vmin=0, vmax=vmax)
        depth = matrices[rate][0].shape[0]
        ax.set(title=f"drop path {rate:g} (mean of {len(matrices[rate])})", xlabel="layer", ylabel="layer",
               xticks=range(0, depth, 2), xticklabels=range(1, depth + 1, 2), yticks=range(0, depth, 2),
               yticklabels=range(1, depth + 1, 2))
        figure.colorbar(image, ax=ax, shrink=0.8)
    figure.savefig(out_dir / "distance_matrices.png", dpi=120)
    written.append("distance_matrices.png")

    figure, axes = _figure(len(rates), width=4.2)
    for ax, row in zip(axes, summary["anytime"]):
        steps = np.arange(1, len(row["teacher"]) + 1)
        ax.plot(steps, 100 * np.asarray(row["teacher"]), marker="o", color="black", label="teacher, truncated")
        for name in (n for n in row if n.startswith("raptor_k")):
            ax.plot(steps, 100 * np.asarray(row[name]), marker=".", label=f"Raptor k={name[8:]}, num_steps=m")
        ax.set(xlabel="steps m", ylabel="held-out accuracy (%)", title=f"drop path {row['drop_path_rate']:g}", ylim=(0, 100))
    axes[0].legend(loc="lower right")
    figure.savefig(out_dir / "anytime.png", dpi=120)
    written.append("anytime.png")
    if not summary["raptors"]:
        return written

    figure, (ax,) = _figure()
    for rate in rates:
        rows = [row for row in summary["raptors"] if row["drop_path_rate"] == rate]
        ax.errorbar([row["k"] for row in rows], [100 * row["recovery"]["mean"] for row in rows],
                    yerr=[100 * row["recovery"]["std"] for row in rows], marker="o", capsize=3, label=f"drop path {rate:g}")
    ax.axhline(98, color="grey", ls=":", lw=1)
    ax.axhline(99.5, color="grey", ls="--", lw=1)
    ax.set(xlabel="k (unique blocks)", ylabel="accuracy recovery (% of teacher)", title="Recovery vs k (mean ± std)")
    ax.legend()
    figure.savefig(out_dir / "recovery_vs_k.png", dpi=120)
    written.append("recovery_vs_k.png")

    figure, axes = _figure(2)
    for k in sorted({r["k"] for r in pure}):
        group = [r for r in pure if r["k"] == k]
        for ax, key, label in ((axes[0], "recovery", "accuracy recovery (%)"), (axes[1], "mean_cosine", "mean per-layer cosine")):
            scale = 100 if key == "recovery" else 1
            ax.scatter([r["drop_path_rate"] for r in group], [scale * r[key] for r in group], alpha=0.5)
            rows = [row for row in summary["raptors"] if row["k"] == k]
            ax.plot([row["drop_path_rate"] for row in rows], [scale * row[key]["mean"] for row in rows], marker="o",
                    label=f"k={k}")
            ax.set(xlabel="teacher stochastic-depth rate", ylabel=label)
    axes[0].set_title("Raptor fit vs stochastic depth (dots: seeds)")
    axes[0].legend()
    figure.savefig(out_dir / "fit_vs_drop_path.png", dpi=120)
    written.append("fit_vs_drop_path.png")

    by_teacher = {(t["drop_path_rate"], t["seed"]): t for t in teachers}
    pairs = [(r, by_teacher[(r["drop_path_rate"], r["seed"])]) for r in pure
             if r["k"] == 2 and (r["drop_path_rate"], r["seed"]) in by_teacher]
    if pairs:
        figure, axes = _figure(2)
        for ax, metric, label in ((axes[0], "mean_offdiag_distance", "mean off-diagonal layer distance"),
                                  (axes[1], "contrast", "k=2 phase contrast (cross - within distance)")):
            xs = [t["phase_metrics"][metric] if metric in t["phase_metrics"] else t["phase_metrics"]["k2"][metric]
                  for _, t in pairs]
            ys = [100 * r["recovery"] for r, _ in pairs]
            scatter = ax.scatter(xs, ys, c=[r["drop_path_rate"] for r, _ in pairs], cmap="viridis")
            pearson = _pearson(xs, ys)
            ax.set(xlabel=label, ylabel="k=2 recovery (%)",
                   title=f"Pearson r = {pearson:+.2f} (n={len(xs)})" if pearson is not None else f"n={len(xs)}")
        figure.colorbar(scatter, ax=axes[1], label="drop path")
        figure.savefig(out_dir / "phase_metric_vs_fit.png", dpi=120)
        written.append("phase_metric_vs_fit.png")


    ks = sorted({row["k"] for row in summary["raptors"]})
    figure, axes = _figure(len(ks), width=4.2)
    for ax, k in zip(axes, ks):
        for row in (row for row in summary["raptors"] if row["k"] == k):
            ax.plot(range(len(row["cosine_per_layer"])), row["cosine_per_layer"], marker=".",
                    label=f"drop path {row['drop_path_rate']:g}")
        ax.set(xlabel="layer", ylabel="cosine to the teacher's state (all tokens)", title=f"Raptor k={k}: per-layer fidelity")
    axes[0].legend()
    figure.savefig(out_dir / "fidelity_per_layer.png", dpi=120)
    written.append("fidelity_per_layer.png")


    if summary["relaxation"]:
        figure, (ax,) = _figure()
        for rate in sorted({row["drop_path_rate"] for row in summary["relaxation"]}):
            rows = [row for row in summary["relaxation"] if row["drop_path_rate"] == rate and row["k"] == 2]
            line = ax.errorbar([row["relax_rank"] for row in rows], [100 * row["recovery"]["mean"] for row in rows],
                               yerr=[100 * row["recovery"]["std"] for row in rows], marker="o", capsize=3,
                               label=f"k=2, teacher drop path {rate:g}")
            k3 = [row for row in summary["relaxation"] if row["drop_path_rate"] == rate and row["k"] == 3]
            if k3:
                ax.axhline(100 * k3[0]["recovery"]["mean"], ls="--", color=line[0].get_color(), lw=1,
                           label=f"k=3 pure, drop path {rate:g}")
        ax.axhline(98, color="grey", ls=":", lw=1)
        ax.set(xlabel="adapter rank r (0 = pure Raptor)", ylabel="accuracy recovery (%)",
               title="Relaxed Raptor: recovery vs adapter rank")
        ax.legend(fontsize=8)
        figure.savefig(out_dir / "relaxation.png", dpi=120)
        written.append("relaxation.png")
    return written


def write_report(config: StudyConfig, runs: list[Run]) -> dict:
    """summary.json, tables.md and the plots from every record present; returns the summary."""
    out_dir = Path(config.out_dir)
    records = [json.loads(record_path(config, run).read_text()) for run in runs if record_path(config, run).is_file()]
    teachers = [r for r in records if r["kind"] == "teacher"]
    raptors = [r for r in records if r["kind"] == "raptor"]
    print(f"{len(records)} of {len(runs)} runs recorded in {out_dir / 'runs'}")
    if not teachers:
        return {}
    summary = summarise(teachers, raptors)
    summary.update(runs_recorded=len(records), runs_planned=len(runs),
                   grid={"drop_path_rates": list(config.drop_path_rates), "seeds": list(config.seeds),
                         "ks": sorted({r.k for r in runs if r.k}), "relax_ranks": list(config.relax_ranks),
                         "relax_rates": list(config.relax_rates), "drop_path_mode": config.drop_path_mode},
                   dates=sorted({r.get("date") for r in records if r.get("date")}),
                   machine=f"{os.cpu_count()} CPU cores, torch {torch.__version__}")
    plots = plot_report(summary, teachers, raptors, out_dir)
    summary["plots"] = plots
    write_json_atomic(out_dir / "summary.json", summary)
    tables = format_tables(summary)
    (out_dir / "tables.md").write_text(
        f"# Digits study: {len(records)} of {len(runs)} runs ({', '.join(summary['dates'])}; {summary['machine']})\n\n"
        + tables)
    print(tables)
    return summary


if __name__ == "__main__":
    main()
