"""transformers DeiT, ViT-MAE, ViT-MSN and I-JEPA -> timm: exact trajectories, heads, folders, data configs, Raptors."""
import warnings

import huggingface_hub.constants
import pytest
import timm
import torch
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import (
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    DeiTImageProcessor,
    DeiTModel,
    IJepaConfig,
    IJepaForImageClassification,
    IJepaModel,
    ViTImageProcessor,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTMAEModel,
    ViTMSNConfig,
    ViTMSNForImageClassification,
    ViTMSNModel,
)

import raptor_zoo
from raptor_zoo.hf_convert import HF_CONVERTERS, hf_base_model
from raptor_zoo.hf_convert.vit import (
    DistilledClsHeadVisionTransformer,
    convert_hf_vit,
    hf_state_dict_to_timm,
    vit_config_from_hf,
)
from raptor_zoo.teachers import data_config_from_processor

IMG, PATCH, DEPTH, DIM = 32, 8, 4, 64
NUM_PATCHES = (IMG // PATCH) ** 2
TINY = dict(hidden_size=DIM, num_hidden_layers=DEPTH, num_attention_heads=4, intermediate_size=128, image_size=IMG,
            patch_size=PATCH)
CONFIGS = {"deit": DeiTConfig, "vit_mae": ViTMAEConfig, "vit_msn": ViTMSNConfig, "ijepa": IJepaConfig}
# model type -> (class token, distillation token) in the teacher's token layout
PREFIX = {"deit": (True, True), "vit_mae": (True, False), "vit_msn": (True, False), "ijepa": (False, False)}
# (model type, transformers class, timm class it converts into)
MODELS = [
    ("deit", DeiTModel, VisionTransformerDistilled),
    ("deit", DeiTForImageClassification, DistilledClsHeadVisionTransformer),
    ("deit", DeiTForImageClassificationWithTeacher, VisionTransformerDistilled),
    ("vit_mae", ViTMAEModel, VisionTransformer),
    ("vit_mae", ViTMAEForPreTraining, VisionTransformer),
    ("vit_msn", ViTMSNModel, VisionTransformer),
    ("vit_msn", ViTMSNForImageClassification, VisionTransformer),
    ("ijepa", IJepaModel, VisionTransformer),
    ("ijepa", IJepaForImageClassification, VisionTransformer),
]
CLASSIFIERS = [entry for entry in MODELS if "Classification" in entry[1].__name__]
MODEL_IDS = [cls.__name__ for _, cls, _ in MODELS]


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hub cache: any download attempt fails at once, nothing reaches the network."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (zero biases, tokens, MAE's sin-cos table) so a wrong mapping cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _images(size: int = IMG, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hf_model(model_type: str, model_cls, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return _perturb(model_cls(CONFIGS[model_type](**dict(TINY, num_labels=5, **overrides))))


@torch.no_grad()
def _hf_outputs(hf_model: nn.Module, images: torch.Tensor, **kwargs):
    """transformers' own forward with hidden states; ViT-MAE runs its encoder unmasked and unshuffled
    (mask_ratio 0, increasing noise: ids_shuffle is the identity, so the states are in patch order)."""
    if hf_model.config.model_type != "vit_mae":
        return hf_model(pixel_values=images, output_hidden_states=True, **kwargs)
    encoder = hf_base_model(hf_model)
    num_patches = (images.shape[-2] // PATCH) * (images.shape[-1] // PATCH)
    noise = torch.arange(num_patches).expand(images.shape[0], -1).float()
    mask_ratio, encoder.config.mask_ratio = encoder.config.mask_ratio, 0.0
    try:
        out = encoder(pixel_values=images, noise=noise, output_hidden_states=True, **kwargs)
    finally:
        encoder.config.mask_ratio = mask_ratio
    assert torch.equal(out.ids_restore, torch.arange(num_patches).expand(images.shape[0], -1))
    return out


def _check_exact(t: raptor_zoo.Teacher, hf_model: nn.Module, images: torch.Tensor, **kwargs) -> None:
    with torch.no_grad():
        out = _hf_outputs(hf_model, images, **kwargs)
        trajectory = t.trajectory(images)
    hidden_states = torch.stack(out.hidden_states, dim=1)  # [0] = embeddings, then each layer's raw output
    assert trajectory.shape == hidden_states.shape
    assert (trajectory - hidden_states).abs().max().item() == 0.0
    if hasattr(out, "last_hidden_state"):
        assert (t.model.norm(trajectory[:, -1]) - out.last_hidden_state).abs().max().item() == 0.0


# ---------------------------------------------------------------------------------------------------------- exact


@pytest.mark.parametrize("model_type, model_cls, timm_cls", MODELS, ids=MODEL_IDS)
def test_trajectory_is_exact(model_type, model_cls, timm_cls):
    hf_model = _hf_model(model_type, model_cls)
    if model_type == "vit_mae":
        assert hf_model.config.mask_ratio == 0.75  # the checkpoint's own setting: the teacher never masks
    t = raptor_zoo.load_teacher(hf_model)
    has_class, has_dist = PREFIX[model_type]
    assert type(t.model) is timm_cls and (t.source, t.name) == ("module", model_cls.__name__)
    assert (t.depth, t.embed_dim, t.num_heads, t.patch_size, t.img_size) == (DEPTH, DIM, 4, PATCH, (IMG, IMG))
    assert (t.num_prefix_tokens, t.num_reg_tokens, t.has_class_token) == (has_class + has_dist, 0, has_class)
    x = _images()
    _check_exact(t, hf_model, x)
    with torch.no_grad():
        trajectory = t.trajectory(x)
    assert trajectory.shape == (2, DEPTH + 1, has_class + has_dist + NUM_PATCHES, DIM)
    assert (trajectory[:, 1:] - trajectory[:, :-1]).abs().amax(dim=(0, 2, 3)).min() > 1e-3


@pytest.mark.parametrize("model_type, model_cls, timm_cls", MODELS, ids=MODEL_IDS)
def test_saved_folder_is_exact(model_type, model_cls, timm_cls, tmp_path, offline_hub):
    hf_model = _hf_model(model_type, model_cls)
    folder = tmp_path / f"tiny-{model_type}"
    hf_model.save_pretrained(folder)
    t = raptor_zoo.load_teacher(str(folder))
    assert type(t.model) is timm_cls and (t.source, t.name) == ("hf", f"{model_type} (tiny-{model_type})")
    _check_exact(t, hf_model, _images())


@pytest.mark.parametrize("model_type, model_cls, timm_cls", MODELS, ids=MODEL_IDS)
def test_other_run_size_equals_transformers_interpolation(model_type, model_cls, timm_cls):
    """At 48 px the position grid is resampled once, bicubic without antialiasing: transformers'
    interpolate_pos_encoding=True bit for bit (DeiT's two prefix rows, I-JEPA's patch-only table)."""
    hf_model = _hf_model(model_type, model_cls)
    t = raptor_zoo.load_teacher(hf_model, img_size=48)
    assert t.img_size == (48, 48) and t.data_config["input_size"] == (3, 48, 48)
    _check_exact(t, hf_model, _images(48), interpolate_pos_encoding=True)


@pytest.mark.parametrize("model_type, model_cls, timm_cls", CLASSIFIERS, ids=[c.__name__ for _, c, _ in CLASSIFIERS])
def test_classifier_logits(model_type, model_cls, timm_cls):
    """DeiT reads the class token (WithTeacher: the mean of its class and distillation heads, timm's distilled head
    in eval mode), ViT-MSN the class token, I-JEPA the mean of all normed tokens."""
    hf_model = _hf_model(model_type, model_cls)
    t = raptor_zoo.load_teacher(hf_model)
    assert t.model.num_classes == 5
    x = _images()
    with torch.no_grad():
        out = hf_model(pixel_values=x)
        logits = t(x)
        assert logits.shape == (2, 5)
        torch.testing.assert_close(logits, out.logits, rtol=0, atol=1e-5)
        from_state = t.forward_head_from_state(t.trajectory(x, layers=[-1])[:, 0])
        torch.testing.assert_close(from_state, out.logits, rtol=0, atol=1e-5)
        if model_cls is DeiTForImageClassificationWithTeacher:
            assert not t.model.distilled_training
            features = t.model.forward_features(x)
            torch.testing.assert_close(t.model.head(features[:, 0]), out.cls_logits, rtol=0, atol=1e-5)
            torch.testing.assert_close(t.model.head_dist(features[:, 1]), out.distillation_logits, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_headless_output_is_what_the_head_reads(model_type):
    """A base model's teacher returns the pooled normed tokens: class token (ViT-MAE, ViT-MSN), mean of class and
    distillation tokens (DeiT's distilled layout, timm's pre-logits), mean of all tokens (I-JEPA)."""
    base_cls = {"deit": DeiTModel, "vit_mae": ViTMAEModel, "vit_msn": ViTMSNModel, "ijepa": IJepaModel}[model_type]
    hf_model = _hf_model(model_type, base_cls)
    t = raptor_zoo.load_teacher(hf_model)
    x = _images()
    with torch.no_grad():
        normed = _hf_outputs(hf_model, x).last_hidden_state
        pooled = {"deit": (normed[:, 0] + normed[:, 1]) / 2, "ijepa": normed.mean(dim=1)}
        expected = pooled.get(model_type, normed[:, 0])
        torch.testing.assert_close(t(x), expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------- Raptors


@pytest.mark.parametrize("model_type, model_cls", [
    ("deit", DeiTForImageClassificationWithTeacher), ("deit", DeiTForImageClassification),
    ("vit_mae", ViTMAEModel), ("vit_msn", ViTMSNForImageClassification), ("ijepa", IJepaForImageClassification),
], ids=["deit-with-teacher", "deit-cls-head", "vit_mae", "vit_msn", "ijepa"])
def test_raptor_from_teacher(model_type, model_cls):
    t = raptor_zoo.load_teacher(_hf_model(model_type, model_cls))
    x = _images()
    exact = raptor_zoo.from_teacher(t, block_schedule=(1,) * DEPTH).eval()
    with torch.no_grad():
        assert (exact.forward_features(x) - t.model.forward_features(x)).abs().max().item() == 0.0
        torch.testing.assert_close(exact(x), t(x), rtol=0, atol=0)
    raptor = raptor_zoo.from_teacher(t, k=2, block_schedule=(DEPTH // 2, DEPTH - DEPTH // 2))
    out = raptor.train()(x)
    out = out[0] if isinstance(out, (tuple, list)) else out
    out.float().square().mean().backward()
    # every shared-block weight learns (the depth gate's first layer starts with a zero gradient by design)
    grads = {name: p.grad for block in raptor.unique_blocks for name, p in block.named_parameters()
             if not name.startswith("depth_scale.")}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_timm_distilled_deit_is_a_teacher():
    t = raptor_zoo.load_teacher(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=32))
    assert (t.num_prefix_tokens, t.has_class_token) == (2, True)
    with torch.no_grad():
        assert t.trajectory(_images()).shape == (2, 13, 2 + 4, 192)


# ---------------------------------------------------------------------------------------------------------- data


@pytest.mark.parametrize("model_type", list(CONFIGS))
def test_data_config_defaults_and_processor_folder(model_type, tmp_path, offline_hub):
    """No preprocessor_config.json: the type's processor defaults (ViTImageProcessor for ViT-MAE / MSN / I-JEPA,
    DeiT's protocol with ImageNet mean/std); with one saved by the type's own processor: its mean/std."""
    base_cls = {"deit": DeiTModel, "vit_mae": ViTMAEModel, "vit_msn": ViTMSNModel, "ijepa": IJepaModel}[model_type]
    hf_model = _hf_model(model_type, base_cls)
    folder = tmp_path / "model"
    hf_model.save_pretrained(folder)
    default = raptor_zoo.load_teacher(str(folder)).data_config
    processor = DeiTImageProcessor() if model_type == "deit" else ViTImageProcessor()
    processor.save_pretrained(folder)
    t = raptor_zoo.load_teacher(str(folder))
    assert tuple(t.data_config["mean"]) == tuple(processor.image_mean)
    assert tuple(t.data_config["std"]) == tuple(processor.image_std)
    assert t.data_config == data_config_from_processor(processor.to_dict(), (IMG, IMG))
    if model_type == "deit":
        assert default == {"input_size": (3, IMG, IMG), "interpolation": "bicubic", "mean": (0.485, 0.456, 0.406),
                           "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center"}
        # DeiTImageProcessor's resample / resize 256 / crop 224; only its bare-class 0.5 mean/std differ
        assert {k: v for k, v in t.data_config.items() if k not in ("mean", "std")} == \
            {k: v for k, v in default.items() if k not in ("mean", "std")}
    else:
        assert default == t.data_config  # the defaults are ViTImageProcessor's: bilinear, squash, 0.5 mean/std
        assert (default["interpolation"], default["crop_mode"], default["mean"]) == ("bilinear", "squash", (0.5,) * 3)


# ---------------------------------------------------------------------------------------------------------- mapping


def test_registered_and_mapping():
    for model_type in CONFIGS:
        assert HF_CONVERTERS[model_type].convert is convert_hf_vit
    ijepa = vit_config_from_hf(IJepaConfig(**TINY))
    assert (ijepa["class_token"], ijepa["global_pool"], ijepa["fc_norm"]) == (False, "avg", False)
    assert vit_config_from_hf(DeiTConfig(**TINY))["class_token"]
    hf_model = _perturb(DeiTForImageClassificationWithTeacher(DeiTConfig(**TINY, num_labels=3)))
    state_dict = dict(hf_model.deit.state_dict())
    head_dist = hf_model.distillation_classifier.state_dict()
    state_dict.update({f"distillation_classifier.{k}": v for k, v in head_dist.items()})
    mapped = hf_state_dict_to_timm(state_dict)
    assert torch.equal(mapped["dist_token"], hf_model.deit.embeddings.distillation_token)
    assert torch.equal(mapped["head_dist.weight"], hf_model.distillation_classifier.weight)
    assert mapped["pos_embed"].shape == (1, 2 + NUM_PATCHES, DIM)  # DeiT's two prefix rows stay in pos_embed
    with pytest.raises(ValueError, match="no exact timm equivalent"):
        vit_config_from_hf(ViTMSNConfig(**TINY, hidden_act="gelu_fast"))


def test_custom_classifier_warns_and_keeps_no_head():
    hf_model = _hf_model("deit", DeiTForImageClassificationWithTeacher)
    hf_model.cls_classifier = nn.Sequential(nn.Linear(DIM, 5))
    with pytest.warns(UserWarning, match="mean of the class and distillation tokens"):
        model = convert_hf_vit(hf_model)
    assert type(model) is VisionTransformerDistilled and model.num_classes == 0
    hf_model = _hf_model("ijepa", IJepaForImageClassification)
    hf_model.classifier = nn.Sequential(nn.Linear(DIM, 5))
    with pytest.warns(UserWarning, match="mean of all tokens"):
        model = convert_hf_vit(hf_model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        convert_hf_vit(_hf_model("vit_mae", ViTMAEForPreTraining))  # the decoder is not a classifier: no warning
