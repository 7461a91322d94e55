"""The Raptor Hub folder: one writer (:func:`save_pretrained`), one reader (:func:`load_pretrained`), and the push.

A folder (local, in the Hub cache, or a Hub repo) holds (docs/design.md §6)::

    config.json        RaptorConfig.to_dict(): timm keys (architecture, num_classes, num_features, global_pool,
                       model_args, pretrained_cfg), transformers keys (model_type "raptor", architectures, ...),
                       teacher id and revision, block_schedule, phase_boundaries, phase_metric, schedule_source
    model.safetensors  the Raptor's timm state_dict (its family's key layout), each unique block once
    README.md          the model card (raptor_zoo.cards)
    preprocessor_config.json  the teacher's own transformers image processor (a transformers teacher's, e.g.
                       CLIPImageProcessor: pipelines then prepare images exactly as the teacher's), else the timm
                       data config (resize, crop_pct, crop_mode, mean/std, interpolation) as ``RaptorImageProcessor``
    phases.json, phase_heatmap.png, other plots (optional)

The same folder loads in three libraries: ``raptor_zoo.from_pretrained(folder | repo id | zoo name)``,
``timm.create_model("hf-hub:org/name", pretrained=True)`` (after ``import raptor_zoo``), and transformers'
``AutoModel`` / ``AutoModelForImageClassification`` / ``AutoBackbone`` (the ``Raptor*`` classes hold the timm
model as ``.raptor``; keys map ``k <-> "raptor." + k``, see ``models/modeling_raptor.py``).

Loading is strict and safetensors-only: missing or unexpected keys and shape mismatches raise a ``ValueError``
listing them, a truncated or corrupt file raises a ``ValueError`` saying so, and pickles are never read.

Cards: ``save_pretrained`` writes README.md unless one exists that a person edited (an unedited raptor_zoo card is
regenerated with the new numbers; an edited one is kept, with a warning, unless ``overwrite_card=True``).
``push_to_hub`` uploads the folder as it is, card included, in one commit.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import timm
import torch
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from timm.models import PretrainedCfg, filter_pretrained_cfg
from torch import nn

from . import cards, zoo
from .models.archs import REGISTERED_RAPTOR_ARCHS
from .models.configuration_raptor import RaptorConfig
from .models.families import in_chans_of, native_img_size
from .models.image_processing_raptor import RaptorImageProcessor
from .models.raptor_base import RaptorMixin
from .models.raptor_timm import raptor_from_model_args
from .models.raptor_vit import checkpoint_filter_fn
from .version import __version__

__all__ = [
    "CONFIG_NAME",
    "WEIGHTS_NAME",
    "CARD_NAME",
    "PROCESSOR_NAME",
    "PHASES_NAME",
    "HEATMAP_NAME",
    "GENERIC_ARCHITECTURE",
    "raptor_config",
    "image_processor",
    "save_pretrained",
    "read_config",
    "load_state_dict",
    "resolve_folder",
    "load_pretrained",
    "push_to_hub",
]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PROCESSOR_NAME = "preprocessor_config.json"
PHASES_NAME = "phases.json"
HEATMAP_NAME = "phase_heatmap.png"
GENERIC_ARCHITECTURE = "raptor_timm"
"""timm architecture of Raptors that are not one of the registered variants (teacher_arch, teacher_args,
block_schedule ... in model_args)."""

_PRETRAINED_CFG_FIELDS = {f.name for f in dataclasses.fields(PretrainedCfg)}
_PROVENANCE_KEYS = ("teacher", "teacher_revision", "schedule_source", "phase_metric", "phase_boundaries")
_BUILD_HINT = (f"Build a Raptor locally with `accelerate launch {zoo.DISTILL_RECIPE} --config "
               "<recipes/configs/...yaml>` and load its output folder")


def _library_version() -> str:
    return __version__


def _core_and_config(model: nn.Module) -> tuple[RaptorMixin, RaptorConfig | None]:
    """The timm Raptor inside ``model`` and, for a transformers Raptor, its config."""
    if isinstance(model, RaptorMixin):
        if getattr(model, "model_args", None) is None:
            raise ValueError(
                f"This {type(model).__name__} cannot be described by config.json: its teacher module has no timm "
                "architecture name (pretrained_cfg['architecture']) or was built with arguments raptor_zoo did not "
                "see; load the teacher with raptor_zoo.load_teacher('<timm name>', **create_kwargs) so the "
                "arguments are recorded, then call from_teacher again.")
        return model, None
    core = model.to_timm() if callable(getattr(model, "to_timm", None)) else None
    if isinstance(core, RaptorMixin) and isinstance(getattr(model, "config", None), RaptorConfig):
        return core, model.config
    raise TypeError(
        f"Expected a timm Raptor (RaptorVisionTransformer, RaptorEva, ...) or a transformers Raptor model, got {type(model).__name__}; "
        "build one with raptor_zoo.from_teacher(...) or timm.create_model('raptor_vit_...').")


def _phases_dict(phases: Any) -> dict[str, Any] | None:
    if phases is None or isinstance(phases, Mapping):
        return None if phases is None else dict(phases)
    if isinstance(phases, (str, os.PathLike)):
        path = Path(phases)
        if not path.is_file():
            raise FileNotFoundError(
                f"phases={str(path)!r} does not exist; pass a PhaseResult, its dict or its JSON file.")
        return json.loads(path.read_text(encoding="utf-8"))
    if hasattr(phases, "to_dict"):
        return phases.to_dict()
    raise TypeError(f"phases must be a PhaseResult, a dict or a phases.json path, got {type(phases).__name__}.")


def _phase_result(model: RaptorMixin, phases: Any) -> dict[str, Any] | None:
    """The phase result to ship: ``phases`` if given, else the one ``from_teacher`` recorded; it must match."""
    phase_dict = _phases_dict(phases)
    if phase_dict is None and isinstance((model.raptor_meta or {}).get("phases"), Mapping):
        phase_dict = dict(model.raptor_meta["phases"])
    if phase_dict is not None and tuple(phase_dict.get("block_schedule", ())) != tuple(model.block_schedule):
        raise ValueError(
            f"phases give block_schedule {tuple(phase_dict.get('block_schedule', ()))} but the model runs "
            f"{tuple(model.block_schedule)}; pass the phase result the model was built from.")
    return phase_dict


def _json_ready(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} is not JSON-serialisable ({err}); config.json holds JSON values only.") from None


def _source_cfg(model: RaptorMixin, hf_config: RaptorConfig | None) -> dict[str, Any]:
    """timm pretrained_cfg the model carries (a transformers Raptor keeps it in its config)."""
    if hf_config is not None:
        return dict(hf_config.pretrained_cfg or {}, architecture=hf_config.architecture)
    return dict(getattr(model, "pretrained_cfg", None) or {})


def _architecture_of(source_cfg: Mapping[str, Any], model: RaptorMixin) -> str:
    """The registered arch the model was created as (config.json's model_args describe it completely, whatever was
    overridden), else the generic architecture."""
    arch = source_cfg.get("architecture")
    if arch in REGISTERED_RAPTOR_ARCHS and model.model_args["teacher_arch"] == REGISTERED_RAPTOR_ARCHS[arch]["teacher"]:
        return arch
    return GENERIC_ARCHITECTURE


def _is_registered_shape(model: RaptorMixin, arch: str) -> bool:
    """Whether a model of a registered arch still has that arch's teacher and schedule (no width / depth overrides):
    only then does the arch's schedule source describe it."""
    with torch.device("meta"):
        registered = timm.create_model(arch, num_classes=model.num_classes, img_size=list(native_img_size(model)))
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items() if not key.startswith("head")}
    same = shapes == {key: tuple(v.shape) for key, v in registered.state_dict().items() if not key.startswith("head")}
    return same and tuple(model.block_schedule) == tuple(registered.block_schedule)


