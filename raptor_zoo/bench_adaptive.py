"""Adaptive-depth benchmark: accuracy against mean block applications and against images/s, Raptor beside teacher.

For a sweep of thresholds of one halting criterion (:mod:`raptor_zoo.adaptive`), both models classify the same
held-out images with per-image early exit; every configuration (model, threshold or full depth) is timed at each
batch size in rounds, interleaved batch by batch in alternating order, so bursts of load on a shared machine hit
all of them alike, and each adaptive speed-up is taken per round against the *same model's* plain full-depth
``forward`` and reported as the median (min-max) over rounds. Accuracy and mean exit step come from the timed
calls; batch-size-1 timings run on every ``stride``-th image to keep a CPU run short.

Un-timed curves from one full-depth pass per model: the fixed-depth anytime curve (head on x_m, m = 1..L) and the
accuracy / mean-depth trade-off of every criterion over a dense threshold grid (the exits a whole-batch run would
take, :func:`raptor_zoo.adaptive.exit_steps_for`).

``benchmarks/adaptive_depth.py`` and ``raptor-zoo bench --adaptive`` are ``raptor_zoo_cli.options.add_adaptive_arguments``
+ :func:`adaptive_bench_command`.
"""
from __future__ import annotations

import argparse
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from raptor_zoo_cli.options import DEFAULT_THRESHOLDS

from .adaptive import CRITERIA, adaptive_forward, exit_steps_for, halting_scores
from .bench import environment_info, resolve_device, write_json

__all__ = [
    "DEFAULT_THRESHOLDS", "AdaptiveBenchSettings", "load_eval_images", "anytime_curve", "simulated_sweep",
    "time_configs", "run_adaptive_benchmark", "markdown_report", "plot_adaptive", "resolve_adaptive_settings",
    "adaptive_bench_command",
]

_DENSE_GRID = [10 ** (-4 + 4 * i / 80) for i in range(81)]  # 1e-4 .. 1, for the un-timed trade-off curves
_BENCH_ONLY_FLAGS = ("k", "arch", "modes", "dtypes", "iters", "anytime_steps", "anytime_batch_size")


@dataclass
class AdaptiveBenchSettings:
    """Resolved settings of one adaptive-depth benchmark run."""
    raptor: str
    teacher: str
    data: str
    split: str
    num_images: int | None
    criterion: str
    thresholds: list[float]
    min_steps: int | None
    batch_sizes: list[int]
    batch1_stride: int
    rounds: int
    warmup: int
    device: str
    num_threads: int | None
    out: str
    plot: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------------------------------- data and models

