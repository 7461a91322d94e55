# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""The distillation recipe: :func:`training_function` and its config (:class:`DistillConfig`), launched by
`recipes/distill.py` (the `accelerate launch` commands are in its docstring) and run in-process by
`raptor-zoo distill` and `raptor-zoo demo`. The config is defined without torch in `raptor_zoo_cli.distill_config`
(the command line reads and checks it before importing torch); this module re-exports it.

Distil a teacher ViT into a Raptor (k unique blocks applied recurrently on a block schedule) by trajectory
distillation: the teacher runs on the fly, its token trajectory is the target (docs/design.md §5).

Pipeline: teacher (`load_teacher`) -> data (any source :func:`raptor_zoo.data.load_splits` reads, labels optional,
prepared as the teacher's own inputs; or synthetic images) -> phases (discovered on a few hundred random training
images, or given) -> Raptor initialised from the teacher -> stages (the paper's two stages, or one joint stage) ->
fidelity and accuracy recovery -> saved model.

Outputs in --output-dir: args.yaml, phases.json + phase_heatmap.png (when discovered), checkpoints/step_N
(atomic; `--resume latest` continues mid-epoch), metrics.json + fidelity.png, and the Raptor as a Hub folder
(model.safetensors + config.json + README.md, raptor_zoo.hub.save_pretrained): it loads with
`raptor_zoo.from_pretrained(<output-dir>)`.
"""
import json
import time
from collections.abc import Callable
from itertools import count
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from raptor_zoo.build import from_teacher
from raptor_zoo.data import TransformedDataset, build_transform, create_loader, random_subset
from raptor_zoo.distill import (
    TrajectoryDistillationTask,
    evaluate_fidelity,
    fidelity_summary,
    parse_phase_index,
    plot_fidelity,
    stage_plan,
)
from raptor_zoo.distill.trajectory_cache import CachedTrajectories, TrajectoryCache
from raptor_zoo.hub import HEATMAP_NAME, PHASES_NAME, WEIGHTS_NAME, load_state_dict, save_pretrained
from raptor_zoo.models.raptor_base import RaptorMixin
from raptor_zoo.models.schedule import check_k, even_block_schedule, scaled_paper_schedule, validate_block_schedule
from raptor_zoo.phases import PhaseResult, discover
from raptor_zoo.teachers import load_teacher
from raptor_zoo.training import (
    CheckpointManager,
    command_line,
    epoch_dataloader,
    save_run_config,
    start_run,
)
from raptor_zoo_cli.distill_config import DistillConfig

RUN_STATE_FILE = "run_state.json"
# what must agree between a checkpoint and the config resuming it
COMPATIBILITY_KEYS = (
    "teacher", "teacher_depth", "embed_dim", "num_tokens", "block_schedule", "block_type", "t_scale", "relax_rank",
    "relax_targets", "train_adapters_only", "stages")


class SyntheticImages(Dataset):
    """Random normalised images ``N(0, 1)`` of one size, reproducible per index; label -1 (no accuracy)."""

    def __init__(self, num_images: int, input_size: tuple[int, int, int], seed: int = 0):
        self.num_images = num_images
        self.input_size = tuple(input_size)
        self.seed = seed

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        return torch.randn(self.input_size, generator=generator), -1


def load_datasets(config: DistillConfig, num_processes: int = 1):
    """(train, eval, subsets): image datasets limited to seeded random subsets, and the records of what was taken.

    The recipes' one data path (:meth:`raptor_zoo.data.DataArgs.load_splits`), with labels optional (distillation
    needs none; accuracy is reported where the data has them). A source without a held-out split gets one split off
    its training images (``--eval-fraction``). ``--max-train-images`` and ``--max-eval-images`` (or
    ``--eval-max-batches``: that many batches per process) take stratified random subsets
    (:func:`raptor_zoo.data.random_subset`), never the first images of a folder sorted by class. Synthetic data gives
    ``(None, None, {})`` (its size comes from the teacher).
    """
    if config.synthetic_data:
        return None, None, {}
    max_eval_images = config.max_eval_images if config.eval_max_batches is None \
        else config.eval_max_batches * (config.eval_batch_size or config.batch_size) * num_processes
    splits = config.load_splits(max_eval_images=max_eval_images, streaming=config.streaming, labels=False,
                                require_all_classes=False)
    return splits.train, splits.eval, splits.subsets


def get_dataloaders(config: DistillConfig, train_set, eval_set, teacher) -> tuple[DataLoader, DataLoader]:
    """(train, eval) loaders of normalised images prepared as the teacher's own (``teacher.eval_transform``: its
    transformers image processor when it has one); ``--augment`` trains on timm's augmentation of its data_config."""
    data_config = teacher.data_config
    eval_batch_size = config.eval_batch_size or config.batch_size
    if config.synthetic_data:
        train_set = SyntheticImages(config.synthetic_size, data_config["input_size"], seed=config.seed)
        eval_set = SyntheticImages(512, data_config["input_size"], seed=config.seed + 1)
        generator = torch.Generator().manual_seed(config.seed)
        train_loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, drop_last=True,
                                  num_workers=config.num_workers, generator=generator)
        return train_loader, DataLoader(eval_set, batch_size=eval_batch_size, num_workers=config.num_workers)
    train_transform = build_transform(
        data_config, is_training=True, scale=config.augment_scale, hflip=config.augment_hflip,
        color_jitter=config.augment_color_jitter) if config.augment else teacher.eval_transform
    train_loader = create_loader(train_set, data_config, config.batch_size, is_training=True, seed=config.seed,
                                 num_workers=config.num_workers, transform=train_transform)
    eval_loader = create_loader(eval_set, data_config, eval_batch_size, is_training=False, num_workers=config.num_workers,
                                transform=teacher.eval_transform)
    return train_loader, eval_loader


