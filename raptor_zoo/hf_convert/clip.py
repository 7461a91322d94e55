"""CLIP, SigLIP and AIMv2 transformers vision towers -> timm ``VisionTransformer`` (the layouts of timm's own
``vit_*_clip_*``, ``vit_*_siglip_*`` and ``aimv2_*`` models), and :func:`swap_vision_tower` to run a Raptor
inside a transformers ``CLIPModel`` / ``SiglipModel`` / ``Aimv2Model``.

What each family maps onto (transformers -> timm):

- CLIP (``clip_vision_model``, ``clip``): ``class_embedding`` -> ``cls_token``, the bias-free patch conv, the learned
  position embedding (class position first) -> ``pos_embed``, ``pre_layrnorm`` -> ``norm_pre`` (``pre_norm=True``),
  layers (``layer_norm1``, q/k/v fused into ``attn.qkv``, ``out_proj``, ``layer_norm2``, ``mlp.fc1/fc2``,
  ``quick_gelu``) -> ``Block``, ``post_layernorm`` -> ``norm`` (timm norms every token; transformers norms the
  pooled class token only, the same numbers for that token). ``visual_projection`` (``CLIPVisionModelWithProjection``,
  ``CLIPModel``) -> ``head`` (bias zero), as timm's OpenAI-CLIP checkpoint filter does.
- SigLIP (``siglip_vision_model``, ``siglip``): no class token, patch conv with bias, learned position embedding,
  CLIP's layers with ``gelu_pytorch_tanh``, ``post_layernorm`` -> ``norm`` (all tokens), the attention-pool head
  (``probe``, ``nn.MultiheadAttention``, ``layernorm``, ``mlp``) -> ``global_pool='map'`` ``attn_pool``
  (``latent``, ``in_proj`` split into ``q`` and ``kv``, ``proj``, ``norm``, ``mlp``), as timm's big_vision filter.
- AIMv2 (``aimv2_vision_model``, ``aimv2``): patch conv + RMSNorm -> ``patch_embed`` with ``embed_norm_layer``,
  learned position embedding, or for ``is_native`` configs the 2-D sin-cos table computed as transformers does,
  stored as ``pos_embed`` (recomputed, not resampled, by :func:`set_aimv2_run_size`), RMSNorm + SwiGLU layers
  (``gate_proj`` / ``up_proj`` -> ``mlp.fc1_g`` / ``mlp.fc1_x``: timm's ``SwiGLU``), final RMSNorm -> ``norm``.
  transformers' ``Aimv2AttentionPoolingHead`` (a learned query with no q projection, k/v projections, one output
  projection, no norm and no MLP; timm's ``aimv2_*`` models have none and pool by ``'avg'``) -> timm's
  ``global_pool='map'`` ``attn_pool`` with ``latent`` = its ``cls_token``, ``q`` = identity (zero bias; the product
  with an identity matrix is exact), ``kv`` = [k; v], ``proj`` = ``output_proj`` and a residual MLP that adds exactly
  0 (zero weights), so the model is a plain timm ``VisionTransformer`` that its arguments rebuild (a Raptor of it
  can be saved). ``Aimv2Model``'s ``visual_projection`` -> ``head``.

``teacher(x)`` is the tower's image embedding: ``image_embeds`` where the model projects (``CLIPModel``,
``CLIPVisionModelWithProjection``, ``Aimv2Model``), else ``pooler_output`` (``post_layernorm(cls)`` for CLIP, the
attention pool for SigLIP / AIMv2). Towers without a pooler (``vision_use_head=False`` / ``use_head=False``) pool by
the mean of the normed tokens (timm's ``*_siglip_gap_*`` / ``aimv2_*`` layout; transformers gives no pooled output).
``*ForImageClassification`` models pool as transformers does (CLIP: mean of the un-normed patch tokens, so timm's
final norm is dropped; SigLIP: mean of the normed tokens) and their Linear classifier becomes ``head``.

Exactness (float32, tests/test_hf_clip_family.py): CLIP and SigLIP per-layer states, final norm, pools and heads
equal transformers' bit for bit. AIMv2 agrees to float round-off (~1e-7 relative; the tests allow 1e-5), not bit for
bit: x_0 has identical values and every timm module (RMSNorm, attention, SwiGLU, block) equals transformers' bit for
bit on the same tensor, but the memory layouts of x_0 differ. transformers' eager ``Aimv2RMSNorm`` keeps the
channel-strided layout of the transposed patch-conv output, timm's ``RmsNorm`` (torch's fused ``F.rms_norm``)
returns a contiguous tensor, and the first layer's RMSNorm sums each token's squares in an order that depends on
the layout, so its last bit can differ (and that difference then propagates).
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.layers import LayerNorm, RmsNorm, SwiGLU
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..models.raptor_base import RaptorMixin
from .registry import (
    HfConverter,
    hf_activation,
    hf_model_type,
    processor_data_config,
    register_hf_converter,
)
from .vit import set_vit_run_size

__all__ = [
    "HF_CLIP_MODEL_TYPES",
    "HF_SIGLIP_MODEL_TYPES",
    "HF_AIMV2_MODEL_TYPES",
    "hf_vision_tower",
    "clip_family_config_from_hf",
    "hf_clip_family_state_dict_to_timm",
    "convert_hf_clip",
    "convert_hf_siglip",
    "convert_hf_aimv2",
    "aimv2_sincos_pos_embed",
    "set_aimv2_run_size",
    "clip_data_config",
    "siglip_data_config",
    "TimmVisionTower",
    "swap_vision_tower",
]

HF_CLIP_MODEL_TYPES = ("clip", "clip_vision_model")
HF_SIGLIP_MODEL_TYPES = ("siglip", "siglip_vision_model")
HF_AIMV2_MODEL_TYPES = ("aimv2", "aimv2_vision_model")
_FAMILY_OF_TYPE = {
    **{t: "clip" for t in HF_CLIP_MODEL_TYPES},
    **{t: "siglip" for t in HF_SIGLIP_MODEL_TYPES},
    **{t: "aimv2" for t in HF_AIMV2_MODEL_TYPES},
}
_TOWER_MODEL_TYPES = {"clip": "clip_vision_model", "siglip": "siglip_vision_model", "aimv2": "aimv2_vision_model"}

_AIMV2_SINCOS_ATTR = "hf_aimv2_sincos_pos_embed"
"""Set (True) on a converted AIMv2 model whose ``pos_embed`` is transformers' fixed sin-cos table (``is_native``)."""

