"""BEiT-family transformers encoders -> timm ``Beit``: BEiT and Data2Vec-vision (the same architecture).

transformers' ``BeitModel`` / ``BeitForImageClassification`` and ``Data2VecVisionModel`` /
``Data2VecVisionForImageClassification`` compute what timm's ``Beit`` computes: a class token, a patch conv, an
optional absolute position embedding, pre-norm blocks whose attention has a query and a value bias but no key bias
and adds a relative-position bias (per layer and / or one shared by all layers), layer scales ``lambda_1`` /
``lambda_2`` (timm ``gamma_1`` / ``gamma_2``), and a final norm either on every token (class-token pooling) or on
the mean of the patch tokens (``use_mean_pooling``: timm's ``fc_norm``). The state_dict is mapped onto timm keys
(q/k/v fused into ``attn.qkv`` with timm's zero key bias) and loaded strictly; at the config's ``image_size`` every
hidden state is bit-identical to transformers'.

Other sizes are not supported (``set_run_size=None``): transformers resamples the relative-position tables
(bilinear, every forward) and, only with ``interpolate_pos_encoding=True``, the absolute position embedding, which
timm's ``Beit.set_input_size`` does differently.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.layers import LayerNorm
from timm.models.beit import Beit, RelativePositionBias
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
    "HF_BEIT_MODEL_TYPES",
    "BEIT_MEAN",
    "BEIT_STD",
    "beit_config_from_hf",
    "hf_beit_state_dict_to_timm",
    "convert_hf_beit",
    "beit_data_config",
    "BatchedRelativePositionBias",
]

HF_BEIT_MODEL_TYPES = ("beit", "data2vec-vision")
"""transformers ``model_type`` s that :func:`convert_hf_beit` converts exactly."""

BEIT_MEAN = (0.5, 0.5, 0.5)
BEIT_STD = (0.5, 0.5, 0.5)
"""``BeitImageProcessor`` defaults (IMAGENET_STANDARD_MEAN / _STD), used by BEiT and Data2Vec-vision."""


def beit_config_from_hf(config: Any) -> dict[str, Any]:
    """timm ``Beit`` kwargs reproducing a transformers BEiT / Data2Vec-vision config (without a head).

    With ``use_mean_pooling`` the model pools the patch-token mean through ``fc_norm`` (the pooler's layernorm),
    else it norms every token and reads the class token. Raises ValueError where a setting has no exact timm
    equivalent.
    """
    check_model_type(config, HF_BEIT_MODEL_TYPES, "a timm Beit")
    embed_dim, num_heads = attention_sizes(config, "timm Beit")
    if config.hidden_act != "gelu":
        raise ValueError(
            f"hidden_act={config.hidden_act!r}: timm Beit blocks use GELU (erf) only; supported: 'gelu'."
        )
    patch_size = pair(config.patch_size)
    if patch_size[0] != patch_size[1]:
        raise ValueError(f"patch_size={config.patch_size!r}: only square patches are supported.")
    mlp_hidden = config.intermediate_size
    mlp_ratio = timm_mlp_ratio(embed_dim, mlp_hidden)
    mean_pooling = bool(config.use_mean_pooling)
    return dict(
        img_size=pair(config.image_size),
        patch_size=patch_size[0],
        in_chans=config.num_channels,
        num_classes=0,
        global_pool="avg" if mean_pooling else "token",
        use_fc_norm=mean_pooling,
        embed_dim=embed_dim,
        depth=config.num_hidden_layers,
        num_heads=num_heads,
        qkv_bias=True,
        mlp_ratio=mlp_ratio,
        norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        # a layer scale of 0 is transformers' "no layer scale" (lambda = 1.0): timm's init_values=None
        init_values=config.layer_scale_init_value if config.layer_scale_init_value > 0 else None,
        use_abs_pos_emb=bool(config.use_absolute_position_embeddings),
        use_rel_pos_bias=bool(config.use_relative_position_bias),
        use_shared_rel_pos_bias=bool(config.use_shared_relative_position_bias),
    )


# transformers block sub-module -> timm Block sub-module: BEiT's 5.x names and the 4.x / Data2Vec-vision names
_HF_BLOCK_RENAMES = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "intermediate.dense": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "output.dense": "mlp.fc2",
}
_HF_QKV = {
    "attention.q_proj": 0, "attention.attention.query": 0,
    "attention.k_proj": 1, "attention.attention.key": 1,
    "attention.v_proj": 2, "attention.attention.value": 2,
}
_HF_REL_POS = ("relative_position_bias", "attention.attention.relative_position_bias")
_HF_TOP_RENAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "shared_position_bias.relative_position_bias_table": "rel_pos_bias.relative_position_bias_table",
    "encoder.relative_position_bias.relative_position_bias_table": "rel_pos_bias.relative_position_bias_table",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "pooler.layernorm.weight": "fc_norm.weight",
    "pooler.layernorm.bias": "fc_norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
}
# the masked-image-modelling token, and the relative-position index buffers older checkpoints stored
_HF_DROPPED = re.compile(r"^(embeddings\.mask_token|.*relative_position_index)$")
_HF_BLOCK_KEY = re.compile(r"^(?:encoder\.layer|layers)\.(\d+)\.(.+)$")


def hf_beit_state_dict_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a transformers BEiT / Data2Vec-vision base-model state_dict (plus ``classifier.*``) to timm Beit keys.

    q/k/v weights are fused into ``attn.qkv.weight``; the query and value biases become ``attn.q_bias`` /
    ``attn.v_bias`` (timm's key bias is a fixed zero buffer, as transformers' key has no bias). ``lambda_1`` /
    ``lambda_2`` become ``gamma_1`` / ``gamma_2``, the per-layer relative-position tables
    ``attn.relative_position_bias_table``, the shared one ``rel_pos_bias.relative_position_bias_table``, the
    pooler's layernorm (mean pooling) ``fc_norm``. Raises ValueError on a key it cannot map exactly.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if _HF_DROPPED.match(key):
            continue
        if key in _HF_TOP_RENAMES:
            out[_HF_TOP_RENAMES[key]] = value
            continue
        match = _HF_BLOCK_KEY.match(key)
        if match is None:
            raise ValueError(f"Cannot map transformers weight {key!r} to a timm Beit; no exact conversion known.")
        index, rest = match.groups()
        block = f"blocks.{index}"
        module, _, param = rest.rpartition(".")
        if rest in ("lambda_1", "lambda_2"):
            out[f"{block}.gamma_{rest[-1]}"] = value
        elif module in _HF_BLOCK_RENAMES and param in ("weight", "bias"):
            out[f"{block}.{_HF_BLOCK_RENAMES[module]}.{param}"] = value
        elif module in _HF_QKV and param == "weight":
            qkv.setdefault(block, {})[_HF_QKV[module]] = value
        elif module in _HF_QKV and param == "bias" and _HF_QKV[module] != 1:
            out[f"{block}.attn.{'q' if _HF_QKV[module] == 0 else 'v'}_bias"] = value
        elif module in _HF_REL_POS and param == "relative_position_bias_table":
            out[f"{block}.attn.relative_position_bias_table"] = value
        else:
            raise ValueError(f"Cannot map transformers weight {key!r} to a timm Beit; no exact conversion known.")
    for block, parts in qkv.items():
        if sorted(parts) != [0, 1, 2]:
            raise ValueError(f"{block}: found {len(parts)} of the 3 transformers q/k/v weights timm fuses.")
        out[f"{block}.attn.qkv.weight"] = torch.cat([parts[0], parts[1], parts[2]], dim=0)
    return out


class BatchedRelativePositionBias(RelativePositionBias):
    """timm's shared relative-position bias returned as ``[1, heads, N, N]`` instead of ``[heads, N, N]``.

    The same values; the leading 1 is the layout transformers hands to ``scaled_dot_product_attention``, whose
    kernels round differently for a 3-d mask (up to ~4e-7 here), so with it the shared-bias model stays
    bit-identical to transformers. Per-layer tables already come as ``[1, heads, N, N]`` in timm.
    """

    def forward(self) -> torch.Tensor:
        return super().forward().unsqueeze(0)


def _hf_beit_base(hf_model: nn.Module) -> nn.Module:
    """The BEiT / Data2Vec-vision encoder of a base model or of an ``*ForImageClassification`` wrapper."""
    config = getattr(hf_model, "config", None)
    model_type = getattr(config, "model_type", None)
    base = getattr(hf_model, "base_model", hf_model)
    if model_type not in HF_BEIT_MODEL_TYPES or not isinstance(base, nn.Module) or not hasattr(base, "embeddings"):
        raise TypeError(
            f"convert_hf_beit takes a transformers BEiT / Data2Vec-vision model (BeitModel, "
            f"BeitForImageClassification, Data2VecVisionModel, Data2VecVisionForImageClassification); got "
            f"{type(hf_model).__name__} (model_type {model_type!r})."
        )
    return base


def convert_hf_beit(hf_model: nn.Module) -> Beit:
    """A timm ``Beit`` computing exactly what a transformers BEiT / Data2Vec-vision model computes.

    Blocks, embeddings, relative-position biases and the final norm are always converted: with
    ``use_mean_pooling`` the model pools the mean of the patch tokens and norms it with the pooler's layernorm
    (timm ``global_pool='avg'``, ``fc_norm``; a base model built without its pooler, as ``Data2VecVisionModel``
    is by default, gets ``fc_norm = Identity``), else it norms every token and reads the class token
    (``global_pool='token'``). The classifier of a ``*ForImageClassification`` model becomes timm's head when it
    is a ``nn.Linear``; a base model has no head, so its forward returns transformers' ``pooler_output``. The
    model runs at the config's ``image_size`` only. The result is on the device and in the floating dtype of
    ``hf_model``.
    """
    base = _hf_beit_base(hf_model)
    config = base.config
    pooler = getattr(base, "pooler", None)
    model_args = beit_config_from_hf(config)
    state_dict = dict(base.state_dict())
    classifier = getattr(hf_model, "classifier", None) if hf_model is not base else None
    if isinstance(classifier, nn.Linear):
        if classifier.in_features != config.hidden_size:
            raise ValueError(
                f"{type(hf_model).__name__}.classifier takes {classifier.in_features} inputs; the "
                f"{config.model_type} head reads hidden_size={config.hidden_size}."
            )
        model_args["num_classes"] = classifier.out_features
        state_dict.update({f"classifier.{k}": v for k, v in classifier.state_dict().items()})
    elif classifier is not None and not isinstance(classifier, nn.Identity):
        warnings.warn(
            f"{type(hf_model).__name__}.classifier is a {type(classifier).__name__}, not a Linear; the converted "
            "teacher has no head (head = Identity) and its logits are its pooled features.",
            stacklevel=2,
        )
    model = Beit(**model_args)
    if model.rel_pos_bias is not None:
        model.rel_pos_bias = BatchedRelativePositionBias(
            window_size=model.patch_embed.grid_size, num_heads=config.num_attention_heads)
    if config.use_mean_pooling and pooler is None:
        model.fc_norm = nn.Identity()  # transformers' mean of patch tokens with no pooler: no norm at all
    model.load_state_dict(hf_beit_state_dict_to_timm(state_dict), strict=True)
    reference = next(base.parameters())
    dtype = reference.dtype if reference.is_floating_point() else None
    return model.to(device=reference.device, dtype=dtype).eval()


def beit_data_config(config: Any, img_size: tuple[int, int]) -> dict[str, Any]:
    """``BeitImageProcessor`` defaults: bicubic resize straight to the run size (no crop), mean = std = 0.5."""
    return processor_data_config(config.num_channels, img_size, "bicubic", BEIT_MEAN, BEIT_STD)


register_hf_converter(HfConverter(
    model_types=HF_BEIT_MODEL_TYPES,
    convert=convert_hf_beit,
    data_config=beit_data_config,
    set_run_size=None,
))
