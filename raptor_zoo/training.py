"""Shared plumbing of the raptor_zoo recipes (train_teacher, distill, finetune, linear_probe).

* :func:`parse_config` - timm train.py's two-stage parser over a config dataclass: ``--config file.yaml`` first,
  then every field as a kebab-case flag with its snake_case spelling (and any old names a field keeps as aliases);
  CLI > YAML > dataclass defaults.
* :func:`save_config` / :func:`format_config` - the resolved config as ``args.yaml`` / text.
* :class:`CheckpointManager` - ``accelerator.save_state`` into a temporary folder, renamed atomically to
  ``checkpoints/step_N``; keep-last-N pruning; resume from the newest complete checkpoint. The global step is
  a :class:`TrainingStep` registered with ``accelerator.register_for_checkpointing``, never parsed from names.
* :func:`resume_position` / :func:`epoch_dataloader` - where a resumed run re-enters its epoch loop
  (``accelerator.skip_first_batches``).
* :func:`set_drop_path` - stochastic depth per block of a timm ViT, timm's linear ramp or a uniform rate.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import shutil
import shlex
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch.nn as nn
import yaml

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

_NONE_STRINGS = ("none", "null")


# ------------------------------------------------------------------------------------------ config parsing

def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    """(inner type, whether None is allowed) for `Optional[T]` / `T | None`; other annotations unchanged."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        if len(members) != 1:
            raise TypeError(f"Only Optional[T] unions are supported in config fields, got {annotation}.")
        return members[0], optional
    return annotation, False