def _timm_pretrained_cfg(
        model: RaptorMixin, architecture: str, source_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """timm's data / weights metadata for config.json: defaults of the arch, overlaid by the model's own cfg."""
    cfg: dict[str, Any] = {}
    if timm.is_model(architecture):
        default = timm.models.get_pretrained_cfg(architecture, allow_unregistered=True)
        cfg.update(default.to_dict() if default is not None else {})
    cfg.update(source_cfg)
    cfg = filter_pretrained_cfg(cfg, remove_source=True, remove_null=True)
    for key in ("architecture", "notes", "label_names", "label_descriptions", "state_dict"):
        cfg.pop(key, None)
    img_size = native_img_size(model)
    patch_embed = getattr(model, "patch_embed", None)
    cfg.update(
        input_size=[in_chans_of(model), *img_size],
        fixed_input_size=bool(getattr(patch_embed, "strict_img_size", False)
                              and not getattr(model, "dynamic_img_size", False)),
        num_classes=model.num_classes,
        first_conv="patch_embed.proj",
        classifier="head",
        hf_hub_filename=WEIGHTS_NAME,  # timm then never falls back to a pickle
    )
    return _json_ready({k: v for k, v in cfg.items() if k in _PRETRAINED_CFG_FIELDS}, "pretrained_cfg")


def raptor_config(
        model: nn.Module,
        *,
        teacher: str | None = None,
        teacher_revision: str | None = None,
        phases: Any = None,
) -> RaptorConfig:
    """The ``RaptorConfig`` (config.json) describing ``model``'s weights and provenance.

    ``teacher`` / ``teacher_revision`` / ``phases`` override what ``model.raptor_meta`` recorded
    (``from_teacher`` fills it). ``phases`` (PhaseResult, dict or phases.json) must match the model's schedule.
    """
    core, hf_config = _core_and_config(model)
    meta = dict(getattr(core, "raptor_meta", None) or {})
    if hf_config is not None:
        meta = {**dict(hf_config.raptor_meta or {}),
                **{key: getattr(hf_config, key) for key in _PROVENANCE_KEYS if getattr(hf_config, key) is not None},
                **meta}
    source_cfg = _source_cfg(core, hf_config)
    architecture = _architecture_of(source_cfg, core)
    if architecture in REGISTERED_RAPTOR_ARCHS and _is_registered_shape(core, architecture):
        spec = REGISTERED_RAPTOR_ARCHS[architecture]
        meta.setdefault("schedule_source", spec["schedule_source"])
        meta.setdefault("teacher", spec["teacher"])
    phase_dict = _phase_result(core, phases)
    if phase_dict is not None:
        meta.setdefault("phase_metric", phase_dict.get("metric"))
        meta.setdefault("phase_algorithm", phase_dict.get("algorithm"))
        if phases is not None:
            meta.setdefault("schedule_source", "measured")
    if teacher is not None:
        meta["teacher"] = teacher
    if teacher_revision is not None:
        meta["teacher_revision"] = teacher_revision

    model_args = dict(core.model_args, block_schedule=list(core.block_schedule), num_classes=core.num_classes)
    model_args["teacher_args"] = dict(model_args.get("teacher_args") or {}, num_classes=core.num_classes)
    model_args = _json_ready(model_args, "model.model_args")
    extra_meta = {key: value for key, value in meta.items()
                  if key not in (*_PROVENANCE_KEYS, "phases", "block_schedule") and value is not None}
    label_names = source_cfg.get("label_names")
    labels: dict[str, Any] = {}
    embedding_head = meta.get("head") == "embedding" or (hf_config is not None and hf_config.projection_dim)
    if embedding_head:  # image embeddings, not classes: no labels, and RaptorModel returns image_embeds
        labels = dict(projection_dim=core.num_classes)
    elif label_names and len(label_names) == core.num_classes:
        labels = dict(id2label=dict(enumerate(label_names)))
    elif hf_config is not None and hf_config.num_labels == core.num_classes:
        labels = dict(id2label=dict(hf_config.id2label))
    attn = getattr(core.unique_blocks[0], "attn", None)
    return RaptorConfig(
        model_args=model_args,
        architecture=architecture,
        # the transformers fields describe the shape; model_args rebuild it
        hidden_size=int(getattr(core, "embed_dim", None) or core.num_features),
        num_attention_heads=int(getattr(attn, "num_heads", 1)), image_size=list(native_img_size(core)),
        num_channels=in_chans_of(core), block_type=getattr(core, "block_type", "teacher"),
        global_pool="cls_avg" if getattr(core, "global_pool", None) == "cls_avg" else None,
        pretrained_cfg=_timm_pretrained_cfg(core, architecture, source_cfg),
        architectures=["RaptorForImageClassification" if core.num_classes and not embedding_head else "RaptorModel"],
        teacher_image_processor=_teacher_processor_dict(core, hf_config),
        last_hidden_state=meta.get("last_hidden_state") or (
            hf_config.last_hidden_state if hf_config is not None else "normed"),
        teacher=meta.get("teacher"),
        teacher_revision=meta.get("teacher_revision"),
        schedule_source=meta.get("schedule_source"),
        phase_metric=meta.get("phase_metric"),
        phase_boundaries=list(core.phase_boundaries),
        raptor_meta=_json_ready(extra_meta, "model.raptor_meta") or None,
        **labels,
    )


def image_processor(config: RaptorConfig) -> RaptorImageProcessor:
    """The transformers image processor (preprocessor_config.json) of a folder: timm's eval transform of the data
    config that config.json's pretrained_cfg resolves to, running the teacher's own transformers processor
    (``teacher_image_processor``) instead when the teacher had one."""
    return RaptorImageProcessor.from_dict(config.to_dict())


def _teacher_processor_dict(core: nn.Module, hf_config: RaptorConfig | None) -> dict[str, Any] | None:
    """The teacher's transformers image processor a Raptor carries, as config.json stores it."""
    processor = getattr(core, "image_processor", None)
    if isinstance(processor, RaptorImageProcessor):
        processor = processor.teacher()
    if processor is not None:
        return processor.to_dict()
    return hf_config.teacher_image_processor if hf_config is not None else None


def _state_dict_for_save(model: RaptorMixin) -> dict[str, torch.Tensor]:
    state = {}
    seen: dict[tuple[int, int], str] = {}
    for key, tensor in model.state_dict().items():
        tensor = tensor.detach()
        if tensor.device.type == "meta":
            raise ValueError(f"{key} is on the meta device; load or initialise the weights before saving.")
        storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if tensor.numel() and storage in seen:
            raise ValueError(
                f"{key} shares memory with {seen[storage]}: a Raptor stores each of its k unique blocks once and "
                "applies it on block_schedule; aliased modules cannot be saved (safetensors refuses shared tensors).")
        seen[storage] = key
        state[key] = tensor.contiguous().cpu()
    return state


def _check_reloads(config: RaptorConfig, state: Mapping[str, torch.Tensor]) -> None:
    """Fail before writing when config.json's model_args would not rebuild the saved tensors."""
    with torch.device("meta"):
        rebuilt = build_raptor(config)
    _compare_state(rebuilt.state_dict(), state, source="the model being saved", strict=True,
                   hint="its model_args do not rebuild it (was it pruned or resized in place?)")


def build_raptor(config: RaptorConfig, **overrides: Any) -> RaptorMixin:
    """The (randomly initialised) Raptor a config.json describes, as its timm architecture builds it."""
    return raptor_from_model_args(dict(config.timm_model_args(), **overrides))


def _write_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def save_pretrained(
        model: nn.Module,
        save_directory: str | os.PathLike,
        *,
        teacher: str | None = None,
        teacher_revision: str | None = None,
        phases: Any = None,
        metrics: Mapping[str, Any] | None = None,
        training: Mapping[str, Any] | None = None,
        plots: Mapping[str, str | os.PathLike] | None = None,
        card: bool = True,
        overwrite_card: bool = False,
        repo_id: str | None = None,
        card_data: Mapping[str, Any] | None = None,
) -> Path:
    """Write a Raptor folder: model.safetensors, config.json, preprocessor_config.json, README.md (card), phases
    and plots.

    Args:
        model: a timm Raptor (or a transformers ``Raptor*`` model, saved through its ``.raptor``).
        save_directory: folder to write (created if needed).
        teacher, teacher_revision: teacher id and revision when ``model.raptor_meta`` lacks them.
        phases: the phase result the schedule came from (PhaseResult, dict or phases.json); written as phases.json
            plus phase_heatmap.png. Defaults to the one ``from_teacher`` recorded in ``model.raptor_meta``.
        metrics: measured numbers for the card (``raptor_zoo.cards.METRIC_FIELDS``); nothing else is claimed.
        training: how the weights were trained, for the card (config, data, steps, hardware, datasets ...).
        plots: extra PNGs to ship, ``{file name in the folder: source path}`` (e.g. ``{"fidelity.png": ...}``).
        card: write README.md. An existing card that a person edited is kept (with a warning) unless
            ``overwrite_card=True``; an unedited raptor_zoo card is regenerated.
        repo_id: Hub repo id the card's loading snippets name (default: the folder name).
        card_data: ``ModelCardData`` overrides (license, tags, datasets ...).

    Returns:
        The folder path.
    """
    core, _ = _core_and_config(model)
    config = raptor_config(model, teacher=teacher, teacher_revision=teacher_revision, phases=phases)
    state = _state_dict_for_save(core)
    _check_reloads(config, state)
    phase_dict = _phase_result(core, phases)
    plots = {str(name): Path(path) for name, path in (plots or {}).items()}
    for name, path in plots.items():
        if Path(name).name != name or not name.endswith(".png"):
            raise ValueError(f"plot name {name!r} must be a plain .png file name (it is written into the folder).")
        if not path.is_file():
            raise FileNotFoundError(f"plot {name!r}: {str(path)!r} does not exist.")
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save_directory {str(folder)!r} is a file; pass a folder.")
    files = [*plots, *([HEATMAP_NAME] if phase_dict is not None else [])]
    rendered = None
    if card:  # render first: bad metrics fail before anything is written
        rendered = cards.render_model_card(
            config, model_name=repo_id.split("/")[-1] if repo_id else folder.resolve().name, repo_id=repo_id,
            metrics=metrics, training=training, files=files,
            card_data=card_data)

    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(folder / WEIGHTS_NAME,
                  lambda path: safetensors.torch.save_file(state, str(path), metadata={"format": "pt"}))
    _write_atomic(folder / CONFIG_NAME, lambda path: config.to_json_file(path))
    _write_atomic(folder / PROCESSOR_NAME, image_processor(config).to_json_file)
    if phase_dict is not None:
        from .phases import PhaseResult

        (folder / PHASES_NAME).write_text(json.dumps(phase_dict, indent=2) + "\n", encoding="utf-8")
        PhaseResult.from_dict(phase_dict).plot(folder / HEATMAP_NAME)
    for name, path in plots.items():
        if path.resolve() != (folder / name).resolve():
            shutil.copyfile(path, folder / name)
    if rendered is not None:
        card_path = folder / CARD_NAME
        existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
        if existing is None or overwrite_card or cards.is_unedited_card(existing):
            card_path.write_text(str(rendered), encoding="utf-8")
        elif existing != str(rendered):
            warnings.warn(
                f"{card_path} was edited by hand and is kept; its numbers may describe earlier weights. "
                "Pass overwrite_card=True to regenerate it.", stacklevel=2)
    return folder


def read_config(folder: str | os.PathLike) -> RaptorConfig:
    """The ``RaptorConfig`` of a Raptor folder, with a clear error for anything else."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CONFIG_NAME}; a Raptor folder is written by "
                                "raptor_zoo.hub.save_pretrained(model, folder).")
    try:
        config_dict = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}).") from None
    if config_dict.get("model_type") != RaptorConfig.model_type or "model_args" not in config_dict:
        raise ValueError(
            f"{path} does not describe a Raptor (model_type {config_dict.get('model_type')!r}, "
            f"{'with' if 'model_args' in config_dict else 'without'} model_args); expected model_type 'raptor' "
            "and model_args as written by raptor_zoo.hub.save_pretrained. Teachers load with raptor_zoo.load_teacher.")
    return RaptorConfig.from_dict(config_dict)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Tensors of a ``model.safetensors`` (CPU); a truncated or corrupt file raises a ``ValueError``."""
    path = Path(path)
    if not path.is_file():
        pickles = [p.name for p in path.parent.glob("*.bin")] + [p.name for p in path.parent.glob("*.pth")]
        raise FileNotFoundError(
            f"{path} does not exist. raptor_zoo loads safetensors weights only"
            + (f" and never unpickles {pickles}" if pickles else "")
            + "; save the model with raptor_zoo.hub.save_pretrained.")
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except safetensors.SafetensorError as err:
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}): it is truncated or corrupt. Download it again "
            "(force_download=True for a Hub repo) or save the model again.") from err


