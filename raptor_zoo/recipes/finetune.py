# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""The fine-tuning recipe: its config (:class:`FinetuneConfig`) and :func:`training_function`, launched by
`recipes/finetune.py` (the `accelerate launch` commands are in its docstring).

Fine-tune a Raptor (or any timm model) for image classification with Accelerate. Full fine-tuning, or partial:
`--freeze-blocks n` freezes the stem and the first n (unique) blocks, `--train-head-only` trains only the classifier.
timm's `create_optimizer_v2` with layer-wise LR decay (`--layer-decay`, default 0.75; on a Raptor a shared block's
scale follows the depth of its FIRST application in the schedule, raptor_zoo.downstream.raptor_layer_ids),
`create_scheduler_v2` (cosine, warmup, per step), timm training augmentation at the model's data config, mixed
precision, an optional EMA (`--model-ema`, timm ModelEmaV3), evaluation every epoch, atomic checkpoints with
mid-epoch `--resume latest`.

Outputs in --output-dir: args.yaml, checkpoints/step_N, metrics.json (accuracy before training and after every
epoch), and the model: a Raptor as a Hub folder (raptor_zoo.save_pretrained) that loads with
raptor_zoo.from_pretrained, another timm model through timm's save_for_hf (timm.create_model("local-dir:...")).
With --model-ema the EMA model is saved the same way under ema/.
"""
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import timm
import torch
import torch.nn.functional as F
from timm.data import resolve_data_config
from timm.scheduler import create_scheduler_v2
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from raptor_zoo.data import DataArgs, build_transform, create_loader
from raptor_zoo.downstream import (
    SeededTransformDataset,
    backbone_kind,
    create_finetune_optimizer,
    evaluate_classifier,
    freeze_for_finetuning,
)
from raptor_zoo.hub import load_pretrained, save_pretrained
from raptor_zoo.training import (
    CheckpointManager,
    command_line,
    epoch_dataloader,
    resume_position,
    save_run_config,
    start_run,
)

RUN_STATE_FILE = "run_state.json"


@dataclass
class FinetuneConfig(DataArgs):
    """Fine-tune a Raptor or a timm model for classification with Accelerate."""
    model: str = field(default="raptor-digits-k2", metadata={
        "group": "Model", "help": "Raptor zoo name / folder (/ Hub repo with --model-kind raptor) or a timm name"})
    model_kind: Literal["auto", "raptor", "timm"] = field(default="auto", metadata={
        "group": "Model", "help": "auto: zoo names and Raptor folders are Raptors, the rest timm names"})
    pretrained: bool = field(default=True, metadata={
        "group": "Model", "help": "timm models: load pretrained weights (Raptors always load theirs)"})
    num_classes: int | None = field(default=None, metadata={
        "group": "Model", "help": "classes; none = from the data (a new head when it differs from the model's)"})
    drop_path_rate: float = field(default=0.0, metadata={"group": "Model", "help": "stochastic depth"})
    freeze_blocks: int = field(default=0, metadata={
        "group": "Model", "help": "freeze the stem and the first n (unique) blocks"})
    train_head_only: bool = field(default=False, metadata={"group": "Model", "help": "train only the classifier"})
    # data (beyond DataArgs': labels required)
    augment: bool = field(default=True, metadata={
        "group": "Data", "help": "timm training augmentation (create_transform is_training) at the data config"})
    hflip: float = field(default=0.0, metadata={
        "group": "Data", "help": "horizontal flip probability of the augmentation (timm's ImageNet default: 0.5)"})
    scale: tuple[float, float] = field(default=(0.6, 1.0), metadata={
        "group": "Data", "help": "RandomResizedCrop scale range of the augmentation (timm's ImageNet default: 0.08 1)"})
    epochs: int = field(default=10, metadata={"group": "Optimisation", "help": "training epochs"})
    batch_size: int = field(default=64, metadata={"group": "Optimisation", "help": "batch size per process"})
    opt: str = field(default="adamw", metadata={"group": "Optimisation", "help": "timm optimizer name"})
    lr: float = field(default=1e-4, metadata={"group": "Optimisation", "help": "peak learning rate"})
    min_lr: float = field(default=1e-6, metadata={"group": "Optimisation", "help": "cosine floor"})
    weight_decay: float = field(default=0.05, metadata={"group": "Optimisation", "help": "weight decay"})
    layer_decay: float | None = field(default=0.75, metadata={
        "group": "Optimisation", "help": "layer-wise LR decay in (0, 1] (BEiT/MAE fine-tuning: 0.65-0.75); none = off"})
    warmup_epochs: float = field(default=0.0, metadata={"group": "Optimisation", "help": "linear warmup epochs"})
    label_smoothing: float = field(default=0.0, metadata={"group": "Optimisation", "help": "label smoothing"})
    grad_clip: float | None = field(default=1.0, metadata={
        "group": "Optimisation", "help": "max gradient norm, none to disable"})
    gradient_accumulation_steps: int = field(default=1, metadata={
        "group": "Optimisation", "help": "micro-batches per optimiser step"})
    model_ema: bool = field(default=False, metadata={"group": "Optimisation", "help": "keep a timm ModelEmaV3"})
    model_ema_decay: float = field(default=0.998, metadata={"group": "Optimisation", "help": "EMA decay"})
    seed: int = field(default=0, metadata={"group": "Optimisation", "help": "seed of head init and data order"})
    output_dir: str = field(default="outputs/finetune", metadata={"group": "Run", "help": "where results go"})
    checkpoint_every: int = field(default=0, metadata={
        "group": "Run", "help": "checkpoint interval in optimiser steps; 0 = at the end of every epoch only"})
    keep_checkpoints: int = field(default=2, metadata={"group": "Run", "help": "checkpoints kept"})
    resume: str | None = field(default=None, metadata={
        "group": "Run", "help": "'latest' (starts fresh if there is none) or a checkpoints/step_N folder"})
    max_steps_this_run: int | None = field(default=None, metadata={
        "group": "Run", "help": "stop after this many optimiser steps in this process (checkpointed), then resume"})
    eval_initial: bool = field(default=True, metadata={
        "group": "Run", "help": "evaluate the model before training (its accuracy before fine-tuning)"})
    mixed_precision: Literal["no", "fp16", "bf16"] = field(default="no", metadata={"group": "Run", "help": "autocast"})
    cpu: bool = field(default=False, metadata={"group": "Run", "help": "run on CPU even if a GPU is present"})

    def __post_init__(self):
        super().__post_init__()
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "keep_checkpoints", "num_classes",
                     "max_steps_this_run"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}.")
        for name in ("freeze_blocks", "checkpoint_every", "warmup_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}.")
        if self.train_head_only and self.freeze_blocks:
            raise ValueError("Pass --train-head-only or --freeze-blocks, not both.")
        if not 0.0 < self.model_ema_decay < 1.0:
            raise ValueError(f"--model-ema-decay must lie in (0, 1), got {self.model_ema_decay}.")


def create_model(config: FinetuneConfig, num_classes: int) -> tuple[torch.nn.Module, bool]:
    """(model, is_raptor): a Raptor through raptor_zoo.from_pretrained, else timm.create_model."""
    kind = backbone_kind(config.model) if config.model_kind == "auto" else config.model_kind
    is_raptor = kind == "raptor"
    if is_raptor:
        model = load_pretrained(config.model, drop_path_rate=config.drop_path_rate)
        if model.num_classes != num_classes:
            model = load_pretrained(config.model, drop_path_rate=config.drop_path_rate, num_classes=num_classes)
        return model.train(), True
    model = timm.create_model(config.model, pretrained=config.pretrained, num_classes=num_classes,
                              drop_path_rate=config.drop_path_rate)
    return model.train(), False


def save_model(model: torch.nn.Module, folder: Path, is_raptor: bool, metrics: dict, training: dict) -> None:
    if is_raptor:
        card_metrics = {"dataset_name": training["dataset"], "dataset_type": training["dataset"],
                        "dataset_split": training["eval_split"], "raptor_accuracy": metrics["top1"],
                        "num_eval_images": metrics["num_images"]}
        save_pretrained(model, folder, metrics=card_metrics, training=training)
    else:
        from timm.models import save_for_hf
        save_for_hf(model, str(folder), safe_serialization=True)


def training_function(config: FinetuneConfig) -> dict:
    accelerator, output_dir = start_run(config, write_config=False)

    splits = config.load_splits()
    train_set, eval_set = splits.train, splits.eval
    if splits.num_classes is None:
        raise ValueError(f"--dataset {config.dataset!r} has no labels; fine-tuning a classifier needs a label column "
                         "(--label-column) or class sub-folders.")
    num_classes = config.num_classes or splits.num_classes
    model, is_raptor = create_model(config, num_classes)
    trainable = freeze_for_finetuning(model, config.freeze_blocks, config.train_head_only)
    data_config = resolve_data_config({}, model=model)
    train_transform = build_transform(
        data_config, is_training=config.augment, **(dict(hflip=config.hflip, scale=config.scale)
                                                    if config.augment else {}))
    train_images = SeededTransformDataset(train_set, train_transform, seed=config.seed)
    train_loader = DataLoader(train_images, batch_size=config.batch_size, shuffle=True, drop_last=True,
                              num_workers=config.num_workers, generator=torch.Generator().manual_seed(config.seed))
    eval_loader = create_loader(eval_set, data_config, config.batch_size, is_training=False,
                                num_workers=config.num_workers)
    if len(train_loader) < accelerator.num_processes * config.gradient_accumulation_steps:
        raise ValueError(f"{len(train_images)} training images give too few batches of --batch-size "
                         f"{config.batch_size}; "
                         "lower --batch-size or use more images.")
    save_run_config(accelerator, config)
    accelerator.print(f"model {config.model} ({'Raptor' if is_raptor else 'timm'}), {num_classes} classes, "
                      f"{len(trainable)} trainable tensors, input {tuple(data_config['input_size'])}")

    optimizer = create_finetune_optimizer(model, config.opt, lr=config.lr, weight_decay=config.weight_decay,
                                          layer_decay=config.layer_decay)
    model, optimizer, train_loader, eval_loader = accelerator.prepare(model, optimizer, train_loader, eval_loader)
    steps_per_epoch = len(train_loader) // config.gradient_accumulation_steps
    total_steps = steps_per_epoch * config.epochs
    warmup_epochs = config.warmup_epochs if config.warmup_epochs < config.epochs else 0.1 * config.epochs
    if warmup_epochs != config.warmup_epochs:
        accelerator.print(f"note: warmup_epochs {config.warmup_epochs} is not shorter than the {config.epochs} epochs of "
                          f"the run: warming up over {warmup_epochs:g} epochs (10%) instead.")
    scheduler, _ = create_scheduler_v2(
        optimizer, sched="cosine", num_epochs=config.epochs, min_lr=config.min_lr, warmup_lr=0.0,
        warmup_epochs=warmup_epochs, warmup_prefix=True, step_on_epochs=False, updates_per_epoch=steps_per_epoch)

    checkpoints = CheckpointManager(accelerator, output_dir, keep_last=config.keep_checkpoints)
    ema = None
    if config.model_ema:
        ema = ModelEmaV3(accelerator.unwrap_model(model), decay=config.model_ema_decay)
        accelerator.register_for_checkpointing(ema)
    history: list[dict] = []
    position = {"epoch": 0, "batches_in_epoch": 0}

    def write_run_state(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            state = {**position, "global_step": checkpoints.progress.step, "history": history}
            (Path(checkpoint_dir) / RUN_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    accelerator.register_save_state_pre_hook(write_run_state)

    global_step, start_epoch, batches_to_skip = 0, 0, 0
    resume_from = checkpoints.latest() if config.resume == "latest" else config.resume
    if config.resume == "latest" and resume_from is None:
        accelerator.print(f"No checkpoint in {checkpoints.checkpoint_dir} yet; starting from step 0.")
    if resume_from is not None:
        global_step = checkpoints.resume(resume_from)
        history = json.loads((Path(resume_from) / RUN_STATE_FILE).read_text())["history"]
        start_epoch, batches_to_skip = resume_position(global_step, steps_per_epoch, config.gradient_accumulation_steps)
        accelerator.print(f"Resumed from {resume_from} at step {global_step} (epoch {start_epoch}).")
    elif config.eval_initial:
        history.append({"epoch": 0, "step": 0, **evaluate_classifier(model, eval_loader, accelerator, "eval init")})
        accelerator.print(f"before fine-tuning: top-1 {history[-1]['top1']:.4f}, top-5 {history[-1]['top5']:.4f}")

    steps_this_run, stopped_early = 0, False
    start_time = time.perf_counter()
    progress = tqdm(total=total_steps, initial=global_step, desc="finetune",
                    disable=not accelerator.is_local_main_process)
    model.train()
    for epoch in range(start_epoch, config.epochs):
        position.update(epoch=epoch, batches_in_epoch=batches_to_skip if epoch == start_epoch else 0)
        train_images.set_epoch(epoch)
        for images, labels in epoch_dataloader(accelerator, train_loader, epoch, start_epoch, batches_to_skip):
            with accelerator.accumulate(model):
                scheduler.step_update(num_updates=global_step)
                loss = F.cross_entropy(model(images), labels, label_smoothing=config.label_smoothing)
                accelerator.backward(loss)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"Non-finite loss at step {global_step}; last good checkpoint "
                                             f"{checkpoints.latest()}. Lower --lr, then --resume latest.")
                if accelerator.sync_gradients and config.grad_clip is not None:
                    accelerator.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                optimizer.zero_grad()
            position["batches_in_epoch"] += 1
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            steps_this_run += 1
            if ema is not None:
                ema.update(accelerator.unwrap_model(model), step=global_step)
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.4g}", lr=f"{optimizer.param_groups[-1]['lr']:.2e}", refresh=False)
            epoch_done = position["batches_in_epoch"] >= len(train_loader)
            stopped_early = config.max_steps_this_run is not None and steps_this_run >= config.max_steps_this_run \
                and global_step < total_steps
            if epoch_done:
                metrics = evaluate_classifier(model, eval_loader, accelerator, f"eval {epoch + 1}")
                entry = {"epoch": epoch + 1, "step": global_step, **metrics}
                if ema is not None:
                    ema_metrics = evaluate_classifier(ema.module, eval_loader, accelerator, "eval ema")
                    entry.update({f"ema_{key}": value for key, value in ema_metrics.items()})
                history.append(entry)
                accelerator.print(f"epoch {epoch + 1}: top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}"
                                  + (f", EMA top-1 {entry['ema_top1']:.4f}" if ema is not None else ""))
                position.update(epoch=epoch + 1, batches_in_epoch=0)
            if epoch_done or stopped_early or (config.checkpoint_every and global_step % config.checkpoint_every == 0):
                checkpoints.save(global_step)
            if stopped_early:
                break
        batches_to_skip = 0
        if stopped_early:
            break
    progress.close()
    if stopped_early:
        accelerator.print(f"Stopped after {steps_this_run} steps this run (global step {global_step} of "
                          f"{total_steps}); "
                          f"checkpoint {checkpoints.latest()}. Continue with --resume latest.")
        accelerator.end_training()
        return {"global_step": global_step, "stopped_early": True}

    training = {"command": command_line(), "model": config.model, "dataset": config.dataset, "subsets": splits.subsets,
                "eval_split": config.eval_split,
                "epochs": config.epochs, "steps": global_step, "layer_decay": config.layer_decay,
                "freeze_blocks": config.freeze_blocks, "train_head_only": config.train_head_only,
                "num_processes": accelerator.num_processes, "mixed_precision": config.mixed_precision,
                "train_time_s": time.perf_counter() - start_time}
    result = {"history": history, "initial": history[0] if history and history[0]["epoch"] == 0 else None,
              "final": history[-1], "training": training}
    if accelerator.is_main_process:
        (output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        save_model(accelerator.unwrap_model(model).eval(), output_dir, is_raptor, history[-1], training)
        if ema is not None:
            ema_metrics = {key[4:]: value for key, value in history[-1].items() if key.startswith("ema_")}
            save_model(ema.module, output_dir / "ema", is_raptor, ema_metrics, training)
    initial = result["initial"]
    accelerator.print(
        (f"top-1 before {initial['top1']:.4f} -> " if initial else "top-1 ")
        + f"after {history[-1]['top1']:.4f} (top-5 {history[-1]['top5']:.4f}); saved to {output_dir}")
    accelerator.print(checkpoints.finish())
    accelerator.end_training()
    return result
