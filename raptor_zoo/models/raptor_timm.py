""" Every Raptor, built one way: the family Raptor classes, `create_raptor`, and the registered architectures

A Raptor is described by its teacher's architecture (config.json's model_args): `teacher_arch` (a timm model name,
or the name of a supported timm model class such as 'VisionTransformer'), `teacher_args` (the arguments it is built
with), `block_schedule`, `unique_layers` (the teacher layer each shared block was built from, so per-layer
settings such as SAM's global-attention layers carry over), and the Raptor's own options (t_scale, drop_path_rate,
relax_rank / relax_targets, block_type 'swiglu', global_pool 'cls_avg'). `create_raptor` builds every Raptor from
that description: the teacher architecture at depth L, converted by `raptor_base.raptorize`. Folders saved with the
flat schema of earlier versions (RaptorVisionTransformer's own arguments) are converted on load
(`raptor_vit.convert_vit_args`), as timm converts checkpoints.

One Raptor class per timm family (`RaptorVisionTransformer` in raptor_vit.py, `RaptorEva`, `RaptorBeit`, ...): the
family's own model class with the Raptor surface of `RaptorMixin`. The registered architectures (one table,
`archs.REGISTERED_RAPTOR_ARCHS`) and the generic `raptor_vit` / `raptor_timm` (every argument from model_args) are
registered with timm at the bottom, through one entrypoint factory.
"""
import copy
import json
from collections.abc import Sequence
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.beit import Beit
from timm.models.cait import Cait
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.naflexvit import NaFlexVit
from timm.models.vision_transformer_relpos import VisionTransformerRelPos
from timm.models.vision_transformer_sam import VisionTransformerSAM
from timm.models.xcit import Xcit

from .archs import RAPTOR_TIMM_ARCHS, REGISTERED_RAPTOR_ARCHS
from .families import family_of, relax_layers
from .raptor_base import BlockType, InitMode, RaptorMixin, check_relax_args, raptor_class, raptorize
from .raptor_vit import (
    SWIGLU_BLOCK_ARGS,
    RaptorVisionTransformer,
    checkpoint_filter_fn,
    convert_vit_args,
    split_layer_args,
    vit_args_from_model,
)
from .recurrent import RELAX_TARGETS
from .schedule import middle_layers, validate_block_schedule

__all__ = [
    "RaptorEva", "RaptorBeit", "RaptorVisionTransformerRelPos", "RaptorVisionTransformerSAM", "RaptorNaFlexVit",
    "RaptorXcit", "RaptorCait", "RaptorVisionTransformerDistilled", "raptor_class", "create_raptor",
    "raptor_from_model_args", "build_teacher_model", "raptor_of_teacher_model", "describe_teacher", "middle_layers",
    "RAPTOR_OVERRIDES", "REGISTERED_RAPTOR_ARCHS", "RAPTOR_TIMM_ARCHS",
]


class RaptorEva(RaptorMixin, Eva):
    """Raptor of timm's Eva: EVA-02, EVA-CLIP, DINOv3 and Perception Encoder teachers (RoPE passed per step)."""


class RaptorBeit(RaptorMixin, Beit):
    """Raptor of timm's Beit (relative-position bias per block or shared)."""


class RaptorVisionTransformerRelPos(RaptorMixin, VisionTransformerRelPos):
    """Raptor of timm's ViT with relative-position attention."""


class RaptorVisionTransformerSAM(RaptorMixin, VisionTransformerSAM):
    """Raptor of timm's SAM image encoder (windowed / global attention kept per shared block)."""


class RaptorNaFlexVit(RaptorMixin, NaFlexVit):
    """Raptor of timm's NaFlexVit (SigLIP NaFlex)."""


class RaptorXcit(RaptorMixin, Xcit):
    """Raptor of timm's XCiT: the XCA stack is recurrent, the class-attention blocks stay with the head."""


class RaptorCait(RaptorMixin, Cait):
    """Raptor of timm's CaiT: the self-attention stack is recurrent, the class-attention blocks stay with the head."""


class RaptorVisionTransformerDistilled(RaptorMixin, VisionTransformerDistilled):
    """Raptor of timm's distilled DeiT (class and distillation tokens)."""


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _teacher_class(name: str) -> type | None:
    """The timm model class a ``teacher_arch`` class name means ('VisionTransformer', 'Eva', ...), or None."""
    return next((cls for cls in RaptorMixin._raptor_classes if cls.__name__ == name and cls.__module__.startswith(
        "timm.")), None)