def _compare_state(
        expected: Mapping[str, torch.Tensor],
        state: Mapping[str, torch.Tensor],
        *,
        source: str,
        strict: bool,
        hint: str,
) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [f"{key}: weights {tuple(state[key].shape)} vs model {tuple(expected[key].shape)}"
                  for key in expected if key in state and state[key].shape != expected[key].shape]

    def listed(items: Sequence[str]) -> str:
        return f"{len(items)} {items[:8]}" + (" ..." if len(items) > 8 else "")

    if mismatched or (strict and (missing or unexpected)):
        parts = [f"missing keys {listed(missing)}" if missing else "",
                 f"unexpected keys {listed(unexpected)}" if unexpected else "",
                 f"shape mismatches {listed(mismatched)}" if mismatched else ""]
        raise ValueError(
            f"The weights of {source} do not match the model built from its config.json: "
            + "; ".join(p for p in parts if p) + f". {hint}")
    if missing or unexpected:
        warnings.warn(f"Loading {source} non-strictly: missing keys {listed(missing)}, "
                      f"unexpected keys {listed(unexpected)}.", stacklevel=3)


def _download(
        repo_id: str,
        *,
        revision: str | None,
        token: str | bool | None,
        cache_dir: str | os.PathLike | None,
        entry: zoo.ZooEntry | None,
) -> Path:
    """config.json and model.safetensors of a Hub repo through huggingface_hub (cache, revision, token, offline)."""
    entry = entry or zoo.entry_for_repo_id(repo_id)
    build = (f"Build it locally with `{entry.recipe_command}` and load the output folder"
             if entry is not None else _BUILD_HINT)
    where = f"Hub repo {repo_id!r}" + (f" at revision {revision!r}" if revision else "")
    paths = []
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths.append(Path(hf_hub_download(
                repo_id, filename, revision=revision, token=token, cache_dir=cache_dir,
                library_name="raptor_zoo", library_version=_library_version())))
        except GatedRepoError as err:
            raise FileNotFoundError(f"The {where} is gated; accept its terms on the Hub and pass token=... "
                                    f"({type(err).__name__}).") from err
        except RepositoryNotFoundError as err:
            raise FileNotFoundError(
                f"The {where} was not found (or it is private: pass token=...). {build}.") from err
        except RevisionNotFoundError as err:
            raise FileNotFoundError(f"The {where} does not exist: no such revision. {build}.") from err
        except LocalEntryNotFoundError as err:
            raise FileNotFoundError(
                f"{filename} of the {where} is not in the local Hub cache and could not be downloaded "
                f"(offline: HF_HUB_OFFLINE={os.environ.get('HF_HUB_OFFLINE', 'unset')}, or no connection). "
                f"Connect once to cache it, or: {build}.") from err
        except EntryNotFoundError as err:
            raise FileNotFoundError(
                f"The {where} has no {filename}; raptor_zoo reads Raptor folders written by "
                f"raptor_zoo.hub.save_pretrained (safetensors only). {build}.") from err
    if paths[0].parent != paths[1].parent:
        raise FileNotFoundError(f"{CONFIG_NAME} and {WEIGHTS_NAME} of the {where} come from different snapshots "
                                f"({paths[0].parent}, {paths[1].parent}); pass an explicit revision.")
    try:  # the image processor, when the folder has one (older folders may not)
        hf_hub_download(repo_id, PROCESSOR_NAME, revision=revision, token=token, cache_dir=cache_dir,
                        library_name="raptor_zoo", library_version=_library_version())
    except (EntryNotFoundError, LocalEntryNotFoundError):
        pass
    return paths[0].parent