def schedule_applies(config: DistillConfig) -> bool:
    """Whether the config's block_schedule was measured on its teacher (or says nothing of where it came from)."""
    return config.block_schedule_teacher is None or config.block_schedule_teacher == config.teacher


def stage_warmup_steps(warmup_steps: int, stage_steps: int) -> int:
    """``warmup_steps``, or 10% of the stage when the warmup would last the whole stage (the learning rate would
    never reach its peak: a GPU recipe's 10,000 warmup steps in a 20-step run)."""
    return warmup_steps if warmup_steps < stage_steps else int(0.1 * stage_steps)


def cached_train_loader(config: DistillConfig, teacher, train_set, subsets: dict, accelerator: Accelerator
                        ) -> tuple[DataLoader, TrajectoryCache]:
    """A loader of the teacher's cached trajectories of ``train_set`` (built once by the main process), with the
    sampler of the image loader it replaces: the same seed gives the same batches."""
    identity = {"teacher": teacher.name, "data_config": teacher.data_config, "dataset": config.dataset,
                "split": config.train_split, "subset": subsets.get("train"), "teacher_precision": config.teacher_precision}
    images = TransformedDataset(train_set, teacher.eval_transform)
    with accelerator.main_process_first():
        precision = torch.autocast(accelerator.device.type, dtype=torch.bfloat16,
                                   enabled=config.teacher_precision == "bf16")
        with precision:
            cache = TrajectoryCache.open_or_build(
                config.trajectory_cache, teacher, images, json.loads(json.dumps(identity, default=list)),
                dtype=config.trajectory_cache_dtype, batch_size=config.eval_batch_size or config.batch_size,
                device=accelerator.device, progress=accelerator.is_local_main_process)
    loader = DataLoader(CachedTrajectories(cache, train_set["label"]), batch_size=config.batch_size, shuffle=True,
                        drop_last=True, num_workers=config.num_workers,
                        generator=torch.Generator().manual_seed(config.seed), persistent_workers=config.num_workers > 0)
    return loader, cache


def phase_discovery_images(train_set, transform: Callable, num_images: int, seed: int) -> torch.Tensor:
    """A seeded random (stratified where labelled) subset of ``num_images`` training images, through ``transform``
    (the teacher's eval transform: no augmentation)."""
    if isinstance(train_set, SyntheticImages):
        return torch.stack([train_set[index][0] for index in range(min(num_images, len(train_set)))])
    subset, _ = random_subset(train_set, num_images, seed=seed)
    images = [transform(example["image"].convert("RGB")) for example in subset]
    return torch.stack(images[:num_images])