def create_raptor(
        teacher_arch: str,
        block_schedule: Sequence[int],
        teacher_args: dict[str, Any] | None = None,
        unique_layers: Sequence[int] | None = None,
        t_scale: bool = True,
        drop_path_rate: float = 0.,
        relax_rank: int = 0,
        relax_targets: Sequence[str] = RELAX_TARGETS,
        block_type: BlockType = "teacher",
        global_pool: str | None = None,
        **teacher_kwargs: Any,
) -> RaptorMixin:
    """A (randomly initialised) Raptor of the teacher architecture ``teacher_arch``: the one construction path.

    The teacher is built at depth L = sum(block_schedule) with ``teacher_args`` (any other keyword, e.g. num_classes
    / img_size from timm's builder, joins them) and converted: layer ``unique_layers[j]`` (default: the middle layer
    of phase j) becomes shared block j. ``block_type='swiglu'`` builds a ViT teacher's blocks as the paper's SwiGLU
    blocks; ``global_pool='cls_avg'`` sets RaptorVisionTransformer's cls + mean-patch head.
    """
    teacher_args = {key: value for key, value in dict(teacher_args or {}, **teacher_kwargs).items()
                    if key not in ("pretrained_cfg", "pretrained_cfg_overlay")}
    schedule = validate_block_schedule(block_schedule)
    relax_targets = check_relax_args(relax_rank, relax_targets)
    if block_type not in ("teacher", "swiglu"):
        raise ValueError(f"block_type must be 'teacher' or 'swiglu', got {block_type!r}.")
    unique_layers = list(unique_layers) if unique_layers is not None else middle_layers(schedule)
    options = dict(unique_layers=unique_layers, t_scale=t_scale, drop_path_rate=drop_path_rate, relax_rank=relax_rank,
                   relax_targets=relax_targets)
    teacher_class = _teacher_class(teacher_arch)
    if teacher_class is not None:
        cls = raptor_class(teacher_class)
        vit_options = dict(block_type=block_type) if issubclass(cls, RaptorVisionTransformer) else {}
        if block_type != "teacher" and not vit_options:
            raise ValueError(f"block_type={block_type!r} needs a VisionTransformer teacher; {teacher_arch} Raptors use "
                             "the teacher's own block (block_type='teacher').")
        model = cls(block_schedule=schedule, **options, **vit_options, **teacher_args)
    elif timm.is_model(teacher_arch):
        swiglu = SWIGLU_BLOCK_ARGS if block_type == "swiglu" else {}
        depth = dict(depth=sum(schedule)) if "depth" not in teacher_args else {}  # the schedule's, when not given
        model = raptorize(timm.create_model(teacher_arch, pretrained=False, **teacher_args, **depth, **swiglu),
                          schedule, **options)
        if block_type == "swiglu" and not isinstance(model, RaptorVisionTransformer):
            raise ValueError(f"block_type='swiglu' needs a VisionTransformer teacher; {teacher_arch} Raptors use the "
                             "teacher's own block (block_type='teacher').")
        model.block_type = block_type
    else:
        raise ValueError(f"Unknown timm teacher architecture {teacher_arch!r}; see timm.list_models() (or name a timm "
                         "model class such as VisionTransformer).")
    if global_pool is not None:
        model.reset_classifier(model.num_classes, global_pool)
    model_args: dict[str, Any] = dict(
        teacher_arch=teacher_arch, teacher_args=_json_value(teacher_args), block_schedule=list(schedule),
        unique_layers=unique_layers, t_scale=t_scale, drop_path_rate=drop_path_rate)
    if block_type != "teacher":
        model_args["block_type"] = block_type
    if global_pool is not None:
        model_args["global_pool"] = global_pool
    if relax_rank:
        model_args.update(relax_rank=relax_rank, relax_targets=list(relax_targets))
    model.model_args = model_args
    return model


