"""The distillation recipe's config (``recipes/distill.py``, ``raptor-zoo distill``), without torch.

:class:`DistillConfig` is a plain dataclass so that the command line can list and check its fields before torch is
imported; ``raptor_zoo.recipes.distill`` re-exports it beside the training function that runs it. Its data fields are
:class:`raptor_zoo_cli.data_args.DataArgs`'s, shared by every recipe. Its defaults
name the library's constants by value: tests/test_cli.py checks them against ``raptor_zoo`` (the Raptor's
``RELAX_TARGETS`` and the paper's token-group weights in ``raptor_zoo.distill.losses``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .data_args import DataArgs

__all__ = ["DistillConfig", "RELAX_TARGETS", "PAPER_PHASE_TOKEN_WEIGHTS", "PAPER_JOINT_TOKEN_WEIGHTS"]

RELAX_TARGETS = ("qkv", "proj", "fc1", "fc2")
"""Linear layers of a shared block that relaxation may adapt (``raptor_zoo.models.recurrent.RELAX_TARGETS``)."""
PAPER_PHASE_TOKEN_WEIGHTS = (0.34, 0.33, 0.33)
"""(cls, registers, patches) loss weights of the paper's last phase in stage 1 (``raptor_zoo.distill.losses``)."""
PAPER_JOINT_TOKEN_WEIGHTS = (0.45, 0.10, 0.45)
"""(cls, registers, patches) loss weights of the paper's joint stage (``raptor_zoo.distill.losses``)."""