def resolve_block_schedule(config: DistillConfig, teacher, train_set, train_loader: DataLoader,
                           accelerator: Accelerator, resumed_state: dict | None):
    """(block_schedule, PhaseResult or None): explicit > the resumed checkpoint's > discovered / even / paper."""
    depth = teacher.depth
    if config.block_schedule is not None and not schedule_applies(config):
        accelerator.print(f"note: block_schedule {list(config.block_schedule)} was measured on "
                          f"{config.block_schedule_teacher}, not on {teacher.name}: discovering this teacher's phases "
                          f"for k = {len(config.block_schedule)} instead (--phases {config.phases}).")
    elif config.block_schedule is not None:
        return validate_block_schedule(config.block_schedule, depth), None
    k = len(config.block_schedule) if config.block_schedule is not None else config.k
    check_k(depth, k, teacher.name)
    if resumed_state is not None:
        schedule = tuple(resumed_state["block_schedule"])
        saved_phases = Path(config.output_dir) / PHASES_NAME
        phases = PhaseResult.load(saved_phases) if config.phases == "auto" and saved_phases.is_file() else None
        return schedule, phases if phases is not None and tuple(phases.block_schedule) == schedule else None
    if config.phases == "even":
        return even_block_schedule(depth, k), None
    if config.phases == "paper":
        return scaled_paper_schedule(depth, k), None
    result = [None]
    if accelerator.is_main_process:
        images = phase_discovery_images(train_loader.dataset if config.synthetic_data else train_set,
                                        teacher.eval_transform, config.phase_images, config.subset_seed)
        if len(images) < config.phase_images:
            accelerator.print(f"Phase discovery on all {len(images)} training images (--phase-images "
                              f"{config.phase_images} asked for more).")
        result = [discover(teacher, images.to(accelerator.device), k=k, metric=config.phase_metric,
                           algorithm=config.phase_algorithm).to_dict()]
    broadcast_object_list(result)
    phases = PhaseResult.from_dict(result[0])
    return tuple(phases.block_schedule), phases


def load_student_weights(student: RaptorMixin, config: DistillConfig, teacher) -> None:
    """--init-from (whole student, strict) or --init-blocks-from (block j from folder j).

    A relaxed student may start from a pure Raptor's folder: its adapters are then initialised (``relax_init``)
    against the loaded shared blocks, so ``svd`` adapters span what tying the trained blocks still misses.
    """
    def weights(folder: str) -> dict:
        return load_state_dict(Path(folder) / WEIGHTS_NAME)

    loaded_pure = False
    if config.init_from is not None:
        state = weights(config.init_from)
        loaded_pure = student.relax is not None and not any(key.startswith("relax.") for key in state)
        missing, unexpected = student.load_state_dict(state, strict=not loaded_pure)
        if loaded_pure and (unexpected or any(not key.startswith("relax.") for key in missing)):
            raise ValueError(f"--init-from {config.init_from} does not match this student (block_schedule "
                             f"{tuple(student.block_schedule)}): missing {missing}, unexpected {unexpected}.")
    if config.init_blocks_from is not None:
        if len(config.init_blocks_from) != student.num_unique_blocks:
            raise ValueError(f"--init-blocks-from needs one folder per block ({student.num_unique_blocks}), "
                             f"got {len(config.init_blocks_from)}.")
        for j, folder in enumerate(config.init_blocks_from):
            prefix = f"blocks.{j}."
            block_state = {key[len(prefix):]: value for key, value in weights(folder).items() if key.startswith(prefix)}
            student.unique_blocks[j].load_state_dict(block_state, strict=True)
        loaded_pure = student.relax is not None
    if loaded_pure and config.relax_init == "svd":
        student.init_adapters_from_teacher(teacher.blocks)


