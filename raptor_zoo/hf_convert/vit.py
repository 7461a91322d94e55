"""ViT-family transformers encoders -> timm ``VisionTransformer``: ViT, DeiT, DINOv2 (with registers), MAE, MSN,
I-JEPA.

Each converter maps the transformers state_dict onto timm keys (q/k/v fused into ``attn.qkv``, SwiGLU gate/up
into ``mlp.fc1``) and loads it strictly, so the timm model computes the same hidden states. The token layouts:

* ViT, ViT-MSN, ViT-MAE: class token + patches, position embedding over both (timm ``VisionTransformer``);
  ViT-MAE's is the fixed 2-D sin-cos table it stores, and the teacher sees every patch in order (transformers'
  ``mask_ratio=0`` with an identity shuffle);
* DeiT: class token, distillation token, patches, position embedding over all three (timm
  ``VisionTransformerDistilled``);
* DINOv2 with registers: class token, registers, patches; registers carry no position embedding (timm
  ``no_embed_class``);
* I-JEPA: patches only (timm ``class_token=False``), heads read the mean of the normed tokens (``global_pool='avg'``).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.layers import LayerNorm, Mlp, SwiGLUPacked, resample_abs_pos_embed
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..models.archs import DINOV2_RUN_SIZE
from ..models.families import pair
from ..models.raptor_vit import cls_avg_pool
from .registry import (
    HfConverter,
    attention_sizes,
    check_model_type,
    hf_activation,
    hf_base_model,
    processor_data_config,
    register_hf_converter,
    timm_mlp_ratio,
)

__all__ = [
    "DINOV2_IMG_SIZE",
    "DINOV2_STORED_IMG_SIZE",
    "dinov2_run_size",
    "HF_VIT_MODEL_TYPES",
    "ClsAvgVisionTransformer",
    "DistilledClsHeadVisionTransformer",
    "dinov2_data_config",
    "set_vit_run_size",
    "vit_config_from_hf",
    "hf_state_dict_to_timm",
    "convert_hf_vit",
]

HF_VIT_MODEL_TYPES = ("deit", "dinov2", "dinov2_with_registers", "ijepa", "vit", "vit_mae", "vit_msn")
"""transformers ``model_type`` s that :func:`convert_hf_vit` converts exactly."""

_DINOV2_MODEL_TYPES = ("dinov2", "dinov2_with_registers")
# no class token: patches only, a patch-only position embedding, and heads that average the normed tokens
_NO_CLASS_TOKEN_MODEL_TYPES = ("ijepa",)
# class token + distillation token, both with a position embedding (timm VisionTransformerDistilled)
_DISTILLED_MODEL_TYPES = ("deit",)

DINOV2_IMG_SIZE = DINOV2_RUN_SIZE
"""Image size DINOv2 teachers run at by default: the paper's protocol (resize 256, centre crop 224)."""

DINOV2_STORED_IMG_SIZE = 518
"""Size of the 37 x 37 position grid DINOv2 checkpoints store; such a teacher runs at DINOV2_IMG_SIZE by default."""

_DINOV2_CROP_PCT = 0.875  # 224 / 256
_DEIT_CROP_PCT = 0.875  # DeiTImageProcessor: resize 256, centre crop 224

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


class DistilledClsHeadVisionTransformer(VisionTransformerDistilled):
    """timm distilled DeiT whose head reads the normed class token only: transformers' DeiTForImageClassification.

    The distillation token is embedded and attended to as in every DeiT; only the classifier differs from timm's
    ``VisionTransformerDistilled`` (which averages ``head(class)`` and ``head_dist(distillation)``): there is no
    ``head_dist``, and ``forward_head`` (pre-logits too) reads the class token.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.head_dist = nn.Identity()

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head; the class token is what it reads (``global_pool`` None / '' / 'token')."""
        if global_pool not in (None, "", "token"):
            raise ValueError(
                f"DistilledClsHeadVisionTransformer's head reads the class token; got global_pool={global_pool!r}.")
        reference = self.cls_token
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes, device=reference.device, dtype=reference.dtype) \
            if num_classes > 0 else nn.Identity()
        self.head.train(self.training)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x[:, 0])
        return x if pre_logits else self.head(x)


