"""SigLIP2 (NaFlex) transformers vision encoders -> timm ``NaFlexVit``: Siglip2VisionModel, the vision tower of
Siglip2Model, and Siglip2ForImageClassification.

transformers' SigLIP2 takes pre-patchified pixels ``[B, N, p*p*C]`` (``convert_image_to_patches``: each patch
flattened as (row, column, channel), channels fastest), a ``pixel_attention_mask`` and ``spatial_shapes``; its
patch embedding is a Linear and its learned ``sqrt(num_patches)``-square position grid is resized per image to
``spatial_shapes`` (bilinear, antialiased, ``align_corners=False``, written in 5.x as an explicit weight matrix).

A teacher takes fixed-size ``[B, C, H, W]`` images. timm's ``NaFlexVit`` with a linear patch embedding
(``embed_proj_type='linear'``, ``patchify_channels_last=True``) patchifies such an image in exactly the
processor's order and applies the same Linear. At the grid's own size the stored grid is the checkpoint's (there
transformers' resize weights are exactly one-hot); :func:`set_siglip2_run_size` resizes it once, by transformers'
own ``Siglip2VisionEmbeddings.resize_positional_embeddings``, to the run grid, where NaFlexVit adds it without
resampling. So at its run size the converted model is transformers run on the processor's patches of the same
image with a full attention mask and ``spatial_shapes = (H / p, W / p)``: the hidden states are identical (max abs
difference 0 in fp32 on CPU, against transformers' default SDPA attention; its eager attention scales q.k after
the matmul, not before, and agrees to ~1e-6). An image of another size than the run size is resampled by
NaFlexVit itself (F.interpolate, bilinear, antialiased), close to but not transformers' resize.

Heads: the attention-pool head (``vision_use_head``) is timm's ``'map'`` pooling (``AttentionPoolLatent``), so the
model's forward is ``pooler_output`` to ~1e-6, not bit for bit (``torch.nn.MultiheadAttention`` computes the
probe's attention with explicit bmm + softmax, timm's ``AttentionPoolLatent`` with SDPA: another summation
order). Siglip2ForImageClassification's classifier reads the mean of the normed patch tokens (timm ``'avg'``
pooling, final norm before pooling) and becomes timm's head (logits exact). A vision tower without a head pools by
the mean of the normed tokens, head Identity (transformers gives no pooled output then).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm
from timm.models.naflexvit import NaFlexVit, NaFlexVitCfg
from torch import nn

from .clip import SIGLIP_POOL_RENAMES
from .registry import HfConverter, hf_activation, processor_data_config, register_hf_converter, timm_mlp_ratio

__all__ = [
    "HF_SIGLIP2_MODEL_TYPES",
    "SIGLIP2_MEAN",
    "SIGLIP2_STD",
    "siglip2_vision_tower",
    "siglip2_native_size",
    "siglip2_config_from_hf",
    "siglip2_state_dict_to_timm",
    "resize_siglip2_pos_embed",
    "convert_hf_siglip2",
    "set_siglip2_run_size",
    "siglip2_data_config",
]

HF_SIGLIP2_MODEL_TYPES = ("siglip2_vision_model", "siglip2")
"""transformers ``model_type`` s that :func:`convert_hf_siglip2` converts (``siglip2``: the vision tower)."""

SIGLIP2_MEAN = (0.5, 0.5, 0.5)
SIGLIP2_STD = (0.5, 0.5, 0.5)

_SOURCE_GRID = "hf_source_grid"
"""Attribute of a converted model: the (S, S) grid of the checkpoint's position embedding, which
:func:`set_siglip2_run_size` resizes from (as transformers does on every forward)."""


def siglip2_vision_tower(hf_model: nn.Module) -> nn.Module:
    """The Siglip2VisionModel of a Siglip2VisionModel, Siglip2Model or Siglip2ForImageClassification."""
    model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
    if model_type == "siglip2_vision_model" and hasattr(hf_model, "embeddings"):
        return hf_model
    tower = getattr(hf_model, "vision_model", None)
    if model_type == "siglip2" and isinstance(tower, nn.Module) and hasattr(tower, "embeddings"):
        return tower
    raise TypeError(
        f"convert_hf_siglip2 takes a transformers Siglip2VisionModel, Siglip2Model or Siglip2ForImageClassification; "
        f"got {type(hf_model).__name__} (model_type {model_type!r})."
    )


def _vision_config(config: Any) -> Any:
    return getattr(config, "vision_config", None) or config


def _grid_side(config: Any) -> int:
    side = math.isqrt(config.num_patches)
    if side * side != config.num_patches:
        raise ValueError(
            f"SigLIP2 num_patches={config.num_patches} is not a square; transformers keeps its position embedding "
            "as a sqrt(num_patches)-square grid, so only square numbers are supported."
        )
    return side


def _patch_size(config: Any) -> int:
    patch_size = config.patch_size
    if isinstance(patch_size, (list, tuple)):
        if len(set(patch_size)) != 1:
            raise ValueError(f"SigLIP2 patch_size={patch_size!r}: only square patches are supported.")
        patch_size = patch_size[0]
    return int(patch_size)


def siglip2_native_size(config: Any) -> tuple[int, int]:
    """The size a SigLIP2 config's position grid stands for: sqrt(num_patches) * patch_size on each side."""
    config = _vision_config(config)
    side = _grid_side(config) * _patch_size(config)
    return side, side