def build_teacher_model(model_args: dict[str, Any]) -> nn.Module:
    """The (randomly initialised) teacher architecture a Raptor's model_args describe, at its depth L: what its FLOPs
    and parameters are compared with."""
    model_args = convert_vit_args(model_args)
    teacher_args = dict(model_args.get("teacher_args") or {})
    for key in ("num_classes", "img_size"):
        if key in model_args:
            teacher_args[key] = model_args[key]
    depth = sum(model_args["block_schedule"])
    teacher_class = _teacher_class(model_args["teacher_arch"])
    if teacher_class is None:
        return timm.create_model(model_args["teacher_arch"], pretrained=False, **teacher_args)
    if issubclass(raptor_class(teacher_class), RaptorVisionTransformer):
        teacher_args = split_layer_args(teacher_args)[0]
    return teacher_class(depth=depth, **teacher_args)


def raptor_from_model_args(model_args: dict[str, Any]) -> RaptorMixin:
    """The Raptor a model_args dict describes (config.json; the flat schema of earlier folders converted first)."""
    return create_raptor(**convert_vit_args(model_args))


# what from_teacher may change of the teacher's architecture: everything else is the teacher's
RAPTOR_OVERRIDES = ("num_classes", "global_pool", "t_scale", "drop_path_rate")
_PLAIN_VIT_CLASSES = ("VisionTransformer", "ClsAvgVisionTransformer", "RaptorVisionTransformer")


def describe_teacher(teacher_model: nn.Module) -> tuple[str, dict[str, Any]] | None:
    """(teacher_arch, teacher_args) that rebuild a teacher module's architecture (its tensors, checked on the meta
    device), or None: the timm architecture it was created as (``pretrained_cfg['architecture']`` and the arguments
    ``load_teacher`` recorded), else for a plain timm VisionTransformer the arguments read off it."""
    descriptions = []
    arch = (getattr(teacher_model, "pretrained_cfg", None) or {}).get("architecture")
    if arch and timm.is_model(arch):
        teacher_args = dict(getattr(teacher_model, "raptor_teacher_args", None) or {})
        img_size = getattr(getattr(teacher_model, "patch_embed", None), "img_size", None)
        if img_size is not None:
            teacher_args.setdefault("img_size", list(img_size))
        descriptions.append((arch, _json_value(teacher_args)))
    if type(teacher_model).__name__ in _PLAIN_VIT_CLASSES:
        try:
            args = vit_args_from_model(teacher_model)
        except TypeError:
            args = None
        if args is not None:
            with torch.device("meta"):
                rebuilt = RaptorVisionTransformer(block_schedule=(len(teacher_model.blocks),), **args)
            descriptions.append(("VisionTransformer", rebuilt.model_args["teacher_args"]))
    expected = {key: tuple(value.shape) for key, value in teacher_model.state_dict().items()}
    for teacher_arch, teacher_args in descriptions:
        model_args = dict(teacher_arch=teacher_arch, teacher_args=teacher_args,
                          block_schedule=[len(teacher_model.blocks)])
        try:
            with torch.device("meta"):
                rebuilt = build_teacher_model(model_args)
        except (TypeError, ValueError, RuntimeError):
            continue
        if {key: tuple(value.shape) for key, value in rebuilt.state_dict().items()} == expected:
            return teacher_arch, teacher_args
    return None


def _rebuilds(raptor: nn.Module, model_args: dict[str, Any]) -> bool:
    """Whether create_raptor(**model_args) gives the same tensors (names and shapes), checked on the meta device."""
    try:
        with torch.device("meta"):
            rebuilt = create_raptor(**model_args)
    except (TypeError, ValueError, RuntimeError):
        return False
    expected = {k: tuple(v.shape) for k, v in raptor.state_dict().items()}
    return expected == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}


@torch.no_grad()
def _reset_block(block: nn.Module) -> None:
    """Random init of a shared block ('random' init): every submodule with reset_parameters is reset."""
    for module in block.modules():
        if module is not block and hasattr(module, "reset_parameters"):
            module.reset_parameters()


