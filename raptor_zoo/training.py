"""Shared plumbing of the raptor_zoo recipes (train_teacher, distill, finetune, linear_probe).

* :func:`parse_config` - timm train.py's two-stage parser over a config dataclass: ``--config file.yaml`` first,
  then every field as a kebab-case flag with its snake_case spelling (and any old names a field keeps as aliases);
  CLI > YAML > dataclass defaults (it lives in ``raptor_zoo_cli.config``, without torch, so that
  ``raptor-zoo distill --help`` answers at once).
* :func:`save_config` / :func:`format_config` - the resolved config as ``args.yaml`` / text.
* :class:`CheckpointManager` - ``accelerator.save_state`` into a temporary folder, renamed atomically to
  ``checkpoints/step_N``; keep-last-N pruning; resume from the newest complete checkpoint. The global step is
  a :class:`TrainingStep` registered with ``accelerator.register_for_checkpointing``, never parsed from names.
* :func:`resume_position` / :func:`epoch_dataloader` - where a resumed run re-enters its epoch loop
  (``accelerator.skip_first_batches``).
* :func:`set_drop_path` - stochastic depth per block of a timm ViT, timm's linear ramp or a uniform rate.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch.nn as nn
import yaml

from raptor_zoo_cli.config import parse_config

if TYPE_CHECKING:
    from accelerate import Accelerator

__all__ = [
    "parse_config",
    "config_to_dict",
    "format_config",
    "save_config",
    "start_run",
    "save_run_config",
    "command_line",
    "TrainingStep",
    "CheckpointManager",
    "resume_position",
    "epoch_dataloader",
    "set_drop_path",
]

_logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ config files

def config_to_dict(config) -> dict[str, Any]:
    """A dataclass config as plain YAML/JSON-able values (tuples -> lists, paths -> str)."""
    def plain(value: Any) -> Any:
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, Path):
            return str(value)
        return value
    return {field.name: plain(getattr(config, field.name)) for field in dataclasses.fields(config)}


def format_config(config) -> str:
    """The resolved config as YAML text, for printing at the start of a run."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def save_config(config, output_dir: str | Path, filename: str = "args.yaml") -> Path:
    """Write the resolved config to ``output_dir/args.yaml`` (reload: ``parse_config(cls, ['--config', path])``)."""
    path = Path(output_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{filename}.tmp")
    temporary.write_text(format_config(config))
    temporary.replace(path)
    return path


def save_run_config(accelerator: Accelerator, config) -> None:
    """``output_dir/args.yaml`` of a run, written by the main process only."""
    if accelerator.is_main_process:
        save_config(config, config.output_dir)


def start_run(
        config,
        *,
        tracker: str | None = None,
        seedable_data: bool = True,
        write_config: bool = True,
) -> tuple[Accelerator, Path]:
    """The recipes' prologue: an ``Accelerator`` from the config's run fields, the resolved config printed and
    written to ``output_dir/args.yaml`` (unless ``write_config=False``: then :func:`save_run_config` later), trackers
    started (``tracker`` names the project, when the config has ``log_with`` set), the seed set.

    Settings that would silently waste the run are settled here, each with a printed line: mixed precision on a CPU
    that emulates it (measured; the run falls back to fp32 when it is slower), more DataLoader workers than cores
    (capped). ``config.cpu`` and ``config.mixed_precision`` are set to what the run actually uses, so the echo and
    ``args.yaml`` say so (``accelerate launch --cpu`` included).

    ``cpu``, ``mixed_precision``, ``seed`` and ``output_dir`` are required fields; ``gradient_accumulation_steps``,
    ``num_workers`` and ``log_with`` are used when the config has them; ``seedable_data`` makes the prepared loaders'
    order a function of the seed (Accelerate's seedable sampler). Returns ``(accelerator, output_dir)``.
    """
    from accelerate import Accelerator, PartialState
    from accelerate.utils import DataLoaderConfiguration, set_seed

    notes = []
    device = PartialState(cpu=config.cpu).device
    if device.type == "cpu" and config.mixed_precision in ("bf16", "fp16"):
        slowdown = cpu_autocast_slowdown(config.mixed_precision)
        if slowdown > _SLOWER_THAN_FP32:
            notes.append(f"mixed_precision {config.mixed_precision} on this CPU: a ViT block's forward and backward "
                         f"run {slowdown:.1f}x slower than in fp32 (no native {config.mixed_precision} units), so this "
                         "run uses fp32 (mixed_precision: no).")
            config.mixed_precision = "no"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if getattr(config, "num_workers", 0) > cores:
        notes.append(f"num_workers {config.num_workers} exceeds the {cores} CPU cores here; using {cores}.")
        config.num_workers = cores
    options: dict[str, Any] = dict(cpu=config.cpu, mixed_precision=config.mixed_precision)
    if hasattr(config, "gradient_accumulation_steps"):
        options["gradient_accumulation_steps"] = config.gradient_accumulation_steps
    if hasattr(config, "log_with"):
        options.update(log_with=config.log_with, project_dir=config.output_dir)
    if seedable_data:
        options["dataloader_config"] = DataLoaderConfiguration(use_seedable_sampler=True, data_seed=config.seed)
    accelerator = Accelerator(**options)
    config.cpu = accelerator.device.type == "cpu"
    accelerator.print(format_config(config))
    accelerator.print(f"device: {accelerator.device} x {accelerator.num_processes} process(es), mixed precision "
                      f"{accelerator.mixed_precision}" + "".join(f"\nnote: {note}" for note in notes))
    if write_config:
        save_run_config(accelerator, config)
    if tracker is not None and getattr(config, "log_with", None):
        accelerator.init_trackers(tracker, config=config_to_dict(config))
    set_seed(config.seed)
    return accelerator, Path(config.output_dir)


_SLOWER_THAN_FP32 = 1.5
"""Mixed precision on a CPU falls back to fp32 when a matmul under its autocast is this many times slower."""


def cpu_autocast_slowdown(mixed_precision: Literal["bf16", "fp16"], repeats: int = 5) -> float:
    """How many times slower a ViT block's forward and backward run under CPU autocast to ``mixed_precision`` than
    in fp32, measured now on a small timm ``Block`` (median of ``repeats``; well under a second)."""
    import time

    import torch
    from timm.models.vision_transformer import Block

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]
    generator = torch.Generator().manual_seed(0)
    block = Block(256, 4, init_values=1e-5)
    x = torch.randn(4, 65, 256, generator=generator, requires_grad=True)

    def median_seconds(autocast) -> float:
        times = []
        for _ in range(repeats + 1):
            start = time.perf_counter()
            with autocast:
                y = block(x)
            y.float().square().mean().backward()
            times.append(time.perf_counter() - start)
        return sorted(times[1:])[repeats // 2]

    fp32 = median_seconds(torch.autocast("cpu", enabled=False))
    return median_seconds(torch.autocast("cpu", dtype=dtype)) / max(fp32, 1e-9)


def command_line() -> str:
    """The command that started this process, shell-quoted (``python recipes/x.py --flag value``)."""
    return shlex.join(["python", *sys.argv])


# ------------------------------------------------------------------------------------------ checkpoints

@dataclasses.dataclass
class TrainingStep:
    """The global optimiser step, saved and restored with the accelerate state."""
    step: int = 0

    def state_dict(self) -> dict[str, int]:
        return {"step": self.step}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.step = int(state_dict["step"])


_CHECKPOINT_NAME = re.compile(r"^step_(\d+)$")
_TEMPORARY_PREFIX = ".tmp-"
_TRASH_PREFIX = ".old-"


class CheckpointManager:
    """Atomic ``accelerator.save_state`` checkpoints in ``output_dir/checkpoints/step_N``, the last few kept.

    ``save(step)`` writes the state into a temporary folder beside the checkpoints and renames it into place,
    so a run killed mid-save never leaves a partial ``step_N``; ``latest()`` only ever sees complete ones.
    The global step travels in :attr:`progress` (registered for checkpointing at construction, so create the
    manager before registering other objects, in the same order on resume).
    """

    def __init__(self, accelerator, output_dir: str | Path, keep_last: int | None = 3):
        if keep_last is not None and keep_last < 1:
            raise ValueError(f"keep_last must be >= 1 or None (keep all), got {keep_last}.")
        if accelerator.project_configuration.automatic_checkpoint_naming:
            raise ValueError(
                "CheckpointManager names its own checkpoint folders; create the Accelerator without "
                "ProjectConfiguration(automatic_checkpoint_naming=True).")
        self.accelerator = accelerator
        self.checkpoint_dir = Path(output_dir) / "checkpoints"
        self.keep_last = keep_last
        self.progress = TrainingStep()
        accelerator.register_for_checkpointing(self.progress)

    def checkpoints(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.checkpoint_dir.is_dir():
            return []
        found = [
            (int(match.group(1)), path) for path in self.checkpoint_dir.iterdir()
            if path.is_dir() and (match := _CHECKPOINT_NAME.match(path.name))
        ]
        return [path for _, path in sorted(found)]

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def save(self, step: int) -> Path:
        """Save the accelerator state at global ``step`` to ``checkpoints/step_{step}`` atomically; prune old ones."""
        accelerator = self.accelerator
        final = self.checkpoint_dir / f"step_{step}"
        temporary = self.checkpoint_dir / f"{_TEMPORARY_PREFIX}step_{step}"
        self.progress.step = step
        if accelerator.is_main_process:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.checkpoint_dir.glob(f"{_TEMPORARY_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(temporary))
        except BaseException:
            if accelerator.is_main_process:
                shutil.rmtree(temporary, ignore_errors=True)
            raise
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            trash = None
            if final.exists():
                trash = final.with_name(f"{_TRASH_PREFIX}{final.name}")
                shutil.rmtree(trash, ignore_errors=True)
                final.rename(trash)
            temporary.rename(final)
            if trash is not None:
                shutil.rmtree(trash, ignore_errors=True)
            self._prune()
        accelerator.wait_for_everyone()
        return final

    def _prune(self, keep_last: int | None = None) -> None:
        keep_last = self.keep_last if keep_last is None else keep_last
        if keep_last is None:
            return
        for old in self.checkpoints()[:-keep_last]:
            shutil.rmtree(old)

    def finish(self) -> str:
        """At the end of a completed run keep only the newest checkpoint (the run is over: the others could only
        resume it part-way); returns a line saying what is kept and its size."""
        if self.accelerator.is_main_process:
            self._prune(keep_last=1)
        self.accelerator.wait_for_everyone()
        latest = self.latest()
        if latest is None:
            return "no checkpoint kept"
        size = sum(file.stat().st_size for file in latest.rglob("*") if file.is_file())
        return f"checkpoint kept: {latest} ({size / 2 ** 20:.0f} MiB; the earlier ones are removed at the end of a run)"

    def resume(self, checkpoint: str | Path = "latest") -> int:
        """Load a checkpoint (``"latest"`` or a path) into the accelerator's objects; returns the global step."""
        if str(checkpoint) == "latest":
            path = self.latest()
            if path is None:
                raise FileNotFoundError(
                    f"No checkpoint to resume from in {self.checkpoint_dir}; start without --resume, or pass the "
                    f"path of a checkpoint folder.")
        else:
            path = Path(checkpoint)
            if not path.is_dir():
                raise FileNotFoundError(
                    f"Checkpoint folder {str(checkpoint)!r} not found; pass 'latest' or an existing "
                    f"checkpoints/step_N folder.")
        self.accelerator.load_state(str(path))
        _logger.info("Resumed from %s at step %d", path, self.progress.step)
        return self.progress.step


def resume_position(global_step: int, steps_per_epoch: int, gradient_accumulation_steps: int = 1) -> tuple[int, int]:
    """(epoch, batches to skip in it) for a run resuming after ``global_step`` optimiser steps."""
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
    epoch, step_in_epoch = divmod(global_step, steps_per_epoch)
    return epoch, step_in_epoch * gradient_accumulation_steps


def epoch_dataloader(accelerator, dataloader, epoch: int, resume_epoch: int = 0, batches_to_skip: int = 0):
    """The prepared ``dataloader`` for ``epoch`` (its sampler told the epoch), skipping the batches a resumed
    run already consumed in ``resume_epoch``."""
    if hasattr(dataloader, "set_epoch"):
        dataloader.set_epoch(epoch)
    if epoch == resume_epoch and batches_to_skip > 0:
        return accelerator.skip_first_batches(dataloader, batches_to_skip)
    return dataloader


# ------------------------------------------------------------------------------------------ model options

def set_drop_path(model: nn.Module, rate: float, mode: Literal["linear", "uniform"] = "linear") -> list[float]:
    """Set the stochastic-depth rate of every block of a timm ViT; returns the per-block rates.

    ``linear``: timm's ramp from 0 at the first block to ``rate`` at the last (``drop_path_rate``);
    ``uniform``: the same ``rate`` at every block (the paper's small-scale variant).
    """
    from timm.layers import DropPath, calculate_drop_path_rates

    if mode not in ("linear", "uniform"):
        raise ValueError(f"drop_path mode must be 'linear' or 'uniform', got {mode!r}.")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path rate must lie in [0, 1), got {rate}.")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not all(hasattr(block, "drop_path1") and hasattr(block, "drop_path2") for block in blocks):
        raise TypeError(
            f"set_drop_path needs a timm ViT whose blocks have drop_path1/drop_path2, got {type(model).__name__}.")
    depth = len(blocks)
    rates = [rate] * depth if mode == "uniform" else [float(r) for r in calculate_drop_path_rates(rate, depth)]
    for block, block_rate in zip(blocks, rates):
        block.drop_path1 = DropPath(block_rate) if block_rate > 0 else nn.Identity()
        block.drop_path2 = DropPath(block_rate) if block_rate > 0 else nn.Identity()
    return rates
