"""Teachers: frozen Vision Transformers seen through one interface, the trajectory of their token states.

A :class:`Teacher` wraps a timm :class:`~timm.models.vision_transformer.VisionTransformer` whose blocks are
timm ``Block`` s and exposes what the rest of raptor_zoo needs: the embedding ``x_0``, the L blocks, the
trajectory ``x_0..x_L`` (raw block outputs, before the final norm), the final norm + head, the token layout
(class token, registers, patches) and the timm-style ``data_config`` used to normalise images.

:func:`load_teacher` accepts

* a timm model name (``vit_small_patch14_reg4_dinov2``, ``deit_tiny_patch16_224``, ...), an ``hf-hub:org/name``
  or ``local-dir:/path`` string, or a timm ViT module;
* a Hugging Face transformers ViT-like encoder (``Dinov2Model``, ``Dinov2WithRegistersModel``, ``ViTModel``,
  their ``*ForImageClassification`` wrappers and ``*Backbone`` s) as a module, a saved folder or a Hub repo id.
  It is converted into a timm ``VisionTransformer`` with identical numerics (:func:`convert_hf_vit`);
* the embedded digits teacher, ``"digits-vit"`` (:data:`EMBEDDED_TEACHERS`).

Images given to every method are *normalised* tensors ``[B, C, H, W]``; normalise once with ``data_config``.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.data import resolve_data_config
from timm.layers import LayerNorm, Mlp, SwiGLUPacked, resample_abs_pos_embed
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .models.families import FAMILIES, accepts_any_img_size, family_of, in_chans_of, native_img_size, patch_size_of
from .models.raptor_base import RaptorMixin
from .models.raptor_vit import cls_avg_pool

__all__ = [
    "EMBEDDED_TEACHERS",
    "HF_VIT_MODEL_TYPES",
    "DINOV2_IMG_SIZE",
    "DINOV2_STORED_IMG_SIZE",
    "ClsAvgVisionTransformer",
    "Teacher",
    "load_teacher",
    "vit_config_from_hf",
    "hf_state_dict_to_timm",
    "convert_hf_vit",
]

EMBEDDED_TEACHERS: dict[str, str] = {"digits-vit": "vit_digits_patch8_reg4.digits"}
"""Teachers shipped inside the package: name -> timm ``arch.tag`` (weights are package data)."""

HF_VIT_MODEL_TYPES = ("dinov2", "dinov2_with_registers", "vit")
"""transformers ``model_type`` s that :func:`convert_hf_vit` converts exactly."""

DINOV2_IMG_SIZE = 224
"""Image size DINOv2 teachers run at by default: the paper's protocol (resize 256, centre crop 224)."""

DINOV2_STORED_IMG_SIZE = 518
"""Size of the 37 x 37 position grid DINOv2 checkpoints store; such a teacher runs at DINOV2_IMG_SIZE by default."""

_TEACHER_SOURCES = ("timm", "hf", "embedded", "module")
_COMMIT_HASH = re.compile(r"[0-9a-f]{40}")
# timm.create_model kwargs about where weights come from (left out of the meta-device architecture check)
_TIMM_LOADING_KWARGS = ("pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir")
_DINOV2_CROP_PCT = 0.875  # 224 / 256
_ACCEPTED = (
    "a timm ViT name (e.g. 'vit_small_patch14_reg4_dinov2'), an 'hf-hub:org/name' or 'local-dir:/path' timm id, "
    f"an embedded teacher ({', '.join(repr(n) for n in EMBEDDED_TEACHERS)}), a folder or Hub repo id holding a "
    f"transformers model of type {', '.join(HF_VIT_MODEL_TYPES)}, a timm ViT module of a supported family (vit, "
    "deit, eva: EVA-02 / DINOv3 / PE, beit, relpos, sam, naflexvit, xcit, cait), "
    "a transformers Dinov2/Dinov2WithRegisters/ViT module, or a Teacher"
)
# transformers `hidden_act` -> timm activation name computing the same function
_HF_ACTIVATIONS = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "quick_gelu": "quick_gelu",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}


class ClsAvgVisionTransformer(VisionTransformer):
    """timm ViT whose head reads concat(class token, mean of patch tokens): the DINOv2 linear-probe head.

    ``global_pool`` is ``'cls_avg'`` and ``head_hidden_size`` is 2·D (``num_features`` stays D), the head
    of transformers' ``Dinov2ForImageClassification`` / ``Dinov2WithRegistersForImageClassification``.
    """

    def __init__(self, **kwargs: Any) -> None:
        num_classes = kwargs.pop("num_classes", 1000)
        kwargs.pop("global_pool", None)
        super().__init__(num_classes=0, global_pool="token", **kwargs)
        if not self.has_class_token:
            raise ValueError("global_pool='cls_avg' needs the class token; got class_token=False.")
        self.global_pool = "cls_avg"
        self.head_hidden_size = 2 * self.embed_dim
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head; only ``'cls_avg'`` pooling is kept (use a plain VisionTransformer for others)."""
        if global_pool not in (None, "cls_avg"):
            raise ValueError(f"ClsAvgVisionTransformer pools with 'cls_avg' only; got global_pool={global_pool!r}.")
        self.num_classes = num_classes
        self.head = nn.Linear(self.head_hidden_size, num_classes) if num_classes > 0 else nn.Identity()

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type != "cls_avg":
            return super().pool(x, pool_type=pool_type)
        return cls_avg_pool(x, self.num_prefix_tokens)


def _dinov2_data_config(in_chans: int, img_size: tuple[int, int]) -> dict[str, Any]:
    """The paper's DINOv2 protocol: bicubic resize to img/0.875, centre crop, ImageNet mean/std."""
    return {
        "input_size": (in_chans, *img_size),
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "crop_pct": _DINOV2_CROP_PCT,
        "crop_mode": "center",
    }


