""" Embedded digits teacher: a small DINOv2-shaped timm ViT trained on scikit-learn's digits

`vit_digits_patch8_reg4` is a timm `VisionTransformer` in the shape of timm's `vit_*_patch14_reg4_dinov2` models (class token, 4 register
tokens, no position embedding on the prefix tokens, LayerScale 1e-5), shrunk to 32x32 inputs: patch 8
(16 patches), width 128, depth 12, 4 heads. It is trained from scratch by `recipes/train_teacher.py` on the
project's fixed digits training split (`raptor_zoo.data.load_digits_split`) and its weights ship inside the
package (`raptor_zoo/assets/digits-vit/`, fp16 safetensors), so real teacher computations run with no network:

    model = timm.create_model('vit_digits_patch8_reg4.digits', pretrained=True)  # shipped weights, offline
    model = timm.create_model('vit_digits_patch8_reg4', pretrained=False)        # random init

`vit_digits_patch8_reg4_dinov3` is the same size in DINOv3's shape (a timm `Eva`: 2-D RoPE, no absolute position
embedding, 4 registers, LayerScale 1e-5, no qkv bias), the second digits teacher, of another family; it ships no
weights and is trained by `python recipes/train_teacher.py --config recipes/configs/digits_teacher_dinov3.yaml`.

Architecture after: `DINOv2: Learning Robust Visual Features without Supervision` - https://arxiv.org/abs/2304.07193
and `Vision Transformers Need Registers` - https://arxiv.org/abs/2309.16588
"""
from functools import partial
from pathlib import Path
from typing import Any

from timm.layers import LayerNorm
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

__all__ = ["DIGITS_VIT_WEIGHTS", "DIGITS_MEAN", "DIGITS_STD"]

DIGITS_VIT_WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "digits-vit" / "model.safetensors"

# pixel mean / std of the digits training split in 0..1 (raptor_zoo.data.digits_mean_std()); the 3 channels are equal
DIGITS_MEAN = (0.3054,) * 3
DIGITS_STD = (0.3237,) * 3


def _create_digits_vit(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformer:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


def _cfg(file: str = "", **kwargs) -> dict[str, Any]:
    return {
        "file": file,
        "num_classes": 10,
        "input_size": (3, 32, 32),
        "pool_size": None,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "fixed_input_size": True,
        "mean": DIGITS_MEAN,
        "std": DIGITS_STD,
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "apache-2.0",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vit_digits_patch8_reg4_dinov3": _cfg(),
    "vit_digits_patch8_reg4.digits": _cfg(
        file=str(DIGITS_VIT_WEIGHTS),
        label_names=tuple(str(digit) for digit in range(10)),
        notes=("trained from scratch on the scikit-learn digits training split by recipes/train_teacher.py",),
    ),
})


@register_model
def vit_digits_patch8_reg4(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ ViT-Digits/8 w/ 4 registers (DINOv2 shape, 32x32 input, D=128, depth 12), the embedded digits teacher
    """
    model_args = dict(
        img_size=32, patch_size=8, embed_dim=128, depth=12, num_heads=4, mlp_ratio=4.0, init_values=1e-5,
        reg_tokens=4, class_token=True, no_embed_class=True, num_classes=10,
    )
    return _create_digits_vit("vit_digits_patch8_reg4", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def vit_digits_patch8_reg4_dinov3(pretrained: bool = False, **kwargs) -> Eva:
    """ ViT-Digits/8 in DINOv3's shape (timm Eva: RoPE, 4 registers, LayerScale; 32x32 input, D=128, depth 12)
    """
    model_args = dict(
        img_size=32, patch_size=8, embed_dim=128, depth=12, num_heads=4, mlp_ratio=4.0, qkv_bias=False,
        init_values=1e-5, rope_type="dinov3", rope_temperature=100, rope_rotate_half=True, use_rot_pos_emb=True,
        use_abs_pos_emb=False, num_reg_tokens=4, use_fc_norm=False, global_pool="token", num_classes=10,
        norm_layer=partial(LayerNorm, eps=1e-5),
    )
    return build_model_with_cfg(
        Eva,
        "vit_digits_patch8_reg4_dinov3",
        pretrained,
        feature_cfg=dict(out_indices=3, feature_cls="getter"),
        **dict(model_args, **kwargs),
    )