def load_eval_images(data: str, split: str, data_config: dict[str, Any], num_images: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """A split (all, or a seeded stratified subset of ``num_images``) as normalised images [N, C, H, W] and labels."""
    from .data import create_loader, load_image_dataset, random_subset

    dataset, _ = random_subset(load_image_dataset(data, split=split), num_images)
    loader = create_loader(dataset, data_config, batch_size=256, is_training=False)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


def _load_models(settings: AdaptiveBenchSettings, device: torch.device) -> tuple[nn.Module, nn.Module]:
    import raptor_zoo

    from .teachers import load_teacher

    raptor = raptor_zoo.from_pretrained(settings.raptor).eval().to(device)
    teacher = load_teacher(settings.teacher).to(device)
    if raptor.depth != teacher.depth:
        raise ValueError(f"{settings.raptor} runs {raptor.depth} steps but {settings.teacher} has {teacher.depth} "
                         "blocks; pass the teacher the Raptor was distilled from.")
    return raptor, teacher


# ---------------------------------------------------------------------------------------------- un-timed curves

def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float((logits.argmax(-1).cpu() == labels).float().mean())


def anytime_curve(step_logits: torch.Tensor, labels: torch.Tensor) -> list[dict[str, Any]]:
    """Fixed-depth accuracy after m = 1..L steps (final norm and head on x_m) from per-step logits [N, L, C]."""
    return [{"num_steps": m + 1, "accuracy": _accuracy(step_logits[:, m], labels)}
            for m in range(step_logits.shape[1])]


def simulated_sweep(scores: torch.Tensor, step_logits: torch.Tensor, labels: torch.Tensor, min_steps: int,
                    thresholds: Sequence[float]) -> list[dict[str, Any]]:
    """Accuracy and mean exit step per threshold, from whole-batch scores [N, L] and per-step logits [N, L, C]."""
    depth = scores.shape[1]
    rows = []
    for threshold in thresholds:
        exits = exit_steps_for(scores, threshold, min_steps, depth)
        logits = step_logits[torch.arange(len(exits)), exits - 1]
        rows.append({"threshold": threshold, "mean_steps": float(exits.float().mean()),
                     "accuracy": _accuracy(logits, labels)})
    return rows


# ---------------------------------------------------------------------------------------------- timing

@dataclass
class _Config:
    """One timed configuration: a model at full depth (plain forward) or with adaptive exit at a threshold."""
    model_name: str
    role: str  # 'raptor' | 'teacher'
    threshold: float | None  # None = plain full-depth forward
    run: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def _make_configs(raptor: nn.Module, teacher: nn.Module, names: tuple[str, str], criterion: str,
                  thresholds: Sequence[float], min_steps: int) -> list[_Config]:
    configs = []
    for role, model, name in (("raptor", raptor, names[0]), ("teacher", teacher, names[1])):
        configs.append(_Config(name, role, None, lambda x, model=model: (model(x), None)))
        for threshold in thresholds:
            def run(x: torch.Tensor, model: nn.Module = model, threshold: float = threshold):
                out = adaptive_forward(model, x, threshold, criterion=criterion, min_steps=min_steps)
                return out.logits, out.exit_steps
            configs.append(_Config(name, role, threshold, run))
    return configs


def _timed_call(config: _Config, images: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor | None]:
    """Seconds for one call on a batch, with the predictions and exit steps."""
    start = time.perf_counter()
    logits, exit_steps = config.run(images)
    elapsed = time.perf_counter() - start
    return elapsed, logits.argmax(-1).cpu(), exit_steps.cpu() if exit_steps is not None else None


def time_configs(configs: Sequence[_Config], images: torch.Tensor, labels: torch.Tensor, batch_size: int,
                 rounds: int, warmup: int, depth: int, progress: tqdm | None = None) -> list[dict[str, Any]]:
    """Time every config over ``images`` in rounds; one row per config with img/s and speed-up over rounds.

    Configs are interleaved batch by batch (forward order, then reversed, alternating over batches and rounds),
    so a burst of load on a shared machine hits every config of the round alike.
    """
    batches = [slice(start, start + batch_size) for start in range(0, len(images), batch_size)]
    for config in configs:
        for _ in range(warmup):
            config.run(images[batches[0]])
    seconds: list[list[float]] = [[] for _ in configs]
    predictions: list[list[torch.Tensor]] = [[] for _ in configs]
    exits: list[list[torch.Tensor]] = [[] for _ in configs]
    for round_index in range(rounds):
        totals = [0.0] * len(configs)
        for batch_index, batch in enumerate(batches):
            forward = (round_index + batch_index) % 2 == 0
            for index in (range(len(configs)) if forward else reversed(range(len(configs)))):
                elapsed, batch_predictions, batch_exits = _timed_call(configs[index], images[batch])
                totals[index] += elapsed
                if round_index == 0:
                    predictions[index].append(batch_predictions)
                    if batch_exits is not None:
                        exits[index].append(batch_exits)
        for index, total in enumerate(totals):
            seconds[index].append(total)
        if progress is not None:
            progress.update()
    baseline = {config.role: index for index, config in enumerate(configs) if config.threshold is None}
    rows = []
    for index, config in enumerate(configs):
        base = seconds[baseline[config.role]]
        speedups = [b / s for b, s in zip(base, seconds[index])]
        mean_steps = float(torch.cat(exits[index]).float().mean()) if exits[index] else float(depth)
        rows.append({
            "model": config.model_name, "role": config.role, "threshold": config.threshold,
            "batch_size": batch_size, "num_images": len(images),
            "accuracy": float((torch.cat(predictions[index]) == labels).float().mean()),
            "mean_steps": mean_steps, "block_reduction": depth / mean_steps,
            "img_per_sec": len(images) / statistics.median(seconds[index]),
            "seconds": seconds[index],
            "speedup": statistics.median(speedups), "speedup_min": min(speedups), "speedup_max": max(speedups),
            "speedup_fastest_rounds": min(base) / min(seconds[index]),
        })
    return rows


def run_adaptive_benchmark(settings: AdaptiveBenchSettings) -> dict[str, Any]:
    """Load both models and the data, draw the un-timed curves, time every configuration; return all results."""
    device = resolve_device(settings.device)
    raptor, teacher = _load_models(settings, device)
    images, labels = load_eval_images(settings.data, settings.split, teacher.data_config, settings.num_images)
    images = images.to(device)
    depth = raptor.depth
    min_steps = settings.min_steps if settings.min_steps is not None else raptor.phase_boundaries[1]
    if not 1 <= min_steps <= depth:
        raise ValueError(f"--min-steps {min_steps} is out of range; use 1 <= min_steps <= L = {depth}.")
    names = (Path(settings.raptor).name, Path(settings.teacher).name)
    curves: dict[str, Any] = {}
    with torch.inference_mode():
        for role, model in (("raptor", raptor), ("teacher", teacher)):
            curves[role] = {"simulated": {}}
            for criterion in CRITERIA:
                scores, step_logits = halting_scores(model, images, criterion, phase_boundaries=(
                    None if role == "raptor" else raptor.phase_boundaries))
                curves[role]["anytime"] = anytime_curve(step_logits, labels)
                curves[role]["simulated"][criterion] = simulated_sweep(
                    scores.cpu(), step_logits.cpu(), labels, min_steps, _DENSE_GRID)
        configs = _make_configs(raptor, teacher, names, settings.criterion, settings.thresholds, min_steps)
        rows = []
        total = settings.rounds * len(settings.batch_sizes)
        with tqdm(total=total, desc="adaptive depth: timed rounds") as progress:
            for batch_size in settings.batch_sizes:
                subset = slice(None) if batch_size > 1 else slice(None, None, settings.batch1_stride)
                rows += time_configs(configs, images[subset], labels[subset], batch_size, settings.rounds,
                                     settings.warmup, depth, progress)
    return {"models": {"raptor": names[0], "teacher": names[1]}, "depth": depth, "min_steps": min_steps,
            "phase_boundaries": list(raptor.phase_boundaries), "num_images": len(images), "curves": curves,
            "rows": rows}


# ---------------------------------------------------------------------------------------------- reports

def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def markdown_report(result: dict[str, Any], environment: dict[str, Any], settings: AdaptiveBenchSettings) -> str:
    """Tables: the timed sweep per batch size, the anytime curves, the simulated trade-off of every criterion."""
    models = result["models"]
    lines = [f"# Adaptive depth: {models['raptor']} vs {models['teacher']} ({settings.data} {settings.split}, "
             f"{result['num_images']} images)", "",
             f"- device: {environment.get('device')}; threads: {environment.get('torch_num_threads')}; "
             f"torch {environment.get('torch')}; date {environment.get('date')}",
             f"- criterion `{settings.criterion}` (exit when score < threshold), min_steps {result['min_steps']} "
             f"(end of the Raptor's first phase, phases {result['phase_boundaries']}; the teacher uses the same), "
             f"L = {result['depth']}",
             f"- {settings.rounds} rounds per batch size, every config interleaved batch by batch in alternating "
             "order; "
             "img/s from the median round; speed-up = the same model's full-depth forward time / adaptive time, per "
             "round: median (min–max); fastest rounds = fastest full-depth round / fastest adaptive round",
             f"- batch 1 is timed on every {settings.batch1_stride}-th image; accuracy and mean steps of each row come "
             "from its own first timed round"]
    lines += [f"- {note}" for note in settings.notes]
    for batch_size in settings.batch_sizes:
        rows = [r for r in result["rows"] if r["batch_size"] == batch_size]
        lines += ["", f'## Batch {batch_size} ({rows[0]["num_images"]} images)', "",
                  "| model | threshold | accuracy % | Δ vs full (points) | mean steps | fewer blocks | img/s "
                  "| speed-up "
                  "| speed-up, fastest rounds |", "|---|---|---|---|---|---|---|---|---|"]
        full = {r["role"]: r for r in rows if r["threshold"] is None}
        for row in rows:
            delta = 100 * (row["accuracy"] - full[row["role"]]["accuracy"])
            threshold = "full depth" if row["threshold"] is None else f"{row['threshold']:g}"
            lines.append(
                f"| {row['model']} | {threshold} | {_pct(row['accuracy'])} | {delta:+.2f} | {row['mean_steps']:.2f} | "
                f"{row['block_reduction']:.2f}x | {row['img_per_sec']:,.0f} | {row['speedup']:.2f}x "
                f"({row['speedup_min']:.2f}–{row['speedup_max']:.2f}) | {row['speedup_fastest_rounds']:.2f}x |")
    lines += ["", "## Fixed depth (anytime, `num_steps=m`)", "",
              "| m | " + " | ".join(f"{models[r]} accuracy %" for r in ("raptor", "teacher")) + " |", "|---|---|---|"]
    for m in range(result["depth"]):
        lines.append(f"| {m + 1} | " + " | ".join(_pct(result["curves"][r]["anytime"][m]["accuracy"])
                                                   for r in ("raptor", "teacher")) + " |")
    lines += ["", "## Every criterion, un-timed (exits of a whole-batch pass), least mean steps within 0.5 points of "
              "full depth", "", "| model | criterion | threshold | mean steps | fewer blocks | accuracy % |",
              "|---|---|---|---|---|---|"]
    for role in ("raptor", "teacher"):
        full_accuracy = result["curves"][role]["anytime"][-1]["accuracy"]
        for criterion, sweep in result["curves"][role]["simulated"].items():
            within = [r for r in sweep if r["accuracy"] >= full_accuracy - 0.005]
            best = min(within, key=lambda r: r["mean_steps"])
            lines.append(f"| {models[role]} | {criterion} | {best['threshold']:.3g} | {best['mean_steps']:.2f} | "
                         f"{result['depth'] / best['mean_steps']:.2f}x | {_pct(best['accuracy'])} |")
    return "\n".join(lines) + "\n"


def plot_adaptive(result: dict[str, Any], settings: AdaptiveBenchSettings, path: str | Path) -> Path:
    """PNG: accuracy vs mean steps (anytime, adaptive sweep, timed points) and accuracy vs img/s, both models."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    models, depth = result["models"], result["depth"]
    colours = {"raptor": "tab:blue", "teacher": "tab:orange"}
    largest = max(settings.batch_sizes)
    fig, (ax_steps, ax_speed) = plt.subplots(1, 2, figsize=(13, 5))
    for role in ("raptor", "teacher"):
        curves, colour = result["curves"][role], colours[role]
        ax_steps.plot([p["num_steps"] for p in curves["anytime"]], [100 * p["accuracy"] for p in curves["anytime"]],
                      ":", marker=".", color=colour, label=f"{models[role]}: fixed depth m")
        sweep = sorted(curves["simulated"][settings.criterion], key=lambda r: r["mean_steps"])
        ax_steps.plot([r["mean_steps"] for r in sweep], [100 * r["accuracy"] for r in sweep], "-", color=colour,
                      alpha=0.6, label=f"{models[role]}: adaptive ({settings.criterion}), threshold sweep")
        timed = [r for r in result["rows"] if r["role"] == role and r["batch_size"] == largest]
        adaptive = [r for r in timed if r["threshold"] is not None]
        ax_steps.scatter([r["mean_steps"] for r in adaptive], [100 * r["accuracy"] for r in adaptive], color=colour,
                         zorder=3, label=f"{models[role]}: timed thresholds")
        for row in adaptive:
            ax_steps.annotate(f"{row['threshold']:g}", (row["mean_steps"], 100 * row["accuracy"]), fontsize=7,
                              textcoords="offset points", xytext=(3, -9))
        for batch_size, marker in zip(settings.batch_sizes, "os^D"):
            rows = sorted((r for r in result["rows"] if r["role"] == role and r["batch_size"] == batch_size),
                          key=lambda r: r["img_per_sec"])
            ax_speed.plot([r["img_per_sec"] for r in rows], [100 * r["accuracy"] for r in rows], "-", marker=marker,
                          color=colour, label=f"{models[role]}, batch {batch_size}")
            full = next(r for r in rows if r["threshold"] is None)
            ax_speed.scatter([full["img_per_sec"]], [100 * full["accuracy"]], s=120, facecolors="none",
                             edgecolors=colour)
    low = min(100 * min(p["accuracy"] for p in result["curves"][r]["anytime"][result["min_steps"] - 1:])
              for r in colours)
    ax_steps.set_ylim(low - 2, 100)
    ax_steps.set_xlim(result["min_steps"] - 0.5, depth + 0.5)
    ax_steps.set_xlabel("mean block applications per image")
    ax_steps.set_ylabel("held-out accuracy (%)")
    ax_steps.set_title("Accuracy vs mean depth")
    ax_steps.grid(alpha=0.3)
    ax_steps.legend(fontsize=7, loc="lower right")
    ax_speed.set_xscale("log")
    plain = FuncFormatter(lambda value, _: f"{value:g}")
    ax_speed.xaxis.set_major_formatter(plain)
    ax_speed.xaxis.set_minor_formatter(plain)
    ax_speed.tick_params(axis="x", which="minor", labelsize=7)
    ax_speed.set_xlabel("images/s (log; circled: full depth)")
    ax_speed.set_ylabel("held-out accuracy (%)")
    ax_speed.set_title("Accuracy vs wall clock")
    ax_speed.grid(alpha=0.3)
    ax_speed.legend(fontsize=7, loc="lower left")
    fig.suptitle(f"Adaptive depth: {models['raptor']} vs {models['teacher']}, {settings.data} {settings.split} "
                 f"({result['num_images']} images)")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- command line

def resolve_adaptive_settings(args: argparse.Namespace) -> AdaptiveBenchSettings:
    """Fill defaults and validate every flag before a model is loaded."""
    given = [name for name in _BENCH_ONLY_FLAGS if getattr(args, name, None) is not None]
    if given:
        flags = ", ".join(f"--{name.replace('_', '-')}" for name in given)
        raise ValueError(f"{flags}: throughput-benchmark flags, not used with --adaptive; the adaptive benchmark "
                         "takes --raptor, --teacher, --data, --criterion, --thresholds, --min-steps.")
    thresholds = list(args.thresholds) if args.thresholds is not None else DEFAULT_THRESHOLDS[args.criterion]
    if not thresholds or any(not t > 0 for t in thresholds):
        raise ValueError(f"--thresholds must all be > 0 (0 is full depth, timed anyway); got {thresholds}.")
    batch_sizes = list(args.batch_sizes or [1, 64])
    rounds = 3 if args.rounds is None else args.rounds
    warmup = 1 if args.warmup is None else args.warmup
    if any(b < 1 for b in batch_sizes) or rounds < 1 or warmup < 0 or args.batch1_stride < 1:
        raise ValueError(f"need --batch-sizes >= 1, --rounds >= 1, --warmup >= 0, --batch1-stride >= 1; got "
                         f"{batch_sizes}, {rounds}, {warmup}, {args.batch1_stride}.")
    if args.min_steps is not None and args.min_steps < 1:
        raise ValueError(f"--min-steps must be >= 1, got {args.min_steps}.")
    if args.num_images is not None and args.num_images < 1:
        raise ValueError(f"--num-images must be >= 1, got {args.num_images}.")
    if args.num_threads is not None and args.num_threads < 1:
        raise ValueError(f"--num-threads must be >= 1, got {args.num_threads}.")
    device = "cpu" if args.device in (None, "auto") and not torch.cuda.is_available() else args.device
    return AdaptiveBenchSettings(
        raptor=args.raptor, teacher=args.teacher or "digits-vit", data=args.data, split=args.split,
        num_images=args.num_images, criterion=args.criterion, thresholds=thresholds, min_steps=args.min_steps,
        batch_sizes=batch_sizes, batch1_stride=args.batch1_stride, rounds=rounds, warmup=warmup,
        device=str(resolve_device(device)), num_threads=args.num_threads,
        out=args.out or args.default_adaptive_dir, plot=not args.no_plot, notes=list(args.note or []))


def adaptive_bench_command(args: argparse.Namespace) -> dict[str, Path]:
    """Run the adaptive-depth benchmark from parsed flags; write JSON, Markdown and PNG; return their paths."""
    settings = resolve_adaptive_settings(args)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    environment = environment_info(torch.device(settings.device))
    start = time.perf_counter()
    result = run_adaptive_benchmark(settings)
    environment["bench_wall_s"] = round(time.perf_counter() - start, 1)
    out = Path(settings.out)
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-",
                  f"adaptive_{result['models']['raptor']}_{settings.data}_{settings.criterion}")
    rows = result.pop("rows")
    paths = {"json": write_json(rows, out / f"{stem}.json", environment, settings.to_dict(), settings.notes,
                                extra=result)}
    result["rows"] = rows
    report = markdown_report(result, environment, settings)
    if settings.plot:
        paths["png"] = plot_adaptive(result, settings, out / f"{stem}.png")
        report += f"\n![adaptive depth]({paths['png'].name})\n"
    paths["md"] = out / f"{stem}.md"
    paths["md"].write_text(report)
    print(report)
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return paths