_SIGLIP_MEAN = (0.5, 0.5, 0.5)
_SIGLIP_STD = (0.5, 0.5, 0.5)


def _family(model_type: str | None) -> str:
    if model_type not in _FAMILY_OF_TYPE:
        raise ValueError(
            f"transformers model_type {model_type!r} is not a CLIP / SigLIP / AIMv2 model; supported: "
            f"{', '.join(_FAMILY_OF_TYPE)}."
        )
    return _FAMILY_OF_TYPE[model_type]


def hf_vision_tower(hf_model: nn.Module) -> nn.Module:
    """The ``CLIPVisionModel`` / ``SiglipVisionModel`` / ``Aimv2VisionModel`` inside ``hf_model`` (or itself)."""
    family = _family(hf_model_type(hf_model))
    tower = getattr(hf_model, "vision_model", None)
    tower = tower if isinstance(tower, nn.Module) else hf_model
    if hf_model_type(tower) != _TOWER_MODEL_TYPES[family] or not hasattr(tower, "embeddings") \
            or not hasattr(tower, "encoder"):
        raise TypeError(
            f"{type(hf_model).__name__} (model_type {hf_model_type(hf_model)!r}) holds no {family} vision tower "
            f"(a transformers module of model_type {_TOWER_MODEL_TYPES[family]!r} with embeddings and an encoder)."
        )
    return tower


def _int_size(config: Any, name: str) -> int:
    value = getattr(config, name)
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or value[0] != value[1]:
            raise ValueError(f"{name}={value!r}: only square sizes are supported (transformers uses an int).")
        value = value[0]
    return int(value)


def _mlp_ratio(hidden: int, embed_dim: int) -> float:
    mlp_ratio = hidden / embed_dim
    if int(embed_dim * mlp_ratio) != hidden:  # float round-off; timm takes int(dim * mlp_ratio)
        mlp_ratio = (hidden + 0.5) / embed_dim
    return mlp_ratio


