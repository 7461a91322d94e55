"""transformers vision encoders as timm models computing exactly the same thing: one converter per family.

Each module here holds one family (``vit.py``: ViT, DeiT, DINOv2, MAE, MSN, I-JEPA; ``clip.py``: CLIP, SigLIP,
AIMv2; ``beit.py``: BEiT, Data2Vec-vision; ``dinov3.py``: DINOv3) and registers an :class:`HfConverter` per
transformers ``model_type`` in :data:`HF_CONVERTERS`. :func:`convert_hf_model` dispatches on the model's
``config.model_type``; ``raptor_zoo.load_teacher`` uses it for modules, folders and Hub repo ids, so a
transformers teacher becomes a timm model of a family the Raptors already cover (``models/families.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

from torch import nn

__all__ = [
    "HfConverter",
    "HF_CONVERTERS",
    "register_hf_converter",
    "hf_converter",
    "hf_model_type",
    "is_hf_teacher",
    "convert_hf_model",
    "hf_base_model",
    "hf_activation",
]


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
    set_run_size: Optional[Callable[[nn.Module, tuple[int, int]], None]] = None
    """Make a converted model run at another size as transformers does (position grid resampled once);
    None: the model runs at its config's ``image_size`` only."""
    default_run_size: Optional[Callable[[tuple[int, int]], tuple[int, int]]] = None
    """The size a teacher runs at when none is asked for, from the config's size (None: that size)."""


HF_CONVERTERS: dict[str, HfConverter] = {}
"""transformers ``model_type`` -> its converter."""


def register_hf_converter(converter: HfConverter) -> HfConverter:
    """Add ``converter`` under each of its model types."""
    for model_type in converter.model_types:
        HF_CONVERTERS[model_type] = converter
    return converter


def hf_model_type(module: Any) -> Optional[str]:
    """``config.model_type`` of a transformers module or config (None for anything else)."""
    config = getattr(module, "config", module)
    model_type = getattr(config, "model_type", None)
    return model_type if isinstance(model_type, str) else None


def hf_converter(model_type: Optional[str]) -> HfConverter:
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


def convert_hf_model(hf_model: nn.Module) -> nn.Module:
    """A timm model computing exactly what ``hf_model``'s vision encoder computes (see each family's module)."""
    return hf_converter(hf_model_type(hf_model)).convert(hf_model)


from . import vit  # noqa: E402,F401  (registers the converters)
from . import clip  # noqa: E402,F401  (registers the converters)