@dataclass
class DistillConfig(DataArgs):
    """Distil a teacher ViT into a Raptor with Accelerate."""
    # teacher
    teacher: str = field(default="digits-vit", metadata={
        "group": "Teacher", "help": "'digits-vit', a timm ViT name, a folder or a Hub repo id (raptor_zoo.load_teacher)"})
    teacher_pretrained: bool = field(default=True, metadata={
        "group": "Teacher", "help": "load the teacher's weights (--no-teacher-pretrained: random init, for tests)"})
    teacher_img_size: int | None = field(default=None, metadata={
        "group": "Teacher", "help": "image size to run the teacher at; none = its default (224 for DINOv2)"})
    teacher_kwargs: dict[str, Any] = field(default_factory=dict, metadata={
        "group": "Teacher", "help": "extra timm.create_model arguments for the teacher, as a mapping / JSON object"})
    teacher_precision: Literal["fp32", "bf16"] = field(default="fp32", metadata={
        "group": "Teacher", "help": "fp32 targets, or the teacher under bf16 autocast (targets cast to fp32)"})
    # data (beyond DataArgs': labels are optional here)
    streaming: bool = field(default=False, metadata={"group": "Data", "help": "stream the dataset (datasets)"})
    augment: bool = field(default=False, metadata={
        "group": "Data", "help": "timm training augmentation; off = one fixed view per image, as the paper"})
    augment_scale: tuple[float, float] = field(default=(0.08, 1.0), metadata={
        "group": "Data", "help": "--augment: RandomResizedCrop scale range (timm's default)"})
    augment_hflip: float = field(default=0.5, metadata={
        "group": "Data", "help": "--augment: horizontal flip probability (timm's default)"})
    augment_color_jitter: float = field(default=0.0, metadata={
        "group": "Data", "help": "--augment: colour jitter strength (0 = none; timm's ImageNet recipes use 0.4)"})
    synthetic_data: bool = field(default=False, metadata={
        "group": "Data", "help": "random normalised images at the teacher's input size instead of a dataset"})
    synthetic_size: int = field(default=10_000, metadata={
        "group": "Data", "help": "training images of the synthetic dataset (evaluation: 512)"})
    trajectory_cache: str | None = field(default=None, metadata={
        "group": "Data", "help": "folder of a cache of the teacher's trajectories of the training images, computed once "
                                 "and read every epoch (needs a fixed image set: no --augment or --streaming); none = "
                                 "the teacher runs on every batch"})
    trajectory_cache_dtype: Literal["fp16", "fp32"] = field(default="fp16", metadata={
        "group": "Data", "help": "storage of the trajectory cache (fp32: exactly the on-the-fly targets)"})
    # student
    k: int | None = field(default=2, metadata={
        "group": "Student", "help": "number of unique blocks (ignored when block_schedule is given)"})
    block_schedule: tuple[int, ...] | None = field(default=None, metadata={
        "group": "Student", "help": "explicit repeat counts summing to the teacher depth, e.g. 7 5; none = from phases"})
    block_schedule_teacher: str | None = field(default=None, metadata={
        "group": "Student", "help": "the teacher block_schedule was measured on; with another --teacher the run "
                                    "discovers that teacher's phases instead (none = the schedule applies to any)"})
    phases: Literal["auto", "even", "paper"] = field(default="auto", metadata={
        "group": "Student", "help": "schedule without block_schedule: auto = phase discovery on phase_images "
                                    "training images; even split; paper = DINOv2-B boundaries scaled"})
    phase_images: int = field(default=256, metadata={
        "group": "Student", "help": "random training images for phase discovery (seeded by --subset-seed)"})
    phase_metric: str = field(default="cls_patchmean", metadata={"group": "Student", "help": "phases.discover metric"})
    phase_algorithm: Literal["divisive", "contiguous"] = field(default="divisive", metadata={
        "group": "Student", "help": "phases.discover partition algorithm"})
    block_type: Literal["teacher", "swiglu"] = field(default="teacher", metadata={
        "group": "Student", "help": "teacher: the teacher's block (FLOP parity); swiglu: the paper's block"})
    init: Literal["middle", "first", "mean", "random"] | None = field(default=None, metadata={
        "group": "Student", "help": "block init from the phase's teacher layers; none = middle (teacher) / random"})
    t_scale: bool = field(default=True, metadata={"group": "Student", "help": "depth-scaling gates fed the layer index"})
    drop_path_rate: float = field(default=0.0, metadata={"group": "Student", "help": "student stochastic depth"})
    init_from: str | None = field(default=None, metadata={
        "group": "Student", "help": "folder with a model.safetensors of this student to start from"})
    init_blocks_from: list[str] | None = field(default=None, metadata={
        "group": "Student", "help": "k folders with model.safetensors; block j is taken from folder j "
                                    "(joins stage-1 jobs run with --phase-index j)"})
    relax_rank: int = field(default=0, metadata={
        "group": "Student", "help": "rank of per-step low-rank adapters on the shared blocks (relaxation); 0 = pure Raptor"})
    relax_targets: tuple[str, ...] = field(default=RELAX_TARGETS, metadata={
        "group": "Student", "help": "linear layers the adapters relax, from qkv proj fc1 fc2"})
    relax_init: Literal["svd", "zeros"] = field(default="svd", metadata={
        "group": "Student", "help": "adapter init: svd = rank-r SVD of (teacher layer - shared block) weights; zeros"})
    train_adapters_only: bool = field(default=False, metadata={
        "group": "Student", "help": "train only the adapters (shared blocks fixed), e.g. after --init-from a pure Raptor"})
    grad_checkpointing: bool = field(default=False, metadata={
        "group": "Student", "help": "activation checkpointing of every block application"})
    # objective
    schedule: Literal["two_stage", "joint"] = field(default="two_stage", metadata={
        "group": "Objective", "help": "two_stage: phase blocks alone then joint (the paper); joint: one joint stage"})
    phase_index: str = field(default="all", metadata={
        "group": "Objective", "help": "two_stage: 'all' phases one after the other, or one phase job (0-based)"})
    phase_objective: Literal["tf_ar", "ar", "tf"] = field(default="tf_ar", metadata={
        "group": "Objective", "help": "stage-1 objective: tf_ar = TF annealed into AR"})
    joint_objective: Literal["tf_ar", "ar", "tf"] | None = field(default=None, metadata={
        "group": "Objective", "help": "joint-stage objective; none = ar (two_stage) / tf_ar (joint)"})
    distance: Literal["mse", "cosine"] = field(default="mse", metadata={
        "group": "Objective", "help": "trajectory distance: mse or 1 - cosine"})
    last_layers_weight: float = field(default=1.0, metadata={
        "group": "Objective", "help": "loss weight of the last --last-layers layers (the ones a probe reads) against 1"})
    last_layers: int = field(default=1, metadata={
        "group": "Objective", "help": "how many of the last layers --last-layers-weight applies to"})
    phase_token_weights: tuple[float, float, float] | None = field(default=None, metadata={
        "group": "Objective", "help": "(cls, registers, patches) weights of phases before the last; none = plain"})
    last_phase_token_weights: tuple[float, float, float] | None = field(default=PAPER_PHASE_TOKEN_WEIGHTS, metadata={
        "group": "Objective", "help": "(cls, registers, patches) weights of the last phase in stage 1"})
    joint_token_weights: tuple[float, float, float] | None = field(default=PAPER_JOINT_TOKEN_WEIGHTS, metadata={
        "group": "Objective", "help": "(cls, registers, patches) weights of the joint stage; none = plain"})
    tf_anneal_ratio: float = field(default=0.25, metadata={
        "group": "Objective", "help": "fraction of a stage over which teacher forcing anneals into AR"})
    tf_min: float = field(default=0.0, metadata={"group": "Objective", "help": "floor of the teacher-forcing weight"})
    input_noise_std: float = field(default=0.0, metadata={
        "group": "Objective", "help": "Gaussian noise sigma on block inputs while training"})
    # optimisation
    max_steps: int = field(default=312_500, metadata={
        "group": "Optimisation", "help": "optimiser steps of the joint stage (and of each phase job)"})
    phase_max_steps: int | None = field(default=None, metadata={
        "group": "Optimisation", "help": "optimiser steps of each stage-1 phase job; none = max_steps"})
    batch_size: int = field(default=64, metadata={"group": "Optimisation", "help": "batch size per process"})
    eval_batch_size: int | None = field(default=None, metadata={
        "group": "Optimisation", "help": "evaluation batch size per process; none = batch_size"})
    lr: float = field(default=3e-4, metadata={"group": "Optimisation", "help": "peak AdamW learning rate"})
    min_lr: float = field(default=1e-6, metadata={"group": "Optimisation", "help": "cosine schedule floor"})
    warmup_steps: int = field(default=10_000, metadata={
        "group": "Optimisation", "help": "linear warmup steps from 0 at the start of every stage"})
    weight_decay: float = field(default=1e-4, metadata={"group": "Optimisation", "help": "AdamW weight decay"})
    grad_clip: float | None = field(default=1.0, metadata={
        "group": "Optimisation", "help": "max gradient norm, none to disable"})
    ema_decay: float | None = field(default=None, metadata={
        "group": "Optimisation", "help": "keep an EMA of the Raptor's weights (timm ModelEmaV3, e.g. 0.99) and evaluate "
                                         "and save it instead of the raw weights; none = off"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "group": "Optimisation", "help": "micro-batches per optimiser step"})
    seed: int = field(default=0, metadata={"group": "Optimisation", "help": "seed of init and data order"})
    # run
    output_dir: str = field(default="outputs/distill", metadata={"group": "Run", "help": "where results go"})
    checkpoint_every: int = field(default=5000, metadata={
        "group": "Run", "help": "checkpoint interval in optimiser steps, 0 = only at the end"})
    keep_checkpoints: int = field(default=3, metadata={"group": "Run", "help": "checkpoints kept"})
    resume: str | None = field(default=None, metadata={
        "group": "Run", "help": "'latest' (starts fresh if there is none) or a checkpoints/step_N folder"})
    max_steps_this_run: int | None = field(default=None, metadata={
        "group": "Run", "help": "stop after this many optimiser steps in this process (checkpointed), then resume"})
    eval_every: int = field(default=0, metadata={
        "group": "Run", "help": "fidelity evaluation interval in steps, 0 = only at the end"})
    eval_max_batches: int | None = field(default=None, metadata={
        "group": "Run", "help": "evaluate on a seeded random (stratified) subset of this many batches per process (or "
                                "--max-eval-images: a number of images); none = the whole held-out split"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={
        "group": "Run", "help": "autocast of the student"})
    cpu: bool = field(default=False, metadata={"group": "Run", "help": "run on CPU even if a GPU is present"})
    log_with: str | None = field(default=None, metadata={
        "group": "Run", "help": "accelerate tracker (tensorboard, wandb, ...), none = no tracker"})

    def __post_init__(self):
        super().__post_init__()
        positive = {
            "batch_size": self.batch_size, "max_steps": self.max_steps, "phase_images": self.phase_images,
            "last_layers": self.last_layers,
            "gradient_accumulation_steps": self.gradient_accumulation_steps, "keep_checkpoints": self.keep_checkpoints,
            "synthetic_size": self.synthetic_size}
        optional_positive = {
            "k": self.k, "phase_max_steps": self.phase_max_steps, "eval_batch_size": self.eval_batch_size,
            "max_steps_this_run": self.max_steps_this_run, "eval_max_batches": self.eval_max_batches}
        positive.update({name: value for name, value in optional_positive.items() if value is not None})
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        for name in ("checkpoint_every", "eval_every", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        if self.eval_max_batches is not None and self.max_eval_images is not None:
            raise ValueError("--eval-max-batches and --max-eval-images both limit the held-out images: pass one of them.")
        if self.k is None and self.block_schedule is None:
            raise ValueError("Pass --k (number of unique blocks) or an explicit --block-schedule.")
        if self.relax_rank < 0:
            raise ValueError(f"--relax-rank must be >= 0 (0 = pure Raptor), got {self.relax_rank}.")
        if self.train_adapters_only and self.relax_rank == 0:
            raise ValueError("--train-adapters-only trains the per-step adapters of a relaxed Raptor: set --relax-rank "
                             "(e.g. 4), usually with --init-from a trained pure Raptor.")
        if self.trajectory_cache is not None and (self.augment or self.streaming or self.synthetic_data):
            raise ValueError("--trajectory-cache stores the teacher's trajectories of a fixed image set: drop --augment, "
                             "--streaming and --synthetic-data, or drop --trajectory-cache.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"--ema-decay must lie in (0, 1) (e.g. 0.99), got {self.ema_decay}.")
        if self.init_blocks_from is not None and self.init_from is not None:
            raise ValueError("Pass --init-from (a whole student) or --init-blocks-from (one folder per block), not both.")