def clip_family_config_from_hf(config: Any) -> dict[str, Any]:
    """timm ``VisionTransformer`` kwargs for a CLIP / SigLIP / AIMv2 vision config (or its parent config).

    Built at the config's ``image_size`` with ``dynamic_img_size=True`` and without a head (``num_classes=0``);
    the pooling is the tower's own (CLIP ``'token'``; SigLIP and AIMv2 ``'map'`` when the tower has its attention
    head, else ``'avg'``). Raises ValueError for a setting without an exact timm equivalent.
    """
    family = _family(getattr(config, "model_type", None))
    config = getattr(config, "vision_config", None) or config
    embed_dim, num_heads = config.hidden_size, config.num_attention_heads
    if embed_dim % num_heads:
        raise ValueError(
            f"timm Attention needs hidden_size divisible by num_attention_heads; the {family} config has "
            f"hidden_size={embed_dim}, num_attention_heads={num_heads}."
        )
    args: dict[str, Any] = dict(
        img_size=_int_size(config, "image_size"),
        patch_size=_int_size(config, "patch_size"),
        in_chans=config.num_channels,
        num_classes=0,
        embed_dim=embed_dim,
        depth=config.num_hidden_layers,
        num_heads=num_heads,
        mlp_ratio=_mlp_ratio(config.intermediate_size, embed_dim),
        act_layer=hf_activation(config.hidden_act),
        dynamic_img_size=True,
    )
    if family == "clip":
        args.update(
            class_token=True, global_pool="token", pre_norm=True, qkv_bias=True,
            norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        )
    elif family == "siglip":
        args.update(
            class_token=False, global_pool="map" if getattr(config, "vision_use_head", True) else "avg",
            fc_norm=False, qkv_bias=True, norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        )
    else:
        if config.hidden_act not in ("silu", "swish"):
            raise ValueError(
                f"AIMv2 hidden_act={config.hidden_act!r}: timm's SwiGLU gate is SiLU; supported: 'silu'."
            )
        if config.is_native and embed_dim % 4:
            raise ValueError(f"AIMv2 is_native=True needs hidden_size divisible by 4 (sin-cos); got {embed_dim}.")
        args.update(
            class_token=False, global_pool="map" if config.use_head else "avg", fc_norm=False,
            qkv_bias=config.qkv_bias,
            # timm's Block has one bias flag for attn.proj and the MLP; transformers has qkv_bias (q/k/v and
            # out_proj) and mlp_bias: where they differ the missing biases are loaded as zeros
            proj_bias=config.qkv_bias or config.mlp_bias,
            norm_layer=partial(RmsNorm, eps=config.rms_norm_eps),
            embed_norm_layer=partial(RmsNorm, eps=config.rms_norm_eps),
            mlp_layer=SwiGLU,
        )
    return args


