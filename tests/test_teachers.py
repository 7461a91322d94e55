"""Teachers: trajectories and token layout of timm and transformers ViTs, exact HF -> timm conversion, loading."""
import os

import huggingface_hub.constants
import pytest
import timm
import torch
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from transformers import (
    Dinov2Config,
    Dinov2ForImageClassification,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersForImageClassification,
    Dinov2WithRegistersModel,
    ResNetConfig,
    ResNetModel,
    ViTConfig,
    ViTForImageClassification,
    ViTModel,
)

import raptor_zoo
from raptor_zoo.teachers import (
    EMBEDDED_TEACHERS,
    ClsAvgVisionTransformer,
    Teacher,
    convert_hf_vit,
    data_config_from_processor,
    hf_state_dict_to_timm,
    load_teacher,
    vit_config_from_hf,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
HF_FAMILIES = {
    # name: (base class, classification class, config); small, 56 px / patch 14 (ViT: 32 px / patch 16)
    "dinov2": (Dinov2Model, Dinov2ForImageClassification, dict(
        cls=Dinov2Config, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56, patch_size=14)),
    "dinov2_with_registers": (Dinov2WithRegistersModel, Dinov2WithRegistersForImageClassification, dict(
        cls=Dinov2WithRegistersConfig, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, image_size=56,
        patch_size=14, num_register_tokens=4)),
    "vit": (ViTModel, ViTForImageClassification, dict(
        cls=ViTConfig, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        image_size=32, patch_size=16)),
}


def _hf_config(family: str, **overrides):
    args = dict(HF_FAMILIES[family][2], **overrides)
    return args.pop("cls")(**args)


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (layer scales, norms, tokens) so a wrong mapping cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hub cache: any download attempt fails at once, nothing reaches the network."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def reg4_teacher() -> Teacher:
    torch.manual_seed(0)
    return load_teacher("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56)


# ---------------------------------------------------------------------------------------------------------- timm


def test_reg4_dinov2_attributes_and_frozen(reg4_teacher):
    t = reg4_teacher
    assert (t.name, t.source, t.revision) == ("vit_small_patch14_reg4_dinov2", "timm", None)
    assert (t.depth, t.embed_dim, t.num_heads, t.patch_size, t.img_size) == (12, 384, 6, 14, (56, 56))
    assert (t.num_prefix_tokens, t.num_reg_tokens, t.has_class_token) == (5, 4, True)
    assert t.num_tokens == 1 + 4 + 16
    assert len(t.blocks) == 12 and t.blocks is t.model.blocks
    # the paper's DINOv2 protocol at the size the package runs it at
    assert t.data_config == {
        "input_size": (3, 56, 56), "interpolation": "bicubic", "mean": IMAGENET_MEAN,
        "std": (0.229, 0.224, 0.225), "crop_pct": 0.875, "crop_mode": "center",
    }
    t.train()
    assert not t.training and not any(m.training for m in t.modules())
    assert not any(p.requires_grad for p in t.parameters())


def test_dinov2_name_defaults_to_224_dynamic():
    t = load_teacher("vit_small_patch14_dinov2", pretrained=False, depth=2)
    assert t.img_size == (224, 224) and t.data_config["input_size"] == (3, 224, 224)
    assert t.model.dynamic_img_size
    assert t.trajectory(_images(56, batch=1)).shape == (1, 3, 1 + 16, 384)  # other sizes still run


def test_reg4_trajectory_matches_timm(reg4_teacher):
    t, x = reg4_teacher, _images(56)
    with torch.no_grad():
        trajectory = t.trajectory(x)
        assert trajectory.shape == (2, 13, 21, 384)
        assert not trajectory.requires_grad
        torch.testing.assert_close(trajectory[:, 0], t.embed(x), rtol=0, atol=0)
        # raw block outputs (before the final norm), tokens as (prefix, patches)
        intermediates = t.model.forward_intermediates(
            x, norm=False, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
        expected = torch.stack([torch.cat([prefix, patches], dim=1) for patches, prefix in intermediates], dim=1)
        torch.testing.assert_close(trajectory[:, 1:], expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(t.model.norm(trajectory[:, -1]), t.model.forward_features(x), rtol=0, atol=1e-5)
        logits = t(x)
        assert logits.shape == (2, 384)  # timm's DINOv2 has no classifier: the normed class token
        torch.testing.assert_close(t.forward_head_from_state(trajectory[:, -1]), logits, rtol=0, atol=1e-5)
        # consecutive states differ: the blocks did something
        assert (trajectory[:, 1:] - trajectory[:, :-1]).abs().amax(dim=(0, 2, 3)).min() > 0


def test_reg4_token_layout(reg4_teacher):
    t = reg4_teacher
    a, b = _images(56, batch=1, seed=1), _images(56, batch=1, seed=2)
    with torch.no_grad():
        x0a, x0b = t.embed(a), t.embed(b)
        # no_embed_class: cls then 4 registers, image independent and without position embedding
        torch.testing.assert_close(x0a[0, 0], t.model.cls_token[0, 0], rtol=0, atol=0)
        torch.testing.assert_close(x0a[0, 1:5], t.model.reg_token[0], rtol=0, atol=0)
        torch.testing.assert_close(x0a[:, :5], x0b[:, :5], rtol=0, atol=0)
        # then the 4x4 patches in row-major order (position embedding and conv bias cancel in the difference)
        conv = t.model.patch_embed.proj
        diff = (conv(a) - conv(b)).flatten(2).transpose(1, 2)
        torch.testing.assert_close(x0a[:, 5:] - x0b[:, 5:], diff, rtol=1e-4, atol=1e-5)


def test_layers_subset_order_and_early_stop(reg4_teacher):
    t, x = reg4_teacher, _images(56)
    calls = []
    hooks = [block.register_forward_hook(lambda m, i, o, n=n: calls.append(n)) for n, block in enumerate(t.blocks)]
    try:
        with torch.no_grad():
            full = t.trajectory(x)
            calls.clear()
            subset = t.trajectory(x, layers=[5, 0, 2, -8, 5])
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [0, 1, 2, 3, 4]  # blocks run only up to max(layers) = 5
    torch.testing.assert_close(subset, full[:, [5, 0, 2, 5, 5]], rtol=0, atol=0)
    with torch.no_grad():
        assert t.trajectory(x, layers=[0]).shape == (2, 1, 21, 384)
    with pytest.raises(ValueError, match="0..12"):
        t.trajectory(x, layers=[13])
    with pytest.raises(ValueError, match="empty"):
        t.trajectory(x, layers=[])
    with pytest.raises(TypeError, match="sequence of ints"):
        t.trajectory(x, layers=3)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        t.trajectory(x[0])


def test_bf16_autocast_close_to_fp32(reg4_teacher):
    t, x = reg4_teacher, _images(56)
    with torch.no_grad():
        reference = t.trajectory(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = t.trajectory(x)
            logits = t(x)
    assert low.shape == reference.shape and torch.isfinite(low).all() and torch.isfinite(logits).all()
    dims = (0, 2, 3)
    error = torch.linalg.vector_norm(low.float() - reference, dim=dims)
    relative = error / torch.linalg.vector_norm(reference, dim=dims)
    assert relative.max() < 0.03, relative


def test_timm_dinov2_without_registers_layout():
    t = load_teacher("vit_small_patch14_dinov2", pretrained=False, img_size=56, depth=4)
    assert (t.depth, t.num_prefix_tokens, t.num_reg_tokens, t.has_class_token) == (4, 1, 0, True)
    assert not t.model.no_embed_class  # the class token carries a position embedding
    x = _images(56)
    with torch.no_grad():
        trajectory = t.trajectory(x)
        assert trajectory.shape == (2, 5, 1 + 16, 384)
        torch.testing.assert_close(
            trajectory[0, 0, 0], t.model.cls_token[0, 0] + t.model.pos_embed[0, 0], rtol=0, atol=1e-6)
        features = t.model.forward_features(x)
        torch.testing.assert_close(t.model.norm(trajectory[:, -1]), features, rtol=0, atol=1e-5)


def test_deit_tiny_at_32px():
    t = load_teacher("deit_tiny_patch16_224", pretrained=False, img_size=32)
    assert (t.depth, t.embed_dim, t.patch_size, t.img_size, t.num_prefix_tokens) == (12, 192, 16, (32, 32), 1)
    # non-DINOv2 names take timm's own data config, at the size the teacher runs at
    assert t.data_config["input_size"] == (3, 32, 32) and t.data_config["crop_pct"] == 0.9
    x = _images(32)
    with torch.no_grad():
        trajectory = t.trajectory(x)
        assert trajectory.shape == (2, 13, 1 + 4, 192)
        intermediates = t.model.forward_intermediates(
            x, indices=[3, 11], norm=False, output_fmt="NLC", return_prefix_tokens=True, intermediates_only=True)
        for layer, (patches, prefix) in zip([4, 12], intermediates):
            torch.testing.assert_close(trajectory[:, layer], torch.cat([prefix, patches], 1), rtol=0, atol=1e-6)
        logits = t(x)
        assert logits.shape == (2, 1000)
        torch.testing.assert_close(t.forward_head_from_state(trajectory[:, -1]), logits, rtol=0, atol=1e-5)


def test_timm_module_and_teacher_inputs():
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2)
    t = load_teacher(model)
    assert (t.name, t.source, t.img_size, t.model) == ("VisionTransformer", "module", (32, 32), model)
    assert load_teacher(t) is t
    with pytest.raises(ValueError, match="dynamic_img_size=True"):
        load_teacher(model, img_size=64)
    dynamic = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, depth=2, dynamic_img_size=True)
    resized = load_teacher(load_teacher(dynamic), img_size=64)
    assert resized.img_size == (64, 64) and resized.data_config["input_size"] == (3, 64, 64)
    with torch.no_grad():
        assert resized.trajectory(_images(64, batch=1)).shape == (1, 3, 1 + 16, 192)


# ---------------------------------------------------------------------------------------------------------- HF


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_hf_conversion_is_exact(family):
    base_cls, _, _ = HF_FAMILIES[family]
    config = _hf_config(family)
    hf_model = _perturb(base_cls(config))
    t = load_teacher(hf_model)
    num_reg = 4 if family == "dinov2_with_registers" else 0
    num_patches = (config.image_size // config.patch_size) ** 2
    assert isinstance(t.model, VisionTransformer) and t.source == "module" and t.name == base_cls.__name__
    assert (t.depth, t.embed_dim, t.num_heads, t.patch_size) == (4, 64, 4, config.patch_size)
    assert (t.num_prefix_tokens, t.num_reg_tokens, t.has_class_token) == (1 + num_reg, num_reg, True)
    assert t.img_size == (config.image_size, config.image_size)  # the config's size, not DINOv2's 224
    x = _images(config.image_size)
    with torch.no_grad():
        out = hf_model(pixel_values=x, output_hidden_states=True)
        trajectory = t.trajectory(x)
    hidden_states = torch.stack(out.hidden_states, dim=1)  # [0] = embeddings, then each layer's raw output
    assert trajectory.shape == hidden_states.shape == (2, 5, 1 + num_reg + num_patches, 64)
    torch.testing.assert_close(trajectory, hidden_states, rtol=0, atol=1e-5)
    torch.testing.assert_close(t.model.norm(trajectory[:, -1]), out.last_hidden_state, rtol=0, atol=1e-5)
    assert (trajectory[:, 1:] - trajectory[:, :-1]).abs().amax(dim=(0, 2, 3)).min() > 1e-3
    with torch.no_grad():  # a base model has no head: the teacher's output is the normed class token
        torch.testing.assert_close(t(x), out.last_hidden_state[:, 0], rtol=0, atol=1e-5)


def _stored_grid_dinov2() -> Dinov2Model:
    """A tiny transformers DINOv2 with the 37 x 37 (518 px) position grid real checkpoints store."""
    torch.manual_seed(0)
    return _perturb(Dinov2Model(Dinov2Config(
        hidden_size=64, num_hidden_layers=3, num_attention_heads=4, image_size=518, patch_size=14)))


def _save_timm_folder(model: VisionTransformer, folder, **model_args) -> str:
    timm.models.save_for_hf(model, str(folder), model_args=model_args, safe_serialization=True)
    return str(folder)


@pytest.mark.parametrize("form", ["module", "transformers folder", "timm folder"])
def test_dinov2_off_its_stored_grid_equals_transformers(form, tmp_path, offline_hub):
    """At 224 and 112 a DINOv2 teacher is transformers' own model bit for bit: its grid is resampled without
    antialiasing, as transformers' interpolate_pos_encoding and DINOv2 do (timm antialiases by default)."""
    hf_model = _stored_grid_dinov2()
    if form == "transformers folder":
        hf_model.save_pretrained(tmp_path / "hf")
        source = str(tmp_path / "hf")
    elif form == "timm folder":
        timm_model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=64, depth=3, num_heads=4)
        timm_model.load_state_dict(convert_hf_vit(hf_model).state_dict())
        source = _save_timm_folder(timm_model, tmp_path / "timm", embed_dim=64, depth=3, num_heads=4)
    else:
        source = hf_model
    assert load_teacher(source).img_size == (224, 224)  # the stored 518 px grid runs at the paper's 224
    for size in (224, 112):
        t = load_teacher(source, img_size=size)
        assert t.img_size == (size, size) and t.data_config["input_size"] == (3, size, size)
        x = _images(size)
        with torch.no_grad():
            expected = torch.stack(hf_model(pixel_values=x, output_hidden_states=True).hidden_states, 1)
            trajectory = t.trajectory(x)
        assert (trajectory - expected).abs().max().item() == 0.0, f"{form} at {size} px"


def test_folder_image_size_wins_over_dinov2_name(tmp_path, offline_hub):
    """A 112 px DINOv2 folder runs at 112 with its own 8 x 8 grid, though 'dinov2' is in its name and architecture."""
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, embed_dim=64, depth=2, num_heads=4,
                              img_size=112)
    folder = _save_timm_folder(model, tmp_path / "my_dinov2_112", embed_dim=64, depth=2, num_heads=4, img_size=112)
    t = load_teacher(folder)
    assert t.img_size == (112, 112) and t.num_patches == 64
    assert t.name == "vit_small_patch14_dinov2 (my_dinov2_112)"
    assert load_teacher(f"local-dir:{folder}").name == t.name
    torch.testing.assert_close(t.model.pos_embed, model.pos_embed, rtol=0, atol=0)
    hf_folder = tmp_path / "hf_dinov2_112"
    Dinov2Model(_hf_config("dinov2", image_size=112)).save_pretrained(hf_folder)
    assert load_teacher(str(hf_folder)).img_size == (112, 112)


@pytest.mark.parametrize("family", list(HF_FAMILIES))
def test_hf_classifier_head_is_converted(family):
    _, classifier_cls, _ = HF_FAMILIES[family]
    hf_model = _perturb(classifier_cls(_hf_config(family, num_labels=7)))
    t = load_teacher(hf_model)
    expected_cls = ClsAvgVisionTransformer if family.startswith("dinov2") else VisionTransformer
    assert type(t.model) is expected_cls
    x = _images(t.model.patch_embed.img_size[0])
    with torch.no_grad():
        logits = hf_model(pixel_values=x).logits
        assert logits.shape == (2, 7)
        torch.testing.assert_close(t(x), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(t.forward_head_from_state(t.trajectory(x, layers=[-1])[:, 0]), logits,
                                   rtol=0, atol=1e-5)


def test_hf_dinov2_swiglu_is_exact():
    config = Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=28, patch_size=14,
                          use_swiglu_ffn=True)
    hf_model = _perturb(Dinov2Model(config))
    model = convert_hf_vit(hf_model)
    x = _images(28)
    with torch.no_grad():
        out = hf_model(pixel_values=x, output_hidden_states=True)
        trajectory = Teacher(model).trajectory(x)
    torch.testing.assert_close(trajectory, torch.stack(out.hidden_states, 1), rtol=0, atol=1e-5)


def test_hf_config_and_state_dict_mapping():
    config = _hf_config("dinov2_with_registers")
    args = vit_config_from_hf(config)
    layout = (args["reg_tokens"], args["no_embed_class"], args["dynamic_img_size"], args["img_size"])
    assert layout == (4, True, True, 56)
    hf_model = Dinov2WithRegistersModel(config)
    mapped = hf_state_dict_to_timm(hf_model.state_dict())
    pos = hf_model.embeddings.position_embeddings
    # registers: the class position embedding is folded into cls_token; pos_embed covers the patches only
    torch.testing.assert_close(mapped["cls_token"], hf_model.embeddings.cls_token + pos[:, :1])
    assert mapped["pos_embed"].shape == (1, 16, 64)
    attn = hf_model.encoder.layer[1].attention
    torch.testing.assert_close(
        mapped["blocks.1.attn.qkv.weight"], torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
    assert not any("mask_token" in k for k in mapped)
    with pytest.raises(ValueError, match="no exact timm equivalent"):
        vit_config_from_hf(_hf_config("vit", hidden_act="gelu_fast"))
    with pytest.raises(ValueError, match="cannot map|Cannot map"):
        hf_state_dict_to_timm({"encoder.layer.0.attention.rotary.weight": torch.zeros(1)})


def test_hf_saved_folder_offline(offline_hub, tmp_path):
    hf_model = _perturb(Dinov2WithRegistersForImageClassification(_hf_config("dinov2_with_registers", num_labels=3)))
    folder = tmp_path / "dinov2-reg-tiny"
    hf_model.save_pretrained(folder)
    t = load_teacher(str(folder))
    # the folder's own 56 px, and a portable name: what it holds and the folder's name, not its local path
    assert (t.source, t.name, t.num_reg_tokens, t.img_size) == (
        "hf", "dinov2_with_registers (dinov2-reg-tiny)", 4, (56, 56))
    assert t.data_config["crop_pct"] == 0.875
    x = _images(56)
    with torch.no_grad():
        torch.testing.assert_close(t(x), hf_model(pixel_values=x).logits, rtol=0, atol=1e-5)
        random_init = load_teacher(folder, pretrained=False, img_size=56)  # os.PathLike works too
        assert random_init.img_size == (56, 56)
        assert random_init(x).shape == (2, 3) and not torch.allclose(random_init(x), t(x), atol=1e-3)


def test_hf_repo_id_from_offline_cache(offline_hub, tmp_path):
    hf_model = _perturb(ViTModel(_hf_config("vit")))
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--tiny-org--tiny-vit"
    hf_model.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    t = load_teacher("tiny-org/tiny-vit")
    assert (t.source, t.name, t.revision) == ("hf", "tiny-org/tiny-vit", commit)
    assert t.data_config["mean"] == (0.5, 0.5, 0.5)
    x = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(
            t.trajectory(x), torch.stack(hf_model(pixel_values=x, output_hidden_states=True).hidden_states, 1),
            rtol=0, atol=1e-5)


def test_processor_config_gives_the_data_config(offline_hub, tmp_path):
    """A ViT folder or repo with CLIP-style preprocessing is normalised as its processor says, not with the ViT
    defaults (0.5 mean/std, bilinear)."""
    from transformers import ViTImageProcessor

    hf_model = _perturb(ViTModel(_hf_config("vit")))
    clip_mean, clip_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    processor = ViTImageProcessor(image_mean=list(clip_mean), image_std=list(clip_std), resample=3,
                                  size={"height": 32, "width": 32})
    commit = "0123456789abcdef0123456789abcdef01234567"
    snapshot = offline_hub / "models--tiny-org--clip-normalised-vit" / "snapshots" / commit
    for folder in (tmp_path / "vit", snapshot):
        hf_model.save_pretrained(folder)
        processor.save_pretrained(folder)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text(commit)
    for source in (str(tmp_path / "vit"), "tiny-org/clip-normalised-vit"):
        config = load_teacher(source).data_config
        assert config["mean"] == pytest.approx(clip_mean) and config["std"] == pytest.approx(clip_std), source
        assert (config["interpolation"], config["crop_mode"], config["input_size"]) == ("bicubic", "squash", (3, 32, 32))
    assert load_teacher(hf_model).data_config["mean"] == (0.5, 0.5, 0.5)  # a module without processor: the defaults


def test_data_config_from_processor_reads_resize_and_crop():
    dinov2 = {"size": {"shortest_edge": 256}, "crop_size": {"height": 224, "width": 224}, "do_center_crop": True,
              "resample": 3, "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    config = data_config_from_processor(dinov2, 224)
    assert (config["crop_pct"], config["crop_mode"], config["interpolation"]) == (0.875, "center", "bicubic")
    assert data_config_from_processor(dict(dinov2, do_center_crop=False), 112)["crop_pct"] == 1.0
    assert data_config_from_processor({"do_normalize": False}, 32)["std"] == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="resample=9"):
        data_config_from_processor({"resample": 9}, 32)


# ---------------------------------------------------------------------------------------------------------- errors


def test_non_vit_inputs_raise_naming_what_was_found(tmp_path):
    with pytest.raises(TypeError, match="'resnet18' is a ResNet"):
        load_teacher("resnet18", pretrained=False)
    with pytest.raises(TypeError, match="Linear"):
        load_teacher(nn.Linear(4, 4))
    resnet = ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8], depths=[1]))
    with pytest.raises(TypeError, match="model_type 'resnet'"):
        load_teacher(resnet)
    with pytest.raises(TypeError, match="int"):
        load_teacher(3)
    with pytest.raises(ValueError, match="Close timm names: vit_small_patch14_dinov2"):
        load_teacher("vit_smal_patch14_dinov2", pretrained=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_teacher(str(tmp_path / "missing" / "folder"))
    resnet.save_pretrained(tmp_path / "resnet")
    with pytest.raises(ValueError, match="model_type 'resnet'"):
        load_teacher(str(tmp_path / "resnet"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_teacher(str(tmp_path / "empty"))


@pytest.mark.parametrize("name, block", [
    ("vit_base_patch16_rpn_224", "ResPostBlock"), ("vit_base_patch16_xp_224", "ParallelScalingBlock")])
def test_timm_vit_with_other_blocks_is_a_teacher(name, block):
    """Post-norm and parallel blocks are teachers too: their Raptor with schedule (1,)*L is the teacher."""
    teacher = load_teacher(name, pretrained=False, depth=2, img_size=32, embed_dim=64, num_heads=2)
    assert type(teacher.blocks[0]).__name__ == block
    raptor = raptor_zoo.from_teacher(teacher, block_schedule=(1, 1)).eval()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # equal up to float round-off: which kernel a matmul takes follows torch's thread count
        torch.testing.assert_close(raptor.forward_features(images), teacher.model.forward_features(images),
                                   rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(teacher.trajectory(images)[:, -1], raptor.forward_steps(raptor._embed(images), 0, 2),
                                   rtol=1e-6, atol=1e-6)


def test_pretrained_offline_says_what_was_sought(offline_hub):
    with pytest.raises(FileNotFoundError, match="pretrained=False") as info:
        load_teacher("deit_tiny_patch16_224", pretrained=True)
    assert "timm/deit_tiny_patch16_224.fb_in1k" in str(info.value)
    with pytest.raises(FileNotFoundError, match="'nobody/no-such-teacher'"):
        load_teacher("nobody/no-such-teacher")


# ---------------------------------------------------------------------------------------------------------- embedded


def test_embedded_digits_teacher():
    timm_name = EMBEDDED_TEACHERS["digits-vit"]
    if not timm.is_model(timm_name):
        pytest.skip(f"{timm_name} is not registered yet (raptor_zoo.models.digits_vit)")
    random_init = load_teacher("digits-vit", pretrained=False)
    assert (random_init.source, random_init.name) == ("embedded", "digits-vit")
    x = _images(random_init.img_size[0])
    with torch.no_grad():
        trajectory = random_init.trajectory(x)
    assert trajectory.shape == (2, random_init.depth + 1, random_init.num_tokens, random_init.embed_dim)
    weights = timm.models.get_pretrained_cfg(timm_name).file
    if not weights or not os.path.isfile(weights):
        pytest.skip(f"embedded weights {weights} are not built yet")
    t = load_teacher("digits-vit")
    with torch.no_grad():
        torch.testing.assert_close(t.forward_head_from_state(t.trajectory(x, layers=[-1])[:, 0]), t(x),
                                   rtol=0, atol=1e-5)