def _sequence_element(annotation: Any) -> tuple[type, int | None] | None:
    """(element type, fixed length or None) for tuple[...] / list[...] annotations; None for anything else."""
    origin = typing.get_origin(annotation) or annotation
    if origin not in (tuple, list):
        return None
    args = typing.get_args(annotation)
    if not args:
        return str, None
    if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
        if len(set(args)) != 1:
            raise TypeError(f"Tuple config fields must hold one element type, got {annotation}.")
        return args[0], len(args)
    return args[0], None


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """`value` (from YAML or a CLI string) converted to the field's annotation; TypeError/ValueError otherwise."""
    inner, optional = _unwrap_optional(annotation)
    if value is None or (optional and isinstance(value, str) and value.lower() in _NONE_STRINGS):
        if optional:
            return None
        raise TypeError(f"Config field {name!r} is not optional ({_type_name(annotation)}), got None.")
    sequence = _sequence_element(inner)
    if sequence is not None:
        element, length = sequence
        if isinstance(value, str):
            value = [token for token in re.split(r"[,\s]+", value.strip().strip("()[]")) if token]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"Config field {name!r} expects a list of {_type_name(element)}, got {value!r}.")
        items = [_coerce(name, element, item) for item in value]
        if length is not None and len(items) != length:
            raise ValueError(f"Config field {name!r} expects {length} values, got {len(items)}: {value!r}.")
        origin = typing.get_origin(inner) or inner
        return tuple(items) if origin is tuple else items
    if typing.get_origin(inner) is Literal:
        choices = typing.get_args(inner)
        if value not in choices:
            raise ValueError(f"Config field {name!r} must be one of {list(choices)}, got {value!r}.")
        return value
    if inner is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise TypeError(f"Config field {name!r} expects a bool, got {value!r}.")
    if inner is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"Config field {name!r} expects an int, got {value!r}.")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise TypeError(f"Config field {name!r} expects an int, got {value!r}.") from None
    if inner is float:
        if isinstance(value, bool):
            raise TypeError(f"Config field {name!r} expects a float, got {value!r}.")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Config field {name!r} expects a float, got {value!r}.") from None
    if inner is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise TypeError(f"Config field {name!r} expects a string, got {value!r}.")
        return str(value)
    if inner is Path:
        return Path(value)
    if (typing.get_origin(inner) or inner) is dict:
        parsed = json.loads(value) if isinstance(value, str) else value
        if not isinstance(parsed, dict):
            raise TypeError(f"Config field {name!r} expects a mapping (YAML mapping or JSON object), got {value!r}.")
        return parsed
    raise TypeError(f"Config field {name!r} has unsupported type {_type_name(annotation)}.")


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def _format_value(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(str(item) for item in value)
    return str(value)


def _field_aliases(config_cls: type, fields: dict[str, dataclasses.Field]) -> dict[str, str]:
    """alias -> field name, from every field's ``metadata={"aliases": [...]}`` (old names the field still answers to).

    An alias that is another field's name or another field's alias is a TypeError: the config class is wrong."""
    aliases: dict[str, str] = {}
    for name, field in fields.items():
        names = field.metadata.get("aliases", ())
        if isinstance(names, str):
            raise TypeError(f"{config_cls.__name__}.{name}: metadata 'aliases' must be a list of names, got {names!r}.")
        for alias in names:
            taken = alias if alias in fields else aliases.get(alias)
            if taken is not None:
                raise TypeError(f"{config_cls.__name__}.{name}: alias {alias!r} is already the name or an alias of "
                                f"field {taken!r}.")
            aliases[alias] = name
    return aliases


_ALIAS_DEST = "alias:{}"
"""The argparse destination of an alias flag, kept apart from its field's so that giving both can be told."""


def _flags(name: str) -> list[str]:
    """``--kebab-name``, and ``--snake_name`` when the name has an underscore."""
    return [f"--{name.replace('_', '-')}"] + ([f"--{name}"] if "_" in name else [])


def _read_yaml_config(path: str, config_cls: type, fields: dict[str, dataclasses.Field],
                      hints: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    config_path = Path(path)
    if not config_path.is_file():
        raise FileNotFoundError(f"Config file {path!r} not found (given with --config).")
    loaded = yaml.safe_load(config_path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"Config file {path!r} must hold a YAML mapping of field: value, got {type(loaded).__name__}.")
    normalised = {str(key).replace("-", "_"): value for key, value in loaded.items()}
    unknown = sorted(set(normalised) - set(fields) - set(aliases))
    if unknown:
        raise ValueError(
            f"Unknown key(s) {unknown} in {path!r}; valid keys for {config_cls.__name__} are {sorted(fields)}.")
    values: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in normalised.items():
        name = aliases.get(key, key)
        if name in given_as:
            raise ValueError(f"Config file {path!r} gives both {given_as[name]!r} and {key!r}, two names of the field "
                             f"{name!r}; keep only {name!r}.")
        given_as[name] = key
        values[name] = _coerce(name, hints[name], value)
    return values


def parse_config(
        config_cls: type,
        argv: Sequence[str] | None = None,
        description: str | None = None,
):
    """Parse ``argv`` into an instance of the dataclass ``config_cls``, timm train.py's two-stage way.

    Stage 1 reads only ``-c/--config file.yaml`` (keys = field names; an unknown key is a ValueError listing
    the valid ones). Stage 2 offers every field as ``--kebab-name`` and ``--snake_name``, typed from its
    annotation: bools as ``--flag/--no-flag``, tuples and lists as space- or comma-separated values,
    ``Literal`` as choices, ``Optional`` accepting ``none``. Precedence: CLI > YAML > dataclass defaults.
    Help texts come from ``field(metadata={"help": ...})``; fields may name an argparse group with
    ``metadata={"group": ...}``.

    A renamed field keeps its old names with ``metadata={"aliases": ["old_name", ...]}``: each alias is a flag too
    (``--old-name``, ``--old_name``) and a YAML key, read as the field. Giving a field and its alias together (both
    flags, or both keys in one YAML file) is an error naming both; an alias in the YAML and the field on the command
    line is the usual precedence (the command line wins). ``args.yaml`` and the config object use the field's name.
    """
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        raise TypeError(f"parse_config expects a dataclass type, got {config_cls!r}.")
    argv = list(sys.argv[1:] if argv is None else argv)
    hints = typing.get_type_hints(config_cls)
    fields = {field.name: field for field in dataclasses.fields(config_cls) if field.init}
    aliases = _field_aliases(config_cls, fields)

    config_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    config_parser.add_argument("-c", "--config", default=None)
    stage_one, _ = config_parser.parse_known_args(argv)
    yaml_values = _read_yaml_config(stage_one.config, config_cls, fields, hints, aliases) if stage_one.config else {}

    defaults = {name: _field_default(field) for name, field in fields.items()}
    defaults.update(yaml_values)

    parser = argparse.ArgumentParser(
        description=description or (config_cls.__doc__ or "").strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # a recipe's banner keeps its command lines
        allow_abbrev=False,
    )
    parser.add_argument(
        "-c", "--config", default=None, metavar="FILE",
        help="YAML file of field: value defaults; command-line flags override it (default: None)")
    groups: dict[str, argparse._ArgumentGroup] = {}
    sequence_fields = []
    for name, field in fields.items():
        group_title = field.metadata.get("group")
        target = groups.setdefault(group_title, parser.add_argument_group(group_title)) if group_title else parser
        default = defaults[name]
        shown = "required" if default is dataclasses.MISSING else _format_value(default)
        help_text = f"{field.metadata.get('help', '')} (default: {shown})".strip()
        annotation = hints[name]
        inner, _ = _unwrap_optional(annotation)
        kwargs: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if inner is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif _sequence_element(inner) is not None:
            kwargs.update(nargs="+", metavar=_type_name(_sequence_element(inner)[0]).upper())
            sequence_fields.append(name)
        else:
            def convert(text: str, _name: str = name, _annotation: Any = annotation) -> Any:
                try:
                    return _coerce(_name, _annotation, text)
                except (TypeError, ValueError) as error:
                    raise argparse.ArgumentTypeError(str(error)) from None
            convert.__name__ = _type_name(inner)
            kwargs["type"] = convert
            if typing.get_origin(inner) is Literal:
                kwargs["metavar"] = "{" + ",".join(str(choice) for choice in typing.get_args(inner)) + "}"
        target.add_argument(*_flags(name), **kwargs)
        for alias in field.metadata.get("aliases", ()):
            alias_kwargs = dict(kwargs, dest=_ALIAS_DEST.format(alias), help=f"alias of {_flags(name)[0]}")
            if inner is not bool:
                alias_kwargs.setdefault("metavar", name.upper())
            target.add_argument(*_flags(alias), **alias_kwargs)

    cli_values = vars(parser.parse_args(argv))
    cli_values.pop("config", None)
    given_as = {name: _flags(name)[0] for name in fields if name in cli_values}
    for alias, name in aliases.items():
        if _ALIAS_DEST.format(alias) not in cli_values:
            continue
        alias_flag = _flags(alias)[0]
        if name in given_as:
            parser.error(f"{given_as[name]} and {alias_flag} both give the field {name!r} ({alias_flag} is an alias "
                         f"of {_flags(name)[0]}); give one of them, not both")
        given_as[name] = alias_flag
        cli_values[name] = cli_values.pop(_ALIAS_DEST.format(alias))
    for name in sequence_fields:
        if name in cli_values:
            try:
                cli_values[name] = _coerce(name, hints[name], " ".join(cli_values[name]))
            except (TypeError, ValueError) as error:
                parser.error(str(error))
    values = {**defaults, **cli_values}
    missing = [name for name, value in values.items() if value is dataclasses.MISSING]
    if missing:
        parser.error(f"missing required option(s): {', '.join('--' + name.replace('_', '-') for name in missing)}")
    return config_cls(**values)


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