def resolve_folder(
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
) -> Path:
    """Local folder holding a Raptor: a folder as is, a zoo name through ``raptor_zoo.zoo``, a Hub repo id
    downloaded (or read from the cache) through huggingface_hub. Unpublished zoo names fail before any network call."""
    if isinstance(name_or_path, os.PathLike):
        name_or_path = os.fspath(name_or_path)
    if not isinstance(name_or_path, str) or not name_or_path:
        raise TypeError(f"Expected a zoo name, a folder or a Hub repo id, got {name_or_path!r}.")
    expanded = os.path.expanduser(name_or_path)
    if os.path.isdir(expanded):
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hub repos, not to the local folder {expanded!r}.")
        return Path(expanded)
    if zoo.is_zoo_name(name_or_path):
        entry = zoo.resolve(name_or_path)
        kind, location = zoo.locate(entry)
        if kind == "folder":
            if revision is not None:
                raise ValueError(f"{entry.name!r} ships inside raptor_zoo; revision={revision!r} does not apply.")
            return Path(location)
        return _download(str(location), revision=revision, token=token, cache_dir=cache_dir, entry=entry)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise FileNotFoundError(f"Folder {name_or_path!r} does not exist.")
    try:
        validate_repo_id(name_or_path)
    except HFValidationError as err:
        raise ValueError(f"{name_or_path!r} is not a zoo name, an existing folder or a Hub repo id ({err}).") from None
    if "/" not in name_or_path:
        raise ValueError(
            f"{name_or_path!r} is not a zoo name (raptor_zoo.list_models()), an existing folder or an org/name Hub "
            "repo id.")
    return _download(name_or_path, revision=revision, token=token, cache_dir=cache_dir, entry=None)