def _is_dinov2_name(name: str | None) -> bool:
    return name is not None and "dinov2" in name.lower()


def _default_run_size(native_size: tuple[int, int], is_dinov2: bool) -> tuple[int, int]:
    """A DINOv2 checkpoint's stored 518 px grid runs at 224 (the paper's protocol); any other size is the model's own."""
    if is_dinov2 and native_size == (DINOV2_STORED_IMG_SIZE, DINOV2_STORED_IMG_SIZE):
        return DINOV2_IMG_SIZE, DINOV2_IMG_SIZE
    return native_size


@torch.no_grad()
def _set_run_size(model: VisionTransformer, img_size: tuple[int, int]) -> None:
    """Make ``img_size`` the model's own size, resampling its position grid as transformers and DINOv2 do.

    Bicubic without antialiasing (timm's ``resample_abs_pos_embed`` antialiases by default, which changes the
    embeddings of a downsampled grid), once here rather than on every forward. Only for a model this module built.
    """
    if tuple(model.patch_embed.img_size) == img_size:
        return
    patch_height, patch_width = model.patch_embed.patch_size
    grid = (img_size[0] // patch_height, img_size[1] // patch_width)
    if model.pos_embed is not None and grid != tuple(model.patch_embed.grid_size):
        pos_embed = resample_abs_pos_embed(
            model.pos_embed, new_size=grid, old_size=model.patch_embed.grid_size,
            num_prefix_tokens=0 if model.no_embed_class else model.num_prefix_tokens, antialias=False,
        )
        model.pos_embed = nn.Parameter(pos_embed, requires_grad=model.pos_embed.requires_grad)
    model.patch_embed.set_input_size(img_size=img_size)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise ValueError(f"img_size must be an int or an (height, width) pair; got {size!r}.")
    return size


class _StopForward(Exception):
    """Ends a teacher forward once the last requested state is recorded."""


class Teacher(nn.Module):
    """A frozen timm ViT of any supported family with a uniform trajectory interface.

    Always in eval mode with ``requires_grad=False`` on every parameter. ``trajectory`` returns the
    L + 1 token states ``x_0..x_L``: state 0 is the embedding output (what the family's ``forward_features``
    feeds to the first block), state l the raw output of block l, before the final norm — recorded on the
    family's own forward, so RoPE, relative-position biases and masks are the family's. Tokens are laid
    out as timm does: class token (if any), then registers, then patches in row-major order (CaiT and XCiT
    add their class token after the block stack, so their states hold patches only; SAM's [B, H, W, D]
    states are flattened to tokens).
    """

    model: nn.Module

    def __init__(
            self,
            model: nn.Module,
            *,
            name: str | None = None,
            source: str = "module",
            revision: str | None = None,
            img_size: int | tuple[int, int] | None = None,
            data_config: Mapping[str, Any] | None = None,
    ) -> None:
        """Wrap ``model`` (validated: a timm ViT of a family in ``raptor_zoo.models.families``).

        Args:
            model: the timm ViT; it is put in eval mode and frozen in place.
            name: the id it was loaded from (a local folder: 'architecture (folder name)', never its path);
                defaults to the module's class name.
            source: one of "timm", "hf", "embedded", "module".
            revision: Hub revision / commit when known.
            img_size: the size this package runs it at; defaults to the model's own. A different size
                needs a model built with ``dynamic_img_size=True``.
            data_config: timm-style preprocessing dict; defaults to ``timm.data.resolve_data_config``
                (the DINOv2 protocol for DINOv2 models) at ``img_size``.
        """
        super().__init__()
        _check_timm_vit(model)
        if source not in _TEACHER_SOURCES:
            raise ValueError(f"source must be one of {_TEACHER_SOURCES}; got {source!r}.")
        self.family = family_of(model)
        native_size = native_img_size(model)
        run_size = native_size if img_size is None else _pair(img_size)
        if run_size != native_size and not accepts_any_img_size(model):
            raise ValueError(
                f"{type(model).__name__} runs at fixed size {native_size} but img_size={run_size} was asked; "
                "create it with dynamic_img_size=True (timm.create_model(..., dynamic_img_size=True)) or with "
                f"img_size={run_size}."
            )
        patch_size = patch_size_of(model)
        if patch_size[0] != patch_size[1]:
            raise ValueError(f"Only square patches are supported; the model has patch_size={patch_size}.")

        self.model = model.eval().requires_grad_(False)
        self.name = name if name is not None else type(model).__name__
        self.revision = revision
        self.source = source
        self.depth = len(model.blocks)
        self.embed_dim = int(getattr(model, "embed_dim", None) or model.num_features)
        self.num_heads = getattr(getattr(model.blocks[0], "attn", None), "num_heads", None)
        self.patch_size = patch_size[0]
        self.img_size = run_size
        layout = self.family.token_layout(model)
        self.num_prefix_tokens = layout.num_prefix_tokens
        self.num_reg_tokens = layout.num_reg_tokens
        self.has_class_token = layout.has_class_token
        if data_config is None:
            data_config = self._default_data_config()
        self.data_config = dict(data_config)

    def _default_data_config(self) -> dict[str, Any]:
        in_chans = in_chans_of(self.model)
        arch = getattr(self.model, "pretrained_cfg", {}).get("architecture")
        if _is_dinov2_name(arch) or _is_dinov2_name(self.name):
            return _dinov2_data_config(in_chans, self.img_size)
        data_config = resolve_data_config({}, model=self.model)
        data_config["input_size"] = (in_chans, *self.img_size)
        return data_config

    @property
    def blocks(self) -> nn.Sequential | nn.ModuleList:
        """The L teacher blocks, ``self.model.blocks``."""
        return self.model.blocks

    @property
    def num_patches(self) -> int:
        """Patch tokens at ``img_size``."""
        return (self.img_size[0] // self.patch_size) * (self.img_size[1] // self.patch_size)

    @property
    def num_tokens(self) -> int:
        """Tokens per state at ``img_size``: prefix (class + registers) plus patches."""
        return self.num_prefix_tokens + self.num_patches

    def train(self, mode: bool = True) -> Teacher:
        """A teacher stays in eval mode whatever ``mode`` says (dropout, drop-path and patch-drop off)."""
        return super().train(False)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """x_0 ``[B, N, D]``: what the family's forward_features feeds to its first block."""
        return self.trajectory(images, layers=[0])[:, 0]

    def resolve_layers(self, layers: Sequence[int] | None = None) -> list[int]:
        """Layer indices in 0..L (negative counts from the end, -1 = L); ``None`` = all L + 1."""
        num_states = self.depth + 1
        if layers is None:
            return list(range(num_states))
        if isinstance(layers, (int, torch.Tensor)) or not isinstance(layers, Sequence):
            raise TypeError(
                f"layers must be a sequence of ints in 0..{self.depth} (e.g. [0, {self.depth}]) or None; "
                f"got {type(layers).__name__} {layers!r}."
            )
        if len(layers) == 0:
            raise ValueError("layers is empty; pass None for all L + 1 states.")
        resolved = []
        for layer in layers:
            if isinstance(layer, bool) or not isinstance(layer, int):
                raise TypeError(f"layers must hold ints; got {type(layer).__name__} {layer!r}.")
            if not -num_states <= layer < num_states:
                raise ValueError(
                    f"layer {layer} is out of range for a teacher of depth {self.depth}: valid indices are "
                    f"0..{self.depth} (0 = embeddings, l = output of block l) or -{num_states}..-1."
                )
            resolved.append(layer % num_states)
        return resolved

    def trajectory(self, images: torch.Tensor, layers: Sequence[int] | None = None) -> torch.Tensor:
        """Token states ``[B, len(layers), N, D]``, in the order of ``layers`` (default all L + 1).

        State 0 = embeddings, state l = raw output of block l (before the final norm). Blocks run only up
        to ``max(layers)`` and only the requested states are kept, in one preallocated tensor whose dtype
        is that of the embeddings (float32 under autocast: adding the position embedding promotes).
        Gradients follow the caller's grad mode; wrap in ``torch.no_grad()`` for targets.
        """
        layer_ids = self.resolve_layers(layers)
        slots: dict[int, list[int]] = {}
        for position, layer in enumerate(layer_ids):
            slots.setdefault(layer, []).append(position)

        _check_images(images)
        states, dtype = self._record_states(images, set(layer_ids))
        return torch.stack([states[layer].to(dtype) for layer in layer_ids], dim=1)

    def _record_states(self, images: torch.Tensor, layers: set[int]) -> tuple[dict[int, torch.Tensor], torch.dtype]:
        """States ``{l: [B, N, D]}`` for ``layers`` and the embeddings' dtype, recorded by hooks on the blocks while
        the family's own forward_features runs; it stops after the last one needed."""
        last = max(layers)
        states: dict[int, torch.Tensor] = {}
        embed_dtype: list[torch.dtype] = []
        to_tokens = self.family.to_tokens

        def record_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            x = args[0] if args else kwargs["x"]
            embed_dtype.append(x.dtype)
            if 0 in layers:
                states[0] = to_tokens(x)
            if last == 0:
                raise _StopForward

        def record_output(layer: int) -> Any:
            def hook(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
                if layer in layers:
                    states[layer] = to_tokens(output)
                if layer == last:
                    raise _StopForward
            return hook

        # first in line: when state 0 is the last one needed, no other hook sees a block call that never runs
        handles = [self.blocks[0].register_forward_pre_hook(record_input, with_kwargs=True, prepend=True)]
        for layer in range(1, last + 1):
            handles.append(self.blocks[layer - 1].register_forward_hook(record_output(layer), with_kwargs=True))
        try:
            self.model.forward_features(images)
        except _StopForward:
            pass
        finally:
            for handle in handles:
                handle.remove()
        missing = sorted(layers - set(states))
        if missing:
            raise RuntimeError(f"{type(self.model).__name__}.forward_features did not produce states {missing}.")
        return states, embed_dtype[0]

    def forward_head_from_state(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from state x_L: the family's finish (final norm; class attention / neck), then its head."""
        return self.model.forward_head(self.finish(x))

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """forward_features output from a block state x_l (``[B, N, D]`` tokens)."""
        if self.family.nhwc_states and x.ndim == 3:
            grid = (self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size)
            x = self.family.to_state(x, grid)
        return self.family.finish(self.model, x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's own logits (its features when it has no classifier)."""
        _check_images(images)
        return self.model(images)

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, source={self.source!r}, revision={self.revision!r}, depth={self.depth}, "
            f"embed_dim={self.embed_dim}, img_size={self.img_size}, num_prefix_tokens={self.num_prefix_tokens}"
        )


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        found = f"a {images.ndim}-d tensor of shape {tuple(images.shape)}" if isinstance(images, torch.Tensor) \
            else type(images).__name__
        raise ValueError(f"images must be a normalised [B, C, H, W] tensor; got {found}.")


def _check_timm_vit(model: nn.Module, label: str | None = None) -> None:
    """Raise unless ``model`` is a timm model of a supported ViT family (models/families.py) with blocks."""
    label = label or type(model).__name__
    if isinstance(model, RaptorMixin):
        raise TypeError(f"{label} is a Raptor; a teacher is the ViT a Raptor is distilled from.")
    if family_of(model) is None:
        raise TypeError(
            f"{label} is a {type(model).__name__} ({type(model).__module__}), not a timm ViT of a supported family "
            f"({', '.join(f.name for f in FAMILIES)}); a teacher must be {_ACCEPTED}."
        )
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)):
        raise TypeError(f"{label} keeps no block stack in `.blocks` (got {type(blocks).__name__}).")
    if len(blocks) == 0:
        raise ValueError(f"{label} has no blocks; a teacher needs depth >= 1.")


# ----------------------------------------------------------------------------------------------------------
# transformers -> timm conversion


def vit_config_from_hf(config: Any) -> dict[str, Any]:
    """timm ``VisionTransformer`` kwargs reproducing a transformers Dinov2 / Dinov2WithRegisters / ViT config.

    The model is built at the config's ``image_size`` with ``dynamic_img_size=True``, without a head
    (``num_classes=0``, ``global_pool='token'``); :func:`convert_hf_vit` adds the classifier. DINOv2 with
    registers uses timm's ``no_embed_class`` layout (registers carry no position embedding; the class-token
    position embedding is folded into ``cls_token`` by :func:`hf_state_dict_to_timm`). Raises ValueError
    where a setting has no exact timm equivalent.
    """
    model_type = getattr(config, "model_type", None)
    if model_type not in HF_VIT_MODEL_TYPES:
        raise ValueError(
            f"Cannot convert a transformers model of type {model_type!r} ({type(config).__name__}); "
            f"supported model_type values: {', '.join(HF_VIT_MODEL_TYPES)}."
        )
    embed_dim, num_heads = config.hidden_size, config.num_attention_heads
    head_dim = getattr(config, "head_dim", None)
    if embed_dim % num_heads or head_dim not in (None, embed_dim // num_heads):
        raise ValueError(
            f"timm Attention needs head_dim = hidden_size / num_attention_heads; the config has hidden_size="
            f"{embed_dim}, num_attention_heads={num_heads}, head_dim={head_dim}."
        )
    if model_type == "vit":
        mlp_hidden, mlp_layer, init_values = config.intermediate_size, Mlp, None
        act_layer = _hf_activation(config.hidden_act)
    else:
        mlp_hidden = int(embed_dim * config.mlp_ratio)
        # a layer scale of 0 would make timm drop the LayerScale module; its value is overwritten anyway
        init_values = config.layerscale_value or 1.0
        if config.use_swiglu_ffn:
            # transformers' Dinov2SwiGLUFFN width, packed [gate; up] as timm's SwiGLUPacked (act(x1) * x2)
            mlp_hidden = 2 * ((int(mlp_hidden * 2 / 3) + 7) // 8 * 8)
            mlp_layer, act_layer = SwiGLUPacked, "silu"
        else:
            mlp_layer, act_layer = Mlp, _hf_activation(config.hidden_act)
    mlp_ratio = mlp_hidden / embed_dim
    if int(embed_dim * mlp_ratio) != mlp_hidden:  # float round-off; timm takes int(dim * mlp_ratio)
        mlp_ratio = (mlp_hidden + 0.5) / embed_dim
    num_reg_tokens = config.num_register_tokens if model_type == "dinov2_with_registers" else 0
    img_size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    patch_size = config.patch_size if isinstance(config.patch_size, int) else tuple(config.patch_size)
    return dict(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=config.num_channels,
        num_classes=0,
        global_pool="token",
        embed_dim=embed_dim,
        depth=config.num_hidden_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=config.qkv_bias,
        init_values=init_values,
        class_token=True,
        reg_tokens=num_reg_tokens,
        no_embed_class=num_reg_tokens > 0,
        dynamic_img_size=True,
        norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        act_layer=act_layer,
        mlp_layer=mlp_layer,
    )


def _hf_activation(hidden_act: Any) -> str:
    if hidden_act not in _HF_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={hidden_act!r} has no exact timm equivalent; supported: {', '.join(_HF_ACTIVATIONS)}."
        )
    return _HF_ACTIVATIONS[hidden_act]


# transformers block sub-module -> timm Block sub-module; both the 5.x names and the 4.x names
_HF_BLOCK_RENAMES = {
    "norm1": "norm1",
    "layernorm_before": "norm1",
    "norm2": "norm2",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.weights_in": "mlp.fc1",  # 4.x SwiGLU: already packed [gate; up]
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
    "mlp.down_proj": "mlp.fc2",
    "mlp.weights_out": "mlp.fc2",
}
# transformers sub-modules fused into one timm Linear: name -> (timm module, position in the concatenation)
_HF_BLOCK_FUSED = {
    "attention.q_proj": ("attn.qkv", 0),
    "attention.k_proj": ("attn.qkv", 1),
    "attention.v_proj": ("attn.qkv", 2),
    "attention.attention.query": ("attn.qkv", 0),
    "attention.attention.key": ("attn.qkv", 1),
    "attention.attention.value": ("attn.qkv", 2),
    "mlp.gate_proj": ("mlp.fc1", 0),
    "mlp.up_proj": ("mlp.fc1", 1),
}
_HF_FUSED_PARTS = {"attn.qkv": 3, "mlp.fc1": 2}
_HF_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
# used only for masked-image pre-training, and ViT's tanh pooler (not part of the trajectory or the classifier)
_HF_DROPPED = re.compile(r"^(embeddings\.mask_token|pooler\..*)$")
_HF_BLOCK_KEY = re.compile(r"^(?:encoder\.layers?|layers?)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def hf_state_dict_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a transformers Dinov2 / Dinov2WithRegisters / ViT base-model state_dict to timm ViT keys.

    Keys are those of the base model (``embeddings.*``, ``encoder.layer.{i}.*`` or ``layers.{i}.*``,
    ``layernorm.*``) plus an optional ``classifier.*``. q/k/v are fused into ``attn.qkv``, SwiGLU gate/up
    into ``mlp.fc1``; ``mask_token`` and ViT's ``pooler`` are dropped. With registers the class-token
    position embedding is folded into ``cls_token`` (timm's ``no_embed_class`` layout, as timm's own DINOv2
    checkpoint filter does). Raises ValueError on a key it cannot map exactly.
    """
    out: dict[str, torch.Tensor] = {}
    fused: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if _HF_DROPPED.match(key):
            continue
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        match = _HF_BLOCK_KEY.match(key)
        if match is None:
            raise ValueError(f"Cannot map transformers weight {key!r} to a timm ViT; no exact conversion known.")
        index, module, param = match.groups()
        if module in ("layer_scale1", "layer_scale2") and param == "lambda1":
            out[f"blocks.{index}.ls{module[-1]}.gamma"] = value
        elif module in _HF_BLOCK_RENAMES and param != "lambda1":
            out[f"blocks.{index}.{_HF_BLOCK_RENAMES[module]}.{param}"] = value
        elif module in _HF_BLOCK_FUSED and param != "lambda1":
            target, part = _HF_BLOCK_FUSED[module]
            fused.setdefault((f"blocks.{index}.{target}", param), {})[part] = value
        else:
            raise ValueError(f"Cannot map transformers weight {key!r} to a timm ViT; no exact conversion known.")
    for (target, param), parts in fused.items():
        expected = _HF_FUSED_PARTS[target.split(".", 2)[2]]
        if sorted(parts) != list(range(expected)):
            raise ValueError(
                f"{target}.{param}: found {len(parts)} of the {expected} transformers parts it fuses "
                "(e.g. a bias on some of q/k/v only); timm cannot represent this exactly."
            )
        out[f"{target}.{param}"] = torch.cat([parts[i] for i in range(expected)], dim=0)
    if "reg_token" in out:
        pos_embed = out["pos_embed"]
        out["cls_token"] = out["cls_token"] + pos_embed[:, :1]
        out["pos_embed"] = pos_embed[:, 1:]
    return out


def _hf_base_model(hf_model: nn.Module) -> nn.Module:
    """The encoder of a transformers model: itself or its ``base_model`` (``*ForImageClassification``)."""
    base = getattr(hf_model, "base_model", hf_model)
    return base if isinstance(base, nn.Module) else hf_model


def _is_hf_vit(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return getattr(config, "model_type", None) in HF_VIT_MODEL_TYPES and hasattr(_hf_base_model(module), "embeddings")


def convert_hf_vit(hf_model: nn.Module) -> VisionTransformer:
    """A timm ``VisionTransformer`` computing exactly what a transformers Dinov2 / Dinov2WithRegisters / ViT does.

    Blocks, embeddings and the final layernorm are always converted. The classifier of a
    ``*ForImageClassification`` model is converted when it is a ``nn.Linear``: ViT's reads the normed
    class token (timm ``global_pool='token'``), DINOv2's reads concat(class token, mean of patch tokens)
    (:class:`ClsAvgVisionTransformer`, ``global_pool='cls_avg'``). Anything else (a base model, a custom
    classifier; ViT's tanh ``pooler`` is never converted) gives ``head = Identity``, so the model's forward
    returns the normed class token. At the config's ``image_size`` the numerics are those of transformers;
    at other sizes timm resamples the position embedding (bicubic, antialiased) once per forward, which is
    not what transformers does: :func:`load_teacher` resamples the grid to the run size first, as transformers.
    The result is on the device and in the floating dtype of ``hf_model``.
    """
    if not _is_hf_vit(hf_model):
        model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
        raise TypeError(
            f"convert_hf_vit takes a transformers Dinov2/Dinov2WithRegisters/ViT model; got "
            f"{type(hf_model).__name__} (model_type {model_type!r})."
        )
    base = _hf_base_model(hf_model)
    config = base.config
    model_args = vit_config_from_hf(config)
    state_dict = dict(base.state_dict())
    model_cls: type[VisionTransformer] = VisionTransformer
    classifier = getattr(hf_model, "classifier", None) if hf_model is not base else None
    if isinstance(classifier, nn.Linear):
        head_inputs = 2 * config.hidden_size if config.model_type.startswith("dinov2") else config.hidden_size
        if classifier.in_features != head_inputs:
            raise ValueError(
                f"{type(hf_model).__name__}.classifier takes {classifier.in_features} inputs; the {config.model_type} "
                f"head reads {head_inputs}."
            )
        if config.model_type.startswith("dinov2"):
            model_cls = ClsAvgVisionTransformer
        model_args["num_classes"] = classifier.out_features
        state_dict.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    elif classifier is not None and not isinstance(classifier, nn.Identity):
        warnings.warn(
            f"{type(hf_model).__name__}.classifier is a {type(classifier).__name__}, not a Linear; the converted "
            "teacher has no head (head = Identity) and its logits are the normed class token.",
            stacklevel=2,
        )
    model = model_cls(weight_init="skip", **model_args)
    timm_state_dict = hf_state_dict_to_timm(state_dict)
    model.load_state_dict(timm_state_dict, strict=True)
    reference = next(base.parameters())
    dtype = reference.dtype if reference.is_floating_point() else None
    return model.to(device=reference.device, dtype=dtype).eval()


# ----------------------------------------------------------------------------------------------------------
# loading


def _hf_data_config(config: Any, img_size: tuple[int, int]) -> dict[str, Any]:
    """Defaults of the transformers image processors: DINOv2 protocol for DINOv2, ViTImageProcessor for ViT."""
    if config.model_type.startswith("dinov2"):
        return _dinov2_data_config(config.num_channels, img_size)
    return {
        "input_size": (config.num_channels, *img_size),
        "interpolation": "bilinear",
        "mean": IMAGENET_INCEPTION_MEAN,
        "std": IMAGENET_INCEPTION_STD,
        "crop_pct": 1.0,
        "crop_mode": "center",
    }


def _teacher_from_hf_module(
        hf_model: nn.Module,
        *,
        name: str,
        source: str,
        revision: str | None,
        img_size: int | None,
) -> Teacher:
    config = _hf_base_model(hf_model).config
    model = convert_hf_vit(hf_model)
    native_size = _pair(config.image_size)
    run_size = _pair(img_size) if img_size is not None else _default_run_size(
        native_size, config.model_type.startswith("dinov2"))
    _set_run_size(model, run_size)
    return Teacher(
        model,
        name=name,
        source=source,
        revision=getattr(config, "_commit_hash", None) or revision,
        img_size=run_size,
        data_config=_hf_data_config(config, run_size),
    )


def _weights_error(sought: str, err: Exception) -> FileNotFoundError:
    return FileNotFoundError(
        f"Could not load the pretrained weights {sought}: {type(err).__name__}: {err}\n"
        "Check the id, your connection, HF_HUB_OFFLINE and the Hub cache (HF_HUB_CACHE); "
        "load_teacher(..., pretrained=False) gives a random-init teacher of the same architecture."
    )


def _timm_weights_id(name: str, revision: str | None) -> str:
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
    location = None if cfg is None else (cfg.hf_hub_id or cfg.url or cfg.file)
    location = f"{location}@{revision}" if location and revision else location
    return f"of timm model {name!r}" + (f" ({location})" if location else "")


def _check_timm_name(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise unless timm name builds a teacher-compatible ViT; checked on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        probe = timm.create_model(name, pretrained=False, **kwargs)
    _check_timm_vit(probe, label=f"timm model {name!r}")


def _create_timm_teacher(
        name: str,
        *,
        source: str,
        teacher_name: str,
        pretrained: bool,
        img_size: int | None,
        revision: str | None,
        kwargs: dict[str, Any],
) -> Teacher:
    model_name = name
    if revision is not None:
        if name.startswith("hf-hub:"):
            if "@" in name:
                raise ValueError(f"{name!r} already names a revision; do not pass revision={revision!r} as well.")
            model_name = f"{name}@{revision}"
        elif name.startswith("local-dir:"):
            raise ValueError(f"revision={revision!r} does not apply to a local folder ({name!r}).")
        elif pretrained:
            cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=True)
            if cfg is None or not cfg.hf_hub_id:
                raise ValueError(
                    f"revision={revision!r} applies to Hub weights, and timm model {name!r} has no hf_hub_id."
                )
            kwargs = {"pretrained_cfg_overlay": dict(hf_hub_id=f"{cfg.hf_hub_id.split('@')[0]}@{revision}"), **kwargs}
    elif name.startswith("hf-hub:") and "@" in name:
        revision = name.rsplit("@", 1)[1]

    is_dinov2 = _is_dinov2_name(_timm_architecture(name))
    create_kwargs: dict[str, Any] = {}
    if not name.startswith(("hf-hub:", "local-dir:")):
        _check_timm_name(name, {k: v for k, v in kwargs.items() if k not in _TIMM_LOADING_KWARGS})
    if is_dinov2:  # built at its own size, then resampled as DINOv2 does (_set_run_size)
        create_kwargs = dict(dynamic_img_size=True)
    elif img_size is not None:
        create_kwargs = dict(img_size=img_size)
    create_kwargs.update(kwargs)
    try:
        model = timm.create_model(model_name, pretrained=pretrained, **create_kwargs)
    except OSError as err:
        if name.startswith(("hf-hub:", "local-dir:")):
            raise FileNotFoundError(
                f"Could not load timm model {model_name!r}: {type(err).__name__}: {err}\nIts config.json is read even "
                "with pretrained=False: check the id or folder, your connection, HF_HUB_OFFLINE and the Hub cache "
                "(HF_HUB_CACHE)."
            ) from err
        if pretrained:
            raise _weights_error(_timm_weights_id(name, revision), err) from err
        raise
    if is_dinov2:
        native_size = tuple(model.patch_embed.img_size)
        _set_run_size(model, _pair(img_size) if img_size is not None else _default_run_size(native_size, True))
    # the architecture arguments, so that a Raptor of this teacher can be rebuilt from config.json
    model.raptor_teacher_args = {k: v for k, v in create_kwargs.items() if k not in _TIMM_LOADING_KWARGS}
    return Teacher(model, name=teacher_name, source=source, revision=revision)


def _folder_teacher_name(folder: str, architecture: str) -> str:
    """A local folder's teacher named portably, by what it holds and the folder's own name: never a local path."""
    return f"{architecture} ({Path(folder).expanduser().resolve().name})"


def _timm_architecture(name: str) -> str:
    """The timm architecture a name builds: a local folder's config.json ``architecture`` wins over its path."""
    if name.startswith("local-dir:"):
        config_path = Path(name.split(":", 1)[1]).expanduser() / "config.json"
        if config_path.is_file():
            with open(config_path, encoding="utf-8") as f:
                return json.load(f).get("architecture") or name
    return name


def _read_config_json(
        location: str,
        *,
        is_folder: bool,
        revision: str | None,
        kwargs: dict[str, Any],
) -> tuple[dict[str, Any], str | None]:
    """config.json of a folder or a Hub repo (through huggingface_hub, which honours HF_HUB_OFFLINE), and the
    commit it was resolved at (None for a folder)."""
    commit = None
    if is_folder:
        path = Path(location) / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"Folder {location!r} has no config.json; a teacher folder is a transformers save_pretrained "
                "folder or a timm folder (config.json + weights)."
            )
    else:
        from huggingface_hub import hf_hub_download

        hub_kwargs = {k: kwargs[k] for k in ("cache_dir", "token", "local_files_only") if k in kwargs}
        try:
            path = hf_hub_download(location, "config.json", revision=revision, **hub_kwargs)
        except OSError as err:
            raise FileNotFoundError(
                f"{location!r} is not an embedded teacher, a timm model name or an existing folder, and its "
                f"config.json could not be fetched as a Hub repo id (revision {revision!r}): "
                f"{type(err).__name__}: {err}\nAccepted: {_ACCEPTED}."
            ) from err
        snapshot = Path(path).parent
        if snapshot.parent.name == "snapshots" and _COMMIT_HASH.fullmatch(snapshot.name):
            commit = snapshot.name
    with open(path, encoding="utf-8") as f:
        return json.load(f), commit


def _load_hf_teacher(
        location: str,
        *,
        pretrained: bool,
        img_size: int | None,
        revision: str | None,
        kwargs: dict[str, Any],
) -> Teacher:
    from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

    config = AutoConfig.from_pretrained(location, revision=revision)
    architectures = getattr(config, "architectures", None) or []
    with_classifier = any(a.endswith("ForImageClassification") for a in architectures)
    model_cls = AutoModelForImageClassification if with_classifier else AutoModel
    if pretrained:
        try:
            hf_model = model_cls.from_pretrained(location, revision=revision, **kwargs)
        except OSError as err:
            sought = f"of transformers {model_cls.__name__} {location!r}" + (f" @ {revision}" if revision else "")
            raise _weights_error(sought, err) from err
    else:
        hf_model = model_cls.from_config(config, **kwargs)
    return _teacher_from_hf_module(
        hf_model.eval(),
        name=location,
        source="hf",
        revision=revision,
        img_size=img_size,
    )


def _load_from_string(
        source: str,
        *,
        pretrained: bool,
        img_size: int | None,
        revision: str | None,
        kwargs: dict[str, Any],
) -> Teacher:
    if source in EMBEDDED_TEACHERS:
        if revision is not None:
            raise ValueError(f"{source!r} ships inside raptor_zoo; revision={revision!r} does not apply.")
        timm_name = EMBEDDED_TEACHERS[source]
        if not timm.is_model(timm_name):
            raise ValueError(
                f"The embedded teacher {source!r} needs timm model {timm_name!r}, which is not registered; "
                "it is registered by `import raptor_zoo` (raptor_zoo.models.digits_vit)."
            )
        return _create_timm_teacher(
            timm_name, source="embedded", teacher_name=source, pretrained=pretrained, img_size=img_size,
            revision=None, kwargs=kwargs,
        )
    if source.startswith(("hf-hub:", "local-dir:")):
        teacher_name = source
        if source.startswith("local-dir:"):
            teacher_name = _folder_teacher_name(source.split(":", 1)[1], _timm_architecture(source))
        return _create_timm_teacher(
            source, source="timm", teacher_name=teacher_name, pretrained=pretrained, img_size=img_size,
            revision=revision, kwargs=kwargs,
        )
    expanded = os.path.expanduser(source)
    is_folder = os.path.isdir(expanded)
    if not is_folder and timm.is_model(source):
        return _create_timm_teacher(
            source, source="timm", teacher_name=source, pretrained=pretrained, img_size=img_size,
            revision=revision, kwargs=kwargs,
        )
    if not is_folder:
        if source.startswith((".", "/", "~")) or source.count("/") > 1:
            raise FileNotFoundError(f"Teacher folder {source!r} does not exist. Accepted: {_ACCEPTED}.")
        if "/" not in source:
            close = difflib.get_close_matches(source, timm.list_models(), n=3)
            hint = f" Close timm names: {', '.join(close)}." if close else ""
            raise ValueError(
                f"{source!r} is not an embedded teacher, a registered timm model or an existing folder, and "
                f"not an org/name Hub repo id.{hint} Accepted: {_ACCEPTED}."
            )
    location = expanded if is_folder else source
    config, commit = _read_config_json(location, is_folder=is_folder, revision=revision, kwargs=kwargs)
    model_type = config.get("model_type")
    if model_type in HF_VIT_MODEL_TYPES:  # weights from the commit the config came from
        teacher = _load_hf_teacher(
            location, pretrained=pretrained, img_size=img_size, revision=commit or revision, kwargs=kwargs,
        )
        if is_folder:
            teacher.name = _folder_teacher_name(location, model_type)
        return teacher
    if "architecture" in config:  # a timm folder / Hub repo
        timm_id = f"local-dir:{location}" if is_folder else f"hf-hub:{location}"
        return _create_timm_teacher(
            timm_id, source="timm", pretrained=pretrained, img_size=img_size,
            teacher_name=_folder_teacher_name(location, config["architecture"]) if is_folder else source,
            revision=None if is_folder else revision, kwargs=kwargs,
        )
    raise ValueError(
        f"{source!r} holds a config.json with model_type {model_type!r} and no timm 'architecture'; "
        f"a teacher must be a transformers model of type {', '.join(HF_VIT_MODEL_TYPES)} or a timm ViT."
    )


def load_teacher(
        source: str | os.PathLike | nn.Module | Teacher,
        *,
        pretrained: bool = True,
        img_size: int | None = None,
        revision: str | None = None,
        **kwargs: Any,
) -> Teacher:
    """A frozen :class:`Teacher` from a name, a folder, a Hub repo id or a module.

    Args:
        source: one of
            ``"digits-vit"`` (embedded, :data:`EMBEDDED_TEACHERS`);
            a timm model name, ``"hf-hub:org/name[@rev]"`` or ``"local-dir:/path"`` (``timm.create_model``);
            a folder or Hub repo id with a transformers ``config.json`` of type dinov2,
            dinov2_with_registers or vit (``from_pretrained``, which honours ``HF_HUB_OFFLINE``), or a timm
            folder / repo (config.json with ``architecture``);
            a timm ``VisionTransformer`` with plain ``Block`` s, a transformers Dinov2 / Dinov2WithRegisters /
            ViT module (converted, :func:`convert_hf_vit`), or a Teacher.
        pretrained: load the published weights (names and repo ids); ``False`` gives a random-init teacher.
        img_size: size to run the teacher at; none = the size its config (folder, module) or timm name
            declares, except that a DINOv2 checkpoint's stored 518 px grid runs at 224 (the paper's protocol:
            bicubic resize to 256, centre crop 224, ImageNet mean/std). DINOv2 and transformers teachers are
            built at their own size with ``dynamic_img_size=True``, then their position grid is resampled to
            ``img_size`` as transformers and DINOv2 do (bicubic, no antialiasing), so they equal the reference
            model at the size they run at. Other timm names are created at ``img_size`` when given. A module
            keeps its own size unless it was built with ``dynamic_img_size=True``.
        revision: Hub revision (branch, tag or commit) for Hub weights.
        **kwargs: forwarded to ``timm.create_model`` or the transformers ``from_pretrained`` / ``from_config``.

    Modules are wrapped as ``source="module"`` with ``name`` = their class name (a transformers module keeps
    the commit its config records as ``revision``); ``kwargs`` do not apply to them.
    """
    if kwargs and isinstance(source, nn.Module):
        raise TypeError(f"Extra keyword arguments {sorted(kwargs)} apply to names and folders, not to modules.")
    if isinstance(source, Teacher):
        if img_size is None or _pair(img_size) == source.img_size:
            return source
        data_config = dict(source.data_config, input_size=(source.data_config["input_size"][0], *_pair(img_size)))
        return Teacher(
            source.model, name=source.name, source=source.source, revision=source.revision, img_size=img_size,
            data_config=data_config,
        )
    if isinstance(source, nn.Module):
        if _is_hf_vit(source):
            return _teacher_from_hf_module(
                source, name=type(source).__name__, source="module", revision=revision, img_size=img_size,
            )
        if getattr(source, "config", None) is not None and family_of(source) is None:
            model_type = getattr(source.config, "model_type", None)
            raise TypeError(
                f"{type(source).__name__} (transformers model_type {model_type!r}) is not a supported ViT; "
                f"transformers teachers must be of type {', '.join(HF_VIT_MODEL_TYPES)}. Accepted: {_ACCEPTED}."
            )
        _check_timm_vit(source)
        return Teacher(source, name=type(source).__name__, source="module", revision=revision, img_size=img_size)
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(f"load_teacher got a {type(source).__name__}; accepted: {_ACCEPTED}.")
    if not source:
        raise ValueError(f"load_teacher got an empty string; accepted: {_ACCEPTED}.")
    return _load_from_string(source, pretrained=pretrained, img_size=img_size, revision=revision, kwargs=kwargs)
