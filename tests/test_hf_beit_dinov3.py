"""transformers BEiT / Data2Vec-vision -> timm Beit (bit-exact) and DINOv3ViT -> timm Eva (exact up to RoPE angles)."""
import json

import huggingface_hub.constants
import pytest
import torch
from timm.models.beit import Beit
from timm.models.eva import Eva
from torch import nn
from transformers import (
    BeitConfig,
    BeitForImageClassification,
    BeitImageProcessor,
    BeitModel,
    Data2VecVisionConfig,
    Data2VecVisionForImageClassification,
    Data2VecVisionModel,
    DINOv3ViTBackbone,
    DINOv3ViTConfig,
    DINOv3ViTImageProcessor,
    DINOv3ViTModel,
)

import raptor_zoo
from raptor_zoo.cli import main
from raptor_zoo.hf_convert import HF_CONVERTERS
from raptor_zoo.hf_convert.beit import (
    BatchedRelativePositionBias,
    beit_config_from_hf,
    convert_hf_beit,
    hf_beit_state_dict_to_timm,
)
from raptor_zoo.hf_convert.dinov3 import convert_hf_dinov3, dinov3_config_from_hf, hf_dinov3_state_dict_to_timm
from raptor_zoo.teachers import load_teacher

IMG, PATCH, DEPTH = 32, 8, 4
_TINY = dict(hidden_size=64, num_hidden_layers=DEPTH, num_attention_heads=4, intermediate_size=128, image_size=IMG,
             patch_size=PATCH)

BEIT_CASES = {
    # name: (class, config): mean pooling with per-layer relative-position bias and an absolute position embedding
    "beit-mean-pooling": (BeitModel, BeitConfig(
        **_TINY, use_mean_pooling=True, use_relative_position_bias=True, use_absolute_position_embeddings=True)),
    # one relative-position bias shared by all layers, class-token pooling (final layernorm on every token)
    "beit-shared-rel-pos": (BeitModel, BeitConfig(
        **_TINY, use_mean_pooling=False, use_shared_relative_position_bias=True, use_mask_token=True)),
    # Data2Vec-vision (4.x module layout), both biases, mean pooling without a pooler (the default base model)
    "data2vec-vision": (Data2VecVisionModel, Data2VecVisionConfig(
        **_TINY, use_relative_position_bias=True, use_shared_relative_position_bias=True)),
}

DINOV3_CASES = {
    # registers + LayerScale, plain GELU MLP, q / v biases
    "plain-mlp": (DINOv3ViTModel, DINOv3ViTConfig(**_TINY, num_register_tokens=4, layerscale_value=0.1)),
    # gated SiLU MLP (the large models'), no biases anywhere but the norms and the patch conv
    "gated-mlp": (DINOv3ViTModel, DINOv3ViTConfig(
        **dict(_TINY, intermediate_size=96), num_register_tokens=2, use_gated_mlp=True, hidden_act="silu",
        query_bias=False, value_bias=False, proj_bias=False, mlp_bias=False)),
    # the Backbone holds the same weights
    "backbone": (DINOv3ViTBackbone, DINOv3ViTConfig(**_TINY, num_register_tokens=4)),
}
# timm's DINOv3 RoPE divides by periods, transformers multiplies by inverse frequencies: the sin/cos tables
# differ in the last float32 bit (see raptor_zoo/hf_convert/dinov3.py), so states agree to ~1e-6, not bit for bit
ROPE_RTOL = 1e-5


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (layer scales, zero-init biases and tables, tokens)."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _hf_states(hf_model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack(hf_model(pixel_values=x, output_hidden_states=True).hidden_states, 1)


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hub cache: any download attempt fails at once."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


# ---------------------------------------------------------------------------------------------------------- BEiT


