"""DINOv3 transformers encoders -> timm ``Eva``, as timm's ``vit_*_patch16_dinov3`` models build it.

transformers' ``DINOv3ViTModel`` (and ``DINOv3ViTBackbone``, the same weights; transformers 5.24 has no
DINOv3 classifier) is timm's DINOv3 ``Eva``: class token, register tokens, no absolute position embedding, RoPE
on the patch tokens (``rope_type='dinov3'``, rotate-half layout), LayerScale on both branches, a plain GELU MLP or a
gated SiLU MLP (timm ``SwiGLU``, split gate / up projections), a final norm. The state_dict is mapped onto timm
keys (q/k/v fused into ``attn.qkv`` with timm's fixed zero key bias) and loaded strictly.

Exactness: everything but the RoPE angles is the same computation, bit for bit. The angles are not: transformers
multiplies ``2*pi*coords`` by ``inv_freq = 1 / theta ** arange(0, 1, 4 / head_dim)``, timm divides it by
``periods = theta ** (2 * arange(head_dim // 4) / (head_dim // 2))``; the two differ in the last float32 bit for
some frequencies, so the hidden states agree to ~1e-6 relative (the tests hold them to 1e-5), not bit for bit.

RoPE has no learned grid: at any image size the model computes what transformers computes at that size, so
:func:`set_dinov3_run_size` only sets the patch grid.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import LayerNorm
from timm.models.eva import Eva
from torch import nn

from ..models.families import pair
from .registry import (
    HfConverter,
    attention_sizes,
    check_model_type,
    processor_data_config,
    register_hf_converter,
    timm_mlp_ratio,
)

__all__ = [
    "HF_DINOV3_MODEL_TYPES",
    "dinov3_config_from_hf",
    "hf_dinov3_state_dict_to_timm",
    "convert_hf_dinov3",
    "set_dinov3_run_size",
    "dinov3_data_config",
]

HF_DINOV3_MODEL_TYPES = ("dinov3_vit",)
"""transformers ``model_type`` s that :func:`convert_hf_dinov3` converts."""

_GATED_ACTIVATIONS = ("silu", "swish")  # timm's SwiGLU gate is SiLU
_PLAIN_ACTIVATIONS = ("gelu",)  # timm's Eva builds its plain MLP with GELU (erf)


def dinov3_config_from_hf(config: Any) -> dict[str, Any]:
    """timm ``Eva`` kwargs reproducing a transformers DINOv3ViT config (without a head, ``global_pool='token'``).

    The arguments of timm's ``vit_*_patch16_dinov3`` models with the config's sizes; built with
    ``dynamic_img_size=True`` (RoPE for the grid of each input). transformers' train-time RoPE augmentations
    (``pos_embed_shift`` / ``_jitter`` / ``_rescale``) are left out: a teacher runs in eval mode, where
    transformers does not apply them. Raises ValueError where a setting has no exact timm equivalent.
    """
    check_model_type(config, HF_DINOV3_MODEL_TYPES, "a timm DINOv3 Eva")
    embed_dim, num_heads = attention_sizes(config, "DINOv3 RoPE", head_dim_multiple=4)
    if config.key_bias:
        raise ValueError(
            "key_bias=True: timm's Eva attention has no key bias (a fixed zero, as in every DINOv3 checkpoint); "
            "supported: key_bias=False."
        )
    patch_size = pair(config.patch_size)
    if patch_size[0] != patch_size[1]:
        raise ValueError(f"patch_size={config.patch_size!r}: only square patches are supported.")
    mlp_hidden = config.intermediate_size
    if config.use_gated_mlp:
        if config.hidden_act not in _GATED_ACTIVATIONS:
            raise ValueError(
                f"use_gated_mlp with hidden_act={config.hidden_act!r}: timm's SwiGLU gates with SiLU; supported: "
                f"{', '.join(_GATED_ACTIVATIONS)}."
            )
    elif config.hidden_act not in _PLAIN_ACTIVATIONS:
        raise ValueError(
            f"hidden_act={config.hidden_act!r}: timm's Eva MLP uses GELU (erf); supported: "
            f"{', '.join(_PLAIN_ACTIVATIONS)} (or use_gated_mlp with silu)."
        )
    mlp_ratio = timm_mlp_ratio(embed_dim, mlp_hidden)
    return dict(
        img_size=pair(config.image_size),
        patch_size=patch_size[0],
        in_chans=config.num_channels,
        num_classes=0,
        global_pool="token",
        embed_dim=embed_dim,
        depth=config.num_hidden_layers,
        num_heads=num_heads,
        # timm has one switch for the q and v biases; a bias transformers lacks is loaded as zeros
        qkv_bias=bool(config.query_bias or config.value_bias),
        mlp_ratio=mlp_ratio,
        swiglu_mlp=bool(config.use_gated_mlp),
        # align_to=1: timm's split SwiGLU (gate_proj / up_proj as fc1_g / fc1_x) at exactly intermediate_size
        swiglu_align_to=1 if config.use_gated_mlp else 0,
        init_values=float(config.layerscale_value),  # LayerScale always on (0.0 keeps the parameter in Eva)
        class_token=True,
        num_reg_tokens=config.num_register_tokens,
        use_abs_pos_emb=False,
        use_rot_pos_emb=True,
        rope_type="dinov3",
        rope_temperature=float(config.rope_theta),
        rope_rotate_half=True,
        use_fc_norm=False,
        norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        dynamic_img_size=True,
    )


# transformers layer sub-module -> timm EvaBlock sub-module
_HF_BLOCK_RENAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.o_proj": "attn.proj",
    "mlp.up_proj": "mlp.fc1",  # plain MLP; the gated one's up_proj is remapped below
    "mlp.down_proj": "mlp.fc2",
    "mlp.gate_proj": "mlp.fc1_g",
}
_HF_QKV = {"attention.q_proj": 0, "attention.k_proj": 1, "attention.v_proj": 2}
_HF_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.patch_embeddings.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.bias": "patch_embed.proj.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
# the masked-image-modelling token; RoPE frequencies are recomputed (non-persistent in both libraries)
_HF_DROPPED = re.compile(r"^(embeddings\.mask_token|rope_embeddings\..*)$")
_HF_BLOCK_KEY = re.compile(r"^model\.layer\.(\d+)\.(.+)\.(weight|bias|lambda1)$")
# timm biases a transformers config can switch off (query_bias / value_bias / proj_bias / mlp_bias)
_OPTIONAL_BIAS = re.compile(r"^blocks\.\d+\.(attn\.(q_bias|v_bias|proj\.bias)|mlp\.(fc1|fc1_g|fc1_x|fc2)\.bias)$")


def hf_dinov3_state_dict_to_timm(
        state_dict: Mapping[str, torch.Tensor],
        model: Eva | None = None,
) -> dict[str, torch.Tensor]:
    """Map a transformers DINOv3ViTModel / DINOv3ViTBackbone state_dict to timm Eva keys.

    q/k/v weights are fused into ``attn.qkv.weight`` and the q / v biases become ``attn.q_bias`` /
    ``attn.v_bias`` (timm's key bias is a fixed zero buffer; a key bias raises). ``layer_scale{1,2}.lambda1``
    become ``gamma_{1,2}``; a gated MLP's ``gate_proj`` / ``up_proj`` become ``mlp.fc1_g`` / ``mlp.fc1_x``, a plain
    one's ``up_proj`` ``mlp.fc1``. Biases transformers leaves out (``mlp_bias`` / ``proj_bias`` / one of the
    q / v biases False) are zeros when ``model`` (the timm model they are loaded into) has them. Raises
    ValueError on a key it cannot map exactly.
    """
    gated = any(".mlp.gate_proj." in key for key in state_dict)
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if _HF_DROPPED.match(key) or (key == "embeddings.register_tokens" and value.shape[1] == 0):
            continue  # (transformers keeps a [1, 0, D] register parameter when there are none)
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        match = _HF_BLOCK_KEY.match(key)
        if match is None:
            raise ValueError(f"Cannot map transformers weight {key!r} to a timm Eva; no exact conversion known.")
        index, module, param = match.groups()
        block = f"blocks.{index}"
        if module in ("layer_scale1", "layer_scale2") and param == "lambda1":
            out[f"{block}.gamma_{module[-1]}"] = value
        elif module == "mlp.up_proj" and gated and param != "lambda1":
            out[f"{block}.mlp.fc1_x.{param}"] = value
        elif module in _HF_BLOCK_RENAMES and param != "lambda1":
            out[f"{block}.{_HF_BLOCK_RENAMES[module]}.{param}"] = value
        elif module in _HF_QKV and param == "weight":
            qkv.setdefault(block, {})[_HF_QKV[module]] = value
        elif module in _HF_QKV and param == "bias" and _HF_QKV[module] != 1:
            out[f"{block}.attn.{'q' if _HF_QKV[module] == 0 else 'v'}_bias"] = value
        else:
            raise ValueError(f"Cannot map transformers weight {key!r} to a timm Eva; no exact conversion known.")
    for block, parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"{block}: found {len(parts)} of the 3 transformers q/k/v weights timm fuses.")
        out[f"{block}.attn.qkv.weight"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    if model is not None:  # biases transformers does not have: exact zeros (x @ W.T + 0 == x @ W.T)
        for name, param in model.state_dict().items():
            if name not in out and _OPTIONAL_BIAS.match(name):
                out[name] = torch.zeros_like(param)
    return out


def _hf_dinov3_encoder(hf_model: nn.Module) -> nn.Module:
    """The module holding ``embeddings`` / ``model`` / ``norm``: DINOv3ViTModel or DINOv3ViTBackbone itself.

    (Their ``base_model`` is the layer stack, since ``base_model_prefix`` is ``'model'``.)
    """
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in HF_DINOV3_MODEL_TYPES or not all(
            hasattr(hf_model, name) for name in ("embeddings", "rope_embeddings", "model", "norm")):
        raise TypeError(
            f"convert_hf_dinov3 takes a transformers DINOv3ViTModel or DINOv3ViTBackbone; got "
            f"{type(hf_model).__name__} (model_type {model_type!r})."
        )
    return hf_model


def convert_hf_dinov3(hf_model: nn.Module) -> Eva:
    """A timm ``Eva`` computing what a transformers DINOv3ViTModel / DINOv3ViTBackbone computes.

    The same computation except the RoPE angle formula (module docstring): states agree to ~1e-6 relative.
    The model has no head; its forward returns the normed class token (transformers' ``pooler_output``). It
    runs at any size that is a multiple of the patch size, as transformers does. The result is on the device
    and in the floating dtype of ``hf_model``.
    """
    encoder = _hf_dinov3_encoder(hf_model)
    model = Eva(**dinov3_config_from_hf(encoder.config))
    state_dict = {k: v for k, v in encoder.state_dict().items()}
    model.load_state_dict(hf_dinov3_state_dict_to_timm(state_dict, model), strict=True)
    reference = next(encoder.parameters())
    dtype = reference.dtype if reference.is_floating_point() else None
    return model.to(device=reference.device, dtype=dtype).eval()


def set_dinov3_run_size(model: Eva, img_size: tuple[int, int]) -> None:
    """Make ``img_size`` the model's own size: the patch grid (RoPE follows the grid of each input)."""
    model.set_input_size(img_size=tuple(img_size))


def dinov3_data_config(config: Any, img_size: tuple[int, int]) -> dict[str, Any]:
    """``DINOv3ViTImageProcessor`` defaults: bilinear resize straight to the run size (no crop), ImageNet mean/std."""
    return processor_data_config(config.num_channels, img_size, "bilinear", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)


register_hf_converter(HfConverter(
    model_types=HF_DINOV3_MODEL_TYPES,
    convert=convert_hf_dinov3,
    data_config=dinov3_data_config,
    set_run_size=set_dinov3_run_size,
))
