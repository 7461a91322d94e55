"""The registry of transformers converters and what they share: the :class:`HfConverter` record, dispatch on
``config.model_type``, sizes, activations, the vision encoder of a model, and the timm architecture that rebuilds a
converted teacher from its transformers config. The families' converters (vit.py, clip.py, siglip2.py, beit.py,
dinov3.py) register here; ``raptor_zoo.hf_convert`` imports them all.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.models import register_model
from torch import nn

from ..models.families import native_img_size, pair

__all__ = [
    "HfConverter",
    "HF_CONVERTERS",
    "register_hf_converter",
    "hf_converter",
    "hf_model_type",
    "is_hf_teacher",
    "convert_hf_model",
    "hf_hidden_states",
    "vision_encoder",
    "hf_base_model",
    "hf_activation",
    "describe_for_timm",
    "hf_model_class",
    "transformers_vision_encoder",
    "check_model_type",
    "attention_sizes",
    "timm_mlp_ratio",
    "processor_data_config",
]

TIMM_ARCH = "transformers_vision_encoder"
"""timm architecture that rebuilds a converted teacher from its transformers config (config.json of its Raptors)."""


@dataclass(frozen=True)
class HfConverter:
    """How models of some transformers ``model_type`` s become timm models with identical numerics."""

    model_types: tuple[str, ...]
    """``config.model_type`` values converted (a parent model such as ``clip`` converts its vision tower)."""
    convert: Callable[[nn.Module], nn.Module]
    """transformers model (base, ``*ForImageClassification`` or parent) -> timm model, eval, same device/dtype."""
    data_config: Callable[[Any, tuple[int, int]], dict[str, Any]]
    """(vision config, run size) -> timm ``data_config``: the family's image-processor defaults, used when the
    folder or repo has no ``preprocessor_config.json``."""
    set_run_size: Callable[[nn.Module, tuple[int, int]], None] | None = None
    """Make a converted model run at another size as transformers does (position grid resampled once);
    None: the model runs at its config's ``image_size`` only."""
    default_run_size: Callable[[tuple[int, int]], tuple[int, int]] | None = None
    """The size a teacher runs at when none is asked for, from the config's size (None: that size)."""
    hidden_states: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, ...]] | None = None
    """(model, normalised images [B, C, H, W]) -> transformers' own ``hidden_states`` for them, where the model
    takes other inputs than ``pixel_values`` (e.g. patchified NaFlex input) or must be told not to mask;
    None: the vision encoder called with ``pixel_values`` and ``output_hidden_states=True``."""


HF_CONVERTERS: dict[str, HfConverter] = {}
"""transformers ``model_type`` -> its converter."""


def check_model_type(config: Any, supported: Sequence[str], target: str) -> str:
    """``config.model_type`` when it is one of ``supported`` (those a converter to ``target`` handles), else a
    ValueError naming them."""
    model_type = getattr(config, "model_type", None)
    if model_type not in supported:
        raise ValueError(
            f"Cannot convert a transformers model of type {model_type!r} ({type(config).__name__}) to {target}; "
            f"supported model_type values: {', '.join(supported)}."
        )
    return model_type