@pytest.mark.parametrize("case", list(BEIT_CASES))
def test_hf_beit_trajectory_is_bit_exact_from_module_and_folder(case, tmp_path, offline_hub):
    model_cls, config = BEIT_CASES[case]
    hf_model = _perturb(model_cls(config))
    folder = tmp_path / case
    hf_model.save_pretrained(folder)
    x = _images(IMG)
    expected = _hf_states(hf_model, x)
    assert (expected[:, 1:] - expected[:, :-1]).abs().amax(dim=(0, 2, 3)).min() > 1e-3
    for source in (hf_model, str(folder)):
        t = load_teacher(source)
        assert isinstance(t.model, Beit) and t.family.name == "beit"
        assert (t.depth, t.embed_dim, t.num_heads, t.patch_size, t.img_size) == (DEPTH, 64, 4, PATCH, (IMG, IMG))
        assert (t.num_prefix_tokens, t.num_reg_tokens, t.has_class_token) == (1, 0, True)
        with torch.no_grad():
            trajectory = t.trajectory(x)
            out = hf_model(pixel_values=x)
            features = t.model.forward_features(x)
            pooled = t(x)
        assert trajectory.shape == expected.shape == (2, DEPTH + 1, 1 + (IMG // PATCH) ** 2, 64)
        assert (trajectory - expected).abs().max().item() == 0.0, f"{case} from {type(source).__name__}"
        assert (features - out.last_hidden_state).abs().max().item() == 0.0
        if out.pooler_output is not None:  # mean-pooled + pooler layernorm, or the normed class token
            assert (pooled - out.pooler_output).abs().max().item() == 0.0
        else:  # Data2VecVisionModel has no pooler: the mean of the patch tokens, un-normed
            assert (pooled - out.last_hidden_state[:, 1:].mean(1)).abs().max().item() == 0.0
    if config.use_shared_relative_position_bias:
        assert isinstance(t.model.rel_pos_bias, BatchedRelativePositionBias)
    assert t.name == f"{config.model_type} ({case})" and t.source == "hf"


@pytest.mark.parametrize("model_cls, config", [
    (BeitForImageClassification, BeitConfig(**_TINY, num_labels=7, use_relative_position_bias=True)),
    (Data2VecVisionForImageClassification, Data2VecVisionConfig(
        **_TINY, num_labels=5, use_mean_pooling=False, use_shared_relative_position_bias=True)),
], ids=["beit-mean-pooling", "data2vec-vision-cls-token"])
def test_hf_beit_classifier_head_is_converted(model_cls, config):
    hf_model = _perturb(model_cls(config))
    t = load_teacher(hf_model)
    assert isinstance(t.model.head, nn.Linear) and t.model.num_classes == config.num_labels
    assert t.model.global_pool == ("avg" if config.use_mean_pooling else "token")
    x = _images(IMG)
    with torch.no_grad():
        logits = hf_model(pixel_values=x).logits
        torch.testing.assert_close(t(x), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(t.forward_head_from_state(t.trajectory(x, layers=[-1])[:, 0]), logits,
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["beit-shared-rel-pos", "data2vec-vision"])
def test_hf_beit_raptors(case):
    model_cls, config = BEIT_CASES[case]
    t = load_teacher(_perturb(model_cls(config)))
    x = _images(IMG)
    raptor = raptor_zoo.from_teacher(t, block_schedule=(1,) * DEPTH).eval()
    with torch.no_grad():
        assert (raptor.forward_features(x) - t.model.forward_features(x)).abs().max().item() == 0.0
    raptor = raptor_zoo.from_teacher(t, k=2, block_schedule=(DEPTH // 2, DEPTH - DEPTH // 2)).train()
    raptor.forward_features(x).square().mean().backward()
    assert all(p.grad is not None for p in raptor.parameters() if p.requires_grad and p.ndim > 1)


def test_hf_beit_preprocessor_config_gives_the_data_config(tmp_path, offline_hub):
    model_cls, config = BEIT_CASES["beit-mean-pooling"]
    folder = tmp_path / "beit"
    model_cls(config).save_pretrained(folder)
    defaults = load_teacher(str(folder)).data_config  # no preprocessor_config.json: BeitImageProcessor defaults
    BeitImageProcessor().save_pretrained(folder)
    saved = load_teacher(str(folder)).data_config
    assert defaults == saved == {"input_size": (3, IMG, IMG), "interpolation": "bicubic", "mean": (0.5, 0.5, 0.5),
                                 "std": (0.5, 0.5, 0.5), "crop_pct": 1.0, "crop_mode": "squash"}
    BeitImageProcessor(image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6], resample=2).save_pretrained(folder)
    custom = load_teacher(str(folder)).data_config
    assert (custom["mean"], custom["std"], custom["interpolation"]) == ((0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "bilinear")


def test_hf_beit_mapping_and_unsupported_settings():
    hf_model = BeitModel(BEIT_CASES["beit-shared-rel-pos"][1])
    state_dict = dict(hf_model.state_dict(), **{"layers.0.relative_position_index": torch.zeros(1)})
    mapped = hf_beit_state_dict_to_timm(state_dict)
    attn = hf_model.layers[1].attention
    torch.testing.assert_close(
        mapped["blocks.1.attn.qkv.weight"], torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert "blocks.1.attn.k_bias" not in mapped and "rel_pos_bias.relative_position_bias_table" in mapped
    assert not any("mask_token" in k or "relative_position_index" in k for k in mapped)
    assert beit_config_from_hf(hf_model.config)["use_shared_rel_pos_bias"] is True
    with pytest.raises(ValueError, match="hidden_act='gelu_new'"):
        beit_config_from_hf(BeitConfig(**_TINY, hidden_act="gelu_new"))
    with pytest.raises(ValueError, match="Cannot map"):
        hf_beit_state_dict_to_timm({"layers.0.attention.k_proj.bias": torch.zeros(64)})
    with pytest.raises(TypeError, match="convert_hf_beit takes"):
        convert_hf_beit(DINOv3ViTModel(DINOV3_CASES["plain-mlp"][1]))
    with pytest.raises(ValueError, match="image_size"):  # relative-position tables: the config's size only
        load_teacher(hf_model, img_size=48)
    assert HF_CONVERTERS["beit"].set_run_size is None and HF_CONVERTERS["data2vec-vision"].set_run_size is None


# ---------------------------------------------------------------------------------------------------------- DINOv3


@pytest.mark.parametrize("case", list(DINOV3_CASES))
def test_hf_dinov3_trajectory_within_rope_tolerance_at_two_sizes(case, tmp_path, offline_hub):
    model_cls, config = DINOV3_CASES[case]
    hf_model = _perturb(model_cls(config))
    folder = tmp_path / case
    hf_model.save_pretrained(folder)
    num_reg = config.num_register_tokens
    for source in (hf_model, str(folder)):
        t = load_teacher(source)
        assert isinstance(t.model, Eva) and t.family.name == "eva" and t.img_size == (IMG, IMG)
        assert (t.depth, t.embed_dim, t.num_heads, t.patch_size) == (DEPTH, 64, 4, PATCH)
        assert (t.num_prefix_tokens, t.num_reg_tokens, t.has_class_token) == (1 + num_reg, num_reg, True)
        for size in (IMG, 48):  # RoPE has no learned grid: any size is transformers' own computation
            t = load_teacher(source, img_size=size)
            assert t.img_size == (size, size) and t.data_config["input_size"] == (3, size, size)
            x = _images(size)
            expected = _hf_states(hf_model, x)
            with torch.no_grad():
                trajectory = t.trajectory(x)
                last = hf_model.norm(expected[:, -1])  # the Backbone's output has no last_hidden_state
                features = t.model.forward_features(x)
            assert trajectory.shape == expected.shape == (2, DEPTH + 1, 1 + num_reg + (size // PATCH) ** 2, 64)
            assert (trajectory[:, 0] - expected[:, 0]).abs().max().item() == 0.0  # the embeddings: no RoPE yet
            assert _relative_error(trajectory, expected) <= ROPE_RTOL, f"{case} at {size}"
            assert _relative_error(features, last) <= ROPE_RTOL
            assert (expected[:, 1:] - expected[:, :-1]).abs().amax(dim=(0, 2, 3)).min() > 1e-3
    with torch.no_grad():  # no head: the normed class token, transformers' pooler_output
        x = _images(IMG)
        assert _relative_error(load_teacher(hf_model)(x), hf_model.norm(_hf_states(hf_model, x)[:, -1, 0])) \
            <= ROPE_RTOL


@pytest.mark.parametrize("case", ["plain-mlp", "gated-mlp"])
def test_hf_dinov3_is_bit_exact_given_transformers_rope_tables(case):
    """The RoPE angle formula is the only difference: with transformers' sin / cos tables every state is equal."""
    model_cls, config = DINOV3_CASES[case]
    hf_model = _perturb(model_cls(config))
    model = convert_hf_dinov3(hf_model)
    for size in (IMG, 48):
        x = _images(size)
        cos, sin = hf_model.rope_embeddings(x)
        model.rope.get_embed = lambda shape=None, dtype=None, table=torch.cat([sin, cos], -1): table
        with torch.no_grad():
            trajectory = raptor_zoo.Teacher(model, img_size=size).trajectory(x)
        assert (trajectory - _hf_states(hf_model, x)).abs().max().item() == 0.0, f"{case} at {size}"


@pytest.mark.parametrize("case", ["plain-mlp", "gated-mlp"])
def test_hf_dinov3_raptors(case):
    model_cls, config = DINOV3_CASES[case]
    t = load_teacher(_perturb(model_cls(config)))
    x = _images(IMG)
    raptor = raptor_zoo.from_teacher(t, block_schedule=(1,) * DEPTH).eval()
    with torch.no_grad():
        assert (raptor.forward_features(x) - t.model.forward_features(x)).abs().max().item() == 0.0
    raptor = raptor_zoo.from_teacher(t, k=2, block_schedule=(DEPTH // 2, DEPTH - DEPTH // 2)).train()
    raptor.forward_features(x).square().mean().backward()
    assert all(p.grad is not None for p in raptor.parameters() if p.requires_grad and p.ndim > 1)


def test_hf_dinov3_preprocessor_config_gives_the_data_config(tmp_path, offline_hub):
    folder = tmp_path / "dinov3"
    DINOv3ViTModel(DINOV3_CASES["plain-mlp"][1]).save_pretrained(folder)
    defaults = load_teacher(str(folder)).data_config  # DINOv3ViTImageProcessor defaults
    DINOv3ViTImageProcessor().save_pretrained(folder)
    saved = load_teacher(str(folder)).data_config
    assert defaults == saved == {"input_size": (3, IMG, IMG), "interpolation": "bilinear",
                                 "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225), "crop_pct": 1.0,
                                 "crop_mode": "squash"}
    DINOv3ViTImageProcessor(image_mean=[0.1, 0.2, 0.3]).save_pretrained(folder)
    assert load_teacher(str(folder), img_size=48).data_config["mean"] == (0.1, 0.2, 0.3)


def test_hf_dinov3_mapping_and_unsupported_settings():
    config = DINOV3_CASES["gated-mlp"][1]
    hf_model = DINOv3ViTModel(config)
    args = dinov3_config_from_hf(config)
    assert (args["rope_type"], args["use_abs_pos_emb"], args["swiglu_mlp"], args["num_reg_tokens"]) == (
        "dinov3", False, True, 2)
    mapped = hf_dinov3_state_dict_to_timm(hf_model.state_dict())
    layer = hf_model.model.layer[0]
    torch.testing.assert_close(mapped["blocks.0.mlp.fc1_g.weight"], layer.mlp.gate_proj.weight)
    torch.testing.assert_close(mapped["blocks.0.mlp.fc1_x.weight"], layer.mlp.up_proj.weight)
    torch.testing.assert_close(mapped["blocks.0.gamma_2"], layer.layer_scale2.lambda1)
    assert "mask_token" not in json.dumps(list(mapped))
    with pytest.raises(ValueError, match="key_bias=True"):
        dinov3_config_from_hf(DINOv3ViTConfig(**_TINY, key_bias=True))
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        dinov3_config_from_hf(DINOv3ViTConfig(**_TINY, use_gated_mlp=True))
    with pytest.raises(ValueError, match="hidden_act='silu'"):
        dinov3_config_from_hf(DINOv3ViTConfig(**_TINY, hidden_act="silu"))
    with pytest.raises(TypeError, match="convert_hf_dinov3 takes"):
        convert_hf_dinov3(hf_model.model)  # the layer stack (its base_model) is not the model


def test_phases_command_on_a_transformers_dinov3_folder(tmp_path, capsys, offline_hub):
    """`raptor-zoo phases --teacher <transformers DINOv3 folder> --data digits` works offline."""
    folder = tmp_path / "tiny-dinov3"
    _perturb(DINOv3ViTModel(DINOV3_CASES["plain-mlp"][1])).save_pretrained(folder)
    out = tmp_path / "phases_out"
    assert main(["phases", "--teacher", str(folder), "--data", "digits", "--k", "2", "--num-images", "32",
                 "--device", "cpu", "--out", str(out)]) == 0
    result = json.loads((out / "phases.json").read_text())
    assert result["teacher"] == "dinov3_vit (tiny-dinov3)" and result["k"] == 2 and result["num_images"] == 32
    assert len(result["block_schedule"]) == 2 and sum(result["block_schedule"]) == DEPTH
    assert (out / "phases.png").stat().st_size > 10_000
    assert "block_schedule" in capsys.readouterr().out