def dinov2_data_config(in_chans: int, img_size: tuple[int, int]) -> dict[str, Any]:
    """The paper's DINOv2 protocol: bicubic resize to img/0.875, centre crop, ImageNet mean/std."""
    return processor_data_config(
        in_chans, img_size, "bicubic", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
        crop_pct=_DINOV2_CROP_PCT, crop_mode="center")




@torch.no_grad()
def set_vit_run_size(model: VisionTransformer, img_size: tuple[int, int]) -> None:
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




# ----------------------------------------------------------------------------------------------------------
# transformers -> timm conversion


def vit_config_from_hf(config: Any) -> dict[str, Any]:
    """timm ``VisionTransformer`` kwargs reproducing a transformers ViT-family config (:data:`HF_VIT_MODEL_TYPES`).

    The model is built at the config's ``image_size`` with ``dynamic_img_size=True``, without a head
    (``num_classes=0``; ``global_pool='token'``, I-JEPA's ``'avg'`` over its class-token-free layout, with the
    final norm on every token before pooling as transformers does: ``fc_norm=False``); :func:`convert_hf_vit`
    picks the class (DeiT: ``VisionTransformerDistilled``, whose constructor takes the same kwargs) and adds the
    classifier. DINOv2 with registers uses timm's ``no_embed_class`` layout (registers carry no position
    embedding; the class-token position embedding is folded into ``cls_token`` by :func:`hf_state_dict_to_timm`).
    Raises ValueError where a setting has no exact timm equivalent.
    """
    model_type = check_model_type(config, HF_VIT_MODEL_TYPES, "a timm VisionTransformer")
    embed_dim, num_heads = attention_sizes(config, "timm Attention")
    if model_type not in _DINOV2_MODEL_TYPES:  # ViT layers: intermediate_size, plain MLP, no layer scale
        mlp_hidden, mlp_layer, init_values = config.intermediate_size, Mlp, None
        act_layer = hf_activation(config.hidden_act)
    else:
        mlp_hidden = int(embed_dim * config.mlp_ratio)
        # a layer scale of 0 would make timm drop the LayerScale module; its value is overwritten anyway
        init_values = config.layerscale_value or 1.0
        if config.use_swiglu_ffn:
            # transformers' Dinov2SwiGLUFFN width, packed [gate; up] as timm's SwiGLUPacked (act(x1) * x2)
            mlp_hidden = 2 * ((int(mlp_hidden * 2 / 3) + 7) // 8 * 8)
            mlp_layer, act_layer = SwiGLUPacked, "silu"
        else:
            mlp_layer, act_layer = Mlp, hf_activation(config.hidden_act)
    mlp_ratio = timm_mlp_ratio(embed_dim, mlp_hidden)
    num_reg_tokens = config.num_register_tokens if model_type == "dinov2_with_registers" else 0
    class_token = model_type not in _NO_CLASS_TOKEN_MODEL_TYPES
    img_size = config.image_size if isinstance(config.image_size, int) else tuple(config.image_size)
    patch_size = config.patch_size if isinstance(config.patch_size, int) else tuple(config.patch_size)
    return dict(
        img_size=img_size,
        patch_size=patch_size,
        in_chans=config.num_channels,
        num_classes=0,
        global_pool="token" if class_token else "avg",
        fc_norm=False,
        embed_dim=embed_dim,
        depth=config.num_hidden_layers,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=config.qkv_bias,
        init_values=init_values,
        class_token=class_token,
        reg_tokens=num_reg_tokens,
        no_embed_class=num_reg_tokens > 0,
        dynamic_img_size=True,
        norm_layer=partial(LayerNorm, eps=config.layer_norm_eps),
        act_layer=act_layer,
        mlp_layer=mlp_layer,
    )


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
    "embeddings.distillation_token": "dist_token",
    "embeddings.register_tokens": "reg_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
    "classifier.weight": "head.weight",
    "classifier.bias": "head.bias",
    # DeiTForImageClassificationWithTeacher: cls_classifier goes in as classifier.*, this one as itself
    "distillation_classifier.weight": "head_dist.weight",
    "distillation_classifier.bias": "head_dist.bias",
}
# used only for masked-image pre-training, and the ViT / DeiT / I-JEPA tanh pooler (not part of the trajectory or
# any classifier)
_HF_DROPPED = re.compile(r"^(embeddings\.mask_token|pooler\..*)$")
_HF_BLOCK_KEY = re.compile(r"^(?:encoder\.layers?|layers?)\.(\d+)\.(.+)\.(weight|bias|lambda1)$")