def siglip2_config_from_hf(config: Any, *, global_pool: str = "map") -> dict[str, Any]:
    """``NaFlexVit`` kwargs (``cfg`` + ``in_chans`` / ``img_size`` / ``num_classes=0``) for a SigLIP2 vision config.

    Built at :func:`siglip2_native_size` with a learned position grid of that size (resampled bilinearly with
    antialiasing if a different image size reaches it, as transformers would, approximately; the converted teacher
    runs at its own grid). ``global_pool``: ``'map'`` (attention-pool head), ``'avg'`` (mean of the normed
    tokens) or ``''``. Raises ValueError where a setting has no exact timm equivalent.
    """
    config = _vision_config(config)
    embed_dim, num_heads = config.hidden_size, config.num_attention_heads
    if embed_dim % num_heads:
        raise ValueError(
            f"SigLIP2 needs hidden_size divisible by num_attention_heads; got {embed_dim} and {num_heads}."
        )
    mlp_hidden = config.intermediate_size
    mlp_ratio = timm_mlp_ratio(embed_dim, mlp_hidden)
    patch_size = _patch_size(config)
    cfg = NaFlexVitCfg(
        patch_size=patch_size,
        embed_dim=embed_dim,
        depth=config.num_hidden_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=True,
        class_token=False,
        reg_tokens=0,
        pos_embed="learned",
        pos_embed_grid_size=None,  # from img_size, so the embeds know the native image size
        pos_embed_interp_mode="bilinear",
        pos_embed_antialias=True,
        pos_embed_align_corners=False,
        embed_proj_type="linear",
        patchify_channels_last=True,  # convert_image_to_patches' (p, p, C) order
        global_pool=global_pool,
        fc_norm=False,  # post_layernorm comes before the pooling (the classifier's mean, the attention pool)
        final_norm=True,
        norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        act_layer=hf_activation(config.hidden_act),
        weight_init="",
        fix_init=False,
    )
    return dict(cfg=cfg, in_chans=config.num_channels, img_size=siglip2_native_size(config), num_classes=0)