def run_identity(config: DistillConfig, teacher, student: RaptorMixin, stages) -> dict:
    """What a checkpoint records about the run, so a resume with another teacher or student shape fails early."""
    return {
        "teacher": teacher.name,
        "teacher_depth": teacher.depth,
        "embed_dim": teacher.embed_dim,
        "num_tokens": teacher.num_tokens,
        "block_schedule": list(student.block_schedule),
        "block_type": config.block_type,
        "t_scale": config.t_scale,
        "relax_rank": config.relax_rank,
        "relax_targets": list(config.relax_targets) if config.relax_rank else [],
        "train_adapters_only": config.train_adapters_only,
        "stages": [stage.to_dict() for stage in stages],
    }


def read_run_state(checkpoint: Path) -> dict:
    path = checkpoint / RUN_STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint {checkpoint} has no {RUN_STATE_FILE}; it was not written by "
                                "recipes/distill.py. Start a fresh run with another --output-dir.")
    return json.loads(path.read_text())


def check_compatible(saved: dict, current: dict, checkpoint: Path) -> None:
    """Raise naming every field where the checkpoint and the resuming config disagree."""
    differences = [f"{key}: checkpoint {saved.get(key)!r} vs now {current[key]!r}"
                   for key in COMPATIBILITY_KEYS if saved.get(key) != current[key]]
    if differences:
        raise ValueError(
            f"Cannot resume from {checkpoint}: it was written by a different run setup:\n  " + "\n  ".join(differences)
            + "\nResume with the config that wrote it (its args.yaml), or start fresh with another --output-dir.")


def card_metrics(config: DistillConfig, metrics: dict) -> dict:
    """The measured numbers in the model card's terms (raptor_zoo.cards.METRIC_FIELDS)."""
    card = {"num_eval_images": metrics["num_images"], "fidelity": metrics["cosine"]["all"][1:],
            "fidelity_metric": "cosine similarity to the teacher's states (all tokens)"}
    if metrics.get("embedding_cosine") is not None:
        card["embedding_cosine"] = metrics["embedding_cosine"]
    if metrics["raptor_accuracy"] is not None:
        if config.dataset == "digits":
            name, dataset_type = "scikit-learn digits (raptor_zoo held-out split)", "sklearn-digits"
        else:
            name = dataset_type = Path(config.dataset).name if Path(config.dataset).is_dir() else config.dataset
        card.update(dataset_name=name, dataset_type=dataset_type, dataset_split=config.eval_split,
                    teacher_accuracy=metrics["teacher_accuracy"], raptor_accuracy=metrics["raptor_accuracy"])
    return card