def _provenance(config: RaptorConfig) -> dict[str, Any]:
    meta = dict(config.raptor_meta or {})
    meta.update({key: getattr(config, key) for key in _PROVENANCE_KEYS if getattr(config, key) is not None})
    meta["block_schedule"] = list(config.block_schedule)
    return meta


def load_pretrained(
        name_or_path: str | os.PathLike,
        *,
        revision: str | None = None,
        token: str | bool | None = None,
        cache_dir: str | os.PathLike | None = None,
        strict: bool = True,
        **model_kwargs: Any,
) -> RaptorMixin:
    """A Raptor (timm model, eval mode) from a zoo name, a local folder or a Hub repo id.

    Args:
        name_or_path: ``"raptor-dinov2-k2"`` (zoo, :func:`raptor_zoo.list_models`), a folder written by
            :func:`save_pretrained`, or ``"org/name"`` (Hub; honours the cache, ``HF_HUB_OFFLINE`` and tokens).
        revision: Hub branch, tag or commit.
        token: Hub token for private or gated repos.
        cache_dir: Hub cache folder (default ``HF_HUB_CACHE``).
        strict: missing or unexpected keys raise (default); ``False`` warns and loads the matching tensors.
            Shape mismatches always raise.
        **model_kwargs: architecture overrides passed to ``timm.create_model`` on top of config.json's model_args
            (``num_classes`` / ``global_pool`` give a fresh head, ``img_size`` resamples the position embedding,
            ``drop_path_rate`` ...).
    """
    if "features_only" in model_kwargs:
        raise ValueError("features_only is timm's wrapper: use timm.create_model('local-dir:<folder>' or "
                         "'hf-hub:<repo id>', pretrained=True, features_only=True).")
    folder = resolve_folder(name_or_path, revision=revision, token=token, cache_dir=cache_dir)
    config = read_config(folder)
    architecture = config.architecture
    if not timm.is_model(architecture):
        raise ValueError(
            f"{folder / CONFIG_NAME} names the timm architecture {architecture!r}, which is not registered; "
            "`import raptor_zoo` registers the Raptor architectures (a newer raptor_zoo may be needed).")
    state = load_state_dict(folder / WEIGHTS_NAME)
    saved_args = config.timm_model_args()
    model = timm.create_model(
        architecture, pretrained=False, pretrained_cfg_overlay=dict(config.pretrained_cfg or {}),
        **dict(saved_args, **model_kwargs))
    state = checkpoint_filter_fn(state, model)
    expected = model.state_dict()
    head_changed = any(key in model_kwargs and model_kwargs[key] != saved_args.get(key)
                       for key in ("num_classes", "global_pool"))
    saved_head = {key: value.shape for key, value in state.items() if key.startswith("head.")}
    if head_changed and saved_head != {key: v.shape for key, v in expected.items() if key.startswith("head.")}:
        # a backbone (num_classes=0) or another head asked for: quiet; a head lost to a pooling change: loud
        if model.num_classes and model.num_classes == saved_args.get("num_classes"):
            warnings.warn(
                f"The classifier of {name_or_path!s} ({dict(saved_head)}) does not fit global_pool="
                f"{model.global_pool!r}: the head is newly initialised and needs training. Keep global_pool="
                f"{saved_args.get('global_pool')!r} to use the saved head.", stacklevel=2)
        state = {key: value for key, value in state.items() if not key.startswith("head.")}
        expected = {key: value for key, value in expected.items() if not key.startswith("head.")}
    _compare_state(expected, state, source=str(name_or_path), strict=strict,
                   hint="The folder was written for another architecture or is damaged: save it again with "
                        "raptor_zoo.hub.save_pretrained, or pass strict=False to load the matching tensors.")
    model.load_state_dict({key: value for key, value in state.items() if key in expected}, strict=False)
    model.raptor_meta = _provenance(config)
    model.image_processor = teacher_image_processor(folder)
    return model.eval()