def raptor_of_teacher_model(
        teacher_model: nn.Module,
        block_schedule: Sequence[int],
        block_type: BlockType = "teacher",
        init: InitMode = "middle",
        relax_rank: int = 0,
        relax_targets: Sequence[str] = RELAX_TARGETS,
        **overrides: Any,
) -> RaptorMixin:
    """A Raptor initialised from a teacher module (a timm ViT of a supported family): its architecture and weights,
    the block stack replaced by the k shared blocks on ``block_schedule``, block j initialised from the teacher
    layers of phase j (``init``: 'middle', 'first', 'mean', 'random'). ``overrides`` change the head or the Raptor's
    options (:data:`RAPTOR_OVERRIDES`). Its ``model_args`` describe it (None when the teacher's architecture cannot
    be named: the Raptor works, and saving it says why)."""
    unknown = sorted(set(overrides) - set(RAPTOR_OVERRIDES))
    if unknown:
        raise ValueError(f"{unknown} cannot be overridden for a {type(teacher_model).__name__} teacher; its Raptor keeps "
                         f"the teacher's architecture (overridable: {list(RAPTOR_OVERRIDES)}).")
    if family_of(teacher_model) is None:
        raise TypeError(f"{type(teacher_model).__name__} is not a supported timm ViT family (see docs/teachers.md).")
    schedule = validate_block_schedule(block_schedule, len(teacher_model.blocks))
    relax_targets = check_relax_args(relax_rank, relax_targets)
    unique_layers = middle_layers(schedule, "first" if init == "first" else "middle")
    t_scale, drop_path_rate = overrides.get("t_scale", True), overrides.get("drop_path_rate", 0.)
    global_pool = overrides.get("global_pool")
    description = describe_teacher(teacher_model)
    model_args = None
    if description is not None:
        teacher_arch, teacher_args = description
        teacher_args["num_classes"] = overrides.get("num_classes", teacher_model.num_classes)
        if global_pool is not None and global_pool != "cls_avg":
            teacher_args["global_pool"] = global_pool
        model_args = dict(teacher_arch=teacher_arch, teacher_args=teacher_args, block_schedule=list(schedule),
                          unique_layers=unique_layers, t_scale=t_scale, drop_path_rate=drop_path_rate)
        if block_type != "teacher":
            model_args["block_type"] = block_type
        if global_pool == "cls_avg" or (global_pool is None and getattr(teacher_model, "global_pool", None) == "cls_avg"):
            model_args["global_pool"] = "cls_avg"
            teacher_args["global_pool"] = "token"
        if relax_rank:
            model_args.update(relax_rank=relax_rank, relax_targets=list(relax_targets))
    if block_type != "teacher":  # other blocks than the teacher's: built fresh, the rest of the teacher copied
        if model_args is None:
            raise ValueError(f"block_type={block_type!r} needs a teacher whose architecture can be named; a "
                             f"{type(teacher_model).__name__} teacher's Raptor uses its own block type.")
        model = create_raptor(**model_args)
        _copy_stem_and_head(model, teacher_model)
    else:
        model = copy.deepcopy(teacher_model).train().requires_grad_(True)
        if "num_classes" in overrides or global_pool is not None:
            model.reset_classifier(overrides.get("num_classes", model.num_classes), global_pool)
        model = raptorize(model, schedule, unique_layers, t_scale=t_scale, drop_path_rate=drop_path_rate,
                          relax_rank=relax_rank, relax_targets=relax_targets)
        model.block_type = "teacher"
        model.model_args = model_args if model_args is not None and _rebuilds(model, model_args) else None
    if block_type != "teacher":
        return model
    if init == "random":
        for block in model.unique_blocks:
            _reset_block(block)
    else:
        for j, (start, stop) in enumerate(zip(model.phase_boundaries[:-1], model.phase_boundaries[1:])):
            model._init_block_from_layers(j, [teacher_model.blocks[i] for i in range(start, stop)], init)
    return model


