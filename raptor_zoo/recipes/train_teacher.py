# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""The teacher-training recipe: its config (:class:`TrainTeacherConfig`) and :func:`training_function`, launched by
`recipes/train_teacher.py` (the `accelerate launch` commands are in its docstring).

Train the embedded digits teacher: `vit_digits_patch8_reg4` (a DINOv2-shaped timm ViT, 32x32 input, patch 8,
4 registers, width 128, depth 12) from scratch on the project's fixed digits training split, evaluated on its
held-out split; or any timm classifier on any labelled data :func:`raptor_zoo.data.load_splits` reads.

Outputs in --output-dir: model.safetensors + config.json (timm layout; loads with
`timm.create_model("local-dir:<output-dir>")` after `import raptor_zoo`), metrics.json, args.yaml and
checkpoints/step_N (resume with `--resume latest`). `--export-dir` writes fp16 weights + config.json, the form
shipped in raptor_zoo/assets/digits-vit/.
"""
import copy
import json
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

import timm
import torch
import torch.nn as nn
from accelerate import Accelerator
from timm.data import resolve_model_data_config
from timm.models import save_for_hf
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from tqdm.auto import tqdm

from raptor_zoo.data import DataArgs, build_transform, create_loader
from raptor_zoo.training import (
    CheckpointManager,
    command_line,
    epoch_dataloader,
    resume_position,
    set_drop_path,
    start_run,
)


@dataclass
class TrainTeacherConfig(DataArgs):
    """Train a timm classifier (by default the embedded digits teacher) from scratch with Accelerate."""
    # data (beyond DataArgs': labels required)
    rotation_degrees: float = field(default=10.0, metadata={
        "group": "Data", "help": "training augmentation: random rotation within +-degrees"})
    translate_px: float = field(default=2.5, metadata={
        "group": "Data", "help": "training augmentation: random shift within +-pixels (no flips)"})
    # model
    model: str = field(default="vit_digits_patch8_reg4", metadata={
        "group": "Model", "help": "timm architecture, trained from random init"})
    drop_path_rate: float = field(default=0.2, metadata={"group": "Model", "help": "stochastic depth rate"})
    drop_path_mode: Literal["linear", "uniform"] = field(default="linear", metadata={
        "group": "Model", "help": "linear: timm's ramp over depth; uniform: the same rate at every block"})
    # optimisation
    epochs: int = field(default=40, metadata={"group": "Optimisation", "help": "training epochs"})
    batch_size: int = field(default=64, metadata={"group": "Optimisation", "help": "batch size per process"})
    lr: float = field(default=1e-3, metadata={"group": "Optimisation", "help": "peak AdamW learning rate"})
    min_lr: float = field(default=1e-6, metadata={"group": "Optimisation", "help": "cosine schedule floor"})
    warmup_epochs: int = field(default=2, metadata={"group": "Optimisation", "help": "linear warmup epochs"})
    weight_decay: float = field(default=0.05, metadata={"group": "Optimisation", "help": "AdamW weight decay"})
    label_smoothing: float = field(default=0.0, metadata={"group": "Optimisation", "help": "cross-entropy smoothing"})
    grad_clip: float | None = field(default=None, metadata={
        "group": "Optimisation", "help": "max gradient norm, none to disable"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "group": "Optimisation", "help": "micro-batches per optimiser step"})
    max_steps: int | None = field(default=None, metadata={
        "group": "Optimisation", "help": "stop after this many optimiser steps (smoke tests); none = all epochs"})
    seed: int = field(default=0, metadata={"group": "Optimisation", "help": "seed of init, shuffling and augmentation"})
    # run
    output_dir: str = field(default="outputs/digits_teacher", metadata={"group": "Run", "help": "where results go"})
    export_dir: str | None = field(default=None, metadata={
        "group": "Run", "help": "also write fp16 weights + config.json here (e.g. raptor_zoo/assets/digits-vit)"})
    eval_every_epochs: int = field(default=5, metadata={"group": "Run", "help": "held-out evaluation interval"})
    checkpoint_every: int = field(default=200, metadata={
        "group": "Run", "help": "checkpoint interval in optimiser steps, 0 = never"})
    keep_checkpoints: int = field(default=3, metadata={"group": "Run", "help": "checkpoints kept"})
    resume: str | None = field(default=None, metadata={
        "group": "Run", "help": "'latest' (starts fresh if there is none) or a checkpoints/step_N folder"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"group": "Run", "help": "autocast"})
    cpu: bool = field(default=False, metadata={"group": "Run", "help": "train on CPU even if a GPU is present"})
    log_with: str | None = field(default=None, metadata={
        "group": "Run", "help": "accelerate tracker (tensorboard, wandb, ...), none = no tracker"})

    def __post_init__(self):
        super().__post_init__()
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_every_epochs": self.eval_every_epochs,
                    "gradient_accumulation_steps": self.gradient_accumulation_steps,
                    "keep_checkpoints": self.keep_checkpoints}
        for name, value in positive.items():
            if value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"--max-steps must be >= 1 or none, got {self.max_steps}.")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be >= 0 (0 = never), got {self.checkpoint_every}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"--label-smoothing must lie in [0, 1), got {self.label_smoothing}.")


@torch.no_grad()
def evaluate(model: nn.Module, dataloader, accelerator: Accelerator) -> float:
    """Top-1 accuracy over the whole (gathered) evaluation set."""
    model.eval()
    correct, total = 0, 0
    for images, labels in dataloader:
        predictions = model(images).argmax(dim=-1)
        predictions, labels = accelerator.gather_for_metrics((predictions, labels))
        correct += (predictions == labels).sum().item()
        total += labels.numel()
    return correct / max(total, 1)


def training_function(config: TrainTeacherConfig) -> dict:
    accelerator, output_dir = start_run(config, tracker="train_teacher")

    # data
    splits = config.load_splits()
    train_set, eval_set = splits.train, splits.eval
    if splits.num_classes is None:
        raise ValueError(f"--dataset {config.dataset!r} has no labels; training a classifier needs a label column "
                         "(--label-column) or class sub-folders.")
    label_names = getattr(train_set.features["label"], "names", None) or [str(i) for i in range(splits.num_classes)]

    # model (after the seed), with its own data config (input size, mean/std)
    model = timm.create_model(config.model, pretrained=False, num_classes=len(label_names))
    set_drop_path(model, config.drop_path_rate, config.drop_path_mode)
    data_config = resolve_model_data_config(model)
    train_transform = build_transform(
        data_config, is_training=True, rotation_degrees=config.rotation_degrees, translate_px=config.translate_px)
    train_loader = create_loader(train_set, data_config, config.batch_size, is_training=True, seed=config.seed,
                                 num_workers=config.num_workers, transform=train_transform)
    eval_loader = create_loader(eval_set, data_config, config.batch_size, is_training=False,
                                num_workers=config.num_workers)

    # optimiser and schedule (warmup + cosine, stepped per optimiser update)
    optimizer = create_optimizer_v2(model, opt="adamw", lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train_loader) / (accelerator.num_processes * config.gradient_accumulation_steps))
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs, warmup_epochs=config.warmup_epochs,
        min_lr=config.min_lr, warmup_lr=config.min_lr, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)

    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)

    # resume: the step counter, model, optimiser and RNG states come back from the checkpoint
    checkpoints = CheckpointManager(accelerator, output_dir, keep_last=config.keep_checkpoints)
    global_step = 0
    if config.resume == "latest" and checkpoints.latest() is None:
        accelerator.print(f"No checkpoint in {checkpoints.checkpoint_dir} yet; starting from step 0.")
    elif config.resume:
        global_step = checkpoints.resume(config.resume)
        accelerator.print(f"Resumed from {config.resume} at step {global_step}.")
    start_epoch, batches_to_skip = resume_position(global_step, steps_per_epoch, config.gradient_accumulation_steps)

    history = []
    held_out_accuracy = None
    start_time = time.perf_counter()
    progress = tqdm(total=total_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process)
    for epoch in range(start_epoch, config.epochs):
        if global_step >= total_steps:
            break
        model.train()
        epoch_loss, epoch_batches = torch.zeros((), device=accelerator.device), 0
        for images, labels in epoch_dataloader(accelerator, train_loader, epoch, start_epoch, batches_to_skip):
            with accelerator.accumulate(model):
                loss = loss_fn(model(images), labels)
                accelerator.backward(loss)
                if accelerator.sync_gradients and config.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            epoch_loss += loss.detach()
            epoch_batches += 1
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            scheduler.step_update(num_updates=global_step)
            lr = optimizer.param_groups[0]["lr"]
            progress.set_postfix(epoch=epoch, loss=f"{loss.item():.4f}", lr=f"{lr:.2e}", refresh=False)
            progress.update(1)
            accelerator.log({"train_loss": loss.item(), "lr": lr}, step=global_step)
            if config.checkpoint_every and global_step % config.checkpoint_every == 0:
                checkpoints.save(global_step)
            if global_step >= total_steps:
                break
        finished = global_step >= total_steps or epoch + 1 == config.epochs
        if (epoch + 1) % config.eval_every_epochs == 0 or finished:
            train_loss = accelerator.reduce(epoch_loss / max(epoch_batches, 1), reduction="mean").item()
            held_out_accuracy = evaluate(model, eval_loader, accelerator)
            history.append({"epoch": epoch, "step": global_step, "train_loss": train_loss,
                            "held_out_accuracy": held_out_accuracy})
            accelerator.print(f"epoch {epoch}: step {global_step} train_loss {train_loss:.4f} "
                              f"held_out_accuracy {held_out_accuracy:.4f}")
            accelerator.log({"held_out_accuracy": held_out_accuracy}, step=global_step)
    progress.close()
    train_time_s = time.perf_counter() - start_time
    if held_out_accuracy is None:
        held_out_accuracy = evaluate(model, eval_loader, accelerator)
    if config.checkpoint_every and checkpoints.latest() != checkpoints.checkpoint_dir / f"step_{global_step}":
        checkpoints.save(global_step)

    # save: fp32 weights + timm config.json, then the fp16 export, whose accuracy is measured after an fp32 reload
    unwrapped = accelerator.unwrap_model(model)
    fp16_reloaded = copy.deepcopy(unwrapped)
    fp16_reloaded.load_state_dict({key: value.half().float() for key, value in unwrapped.state_dict().items()})
    held_out_accuracy_fp16 = evaluate(fp16_reloaded, eval_loader, accelerator)
    run_facts = {
        "label_names": label_names,
        "held_out_accuracy": held_out_accuracy,
        "held_out_accuracy_fp16_weights": held_out_accuracy_fp16,
        "held_out_split": f"{config.dataset}:{config.eval_split}",
        "train_command": command_line(),
        "seed": config.seed,
        "epochs": config.epochs,
        "steps": global_step,
        "drop_path_rate": config.drop_path_rate,
        "drop_path_mode": config.drop_path_mode,
        "num_processes": accelerator.num_processes,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    metrics = {"held_out_accuracy": held_out_accuracy, "held_out_accuracy_fp16_weights": held_out_accuracy_fp16,
               "steps": global_step, "train_time_s": train_time_s, "subsets": splits.subsets, "history": history}
    if accelerator.is_main_process:
        save_for_hf(unwrapped, output_dir, model_config=dict(run_facts), safe_serialization=True)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if config.export_dir:
            save_for_hf(copy.deepcopy(unwrapped).half(), config.export_dir, model_config=dict(run_facts),
                        safe_serialization=True)
    accelerator.print(f"held-out accuracy {held_out_accuracy:.4f} (fp16 weights: {held_out_accuracy_fp16:.4f}); "
                      f"{global_step} steps in {train_time_s:.0f} s; saved to {output_dir}")
    accelerator.print(checkpoints.finish())
    accelerator.end_training()
    return metrics