_HF_BLOCK_RENAMES = {
    "layer_norm1": "norm1",
    "layer_norm2": "norm2",
    "self_attn.out_proj": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_HF_QKV = {"self_attn.q_proj": 0, "self_attn.k_proj": 1, "self_attn.v_proj": 2}
_HF_TOP_RENAMES = {
    "embeddings.patch_embedding.weight": "embeds.proj.weight",
    "embeddings.patch_embedding.bias": "embeds.proj.bias",
    "post_layernorm.weight": "norm.weight",
    "post_layernorm.bias": "norm.bias",
    **SIGLIP_POOL_RENAMES,
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}


def siglip2_state_dict_to_timm(
        state_dict: Mapping[str, torch.Tensor], *, keep_head: bool = True,
) -> dict[str, torch.Tensor]:
    """Map a Siglip2VisionModel state_dict (plus an optional ``classifier.*``) to ``NaFlexVit`` keys.

    q/k/v are fused into ``attn.qkv``; the attention-pool head's packed ``in_proj`` is split into
    ``attn_pool.q`` (query rows) and ``attn_pool.kv`` (key and value rows); ``embeddings.position_embedding`` is
    dropped (the caller stores the grid resized as transformers does). ``keep_head=False`` drops the attention-pool
    head (unused by Siglip2ForImageClassification). Raises ValueError on a key it cannot map exactly.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key == "embeddings.position_embedding.weight":
            continue
        if key.startswith("head."):
            if not keep_head:
                continue
            if key in ("head.attention.in_proj_weight", "head.attention.in_proj_bias"):
                param = "weight" if key.endswith("weight") else "bias"
                dim = value.shape[0] // 3
                out[f"attn_pool.q.{param}"] = value[:dim]
                out[f"attn_pool.kv.{param}"] = value[dim:]
                continue
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        parts = key.split(".")
        if len(parts) >= 5 and parts[:2] == ["encoder", "layers"] and parts[2].isdigit():
            index, module, param = parts[2], ".".join(parts[3:-1]), parts[-1]
            if module in _HF_BLOCK_RENAMES and param in ("weight", "bias"):
                out[f"blocks.{index}.{_HF_BLOCK_RENAMES[module]}.{param}"] = value
                continue
            if module in _HF_QKV and param in ("weight", "bias"):
                qkv.setdefault((index, param), {})[_HF_QKV[module]] = value
                continue
        raise ValueError(f"Cannot map transformers weight {key!r} to a timm NaFlexVit; no exact conversion known.")
    for (index, param), parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"blocks.{index}.attn.qkv.{param}: found {len(parts)} of q/k/v; cannot fuse exactly.")
        out[f"blocks.{index}.attn.qkv.{param}"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


@torch.no_grad()
def resize_siglip2_pos_embed(source: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The position embeddings transformers adds at ``spatial_shapes = grid``: ``source`` [1, S, S, D] -> [1, h, w, D].

    Calls transformers' own ``Siglip2VisionEmbeddings.resize_positional_embeddings`` (bilinear, antialiased,
    ``align_corners=False``), on ``source``'s device and in its dtype, so the values are transformers' own.
    """
    from transformers.models.siglip2.modeling_siglip2 import Siglip2VisionEmbeddings

    height, width = grid
    spatial_shapes = torch.tensor([[height, width]], dtype=torch.long, device=source.device)
    resized = Siglip2VisionEmbeddings.resize_positional_embeddings(
        source[0], spatial_shapes, max_length=height * width)
    return resized.reshape(1, height, width, source.shape[-1]).to(source.dtype)


def convert_hf_siglip2(hf_model: nn.Module) -> NaFlexVit:
    """A timm ``NaFlexVit`` computing what a transformers SigLIP2 vision encoder computes on fixed-size images.

    Takes a Siglip2VisionModel, a Siglip2Model (its vision tower) or a Siglip2ForImageClassification. The model
    runs at :func:`siglip2_native_size` (the position grid's own size; :func:`set_siglip2_run_size` for another)
    and its forward gives ``pooler_output`` (attention-pool head), the classifier's logits
    (Siglip2ForImageClassification, a Linear on the mean of the normed patch tokens) or, for a tower without a
    head, the mean of the normed tokens. On the device and in the floating dtype of ``hf_model``.
    """
    tower = siglip2_vision_tower(hf_model)
    config = tower.config
    classifier = getattr(hf_model, "classifier", None) if hf_model is not tower else None
    if classifier is not None and not isinstance(classifier, (nn.Linear, nn.Identity)):
        raise ValueError(
            f"{type(hf_model).__name__}.classifier is a {type(classifier).__name__}; only a Linear (or Identity) "
            "classifier converts exactly."
        )
    state_dict = dict(tower.state_dict())
    is_classifier = classifier is not None
    use_head = bool(getattr(tower, "use_head", False)) and not is_classifier
    kwargs = siglip2_config_from_hf(config, global_pool="map" if use_head else "avg")
    if isinstance(classifier, nn.Linear):
        if classifier.in_features != config.hidden_size:
            raise ValueError(
                f"{type(hf_model).__name__}.classifier takes {classifier.in_features} inputs; the SigLIP2 mean "
                f"pool gives {config.hidden_size}."
            )
        kwargs["num_classes"] = classifier.out_features
        state_dict.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    reference = tower.embeddings.patch_embedding.weight
    with torch.device("meta"):
        model = NaFlexVit(**kwargs)
    model = model.to_empty(device=reference.device)
    if reference.is_floating_point():
        model = model.to(dtype=reference.dtype)
    timm_state_dict = siglip2_state_dict_to_timm(state_dict, keep_head=use_head)
    side = _grid_side(config)
    # the checkpoint's grid as it is: at its own size transformers' resize weights are exactly one-hot (scale 1),
    # so the embeddings it adds there are these values bit for bit
    timm_state_dict["embeds.pos_embed"] = tower.embeddings.position_embedding.weight.reshape(1, side, side, -1)
    model.load_state_dict(timm_state_dict, strict=True)
    setattr(model, _SOURCE_GRID, (side, side))
    return model.eval()


@torch.no_grad()
def set_siglip2_run_size(model: NaFlexVit, img_size: tuple[int, int]) -> None:
    """Make ``img_size`` the model's own size: its position grid becomes transformers' resize of the checkpoint's
    grid to ``spatial_shapes = img_size / patch_size`` (bilinear, antialiased), once here rather than per forward.

    Only for a model :func:`convert_hf_siglip2` built, still holding the checkpoint's grid (convert again to change
    the size a second time: a resized grid is not what transformers resizes from).
    """
    embeds = model.embeds
    source_grid = getattr(model, _SOURCE_GRID, None)
    if source_grid is None:
        raise ValueError("set_siglip2_run_size takes a NaFlexVit built by convert_hf_siglip2.")
    patch_h, patch_w = embeds.patch_size
    height, width = int(img_size[0]), int(img_size[1])
    if height % patch_h or width % patch_w or height < patch_h or width < patch_w:
        raise ValueError(
            f"A SigLIP2 teacher runs at a multiple of its patch size {embeds.patch_size}; got img_size={img_size}."
        )
    grid = (height // patch_h, width // patch_w)
    current_grid = tuple(embeds.pos_embed.shape[1:3])
    if grid == current_grid:
        return
    if current_grid != tuple(source_grid):
        raise ValueError(
            f"This SigLIP2 model's position grid was already resized to {current_grid} (the checkpoint's is "
            f"{tuple(source_grid)}); transformers resizes from the checkpoint's grid, so convert the transformers "
            "model again for another size."
        )
    pos_embed = resize_siglip2_pos_embed(embeds.pos_embed.detach(), grid)
    embeds.pos_embed = nn.Parameter(pos_embed, requires_grad=embeds.pos_embed.requires_grad)
    embeds.pos_embed_grid_size = grid
    embeds.default_img_size = (height, width)


def siglip2_data_config(config: Any, img_size: tuple[int, int]) -> dict[str, Any]:
    """Siglip2ImageProcessor defaults: bilinear resize (no crop), mean = std = 0.5."""
    in_chans = _vision_config(config).num_channels
    return processor_data_config(in_chans, img_size, "bilinear", SIGLIP2_MEAN, SIGLIP2_STD)


def siglip2_hidden_states(hf_model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """transformers' hidden_states for normalised images at a multiple of the patch size, given as
    Siglip2ImageProcessor gives them: its own patchify, no padding (full mask), spatial_shapes = (H / p, W / p)."""
    from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

    tower = siglip2_vision_tower(hf_model)
    patch = _patch_size(tower.config)
    patches = torch.stack([convert_image_to_patches(image, patch) for image in images])
    batch, num_patches = patches.shape[:2]
    grid = [images.shape[2] // patch, images.shape[3] // patch]
    return tower(pixel_values=patches, pixel_attention_mask=torch.ones(batch, num_patches, dtype=torch.int32),
                 spatial_shapes=torch.tensor([grid] * batch), output_hidden_states=True).hidden_states


register_hf_converter(HfConverter(
    model_types=HF_SIGLIP2_MODEL_TYPES,
    convert=convert_hf_siglip2,
    data_config=siglip2_data_config,
    set_run_size=set_siglip2_run_size,
    hidden_states=siglip2_hidden_states,
))