def _copy_stem_and_head(model: RaptorMixin, teacher_model: nn.Module) -> None:
    """Copy every non-block tensor (embedding, registers, norms, head) of the teacher into a fresh Raptor, strictly:
    only a head resized by a num_classes override stays fresh."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(("blocks.", "relax."))}
    keep = {k: v for k, v in teacher_model.state_dict().items() if k in own and v.shape == own[k].shape}
    missing = sorted(k for k in set(own) - set(keep) if not k.startswith("head."))
    if missing:
        raise RuntimeError(f"the teacher lacks tensors the Raptor needs: {missing}")
    model.load_state_dict(keep, strict=False)


def check_relax_rank_fits(teacher_block: nn.Module, relax_rank: int, relax_targets: Sequence[str]) -> None:
    """Raise when ``relax_rank`` exceeds the full rank of a teacher layer the adapters relax (no SVD init then)."""
    for target, path in relax_layers(teacher_block, relax_targets).items():
        full_rank = min(teacher_block.get_submodule(path).weight.shape)
        if relax_rank > full_rank:
            raise ValueError(f"relax_rank={relax_rank} exceeds the full rank {full_rank} of the teacher's {target} "
                             f"layer; use relax_rank <= {full_rank} or relax_init='zeros'.")


# ---------------------------------------------------------------------------------------------- registry

def _cfg(url: str = "", **kwargs: Any) -> dict[str, Any]:
    return {
        "url": url,
        "num_classes": 0, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head",
        "license": "apache-2.0",
        "paper_ids": "arXiv:2512.19941", "paper_name": "Block-Recurrent Dynamics in Vision Transformers",
        **kwargs,
    }


def _teacher_cfg(spec: dict[str, Any]) -> dict[str, Any]:
    """The data settings of the teacher's default pretrained cfg (input size, mean / std, interpolation, crop); a
    teacher the table builds at another size (DINOv2 at 224) keeps the generic ones."""
    cfg = timm.models.get_pretrained_cfg(spec["teacher"])
    if cfg is None or "img_size" in spec["teacher_args"]:
        return {}
    keys = ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode", "fixed_input_size")
    return {key: getattr(cfg, key) for key in keys if getattr(cfg, key, None) is not None}


default_cfgs = generate_default_cfgs({
    **{
        arch: _cfg(**_teacher_cfg(spec), notes=(
            f"teacher: {spec['teacher']}",
            f"block_schedule: {spec['block_schedule']}",
            f"schedule_source: {spec['schedule_source']}",
        ) + ((f"relax_rank: {spec['relax_rank']}",) if spec.get("relax_rank") else ()))
        for arch, spec in REGISTERED_RAPTOR_ARCHS.items()
    },
    # generic: the teacher architecture and schedule come from model_args (raptor_vit: the name earlier folders
    # of plain ViT Raptors carry)
    "raptor_timm": _cfg(),
    "raptor_vit": _cfg(),
})


def _create_raptor(variant: str, pretrained: bool = False, **kwargs: Any) -> RaptorMixin:
    """The one entrypoint factory: timm's builder (pretrained cfg, weights, features) over raptor_from_model_args."""
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        lambda **model_args: raptor_from_model_args(model_args),
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_model
def raptor_timm(pretrained: bool = False, **kwargs: Any) -> RaptorMixin:
    """Raptor of any supported timm ViT: teacher_arch, teacher_args, block_schedule, ... from kwargs (config.json)."""
    return _create_raptor("raptor_timm", pretrained=pretrained, **kwargs)


@register_model
def raptor_vit(pretrained: bool = False, **kwargs: Any) -> RaptorMixin:
    """Raptor of a timm ViT, every argument from kwargs (config.json): the generic name of earlier plain-ViT folders."""
    return _create_raptor("raptor_vit", pretrained=pretrained, **kwargs)


# keys every flat-schema model_args saved before the one construction path holds
_FLAT_SCHEMA_KEYS = {"block_schedule", "block_type", "t_scale", "embed_dim"}


def _make_entrypoint(arch: str, spec: dict[str, Any]) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> RaptorMixin:
        # config.json of a saved folder describes the model completely (its teacher; or, written before the one
        # construction path, RaptorVisionTransformer's own arguments); otherwise kwargs override the arch's teacher
        if "teacher_arch" not in kwargs and not _FLAT_SCHEMA_KEYS <= set(kwargs):
            model_args = dict(teacher_arch=spec["teacher"], teacher_args=spec["teacher_args"],
                              block_schedule=spec["block_schedule"])
            if "block_schedule" not in kwargs:  # another schedule takes the middle layers of its own phases
                model_args["unique_layers"] = spec["unique_layers"]
            if spec.get("relax_rank"):
                model_args["relax_rank"] = spec["relax_rank"]
            kwargs = dict(model_args, **kwargs)
        return _create_raptor(arch, pretrained=pretrained, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__module__ = __name__
    relax_rank = spec.get("relax_rank", 0)
    entrypoint.__doc__ = (
        f"Raptor of {spec['teacher']}, k={spec['k']} blocks on schedule {spec['block_schedule']} "
        f"({spec['schedule_source']} phases)" + (f", rank-{relax_rank} per-step adapters." if relax_rank else "."))
    globals()[arch] = register_model(entrypoint)


for _arch, _spec in REGISTERED_RAPTOR_ARCHS.items():
    _make_entrypoint(_arch, _spec)