# per family: transformers layer sub-module -> timm Block sub-module, and the ones fused into attn.qkv
_LAYER_RENAMES = {
    "clip": {"layer_norm1": "norm1", "layer_norm2": "norm2", "self_attn.out_proj": "attn.proj",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"},
    "aimv2": {"rms_norm1": "norm1", "rms_norm2": "norm2", "attention.out_proj": "attn.proj",
              "ffn.gate_proj": "mlp.fc1_g", "ffn.up_proj": "mlp.fc1_x", "ffn.down_proj": "mlp.fc2"},
}
_LAYER_RENAMES["siglip"] = _LAYER_RENAMES["clip"]
_QKV = {"clip": "self_attn", "siglip": "self_attn", "aimv2": "attention"}
SIGLIP_POOL_RENAMES = {
    "head.probe": "attn_pool.latent",
    "head.attention.out_proj.weight": "attn_pool.proj.weight",
    "head.attention.out_proj.bias": "attn_pool.proj.bias",
    "head.layernorm.weight": "attn_pool.norm.weight",
    "head.layernorm.bias": "attn_pool.norm.bias",
    "head.mlp.fc1.weight": "attn_pool.mlp.fc1.weight",
    "head.mlp.fc1.bias": "attn_pool.mlp.fc1.bias",
    "head.mlp.fc2.weight": "attn_pool.mlp.fc2.weight",
    "head.mlp.fc2.bias": "attn_pool.mlp.fc2.bias",
}
"""SigLIP's attention-pool head (``SiglipMultiheadAttentionPoolingHead``, also SigLIP2's) -> timm AttentionPoolLatent
keys; its ``in_proj`` is split into ``q`` / ``kv`` separately."""
_TOP_RENAMES = {
    "clip": {
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "pre_layrnorm.weight": "norm_pre.weight",
        "pre_layrnorm.bias": "norm_pre.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
    },
    "siglip": {
        "embeddings.patch_embedding.weight": "patch_embed.proj.weight",
        "embeddings.patch_embedding.bias": "patch_embed.proj.bias",
        "post_layernorm.weight": "norm.weight",
        "post_layernorm.bias": "norm.bias",
        **SIGLIP_POOL_RENAMES,
    },
    "aimv2": {
        "embeddings.patch_embed.weight": "patch_embed.proj.weight",
        "embeddings.patch_embed.bias": "patch_embed.proj.bias",
        "embeddings.rms_norm.weight": "patch_embed.norm.weight",
        "rms_norm.weight": "norm.weight",
        "head.cls_token": "attn_pool.latent",
        "head.output_proj.weight": "attn_pool.proj.weight",
        "head.output_proj.bias": "attn_pool.proj.bias",
    },
}


def hf_clip_family_state_dict_to_timm(
        state_dict: Mapping[str, torch.Tensor],
        model_type: str,
) -> dict[str, torch.Tensor]:
    """Map the state_dict of a transformers CLIP / SigLIP / AIMv2 vision tower (``CLIPVisionModel`` etc.: keys
    ``embeddings.*``, ``encoder.layers.{i}.*``, norms, ``head.*``) to the timm keys of :func:`convert_hf_clip` /
    :func:`convert_hf_siglip` / :func:`convert_hf_aimv2`. q/k/v are fused into ``attn.qkv`` (AIMv2's head: k/v into
    ``attn_pool.kv``; SigLIP's ``in_proj`` is split into ``attn_pool.q`` and ``attn_pool.kv``). Raises ValueError on
    a key it cannot map exactly.
    """
    family = _family(model_type)
    renames, top = _LAYER_RENAMES[family], _TOP_RENAMES[family]
    qkv_prefix = _QKV[family]
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        if key in top:
            out[top[key]] = value
        elif key == "embeddings.position_embedding.weight":
            out["pos_embed"] = value.unsqueeze(0)
        elif family == "clip" and key == "embeddings.class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif family == "siglip" and key in ("head.attention.in_proj_weight", "head.attention.in_proj_bias"):
            dim = value.shape[0] // 3
            param = "weight" if key.endswith("weight") else "bias"
            out[f"attn_pool.q.{param}"], out[f"attn_pool.kv.{param}"] = value[:dim], value[dim:]
        elif family == "aimv2" and key.startswith(("head.k_proj.", "head.v_proj.")):
            fused.setdefault(f"attn_pool.kv.{key.rsplit('.', 1)[1]}", {})[key[5]] = value
        elif key.startswith("encoder.layers."):
            index, rest = key[len("encoder.layers."):].split(".", 1)
            module, param = rest.rsplit(".", 1)
            if module in renames:
                out[f"blocks.{index}.{renames[module]}.{param}"] = value
            elif module in (f"{qkv_prefix}.q_proj", f"{qkv_prefix}.k_proj", f"{qkv_prefix}.v_proj"):
                fused.setdefault(f"blocks.{index}.attn.qkv.{param}", {})[module[-6]] = value
            else:
                raise ValueError(f"Cannot map transformers {family} weight {key!r} to a timm ViT.")
        else:
            raise ValueError(f"Cannot map transformers {family} weight {key!r} to a timm ViT.")
    for target, parts in fused.items():
        order = "kv" if target.startswith("attn_pool.") else "qkv"
        if sorted(parts) != sorted(order):
            raise ValueError(
                f"{target}: found transformers parts {sorted(parts)} of {list(order)} (e.g. a bias on some only); "
                "timm cannot represent this exactly."
            )
        out[target] = torch.cat([parts[p] for p in order], dim=0)
    return out


def aimv2_sincos_pos_embed(
        grid_size: tuple[int, int],
        embed_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[1, H*W, D]``: the 2-D sin-cos position table of transformers' native AIMv2 (``is_native=True``).

    transformers builds ``[sin_h | cos_h | sin_w | cos_w]`` in float64 (temperature 10000, row-major patches),
    casts it to the activations' dtype and swaps its halves, giving ``[sin_w | cos_w | sin_h | cos_h]``.
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for the sin-cos table; got {embed_dim}.")
    pos_dim = embed_dim // 4
    omega = torch.arange(pos_dim, dtype=torch.float64, device=device) / pos_dim
    omega = 1.0 / 10000.0 ** omega
    grid_h, grid_w = torch.meshgrid(
        torch.arange(grid_size[0], dtype=torch.float64, device=device),
        torch.arange(grid_size[1], dtype=torch.float64, device=device), indexing="ij")
    emb_h, emb_w = grid_h.flatten().outer(omega), grid_w.flatten().outer(omega)
    table = torch.cat([emb_h.sin(), emb_h.cos(), emb_w.sin(), emb_w.cos()], dim=1).to(dtype)
    half = embed_dim // 2
    return torch.cat([table[:, half:], table[:, :half]], dim=-1).unsqueeze(0)


@torch.no_grad()
def set_aimv2_run_size(model: VisionTransformer, img_size: tuple[int, int]) -> None:
    """Run a converted AIMv2 at ``img_size``: a native (sin-cos) model gets the table of the new grid, computed as
    transformers does; a learned position embedding runs at its config's size only (transformers'
    ``Aimv2VisionEmbeddings`` has no interpolation), so another size raises ValueError."""
    img_size = tuple(img_size)
    if tuple(model.patch_embed.img_size) == img_size:
        return
    if not getattr(model, _AIMV2_SINCOS_ATTR, False):
        raise ValueError(
            f"An AIMv2 with a learned position embedding (is_native=False) runs at its config image_size "
            f"{tuple(model.patch_embed.img_size)} only, as transformers' Aimv2VisionEmbeddings (no interpolation); "
            f"img_size={img_size} is not supported."
        )
    patch_height, patch_width = model.patch_embed.patch_size
    grid = (img_size[0] // patch_height, img_size[1] // patch_width)
    table = aimv2_sincos_pos_embed(grid, model.embed_dim, dtype=model.pos_embed.dtype, device=model.pos_embed.device)
    model.pos_embed = nn.Parameter(table, requires_grad=model.pos_embed.requires_grad)
    model.patch_embed.set_input_size(img_size=img_size)


# timm architectures whose entrypoint defaults (norm type and eps, MLP type) a converted SigLIP / AIMv2 shares, with
# the config's eps they need; the converted model's own arguments override every other setting
_TIMM_ARCHITECTURES = {
    "siglip": ("vit_base_patch16_siglip_224", "layer_norm_eps", 1e-6),
    "aimv2": ("aimv2_large_patch14_224", "rms_norm_eps", 1e-5),
}
_NON_JSON_ARGS = ("norm_layer", "embed_norm_layer", "mlp_layer", "img_size", "num_classes")


def _record_timm_architecture(model: VisionTransformer, family: str, args: Mapping[str, Any], config: Any) -> None:
    """Name a timm architecture + arguments that rebuild ``model`` (``pretrained_cfg['architecture']``,
    ``raptor_teacher_args``), so that a Raptor of it (a copy of it, its blocks shared) can be saved and rebuilt from
    config.json. CLIP needs none (its Raptor is a RaptorVisionTransformer built from its arguments). Where the
    config's norm eps is not that architecture's, nothing is recorded: the Raptor works but saving it says why."""
    architecture, eps_name, eps = _TIMM_ARCHITECTURES[family]
    if getattr(config, eps_name) != eps:
        return
    model.pretrained_cfg = {"architecture": architecture}
    model.raptor_teacher_args = {k: v for k, v in args.items() if k not in _NON_JSON_ARGS}


def _linear_head(model: VisionTransformer, linear: nn.Linear) -> None:
    """``model.head`` = a copy of ``linear`` (a zero bias where it has none, as timm's OpenAI-CLIP filter)."""
    model.num_classes = linear.out_features
    model.head = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        model.head.weight.copy_(linear.weight)
        model.head.bias.copy_(linear.bias if linear.bias is not None else torch.zeros(linear.out_features))


def _finish(model: VisionTransformer, tower: nn.Module) -> VisionTransformer:
    reference = next(tower.parameters())
    dtype = reference.dtype if reference.is_floating_point() else None
    return model.to(device=reference.device, dtype=dtype).eval()


def _classifier(hf_model: nn.Module, tower: nn.Module) -> nn.Module | None:
    classifier = getattr(hf_model, "classifier", None) if hf_model is not tower else None
    if classifier is not None and not isinstance(classifier, (nn.Linear, nn.Identity)):
        warnings.warn(
            f"{type(hf_model).__name__}.classifier is a {type(classifier).__name__}, not a Linear; the converted "
            "teacher has no head (head = Identity) and its logits are the pooled features.",
            stacklevel=3,
        )
        return nn.Identity()
    return classifier


def _check_type(hf_model: nn.Module, family: str, converter: str) -> nn.Module:
    model_type = hf_model_type(hf_model)
    if _FAMILY_OF_TYPE.get(model_type) != family:
        types = [t for t, f in _FAMILY_OF_TYPE.items() if f == family]
        raise TypeError(
            f"{converter} takes a transformers model of type {', '.join(types)}; got {type(hf_model).__name__} "
            f"(model_type {model_type!r})."
        )
    return hf_vision_tower(hf_model)


def convert_hf_clip(hf_model: nn.Module) -> VisionTransformer:
    """A timm ``VisionTransformer`` computing what a transformers CLIP vision tower computes.

    ``CLIPVisionModel``: ``teacher(x)`` = ``pooler_output`` (``post_layernorm`` of the class token; head Identity).
    ``CLIPVisionModelWithProjection`` / ``CLIPModel``: ``head`` = ``visual_projection`` (bias zero), so
    ``teacher(x)`` = ``image_embeds``. ``CLIPForImageClassification``: mean of the un-normed patch tokens
    (``global_pool='avg'``, no final norm) into the Linear classifier. Per-layer states equal transformers'
    ``hidden_states`` (state 0 after ``pre_layrnorm``) exactly in float32.
    """
    tower = _check_type(hf_model, "clip", "convert_hf_clip")
    args = clip_family_config_from_hf(tower.config)
    classifier = _classifier(hf_model, tower)
    state_dict = hf_clip_family_state_dict_to_timm(tower.state_dict(), "clip")
    if classifier is not None:  # CLIPForImageClassification: mean of last_hidden_state[:, 1:], never normed
        args.update(global_pool="avg", fc_norm=False, final_norm=False)
        state_dict.pop("norm.weight"), state_dict.pop("norm.bias")
    model = VisionTransformer(weight_init="skip", **args)
    model.load_state_dict(state_dict, strict=True)
    projection = getattr(hf_model, "visual_projection", None)
    if isinstance(classifier, nn.Linear):
        _linear_head(model, classifier)
    elif isinstance(projection, nn.Linear):
        _linear_head(model, projection)
        model.raptor_head = "embedding"
    model.raptor_last_hidden_state = "pre_norm"  # CLIPVisionModel norms the pooled token only
    return _finish(model, tower)


def convert_hf_siglip(hf_model: nn.Module) -> VisionTransformer:
    """A timm ``VisionTransformer`` computing what a transformers SigLIP vision tower computes.

    ``SiglipVisionModel`` / ``SiglipModel``: ``teacher(x)`` = ``pooler_output``, the attention-pool head as timm's
    ``global_pool='map'`` (its attention runs unfused, as ``nn.MultiheadAttention`` does when it returns weights);
    ``vision_use_head=False``: mean of the normed tokens. ``SiglipForImageClassification``: mean of the normed
    tokens into the Linear classifier (the tower's attention-pool weights, unused there, are dropped).
    """
    tower = _check_type(hf_model, "siglip", "convert_hf_siglip")
    args = clip_family_config_from_hf(tower.config)
    classifier = _classifier(hf_model, tower)
    state_dict = hf_clip_family_state_dict_to_timm(tower.state_dict(), "siglip")
    if classifier is not None:  # SiglipForImageClassification: mean of the normed tokens
        args["global_pool"] = "avg"
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith("attn_pool.")}
    model = VisionTransformer(weight_init="skip", **args)
    model.load_state_dict(state_dict, strict=True)
    if model.attn_pool is not None:
        model.attn_pool.fused_attn = False  # nn.MultiheadAttention(need_weights=True): q * scale, bmm, softmax, bmm
    if isinstance(classifier, nn.Linear):
        _linear_head(model, classifier)
    _record_timm_architecture(model, "siglip", args, tower.config)
    return _finish(model, tower)


def convert_hf_aimv2(hf_model: nn.Module) -> VisionTransformer:
    """A timm ``VisionTransformer`` computing what a transformers AIMv2 vision tower computes.

    ``Aimv2VisionModel``: ``teacher(x)`` = ``pooler_output`` (the attention-pool head, see the module docstring);
    ``Aimv2Model``: ``head`` = ``visual_projection`` (bias zero), ``teacher(x)`` = the image embedding;
    ``use_head=False``: mean of the normed tokens (timm's ``aimv2_*`` layout; there is then no projection, as
    transformers' ``Aimv2Model`` cannot project a missing pooled output). ``is_native`` sin-cos tables are stored
    as a frozen ``pos_embed`` of the config's grid and recomputed by :func:`set_aimv2_run_size`.
    """
    tower = _check_type(hf_model, "aimv2", "convert_hf_aimv2")
    config = tower.config
    args = clip_family_config_from_hf(config)
    state_dict = hf_clip_family_state_dict_to_timm(tower.state_dict(), "aimv2")
    model = VisionTransformer(weight_init="skip", **args)
    if config.is_native:
        state_dict["pos_embed"] = aimv2_sincos_pos_embed(model.patch_embed.grid_size, config.hidden_size)
    for name, param in model.state_dict().items():
        if name in state_dict:
            continue
        if name.startswith("blocks.") and name.endswith(".bias"):  # qkv_bias != mlp_bias: timm's extra biases
            state_dict[name] = torch.zeros_like(param)
        elif name == "attn_pool.q.weight":  # the learned query is the query: no q projection
            state_dict[name] = torch.eye(*param.shape, dtype=param.dtype)
        elif name == "attn_pool.norm.weight":
            state_dict[name] = torch.ones_like(param)
        elif name.startswith("attn_pool."):  # q / kv biases transformers lacks; the MLP adds exactly 0
            state_dict[name] = torch.zeros_like(param)
    model.load_state_dict(state_dict, strict=True)
    if model.attn_pool is not None:
        model.attn_pool.fused_attn = True  # transformers calls F.scaled_dot_product_attention
    if config.is_native:
        model.pos_embed.requires_grad_(False)
        setattr(model, _AIMV2_SINCOS_ATTR, True)
    projection = getattr(hf_model, "visual_projection", None)
    if config.use_head and isinstance(projection, nn.Linear):
        _linear_head(model, projection)
        model.raptor_head = "embedding"
    _record_timm_architecture(model, "aimv2", args, config)
    return _finish(model, tower)


def clip_data_config(config: Any, img_size: tuple[int, int]) -> dict[str, Any]:
    """``CLIPImageProcessor`` defaults (CLIP and, through transformers' auto mapping, AIMv2): bicubic resize of the
    shortest edge to the crop size, centre crop, OpenAI CLIP mean/std."""
    config = getattr(config, "vision_config", None) or config
    return processor_data_config(
        config.num_channels, img_size, "bicubic", OPENAI_CLIP_MEAN, OPENAI_CLIP_STD,
        crop_mode="center")


def siglip_data_config(config: Any, img_size: tuple[int, int]) -> dict[str, Any]:
    """``SiglipImageProcessor`` defaults (transformers 5.x): bicubic resize to height x width without a crop
    (timm ``crop_mode='squash'``), mean = std = 0.5."""
    config = getattr(config, "vision_config", None) or config
    return processor_data_config(config.num_channels, img_size, "bicubic", _SIGLIP_MEAN, _SIGLIP_STD)


# ----------------------------------------------------------------------------------------------------------
# a Raptor as the vision tower of a transformers CLIPModel / SiglipModel / Aimv2Model


class TimmVisionTower(nn.Module):
    """A transformers-style vision tower around a timm model converted here or a Raptor of one.

    ``forward(pixel_values, **kwargs)`` returns ``BaseModelOutputWithPooling`` as the tower it replaces does:
    ``pooler_output`` = the model's pooled pre-logits (``forward_head(..., pre_logits=True)``: ``post_layernorm(cls)``
    for CLIP, before any projection; the attention pool for SigLIP / AIMv2; None for a tower without a pooler),
    ``last_hidden_state`` = the un-normed final state for CLIP (transformers' ``CLIPVisionModel`` norms the pooled
    token only) and the normed tokens for SigLIP / AIMv2, and with ``output_hidden_states`` the L + 1 states
    x_0..x_L (x_0 after CLIP's pre-norm), as transformers'. Attention weights are not returned.
    ``interpolate_pos_encoding`` is accepted and ignored: the model runs at any size its ``dynamic_img_size`` allows,
    resampling its position grid as timm does (antialiased bicubic), which at sizes other than the model's own is
    not bit-identical to transformers' interpolation.
    """

    def __init__(self, model: nn.Module, family: str, config: Any = None, has_pooler: bool = True) -> None:
        super().__init__()
        if family not in _TOWER_MODEL_TYPES:
            raise ValueError(f"family must be one of {list(_TOWER_MODEL_TYPES)}; got {family!r}.")
        self.model = model
        self.family = family
        self.config = config
        self.has_pooler = has_pooler

    def _states(self, pixel_values: torch.Tensor, keep_all: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(x_0..x_L if keep_all else [x_L], forward_features output)."""
        model = self.model
        if isinstance(model, RaptorMixin):
            x = model._embed(pixel_values)
            states = [x]
            if keep_all:
                for step in range(model.depth):
                    x = model.forward_steps(x, step, step + 1)
                    states.append(x)
            else:
                x = model.forward_steps(x)
                states = [x]
            return states, model.finish(x)
        recorded: dict[int, torch.Tensor] = {}
        blocks = model.blocks
        handles = []
        if keep_all:
            handles.append(blocks[0].register_forward_pre_hook(
                lambda module, args: recorded.__setitem__(0, args[0])))
        for layer in range(1 if keep_all else len(blocks), len(blocks) + 1):
            handles.append(blocks[layer - 1].register_forward_hook(
                lambda module, args, output, layer=layer: recorded.__setitem__(layer, output)))
        try:
            features = model.forward_features(pixel_values)
        finally:
            for handle in handles:
                handle.remove()
        return [recorded[layer] for layer in sorted(recorded)], features

    def forward(
            self,
            pixel_values: torch.Tensor,
            interpolate_pos_encoding: bool | None = None,
            output_hidden_states: bool | None = None,
            output_attentions: bool | None = None,
            return_dict: bool | None = None,
            **kwargs: Any,
    ) -> Any:
        from transformers.modeling_outputs import BaseModelOutputWithPooling

        if output_attentions:
            raise ValueError("A Raptor vision tower does not return attention weights (output_attentions=True).")
        if output_hidden_states is None:
            output_hidden_states = bool(getattr(self.config, "output_hidden_states", False))
        reference = next(self.model.parameters())
        pixel_values = pixel_values.to(device=reference.device, dtype=reference.dtype)
        states, features = self._states(pixel_values, keep_all=bool(output_hidden_states))
        pooled = self.model.forward_head(features, pre_logits=True) if self.has_pooler else None
        output = BaseModelOutputWithPooling(
            last_hidden_state=states[-1] if self.family == "clip" else features,
            pooler_output=pooled,
            hidden_states=tuple(states) if output_hidden_states else None,
        )
        return output.to_tuple() if return_dict is False else output

    def extra_repr(self) -> str:
        return f"family={self.family!r}, has_pooler={self.has_pooler}"


def swap_vision_tower(clip_model: nn.Module, raptor: nn.Module) -> nn.Module:
    """Replace ``clip_model.vision_model`` by a :class:`TimmVisionTower` around ``raptor``; returns ``clip_model``.

    ``clip_model`` is a transformers CLIP / SigLIP / AIMv2 model holding a vision tower in ``vision_model``
    (``CLIPModel``, ``SiglipModel``, ``Aimv2Model``, ``CLIPVisionModelWithProjection``, the
    ``*ForImageClassification`` models); ``raptor`` is a Raptor of that tower's teacher (``from_teacher``) or any
    timm model this module converted, with the tower's width. The model's own projection / classifier stays, so
    ``clip_model.get_image_features(pixel_values)`` (in transformers 5.x a ``BaseModelOutputWithPooling`` whose
    ``pooler_output`` is the image embedding) and ``clip_model(...)`` run the Raptor. The swapped model is for
    inference and distillation; its state_dict no longer has transformers' vision keys (do not
    ``save_pretrained`` it as that model).
    """
    family = _family(hf_model_type(clip_model))
    old_tower = hf_vision_tower(clip_model)
    if old_tower is clip_model:
        raise TypeError(
            f"{type(clip_model).__name__} is itself a vision tower; swap_vision_tower replaces the `vision_model` of a "
            "CLIPModel / SiglipModel / Aimv2Model (or another model holding one); use the Raptor directly instead."
        )
    if not all(hasattr(raptor, name) for name in ("forward_features", "forward_head", "blocks", "embed_dim")):
        raise TypeError(f"raptor must be a Raptor or a timm ViT converted from {family}; got {type(raptor).__name__}.")
    config = old_tower.config
    if raptor.embed_dim != config.hidden_size:
        raise ValueError(
            f"The Raptor's width {raptor.embed_dim} differs from the {family} vision tower's hidden_size "
            f"{config.hidden_size}; use a Raptor of this model's tower."
        )
    has_pooler = family == "clip" or bool(getattr(old_tower, "use_head", False))
    if family == "clip":
        pools_like_tower = getattr(raptor, "global_pool", None) == "token" and not isinstance(raptor.norm, nn.Identity)
    else:
        pools_like_tower = getattr(raptor, "attn_pool", None) is not None
    if has_pooler and not pools_like_tower:
        if hasattr(clip_model, "classifier"):  # *ForImageClassification reads last_hidden_state only
            has_pooler = False
        elif family == "clip":
            raise ValueError(
                "A CLIP vision tower pools post_layernorm(class token): the Raptor needs global_pool='token' and its "
                f"final norm (got global_pool={getattr(raptor, 'global_pool', None)!r}); use a Raptor of the "
                "CLIPModel / CLIPVisionModel teacher, not of CLIPForImageClassification."
            )
        else:
            raise ValueError(
                f"The {family} vision tower pools with its attention head; the Raptor has none (attn_pool is None). "
                "Use a Raptor of this model's tower (load_teacher(model) keeps the head)."
            )
    clip_model.vision_model = TimmVisionTower(raptor, family, config=config, has_pooler=has_pooler)
    return clip_model


register_hf_converter(HfConverter(
    model_types=HF_CLIP_MODEL_TYPES,
    convert=convert_hf_clip,
    data_config=clip_data_config,
    set_run_size=set_vit_run_size,
))
register_hf_converter(HfConverter(
    model_types=HF_SIGLIP_MODEL_TYPES,
    convert=convert_hf_siglip,
    data_config=siglip_data_config,
    set_run_size=set_vit_run_size,
))
register_hf_converter(HfConverter(
    model_types=HF_AIMV2_MODEL_TYPES,
    convert=convert_hf_aimv2,
    data_config=clip_data_config,
    set_run_size=set_aimv2_run_size,
))