def teacher_image_processor(folder: Path) -> Any:
    """The teacher's own transformers image processor a folder carries (a Raptor of a transformers teacher is saved
    with it, so pipelines prepare images exactly as the teacher's did), or None."""
    path = folder / PROCESSOR_NAME
    if not path.is_file():
        return None
    return RaptorImageProcessor.from_json_file(path).teacher()


def _check_folder(folder: Path) -> dict[str, Any]:
    """Validate a folder before upload; return its files and card metadata."""
    config = read_config(folder)
    with safetensors.safe_open(str(folder / WEIGHTS_NAME), framework="pt") as weights:
        keys = list(weights.keys())
    if not keys:
        raise ValueError(f"{folder / WEIGHTS_NAME} holds no tensors.")
    card_meta = None
    if (folder / CARD_NAME).is_file():
        card_meta = cards.validate_card(folder / CARD_NAME).data.to_dict()
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*")
                   if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return dict(config=config, files=files, card=card_meta)


def push_to_hub(
        model_or_folder: nn.Module | str | os.PathLike,
        repo_id: str,
        *,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload Raptor with raptor_zoo",
        revision: str | None = None,
        create_pr: bool = False,
        **save_kwargs: Any,
) -> str:
    """Upload a Raptor to the Hub in one commit; returns the commit (or pull request) URL.

    ``model_or_folder`` is a model (saved with :func:`save_pretrained` into a temporary folder, ``save_kwargs``
    passed on, card snippets naming ``repo_id``) or a folder written by it (validated: config, weights, card).
    The folder is uploaded as it is: its README.md replaces the repo's card. ``revision`` names a branch
    (created if absent).
    """
    validate_repo_id(repo_id)
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model_or_folder, nn.Module):
            folder = save_pretrained(model_or_folder, tmp, repo_id=repo_id, **save_kwargs)
        else:
            if save_kwargs:
                raise TypeError(f"{sorted(save_kwargs)} apply when pushing a model, not a folder.")
            folder = Path(model_or_folder)
            if not folder.is_dir():
                raise FileNotFoundError(f"{str(folder)!r} is not a folder.")
        _check_folder(folder)
        api = HfApi(token=token, library_name="raptor_zoo", library_version=_library_version())
        repo_id = api.create_repo(repo_id, private=private, exist_ok=True).repo_id
        if revision is not None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision,
            create_pr=create_pr, ignore_patterns=[".*", "**/.*"])
    return info.pr_url if create_pr and info.pr_url else info.commit_url
