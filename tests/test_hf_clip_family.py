"""CLIP, SigLIP and AIMv2 transformers vision towers as timm ViTs (raptor_zoo/hf_convert/clip.py), their Raptors, and
swap_vision_tower: a Raptor inside a transformers CLIPModel / SiglipModel / Aimv2Model."""
import copy

import huggingface_hub.constants
import pytest
import torch
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import (
    Aimv2Config,
    Aimv2Model,
    Aimv2VisionConfig,
    Aimv2VisionModel,
    CLIPConfig,
    CLIPForImageClassification,
    CLIPImageProcessor,
    CLIPModel,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
    SiglipConfig,
    SiglipForImageClassification,
    SiglipImageProcessor,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling

import raptor_zoo
from raptor_zoo.hf_convert import HF_CONVERTERS
from raptor_zoo.hf_convert.clip import (
    TimmVisionTower,
    aimv2_sincos_pos_embed,
    clip_family_config_from_hf,
    convert_hf_clip,
    hf_clip_family_state_dict_to_timm,
    swap_vision_tower,
)

# 32 px images, patch 8: a 4 x 4 grid; 3 layers of width 64
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=100,
            max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)
DEPTH = VISION["num_hidden_layers"]
NUM_PATCHES = (VISION["image_size"] // VISION["patch_size"]) ** 2


def _clip(**overrides):
    return CLIPConfig(vision_config=VISION, text_config=TEXT, projection_dim=24, **overrides)


def _siglip(**overrides):
    return SiglipConfig(vision_config=VISION, text_config=dict(TEXT, projection_size=64), **overrides)


def _aimv2(**vision_overrides):
    return Aimv2Config(vision_config=dict(VISION, **vision_overrides), text_config=TEXT, projection_dim=24)


# name: (model factory, has class token, what teacher(x) equals: "image_embeds" / "pooler" / None (no pooler))
EXACT_MODELS = {
    "clip_vision": (lambda: CLIPVisionModel(CLIPVisionConfig(**VISION)), True, "pooler"),
    "clip_vision_projection": (
        lambda: CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=24)), True, "image_embeds"),
    "clip": (lambda: CLIPModel(_clip()), True, "image_embeds"),
    "siglip_vision": (lambda: SiglipVisionModel(SiglipVisionConfig(**VISION)), False, "pooler"),
    "siglip_vision_no_head": (
        lambda: SiglipVisionModel(SiglipVisionConfig(**VISION, vision_use_head=False)), False, None),
    "siglip": (lambda: SiglipModel(_siglip()), False, "pooler"),
}
AIMV2_MODELS = {
    "aimv2_vision": (lambda: Aimv2VisionModel(Aimv2VisionConfig(**VISION)), False, "pooler"),
    "aimv2_vision_native": (lambda: Aimv2VisionModel(Aimv2VisionConfig(**VISION, is_native=True)), False, "pooler"),
    "aimv2_vision_qkv_bias": (  # qkv_bias != mlp_bias: timm's one proj_bias, the MLP biases loaded as zeros
        lambda: Aimv2VisionModel(Aimv2VisionConfig(**VISION, qkv_bias=True)), False, "pooler"),
    "aimv2_vision_no_head": (lambda: Aimv2VisionModel(Aimv2VisionConfig(**VISION, use_head=False)), False, None),
    "aimv2": (lambda: Aimv2Model(_aimv2()), False, "image_embeds"),
}


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (zero biases, unit norms, probes) so a wrong mapping cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _images(size: int = 32, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _build(factory) -> nn.Module:
    torch.manual_seed(0)
    return _perturb(factory())


def _tower(hf_model: nn.Module) -> nn.Module:
    return getattr(hf_model, "vision_model", hf_model)


@torch.no_grad()
def _expected_output(hf_model: nn.Module, x: torch.Tensor, kind: str | None) -> torch.Tensor | None:
    if kind is None:
        return None
    if hasattr(hf_model, "get_image_features"):  # CLIPModel / SiglipModel / Aimv2Model
        features = hf_model.get_image_features(pixel_values=x)
        assert isinstance(features, BaseModelOutputWithPooling)  # transformers 5.x: an output object, not a tensor
        return features.pooler_output
    out = hf_model(pixel_values=x)
    return out.image_embeds if kind == "image_embeds" else out.pooler_output


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hub cache: any download attempt fails at once, nothing reaches the network."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_registered_model_types():
    for model_type in ("clip", "clip_vision_model", "siglip", "siglip_vision_model", "aimv2", "aimv2_vision_model"):
        assert model_type in HF_CONVERTERS


# ---------------------------------------------------------------------------------------------------------- exact


@pytest.mark.parametrize("name", list(EXACT_MODELS))
def test_clip_siglip_trajectory_and_output_are_exact(name, tmp_path, offline_hub):
    factory, has_class, kind = EXACT_MODELS[name]
    hf_model = _build(factory)
    folder = tmp_path / name
    hf_model.save_pretrained(folder)
    x = _images()
    with torch.no_grad():
        out = _tower(hf_model)(pixel_values=x, output_hidden_states=True)
        hidden_states = torch.stack(out.hidden_states, dim=1)
        expected = _expected_output(hf_model, x, kind)
    for source in (hf_model, str(folder)):
        t = raptor_zoo.load_teacher(source)
        assert isinstance(t.model, VisionTransformer)
        assert (t.depth, t.embed_dim, t.num_heads, t.patch_size, t.img_size) == (DEPTH, 64, 4, 8, (32, 32))
        assert (t.num_prefix_tokens, t.has_class_token) == (int(has_class), has_class)
        with torch.no_grad():
            trajectory = t.trajectory(x)
            assert trajectory.shape == hidden_states.shape == (2, DEPTH + 1, int(has_class) + NUM_PATCHES, 64)
            assert (trajectory - hidden_states).abs().max().item() == 0.0, source
            assert (trajectory[:, 1:] - trajectory[:, :-1]).abs().amax(dim=(0, 2, 3)).min() > 1e-3
            features = t.model.forward_features(x)
            if has_class:  # transformers' CLIP norms the pooled class token only
                assert (features[:, 0] - _tower(hf_model).post_layernorm(out.last_hidden_state[:, 0])).abs().max() == 0
            else:  # SigLIP norms every token
                assert (features - out.last_hidden_state).abs().max().item() == 0.0
            if expected is None:  # no pooler in transformers: the mean of the normed tokens (timm's *_gap layout)
                assert t.model.global_pool == "avg" and out.pooler_output is None
                torch.testing.assert_close(t(x), features.mean(dim=1), rtol=0, atol=0)
            else:
                assert (t(x) - expected).abs().max().item() <= 1e-6
                assert (t.forward_head_from_state(trajectory[:, -1]) - expected).abs().max().item() <= 1e-6


def test_clip_state_zero_is_after_pre_layrnorm():
    """transformers' hidden_states[0] is the pre-normed embedding, as timm's block input (norm_pre, pre_norm=True)."""
    hf_model = _build(EXACT_MODELS["clip_vision"][0])
    t = raptor_zoo.load_teacher(hf_model)
    assert not isinstance(t.model.norm_pre, nn.Identity) and t.model.patch_embed.proj.bias is None
    x = _images()
    with torch.no_grad():
        embeddings = hf_model.embeddings(x)
        x0 = t.embed(x)
        assert (x0 - hf_model.pre_layrnorm(embeddings)).abs().max().item() == 0.0
        assert (x0 - embeddings).abs().max().item() > 1e-2


@pytest.mark.parametrize("name", list(AIMV2_MODELS))
def test_aimv2_within_float_roundoff(name, tmp_path, offline_hub):
    """AIMv2 agrees to float round-off (<= 1e-5 relative), not bit for bit: x_0 has the same values, but transformers'
    eager RMSNorm keeps the channel-strided layout of the transposed patch conv while timm's (torch's fused
    F.rms_norm) returns a contiguous x_0, and the first layer's RMSNorm sums the squares in a layout-dependent order."""
    factory, _, kind = AIMV2_MODELS[name]
    hf_model = _build(factory)
    folder = tmp_path / name
    hf_model.save_pretrained(folder)
    x = _images()
    with torch.no_grad():
        out = _tower(hf_model)(pixel_values=x, output_hidden_states=True)
        hidden_states = torch.stack(out.hidden_states, dim=1)
        expected = _expected_output(hf_model, x, kind)
    for source in (hf_model, str(folder)):
        t = raptor_zoo.load_teacher(source)
        assert (t.depth, t.num_prefix_tokens, t.img_size) == (DEPTH, 0, (32, 32))
        with torch.no_grad():
            trajectory = t.trajectory(x)
            assert trajectory.shape == hidden_states.shape == (2, DEPTH + 1, NUM_PATCHES, 64)
            assert (trajectory[:, 0] - hidden_states[:, 0]).abs().max().item() == 0.0
            scale = hidden_states.abs().max().item()
            assert (trajectory - hidden_states).abs().max().item() <= 1e-5 * scale
            assert (t.model.forward_features(x) - out.last_hidden_state).abs().max().item() <= 1e-5 * scale
            if expected is None:
                assert t.model.global_pool == "avg" and t.model.attn_pool is None
            else:
                assert (t(x) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()


def test_aimv2_sincos_table_is_transformers():
    from transformers.models.aimv2.modeling_aimv2 import Aimv2VisionEmbeddings

    embeddings = Aimv2VisionEmbeddings(Aimv2VisionConfig(**dict(VISION, is_native=True))).eval()
    for size in (32, 48):
        x = _images(size, batch=1)
        with torch.no_grad():  # transformers adds its table to rms_norm(patches)
            patches = embeddings.rms_norm(embeddings.patch_embed(x).flatten(2).transpose(1, 2))
            ours = patches + aimv2_sincos_pos_embed((size // 8, size // 8), 64)
            assert (ours - embeddings(x)).abs().max().item() == 0.0


@pytest.mark.parametrize("classifier_cls, config", [
    (CLIPForImageClassification, _clip(num_labels=7)),
    (SiglipForImageClassification, _siglip(num_labels=7)),
])
def test_classifier_logits(classifier_cls, config):
    torch.manual_seed(0)
    hf_model = _perturb(classifier_cls(config))
    t = raptor_zoo.load_teacher(hf_model)
    assert t.model.global_pool == "avg" and t.model.head.out_features == 7
    x = _images()
    with torch.no_grad():
        out = hf_model(pixel_values=x, output_hidden_states=True)
        assert (t.trajectory(x) - torch.stack(out.hidden_states, 1)).abs().max().item() == 0.0
        torch.testing.assert_close(t(x), out.logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(
            t.forward_head_from_state(t.trajectory(x, layers=[-1])[:, 0]), out.logits, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("factory", [EXACT_MODELS["clip"][0], EXACT_MODELS["siglip"][0]], ids=["clip", "siglip"])
def test_other_run_size_equals_interpolate_pos_encoding(factory):
    """At 48 px the grid is resampled once as transformers' interpolate_pos_encoding (bicubic, no antialias)."""
    hf_model = _build(factory)
    t = raptor_zoo.load_teacher(hf_model, img_size=48)
    assert t.img_size == (48, 48) and t.data_config["input_size"] == (3, 48, 48)
    x = _images(48)
    with torch.no_grad():
        out = hf_model.vision_model(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True)
        assert (t.trajectory(x) - torch.stack(out.hidden_states, 1)).abs().max().item() == 0.0


def test_aimv2_run_size():
    """A native AIMv2 recomputes its sin-cos table at any size, as transformers; a learned table cannot move."""
    native = _build(AIMV2_MODELS["aimv2_vision_native"][0])
    t = raptor_zoo.load_teacher(native, img_size=48)
    x = _images(48)
    with torch.no_grad():
        expected = torch.stack(native(pixel_values=x, output_hidden_states=True).hidden_states, 1)
        assert (t.trajectory(x) - expected).abs().max().item() <= 1e-5 * expected.abs().max().item()
    assert not t.model.pos_embed.requires_grad
    with pytest.raises(ValueError, match="is_native=False"):
        raptor_zoo.load_teacher(_build(AIMV2_MODELS["aimv2_vision"][0]), img_size=48)


# ---------------------------------------------------------------------------------------------------------- Raptors


@pytest.mark.parametrize("factory", [EXACT_MODELS["clip"][0], EXACT_MODELS["siglip"][0], AIMV2_MODELS["aimv2"][0]],
                         ids=["clip", "siglip", "aimv2"])
def test_raptor_of_tower_reproduces_image_features(factory, tmp_path, offline_hub):
    hf_model = _build(factory)
    t = raptor_zoo.load_teacher(hf_model)
    raptor = raptor_zoo.from_teacher(t, block_schedule=(1,) * DEPTH).eval()
    x = _images()
    with torch.no_grad():
        assert (raptor.forward_features(x) - t.model.forward_features(x)).abs().max().item() == 0.0
        expected = hf_model.get_image_features(pixel_values=x).pooler_output
        assert (raptor(x) - expected).abs().max().item() <= 1e-6
    # the Raptor is described by config.json (SigLIP / AIMv2: a timm architecture + the converted arguments); the
    # reloaded SigLIP attention pool runs fused (the converted one unfused, as nn.MultiheadAttention), hence 1e-6
    raptor_zoo.save_pretrained(raptor, tmp_path)
    reloaded = raptor_zoo.from_pretrained(str(tmp_path)).eval()
    with torch.no_grad():
        assert (reloaded(x) - raptor(x)).abs().max().item() <= 1e-6
    two = raptor_zoo.from_teacher(t, k=2, block_schedule=(DEPTH // 2, DEPTH - DEPTH // 2))
    two(x).square().mean().backward()
    assert all(p.grad is not None for p in two.unique_blocks[0].parameters())


@pytest.mark.parametrize("factory", [EXACT_MODELS["clip"][0], EXACT_MODELS["siglip"][0], AIMV2_MODELS["aimv2"][0]],
                         ids=["clip", "siglip", "aimv2"])
def test_swap_vision_tower(factory):
    hf_model = _build(factory)
    t = raptor_zoo.load_teacher(hf_model)
    raptor = raptor_zoo.from_teacher(t, block_schedule=(1,) * DEPTH).eval()
    swapped = raptor_zoo.swap_vision_tower(copy.deepcopy(hf_model), raptor)
    assert isinstance(swapped.vision_model, TimmVisionTower) and swapped.vision_model.model is raptor
    x = _images()
    input_ids = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    with torch.no_grad():
        expected = hf_model.get_image_features(pixel_values=x, output_hidden_states=True)
        got = swapped.get_image_features(pixel_values=x, output_hidden_states=True)
        assert isinstance(got, BaseModelOutputWithPooling)
        assert (got.pooler_output - expected.pooler_output).abs().max().item() <= 1e-6  # image embeddings
        # the tower's own semantics: CLIP's last_hidden_state is un-normed, SigLIP's / AIMv2's normed
        assert (got.last_hidden_state - expected.last_hidden_state).abs().max().item() <= 1e-6
        assert len(got.hidden_states) == DEPTH + 1
        for ours, theirs in zip(got.hidden_states, expected.hidden_states):
            assert (ours - theirs).abs().max().item() <= 1e-6
        assert got.pooler_output.shape == swapped.get_image_features(pixel_values=x).pooler_output.shape
        if not isinstance(hf_model, Aimv2Model):  # contrastive logits with the text tower
            logits = swapped(input_ids=input_ids, pixel_values=x).logits_per_image
            torch.testing.assert_close(logits, hf_model(input_ids=input_ids, pixel_values=x).logits_per_image,
                                       rtol=0, atol=1e-5)
        # the converted teacher itself works as a tower too
        teacher_swapped = swap_vision_tower(copy.deepcopy(hf_model), t.model)
        assert (teacher_swapped.get_image_features(pixel_values=x).pooler_output
                - expected.pooler_output).abs().max().item() <= 1e-6


@pytest.mark.parametrize("classifier_cls, config", [
    (CLIPForImageClassification, _clip(num_labels=5)),
    (SiglipForImageClassification, _siglip(num_labels=5)),
], ids=["clip", "siglip"])
def test_swap_vision_tower_of_classifier(classifier_cls, config):
    """A *ForImageClassification model reads last_hidden_state (CLIP un-normed, SigLIP normed) into its classifier."""
    torch.manual_seed(0)
    hf_model = _perturb(classifier_cls(config))
    raptor = raptor_zoo.from_teacher(raptor_zoo.load_teacher(hf_model), block_schedule=(1,) * DEPTH).eval()
    swapped = swap_vision_tower(copy.deepcopy(hf_model), raptor)
    x = _images()
    with torch.no_grad():
        torch.testing.assert_close(swapped(pixel_values=x).logits, hf_model(pixel_values=x).logits, rtol=0, atol=1e-6)


def test_swap_vision_tower_refuses_mismatches():
    clip = _build(EXACT_MODELS["clip"][0])
    with pytest.raises(TypeError, match="itself a vision tower"):
        swap_vision_tower(_build(EXACT_MODELS["clip_vision"][0]), convert_hf_clip(clip))
    narrow = CLIPModel(CLIPConfig(vision_config=dict(VISION, hidden_size=32), text_config=TEXT)).eval()
    with pytest.raises(ValueError, match="width 32"):
        swap_vision_tower(copy.deepcopy(clip), raptor_zoo.load_teacher(narrow).model)
    classifier = raptor_zoo.load_teacher(CLIPForImageClassification(_clip(num_labels=3)).eval())
    with pytest.raises(ValueError, match="global_pool='token'"):
        swap_vision_tower(copy.deepcopy(clip), classifier.model)
    gap = raptor_zoo.load_teacher(SiglipVisionModel(SiglipVisionConfig(**VISION, vision_use_head=False)).eval())
    with pytest.raises(ValueError, match="attention head"):
        swap_vision_tower(_build(EXACT_MODELS["siglip"][0]), gap.model)
    with pytest.raises(ValueError, match="model_type"):
        swap_vision_tower(nn.Linear(2, 2), gap.model)


# ------------------------------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize("factory, mean, std, crop_mode", [
    (EXACT_MODELS["clip"][0], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "center"),
    (EXACT_MODELS["siglip_vision"][0], (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "squash"),
    (AIMV2_MODELS["aimv2_vision"][0], OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "center"),
], ids=["clip", "siglip", "aimv2"])
def test_default_data_config_is_the_processors(factory, mean, std, crop_mode):
    t = raptor_zoo.load_teacher(_build(factory))
    assert t.data_config == {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": mean, "std": std,
                             "crop_pct": 1.0, "crop_mode": crop_mode}


def test_processor_defaults_and_auto_mapping():
    """The defaults above are transformers' own: CLIPImageProcessor (also AIMv2's, by the auto mapping) and
    SiglipImageProcessor (bicubic in transformers 5.x)."""
    from transformers.models.auto.image_processing_auto import IMAGE_PROCESSOR_MAPPING_NAMES

    assert "CLIPImageProcessor" in str(IMAGE_PROCESSOR_MAPPING_NAMES["aimv2"])
    assert "CLIPImageProcessor" in str(IMAGE_PROCESSOR_MAPPING_NAMES["aimv2_vision_model"])
    clip, siglip = CLIPImageProcessor(), SiglipImageProcessor()
    assert (int(clip.resample), clip.size, clip.crop_size, clip.do_center_crop) == (
        3, {"shortest_edge": 224}, {"height": 224, "width": 224}, True)
    assert tuple(clip.image_mean) == OPENAI_CLIP_MEAN and tuple(clip.image_std) == OPENAI_CLIP_STD
    assert (int(siglip.resample), siglip.size, tuple(siglip.image_mean)) == (3, {"height": 224, "width": 224},
                                                                             (0.5, 0.5, 0.5))
    assert not getattr(siglip, "do_center_crop", False)


@pytest.mark.parametrize("factory, processor_cls, mean, crop_mode", [
    (EXACT_MODELS["clip_vision_projection"][0], CLIPImageProcessor, OPENAI_CLIP_MEAN, "center"),
    (EXACT_MODELS["siglip"][0], SiglipImageProcessor, (0.5, 0.5, 0.5), "squash"),
    (AIMV2_MODELS["aimv2"][0], CLIPImageProcessor, OPENAI_CLIP_MEAN, "center"),
], ids=["clip", "siglip", "aimv2"])
def test_folder_processor_config(factory, processor_cls, mean, crop_mode, tmp_path, offline_hub):
    hf_model = _build(factory)
    hf_model.save_pretrained(tmp_path)
    processor_cls(image_mean=[0.1, 0.2, 0.3]).save_pretrained(tmp_path)
    t = raptor_zoo.load_teacher(str(tmp_path))
    assert t.source == "hf" and t.data_config["mean"] == (0.1, 0.2, 0.3)
    assert (t.data_config["interpolation"], t.data_config["crop_mode"]) == ("bicubic", crop_mode)
    (tmp_path / "preprocessor_config.json").unlink()
    assert raptor_zoo.load_teacher(str(tmp_path)).data_config["mean"] == mean


# ---------------------------------------------------------------------------------------------------------- errors


def test_config_and_state_dict_errors():
    with pytest.raises(ValueError, match="no exact timm equivalent"):
        clip_family_config_from_hf(CLIPVisionConfig(**dict(VISION, hidden_act="gelu_fast")))
    with pytest.raises(ValueError, match="SwiGLU gate is SiLU"):
        clip_family_config_from_hf(Aimv2VisionConfig(**dict(VISION, hidden_act="gelu")))
    with pytest.raises(ValueError, match="divisible"):
        clip_family_config_from_hf(SiglipVisionConfig(**dict(VISION, num_attention_heads=3)))
    with pytest.raises(ValueError, match="Cannot map"):
        hf_clip_family_state_dict_to_timm({"encoder.layers.0.self_attn.rotary.weight": torch.zeros(1)}, "clip")
    with pytest.raises(ValueError, match="timm cannot represent"):
        hf_clip_family_state_dict_to_timm({"encoder.layers.0.self_attn.q_proj.bias": torch.zeros(4)}, "siglip")
    with pytest.raises(TypeError, match="convert_hf_clip takes"):
        convert_hf_clip(SiglipVisionModel(SiglipVisionConfig(**VISION)))
    mapped = hf_clip_family_state_dict_to_timm(SiglipVisionModel(SiglipVisionConfig(**VISION)).state_dict(), "siglip")
    assert mapped["attn_pool.q.weight"].shape == (64, 64) and mapped["attn_pool.kv.weight"].shape == (128, 64)