def training_function(config: DistillConfig) -> dict:
    accelerator, output_dir = start_run(config, tracker="distill")
    if accelerator.device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # fp32 teacher targets with TF32 matmuls (docs/design.md §5)

    # data (a missing data directory fails here, first), teacher, loaders at the teacher's data_config
    train_set, eval_set, subsets = load_datasets(config, accelerator.num_processes)
    if train_set is not None and not config.streaming and len(train_set) < config.batch_size * accelerator.num_processes:
        if len(train_set) < accelerator.num_processes:
            raise ValueError(f"{len(train_set)} training image(s) cannot feed {accelerator.num_processes} processes; "
                             "use more images or fewer processes.")
        accelerator.print(f"note: {len(train_set)} training images are fewer than one batch of --batch-size "
                          f"{config.batch_size} per process: using batches of {len(train_set) // accelerator.num_processes}.")
        config.batch_size = len(train_set) // accelerator.num_processes
        save_run_config(accelerator, config)
    teacher = load_teacher(config.teacher, pretrained=config.teacher_pretrained, img_size=config.teacher_img_size,
                           **config.teacher_kwargs)
    train_loader, eval_loader = get_dataloaders(config, train_set, eval_set, teacher)
    teacher.to(accelerator.device)
    cache = None
    if config.trajectory_cache is not None:
        train_loader, cache = cached_train_loader(config, teacher, train_set, subsets, accelerator)
        accelerator.print(f"Teacher trajectories of {len(cache)} training images cached in {cache.folder} "
                          f"({cache.meta['dtype']}, {cache.bytes_per_image / 2 ** 20:.2f} MiB per image).")

    # resume: the checkpoint's run state is read before anything is built from the config
    checkpoints = CheckpointManager(accelerator, output_dir, keep_last=config.keep_checkpoints)
    resume_from = None
    if config.resume == "latest":
        resume_from = checkpoints.latest()
        if resume_from is None:
            accelerator.print(f"No checkpoint in {checkpoints.checkpoint_dir} yet; starting from step 0.")
    elif config.resume:
        resume_from = Path(config.resume)
        if not resume_from.is_dir():
            raise FileNotFoundError(f"Checkpoint folder {config.resume!r} not found; pass 'latest' or an existing "
                                    "checkpoints/step_N folder.")
    resumed_state = read_run_state(resume_from) if resume_from is not None else None

    # student: schedule (given / resumed / discovered), initialised from the teacher
    k = len(config.block_schedule) if config.block_schedule is not None else config.k
    stages = stage_plan(
        config.schedule, k, config.max_steps, config.phase_index, config.phase_max_steps,
        config.phase_objective, config.joint_objective, config.phase_token_weights, config.last_phase_token_weights,
        config.joint_token_weights)
    if config.init_blocks_from is not None and parse_phase_index(config.phase_index, k) is not None:
        raise ValueError("--init-blocks-from starts a joint run from stage-1 jobs; use it with --phase-index all.")
    block_schedule, phases = resolve_block_schedule(config, teacher, train_set, train_loader, accelerator,
                                                   resumed_state)
    set_seed(config.seed)
    student = from_teacher(
        teacher, block_schedule=block_schedule, block_type=config.block_type, init=config.init,
        t_scale=config.t_scale, drop_path_rate=config.drop_path_rate, relax_rank=config.relax_rank,
        relax_init=config.relax_init, relax_targets=config.relax_targets)
    student.raptor_meta["teacher_img_size"] = list(teacher.img_size)  # what linear_probe --compare probes both at
    if phases is not None:
        student.raptor_meta.update(schedule_source="measured", phase_metric=phases.metric,
                                   phase_algorithm=phases.algorithm, phase_num_images=phases.num_images)
        if accelerator.is_main_process and resumed_state is None:
            (output_dir / PHASES_NAME).write_text(json.dumps(phases.to_dict(), indent=2) + "\n")
            phases.plot(output_dir / HEATMAP_NAME)
    load_student_weights(student, config, teacher)
    if config.grad_checkpointing:
        student.set_grad_checkpointing(True)
    identity = run_identity(config, teacher, student, stages)
    if resumed_state is not None:
        check_compatible(resumed_state, identity, resume_from)
    accelerator.print(f"teacher {teacher.name} (depth {teacher.depth}, {teacher.num_tokens} tokens); "
                      f"Raptor block_schedule {tuple(student.block_schedule)}; stages "
                      + ", ".join(f"{s.name} ({s.objective}, {s.max_steps} steps)" for s in stages))

    # the run position travels in every checkpoint (written into the temporary folder before it is renamed)
    position = {"stage_index": 0, "stage_step": 0, "epoch": 0, "batches_in_epoch": 0}

    def write_run_state(models, weights, checkpoint_dir):
        if accelerator.is_main_process:
            state = dict(identity, **position, global_step=checkpoints.progress.step, **clocks())
            (Path(checkpoint_dir) / RUN_STATE_FILE).write_text(json.dumps(state, indent=2) + "\n")

    accelerator.register_save_state_pre_hook(write_run_state)
    ema = ModelEmaV3(student, decay=config.ema_decay, device=accelerator.device) if config.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    def evaluated_model() -> torch.nn.Module:
        return ema.module if ema is not None else student

    total_steps = sum(stage.max_steps for stage in stages)
    global_step, start_stage, steps_this_run = 0, 0, 0
    if resumed_state is not None:
        start_stage = resumed_state["stage_index"]
    history: list[dict] = []
    stopped_early = False
    # the run's clocks continue across resumes: the time of the checkpointed steps travels in the run state
    start_time, start_cpu = time.perf_counter(), time.process_time()
    earlier = {key: resumed_state.get(key, 0.0) if resumed_state else 0.0 for key in ("train_time_s", "cpu_time_s")}

    def clocks() -> dict[str, float]:
        return {"train_time_s": earlier["train_time_s"] + time.perf_counter() - start_time,
                "cpu_time_s": earlier["cpu_time_s"] + time.process_time() - start_cpu}

    progress = tqdm(total=total_steps, desc="distill", disable=not accelerator.is_local_main_process)
    for stage_index in range(start_stage, len(stages)):
        stage = stages[stage_index]
        accelerator.free_memory()
        task = TrajectoryDistillationTask(
            student, teacher, tf_anneal_ratio=config.tf_anneal_ratio, tf_min=config.tf_min, distance=config.distance,
            input_noise_std=config.input_noise_std, teacher_precision=config.teacher_precision,
            last_layers_weight=config.last_layers_weight, last_layers=config.last_layers,
            train_adapters_only=config.train_adapters_only, **stage.task_kwargs())
        trainable = [p for p in student.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
        warmup_steps = stage_warmup_steps(config.warmup_steps, stage.max_steps)
        if warmup_steps != config.warmup_steps:
            accelerator.print(f"note: warmup_steps {config.warmup_steps} is not shorter than the {stage.max_steps} "
                              f"steps of {stage.name}: warming up over {warmup_steps} steps (10%) instead, so the "
                              "learning rate reaches its peak.")
        scheduler = CosineLRScheduler(
            optimizer, t_initial=max(stage.max_steps - warmup_steps, 1), lr_min=config.min_lr,
            warmup_t=warmup_steps, warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
        task, optimizer, stage_train_loader, stage_eval_loader = accelerator.prepare(
            task, optimizer, train_loader, eval_loader)

        stage_step, start_epoch, batches_to_skip = 0, 0, 0
        if resumed_state is not None and stage_index == start_stage:
            global_step = checkpoints.resume(resume_from)
            stage_step = resumed_state["stage_step"]
            start_epoch, batches_to_skip = resumed_state["epoch"], resumed_state["batches_in_epoch"]
            accelerator.print(f"Resumed from {resume_from} at step {global_step} ({stage.name} step {stage_step}).")
            progress.update(global_step)
        position.update(stage_index=stage_index, stage_step=stage_step, epoch=start_epoch,
                        batches_in_epoch=batches_to_skip)
        task.train()
        for epoch in count(start_epoch):
            if stage_step >= stage.max_steps or stopped_early:
                break
            position.update(epoch=epoch, batches_in_epoch=batches_to_skip if epoch == start_epoch else 0)
            batches_seen = 0
            for inputs, _ in epoch_dataloader(accelerator, stage_train_loader, epoch, start_epoch, batches_to_skip):
                batches_seen += 1
                with accelerator.accumulate(task):
                    scheduler.step_update(num_updates=stage_step + 1)
                    out = task(trajectory=inputs, step=stage_step) if cache is not None else task(inputs, step=stage_step)
                    loss = out["loss"]
                    accelerator.backward(loss)
                    losses = accelerator.gather(loss.detach().reshape(1))
                    if not torch.isfinite(losses).all():
                        latest = checkpoints.latest()
                        raise FloatingPointError(
                            f"Non-finite loss {losses.tolist()} at {stage.name} step {stage_step} (global step "
                            f"{global_step}); training stopped before applying it. Last good checkpoint: "
                            f"{latest if latest is not None else 'none'}. Try a lower --lr, --mixed-precision no, "
                            "or --teacher-precision fp32, then --resume latest.")
                    if accelerator.sync_gradients and config.grad_clip is not None:
                        accelerator.clip_grad_norm_(trainable, config.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad()
                position["batches_in_epoch"] += 1
                if not accelerator.sync_gradients:
                    continue
                stage_step += 1
                global_step += 1
                if ema is not None:
                    ema.update(student, step=global_step)
                steps_this_run += 1
                position["stage_step"] = stage_step
                lr = optimizer.param_groups[0]["lr"]
                logs = {"loss": loss.item(), "tf_weight": out["tf_weight"], "lr": lr}
                logs.update({name: out[name].item() for name in ("tf_loss", "ar_loss") if out[name] is not None})
                progress.set_postfix(stage=stage.name, loss=f"{logs['loss']:.4g}", tf=f"{out['tf_weight']:.2f}",
                                     lr=f"{lr:.2e}", refresh=False)
                progress.update(1)
                if config.log_with:
                    accelerator.log({f"{stage.name}/{name}": value for name, value in logs.items()}, step=global_step)
                stage_done = stage_step >= stage.max_steps
                stop_now = (config.max_steps_this_run is not None and steps_this_run >= config.max_steps_this_run
                            and global_step < total_steps)
                if (config.checkpoint_every and global_step % config.checkpoint_every == 0) or stage_done or stop_now:
                    checkpoints.save(global_step)
                last_step = stage_done and stage_index == len(stages) - 1
                if config.eval_every and (global_step % config.eval_every == 0 or stage_done) and not last_step:
                    metrics = evaluate_fidelity(evaluated_model(), teacher, stage_eval_loader,
                                                accelerator=accelerator, progress=False)
                    history.append({"step": global_step, "stage": stage.name, **metrics})
                    accelerator.print(f"step {global_step} ({stage.name}): {fidelity_summary(metrics)}")
                    if config.log_with:
                        accelerator.log({"eval/mean_cosine": metrics["mean_cosine"]["all"],
                                         "eval/r2_paper": metrics["r2_paper_all_layers"]}, step=global_step)
                    task.train()
                if stop_now:
                    stopped_early = True
                if stage_done or stopped_early:
                    break
            if batches_seen == 0 and batches_to_skip == 0:
                raise ValueError(f"The training data yielded no batch in epoch {epoch}; check --dataset and "
                                 f"--train-split, or lower --batch-size {config.batch_size}.")
            batches_to_skip = 0
        if stopped_early:
            break
    progress.close()
    train_time_s = clocks()["train_time_s"]
    if stopped_early:
        accelerator.print(f"Stopped after {steps_this_run} steps this run (global step {global_step} of "
                          f"{total_steps}); checkpoint {checkpoints.latest()}. Continue with --resume latest.")
        accelerator.end_training()
        return {"global_step": global_step, "stopped_early": True}

    # evaluation and the saved Raptor
    metrics = evaluate_fidelity(evaluated_model(), teacher, stage_eval_loader, accelerator=accelerator)
    training = {
        "command": command_line(), "teacher": teacher.name, "dataset": "synthetic" if config.synthetic_data
        else config.dataset, "subsets": subsets, "schedule": config.schedule, "stages": [stage.to_dict() for stage in stages],
        "block_schedule": list(student.block_schedule), "seed": config.seed, "steps": global_step,
        "global_batch_size": config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps,
        "num_processes": accelerator.num_processes, "mixed_precision": config.mixed_precision,
        "teacher_precision": config.teacher_precision, "ema_decay": config.ema_decay,
        "trajectory_cache": None if cache is None else {**cache.meta, "bytes_per_image": cache.bytes_per_image},
        **clocks(),
    }
    result = {**metrics, "training": training, "history": history}
    if accelerator.is_main_process:
        (output_dir / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
        plot_fidelity(metrics, output_dir / "fidelity.png")
        save_pretrained(evaluated_model(), output_dir, phases=phases, metrics=card_metrics(config, metrics),
                        training=training, plots={"fidelity.png": output_dir / "fidelity.png"})
    accelerator.print(checkpoints.finish())
    mean_cosine = metrics["mean_cosine"]["all"]
    accelerator.print(
        f"done: {global_step} steps in {train_time_s:.0f} s ({train_time_s / max(global_step, 1):.3f} s/step); "
        f"block_schedule {tuple(student.block_schedule)}; mean per-layer cosine {mean_cosine:.4f}; "
        + (f"teacher accuracy {metrics['teacher_accuracy']:.4f}, Raptor accuracy {metrics['raptor_accuracy']:.4f}, "
           f"recovery {metrics['recovery']:.4f}; " if metrics["recovery"] is not None else "")
        + f"saved to {output_dir}")
    accelerator.end_training()
    return result