def attention_sizes(config: Any, target: str, head_dim_multiple: int = 1) -> tuple[int, int]:
    """(hidden_size, num_attention_heads) of a config whose heads split the width evenly (an explicit ``head_dim``
    must agree), into head dims a multiple of ``head_dim_multiple`` (RoPE's 4); else a ValueError naming ``target``."""
    embed_dim, num_heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None)
    if embed_dim % num_heads or head_dim not in (None, embed_dim // num_heads) or \
            (embed_dim // num_heads) % head_dim_multiple:
        multiple = f", a multiple of {head_dim_multiple}" if head_dim_multiple > 1 else ""
        raise ValueError(
            f"{target} needs head_dim = hidden_size / num_attention_heads{multiple}; the config has "
            f"hidden_size={embed_dim}, num_attention_heads={num_heads}, head_dim={head_dim}."
        )
    return embed_dim, num_heads


def timm_mlp_ratio(embed_dim: int, mlp_hidden: int) -> float:
    """The ``mlp_ratio`` for which timm's ``int(embed_dim * mlp_ratio)`` gives exactly ``mlp_hidden``."""
    mlp_ratio = mlp_hidden / embed_dim
    if int(embed_dim * mlp_ratio) != mlp_hidden:  # float round-off
        mlp_ratio = (mlp_hidden + 0.5) / embed_dim
    return mlp_ratio


def processor_data_config(
        in_chans: int,
        img_size: tuple[int, int],
        interpolation: str,
        mean: Sequence[float],
        std: Sequence[float],
        crop_pct: float = 1.0,
        crop_mode: str = "squash",
) -> dict[str, Any]:
    """A timm ``data_config`` reproducing an image processor: resize (``crop_mode='squash'``: straight to the run
    size; ``'center'``: to run size / ``crop_pct``, then a centre crop), then normalise."""
    return {
        "input_size": (in_chans, *img_size),
        "interpolation": interpolation,
        "mean": tuple(mean),
        "std": tuple(std),
        "crop_pct": crop_pct,
        "crop_mode": crop_mode,
    }


def register_hf_converter(converter: HfConverter) -> HfConverter:
    """Add ``converter`` under each of its model types."""
    for model_type in converter.model_types:
        HF_CONVERTERS[model_type] = converter
    return converter


def hf_model_type(module: Any) -> str | None:
    """``config.model_type`` of a transformers module or config (None for anything else)."""
    config = getattr(module, "config", module)
    model_type = getattr(config, "model_type", None)
    return model_type if isinstance(model_type, str) else None


def hf_converter(model_type: str | None) -> HfConverter:
    """The converter of ``model_type``; ValueError naming the supported types otherwise."""
    if model_type not in HF_CONVERTERS:
        raise ValueError(
            f"transformers model_type {model_type!r} has no converter; supported: {', '.join(sorted(HF_CONVERTERS))}."
        )
    return HF_CONVERTERS[model_type]


def is_hf_teacher(module: Any) -> bool:
    """Whether ``module`` is a transformers model of a type raptor_zoo converts."""
    return isinstance(module, nn.Module) and hf_model_type(module) in HF_CONVERTERS


def hf_base_model(hf_model: nn.Module) -> nn.Module:
    """The encoder of a transformers model: itself or its ``base_model`` (``*ForImageClassification``)."""
    base = getattr(hf_model, "base_model", hf_model)
    return base if isinstance(base, nn.Module) else hf_model


# transformers `hidden_act` -> timm activation name computing the same function
HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


def hf_activation(hidden_act: Any) -> str:
    """The timm activation name computing transformers' ``hidden_act``; ValueError where there is none."""
    if hidden_act not in HF_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={hidden_act!r} has no exact timm equivalent; supported: {', '.join(HF_ACTIVATIONS)}."
        )
    return HF_ACTIVATIONS[hidden_act]


def vision_encoder(hf_model: nn.Module) -> nn.Module:
    """The module whose ``hidden_states`` a converted teacher reproduces: a parent model's ``vision_model`` (CLIP,
    SigLIP, AIMv2), else the base model of a task wrapper, else the model itself."""
    base = hf_base_model(hf_model)
    if not hasattr(base, "embeddings") and hasattr(hf_model, "embeddings"):  # DINOv3ViTModel.base_model: its layers
        base = hf_model
    return getattr(base, "vision_model", base)


@torch.no_grad()
def hf_hidden_states(hf_model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """transformers' own per-layer states of ``hf_model``'s vision encoder for normalised images, stacked
    ``[B, L + 1, N, D]``: what a converted teacher's ``trajectory(images)`` must equal."""
    converter = hf_converter(hf_model_type(hf_model))
    if converter.hidden_states is not None:
        states = converter.hidden_states(hf_model, images)
    else:
        states = vision_encoder(hf_model)(pixel_values=images, output_hidden_states=True).hidden_states
    return torch.stack(tuple(states), dim=1)


def convert_hf_model(hf_model: nn.Module) -> nn.Module:
    """A timm model computing exactly what ``hf_model``'s vision encoder computes (see each family's module)."""
    return hf_converter(hf_model_type(hf_model)).convert(hf_model)


def hf_model_class(config: Any) -> Any:
    """The transformers class a config was saved from (``architectures[0]``, e.g. ``CLIPVisionModelWithProjection``,
    ``DeiTForImageClassificationWithTeacher``) when transformers has it, else ``AutoModel``."""
    import transformers

    architectures = getattr(config, "architectures", None) or []
    model_cls = getattr(transformers, architectures[0], None) if architectures else None
    if isinstance(model_cls, type) and issubclass(model_cls, transformers.PreTrainedModel):
        return model_cls
    return transformers.AutoModel


def describe_for_timm(model: nn.Module, hf_model: nn.Module) -> None:
    """Record on a converted ``model`` how timm rebuilds it: architecture :data:`TIMM_ARCH` with the transformers
    config as ``hf_config``, so a Raptor of this teacher saves a config.json that timm and raptor_zoo reload."""
    config = hf_model.config.to_dict()
    config.pop("_name_or_path", None)
    pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, architecture=TIMM_ARCH)
    id2label = getattr(hf_model.config, "id2label", None) or {}
    label_names = [id2label[i] for i in sorted(id2label)]
    if getattr(model, "num_classes", 0) == len(label_names) and label_names != [f"LABEL_{i}" for i in
                                                                                range(len(label_names))]:
        pretrained_cfg["label_names"] = tuple(label_names)  # the classifier's class names reach the Raptor's card
    model.pretrained_cfg = pretrained_cfg
    model.raptor_teacher_args = {"hf_config": config}


@register_model
def transformers_vision_encoder(
        pretrained: bool = False,
        *,
        hf_config: dict[str, Any],
        img_size: Any = None,
        num_classes: int | None = None,
        global_pool: str | None = None,
        **kwargs: Any,
) -> nn.Module:
    """The timm model a transformers config converts into, random init: the teacher architecture of Raptors of
    transformers teachers (weights come from the Raptor's checkpoint). ``img_size`` runs it at another size as
    ``load_teacher`` did; ``num_classes`` / ``global_pool`` reset its classifier."""
    if pretrained:
        raise ValueError(f"{TIMM_ARCH} has no pretrained weights of its own; load the teacher with load_teacher().")
    import transformers

    hf_config = dict(hf_config)
    config = transformers.AutoConfig.for_model(hf_config.pop("model_type"), **hf_config)
    model_cls = hf_model_class(config)
    hf_model = model_cls.from_config(config) if model_cls is transformers.AutoModel else model_cls._from_config(config)
    converter = hf_converter(config.model_type)
    model = converter.convert(hf_model.eval())
    if img_size is not None:
        size = pair(img_size)
        if size != native_img_size(model):
            if converter.set_run_size is None:
                raise ValueError(f"A converted {config.model_type} model runs at its config's image_size only.")
            converter.set_run_size(model, size)
    if num_classes is not None or global_pool is not None:
        model.reset_classifier(model.num_classes if num_classes is None else num_classes, global_pool)
    describe_for_timm(model, hf_model)
    return model