def hf_state_dict_to_timm(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a transformers ViT-family base-model state_dict (:data:`HF_VIT_MODEL_TYPES`) to timm ViT keys.

    Keys are those of the base model (``embeddings.*``, ``encoder.layer.{i}.*`` or ``layers.{i}.*``,
    ``layernorm.*``) plus an optional ``classifier.*`` (-> ``head``) and ``distillation_classifier.*``
    (-> ``head_dist``). q/k/v are fused into ``attn.qkv``, SwiGLU gate/up into ``mlp.fc1``; DeiT's
    ``distillation_token`` becomes ``dist_token``; ``mask_token`` and the tanh ``pooler`` are dropped. With
    registers the class-token position embedding is folded into ``cls_token`` (timm's ``no_embed_class`` layout,
    as timm's own DINOv2 checkpoint filter does). Raises ValueError on a key it cannot map exactly.
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


def _is_hf_vit(module: nn.Module) -> bool:
    config = getattr(module, "config", None)
    return getattr(config, "model_type", None) in HF_VIT_MODEL_TYPES and hasattr(hf_base_model(module), "embeddings")


def _hf_classifiers(hf_model: nn.Module, base: nn.Module) -> list[tuple[str, nn.Module]]:
    """(state_dict prefix, module) of each classifier a transformers wrapper puts on its base model's output."""
    if hf_model is base:
        return []
    distillation_classifier = getattr(hf_model, "distillation_classifier", None)
    if isinstance(distillation_classifier, nn.Module):  # DeiTForImageClassificationWithTeacher
        return [("classifier", hf_model.cls_classifier), ("distillation_classifier", distillation_classifier)]
    classifier = getattr(hf_model, "classifier", None)
    return [("classifier", classifier)] if isinstance(classifier, nn.Module) else []


def convert_hf_vit(hf_model: nn.Module) -> VisionTransformer:
    """A timm ViT computing exactly what a transformers model of :data:`HF_VIT_MODEL_TYPES` computes.

    Blocks, embeddings and the final layernorm are always converted; the timm class holds the token layout:
    ``VisionTransformer`` (ViT, ViT-MSN, ViT-MAE, DINOv2, I-JEPA with ``class_token=False``) or, for DeiT's
    class + distillation tokens, ``VisionTransformerDistilled``. A ViT-MAE encoder (``ViTMAEModel``, or the
    encoder of ``ViTMAEForPreTraining``; the decoder is not converted) runs on every patch in row-major order:
    transformers' ``ViTMAEModel`` with ``config.mask_ratio=0`` and an identity shuffle (``noise`` increasing
    along the patches).

    The classifier of a ``*ForImageClassification`` model is converted when it is a ``nn.Linear``: ViT's,
    ViT-MSN's and DeiT's read the normed class token (timm ``global_pool='token'``; DeiT:
    :class:`DistilledClsHeadVisionTransformer`), DINOv2's reads concat(class token, mean of patch tokens)
    (:class:`ClsAvgVisionTransformer`, ``global_pool='cls_avg'``), I-JEPA's the mean of all normed tokens
    (``global_pool='avg'``); ``DeiTForImageClassificationWithTeacher``'s two classifiers become timm's ``head`` /
    ``head_dist``, whose eval-mode mean is transformers' logits. Anything else (a base model, a custom classifier;
    the tanh ``pooler`` is never converted) gives ``head = Identity``, so the model's forward returns what the
    head would read (DeiT's distilled model: the mean of the normed class and distillation tokens). At the
    config's ``image_size`` the numerics are those of transformers; at other sizes timm resamples the position
    embedding (bicubic, antialiased) once per forward, which is not what transformers does:
    :func:`load_teacher` resamples the grid to the run size first, as transformers (:func:`set_vit_run_size`).
    The result is on the device and in the floating dtype of ``hf_model``.
    """
    if not _is_hf_vit(hf_model):
        model_type = getattr(getattr(hf_model, "config", None), "model_type", None)
        raise TypeError(
            f"convert_hf_vit takes a transformers model of type {', '.join(HF_VIT_MODEL_TYPES)}; got "
            f"{type(hf_model).__name__} (model_type {model_type!r})."
        )
    base = hf_base_model(hf_model)
    config = base.config
    model_type = config.model_type
    model_args = vit_config_from_hf(config)
    state_dict = dict(base.state_dict())
    classifiers = _hf_classifiers(hf_model, base)
    with_head = bool(classifiers) and all(isinstance(module, nn.Linear) for _, module in classifiers)
    if with_head:
        head_inputs = 2 * config.hidden_size if model_type in _DINOV2_MODEL_TYPES else config.hidden_size
        for prefix, module in classifiers:
            if module.in_features != head_inputs:
                raise ValueError(
                    f"{type(hf_model).__name__}.{prefix} takes {module.in_features} inputs; the {model_type} head "
                    f"reads {head_inputs}."
                )
        num_classes = {module.out_features for _, module in classifiers}
        if len(num_classes) != 1:
            raise ValueError(
                f"{type(hf_model).__name__}'s classifiers give {sorted(num_classes)} outputs; timm's distilled head "
                "averages two classifiers of the same width."
            )
        model_args["num_classes"] = num_classes.pop()
        for prefix, module in classifiers:
            state_dict.update({f"{prefix}.{k}": v for k, v in module.state_dict().items()})
    model_cls: type[VisionTransformer] = VisionTransformer
    if model_type in _DISTILLED_MODEL_TYPES:
        # DeiTForImageClassification's one classifier reads the class token; timm's distilled head averages two
        model_cls = DistilledClsHeadVisionTransformer if len(classifiers) == 1 else VisionTransformerDistilled
    elif model_type in _DINOV2_MODEL_TYPES and with_head:
        model_cls = ClsAvgVisionTransformer
    if not with_head and any(not isinstance(module, nn.Identity) for _, module in classifiers):
        names = ", ".join(f"{prefix} ({type(module).__name__})" for prefix, module in classifiers)
        if model_cls is VisionTransformerDistilled:
            reads = "the mean of the class and distillation tokens"
        else:
            reads = "the mean of all tokens" if model_type in _NO_CLASS_TOKEN_MODEL_TYPES else "the class token"
        warnings.warn(
            f"{type(hf_model).__name__}'s classifier is not a Linear: {names}; the converted teacher has no head "
            f"(head = Identity) and its logits are {reads}, normed.",
            stacklevel=2,
        )
    model = model_cls(weight_init="skip", **model_args)
    timm_state_dict = hf_state_dict_to_timm(state_dict)
    model.load_state_dict(timm_state_dict, strict=True)
    reference = next(base.parameters())
    dtype = reference.dtype if reference.is_floating_point() else None
    return model.to(device=reference.device, dtype=dtype).eval()


def _vit_image_processor_data_config(in_chans: int, img_size: tuple[int, int]) -> dict[str, Any]:
    """transformers' ViTImageProcessor defaults: bilinear resize to the run size (squash, no crop), mean/std 0.5."""
    return processor_data_config(in_chans, img_size, "bilinear", IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD)


def _deit_data_config(in_chans: int, img_size: tuple[int, int]) -> dict[str, Any]:
    """DeiT's evaluation protocol: bicubic resize to run size / 0.875 (256 for 224), centre crop, ImageNet mean/std.

    DeiTImageProcessor's resample, resize and crop; the mean/std are ImageNet's, those DeiT is trained and
    evaluated with (the DeiT repository, timm's deit configs), though a bare ``DeiTImageProcessor()`` defaults to
    0.5 (as DINOv2 takes its paper's protocol rather than BitImageProcessor's CLIP defaults). A folder's
    preprocessor_config.json, when there is one, wins over these defaults.
    """
    return processor_data_config(
        in_chans, img_size, "bicubic", IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD,
        crop_pct=_DEIT_CROP_PCT, crop_mode="center")


def _hf_data_config(config: Any, img_size: tuple[int, int]) -> dict[str, Any]:
    """Defaults of each type's transformers image processor: DINOv2's and DeiT's protocols, ViTImageProcessor's
    for ViT, ViT-MAE, ViT-MSN and I-JEPA (transformers' image_processing_auto maps all four to it)."""
    if config.model_type in _DINOV2_MODEL_TYPES:
        return dinov2_data_config(config.num_channels, img_size)
    if config.model_type in _DISTILLED_MODEL_TYPES:
        return _deit_data_config(config.num_channels, img_size)
    return _vit_image_processor_data_config(config.num_channels, img_size)


def dinov2_run_size(native_size: tuple[int, int]) -> tuple[int, int]:
    """A DINOv2 checkpoint's stored 518 px grid runs at 224 (the paper's protocol); any other size is its own."""
    if native_size == (DINOV2_STORED_IMG_SIZE, DINOV2_STORED_IMG_SIZE):
        return DINOV2_IMG_SIZE, DINOV2_IMG_SIZE
    return native_size


register_hf_converter(HfConverter(
    model_types=_DINOV2_MODEL_TYPES,
    convert=convert_hf_vit,
    data_config=_hf_data_config,
    set_run_size=set_vit_run_size,
    default_run_size=dinov2_run_size,
))
def vit_mae_hidden_states(hf_model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """transformers' ViT-MAE encoder states of every patch in order: mask_ratio 0 and increasing ``noise``, so its
    shuffle is the identity (what a converted MAE teacher computes)."""
    encoder = hf_base_model(hf_model)
    patch_height, patch_width = pair(encoder.config.patch_size)
    num_patches = (images.shape[-2] // patch_height) * (images.shape[-1] // patch_width)
    noise = torch.arange(num_patches, device=images.device).expand(images.shape[0], -1).float()
    mask_ratio, encoder.config.mask_ratio = encoder.config.mask_ratio, 0.0
    try:
        return encoder(pixel_values=images, noise=noise, output_hidden_states=True,
                       interpolate_pos_encoding=images.shape[-2:] != pair(encoder.config.image_size)).hidden_states
    finally:
        encoder.config.mask_ratio = mask_ratio


register_hf_converter(HfConverter(
    model_types=("deit", "ijepa", "vit", "vit_msn"),
    convert=convert_hf_vit,
    data_config=_hf_data_config,
    set_run_size=set_vit_run_size,
))
register_hf_converter(HfConverter(
    model_types=("vit_mae",),
    convert=convert_hf_vit,
    data_config=_hf_data_config,
    set_run_size=set_vit_run_size,
    hidden_states=vit_mae_hidden_states,
))
