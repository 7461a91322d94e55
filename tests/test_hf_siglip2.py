"""SigLIP2 (NaFlex) transformers teachers -> timm NaFlexVit: exact trajectories, heads, run sizes, Raptors.

transformers' SigLIP2 takes the processor's patches (``convert_image_to_patches``), a ``pixel_attention_mask`` and
``spatial_shapes``; a teacher takes the [B, C, H, W] image. The reference here is transformers run on the same image
patchified by the processor's own function, with a full mask and ``spatial_shapes = (H / p, W / p)``.
"""
import huggingface_hub.constants
import pytest
import torch
from timm.models.naflexvit import NaFlexVit
from torch import nn
from transformers import (
    Siglip2Config,
    Siglip2ForImageClassification,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2VisionConfig,
    Siglip2VisionModel,
)
from transformers.models.siglip2.image_processing_siglip2 import convert_image_to_patches

import raptor_zoo
from raptor_zoo.hf_convert import HF_CONVERTERS
from raptor_zoo.hf_convert.siglip2 import (
    convert_hf_siglip2,
    set_siglip2_run_size,
    siglip2_config_from_hf,
    siglip2_state_dict_to_timm,
)
from raptor_zoo.teachers import load_teacher

PATCH = 8
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, patch_size=PATCH,
              num_patches=16)  # a 4 x 4 position grid: 32 px natively
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, vocab_size=64,
            bos_token_id=None, eos_token_id=None, pad_token_id=None)
DEPTH = VISION["num_hidden_layers"]


@torch.no_grad()
def _perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Move every parameter off its init (zero biases, unit norms, the probe) so a wrong mapping cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def _images(size, batch: int = 2, seed: int = 0) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(seed))


def _hf_inputs(images: torch.Tensor) -> dict:
    """What Siglip2ImageProcessor gives for images already at a multiple of the patch size: the processor's own
    patchify, no padding (full mask), spatial_shapes = (H / p, W / p)."""
    patches = torch.stack([convert_image_to_patches(image, PATCH) for image in images])
    batch, num_patches = patches.shape[:2]
    grid = [images.shape[2] // PATCH, images.shape[3] // PATCH]
    return dict(pixel_values=patches, pixel_attention_mask=torch.ones(batch, num_patches, dtype=torch.int32),
                spatial_shapes=torch.tensor([grid] * batch))


def _vision_model(**overrides) -> Siglip2VisionModel:
    torch.manual_seed(0)
    return _perturb(Siglip2VisionModel(Siglip2VisionConfig(**dict(VISION, **overrides))))


def _parent_model() -> Siglip2Model:
    torch.manual_seed(0)
    return _perturb(Siglip2Model(Siglip2Config(vision_config=VISION, text_config=TEXT)))


def _classifier(num_labels: int = 7) -> Siglip2ForImageClassification:
    torch.manual_seed(0)
    return _perturb(Siglip2ForImageClassification(
        Siglip2Config(vision_config=VISION, text_config=TEXT, num_labels=num_labels)))


MODELS = {"siglip2_vision_model": _vision_model, "siglip2": _parent_model}


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty Hub cache: any download attempt fails at once, nothing reaches the network."""
    cache = tmp_path / "hub_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_both_model_types_are_registered():
    assert HF_CONVERTERS["siglip2"] is HF_CONVERTERS["siglip2_vision_model"]
    assert HF_CONVERTERS["siglip2"].convert is convert_hf_siglip2


@pytest.fixture
def one_thread():
    """transformers resizes the grid per batch as one batched matmul, the converter once for a single image: the
    values are the same computation, bit for bit when BLAS runs single-threaded (with 2 threads the split of the
    batched matmul may round the down-sampled grid's last bit differently, ~6e-8)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("size", [None, 48, 24, (24, 40)], ids=["native32", "up48", "down24", "nonsquare24x40"])
@pytest.mark.parametrize("model_type", list(MODELS))
@pytest.mark.parametrize("form", ["module", "folder"])
def test_trajectory_is_exact_and_pooler_within_1e5(model_type, form, size, tmp_path, offline_hub, one_thread):
    """States x_0..x_L equal transformers' hidden_states bit for bit at the native size and at sizes whose grid
    transformers resizes (up, down, non-square): the grid is resized once by transformers' own function.
    The attention-pool head (torch.nn.MultiheadAttention: explicit bmm + softmax) vs timm's AttentionPoolLatent
    (SDPA) sum in another order, so pooler_output agrees to ~1e-6, not bit for bit."""
    hf_model = MODELS[model_type]()
    tower = hf_model if model_type == "siglip2_vision_model" else hf_model.vision_model
    if form == "folder":
        hf_model.save_pretrained(tmp_path / "hf")
        source = str(tmp_path / "hf")
    else:
        source = hf_model
    t = load_teacher(source, img_size=size)
    run_size = (32, 32) if size is None else ((size, size) if isinstance(size, int) else size)
    assert isinstance(t.model, NaFlexVit) and t.img_size == run_size
    assert (t.depth, t.embed_dim, t.num_heads, t.patch_size, t.num_prefix_tokens) == (DEPTH, 64, 4, PATCH, 0)
    if form == "folder":
        assert t.source == "hf" and t.name == f"{model_type} (hf)"
    else:
        assert t.source == "module" and t.name == type(hf_model).__name__
    x = _images(run_size)
    with torch.no_grad():
        out = tower(**_hf_inputs(x), output_hidden_states=True)
        trajectory = t.trajectory(x)
        pooled = t(x)
    hidden_states = torch.stack(out.hidden_states, dim=1)  # [0] = embeddings, then each layer's raw output
    assert trajectory.shape == hidden_states.shape == (2, DEPTH + 1, t.num_patches, 64)
    torch.testing.assert_close(trajectory, hidden_states, rtol=0, atol=0)
    torch.testing.assert_close(t.model.norm(trajectory[:, -1]), out.last_hidden_state, rtol=0, atol=0)
    torch.testing.assert_close(pooled, out.pooler_output, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t.forward_head_from_state(trajectory[:, -1]), pooled, rtol=0, atol=0)
    if model_type == "siglip2":
        with torch.no_grad():
            features = hf_model.get_image_features(**_hf_inputs(x)).pooler_output
        torch.testing.assert_close(pooled, features, rtol=1e-5, atol=1e-5)


def test_native_grid_is_the_checkpoint_grid():
    """At its own size transformers' resize weights are one-hot, so the stored grid is the checkpoint's as it is."""
    hf_model = _vision_model()
    model = convert_hf_siglip2(hf_model)
    grid = hf_model.embeddings.position_embedding.weight.reshape(1, 4, 4, 64)
    torch.testing.assert_close(model.embeds.pos_embed, grid, rtol=0, atol=0)
    assert model.embeds.pos_embed.data_ptr() != grid.data_ptr()  # a copy: the teacher does not share tensors


def test_eager_attention_within_1e5():
    """transformers' eager attention scales q·k after the matmul, timm's SDPA before: ~1e-6 apart, not bit for bit
    (the exact reference is transformers' default SDPA attention)."""
    hf_model = _vision_model(attn_implementation="eager")
    t = load_teacher(hf_model)
    x = _images(32)
    with torch.no_grad():
        out = hf_model(**_hf_inputs(x), output_hidden_states=True)
        trajectory = t.trajectory(x)
    torch.testing.assert_close(trajectory, torch.stack(out.hidden_states, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [None, 48])
def test_classifier_logits(size):
    """Siglip2ForImageClassification: a Linear on the mean of the normed patch tokens (timm 'avg' pooling after
    the final norm); its vision tower's attention-pool head is unused and not converted."""
    hf_model = _classifier()
    t = load_teacher(hf_model, img_size=size)
    assert t.model.global_pool == "avg" and t.model.attn_pool is None
    assert isinstance(t.model.head, nn.Linear) and t.model.head.out_features == 7
    x = _images(t.img_size)
    with torch.no_grad():
        logits = hf_model(**_hf_inputs(x)).logits
        hidden_states = torch.stack(hf_model.vision_model(**_hf_inputs(x), output_hidden_states=True).hidden_states, 1)
        assert logits.shape == (2, 7)
        torch.testing.assert_close(t.trajectory(x), hidden_states, rtol=0, atol=0)
        torch.testing.assert_close(t(x), logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(t.forward_head_from_state(t.trajectory(x, layers=[-1])[:, 0]), logits,
                                   rtol=0, atol=1e-5)


def test_tower_without_head_pools_by_mean():
    hf_model = _vision_model(vision_use_head=False)
    t = load_teacher(hf_model)
    x = _images(32)
    with torch.no_grad():
        out = hf_model(**_hf_inputs(x))
        assert out.pooler_output is None
        torch.testing.assert_close(t(x), out.last_hidden_state.mean(1), rtol=0, atol=1e-6)
    assert isinstance(t.model.head, nn.Identity) and t.model.attn_pool is None


def test_raptor_from_teacher():
    t = load_teacher(_parent_model())
    x = _images(32)
    raptor = raptor_zoo.from_teacher(t, block_schedule=(1,) * DEPTH).eval()
    with torch.no_grad():
        torch.testing.assert_close(raptor.forward_features(x), t.model.forward_features(x), rtol=0, atol=0)
    raptor = raptor_zoo.from_teacher(t, k=2, block_schedule=(DEPTH // 2, DEPTH - DEPTH // 2))
    out = raptor(x)
    assert out.shape == (2, 64)
    out.square().mean().backward()
    assert all(p.grad is not None for block in raptor.unique_blocks for p in block.parameters())


def test_data_config_defaults_and_processor_folder(tmp_path, offline_hub):
    t = load_teacher(_vision_model())
    assert t.data_config == {
        "input_size": (3, 32, 32), "interpolation": "bilinear", "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0, "crop_mode": "squash"}
    assert load_teacher(_vision_model(), img_size=48).data_config["input_size"] == (3, 48, 48)
    hf_model = _classifier()
    hf_model.save_pretrained(tmp_path)
    Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=16, image_mean=[0.1, 0.2, 0.3],
                          image_std=[0.4, 0.5, 0.6]).save_pretrained(tmp_path)
    t = load_teacher(str(tmp_path))
    assert t.data_config["mean"] == (0.1, 0.2, 0.3) and t.data_config["std"] == (0.4, 0.5, 0.6)
    assert t.data_config["interpolation"] == "bilinear" and t.data_config["input_size"] == (3, 32, 32)
    x = _images(32)
    with torch.no_grad():
        torch.testing.assert_close(t(x), hf_model(**_hf_inputs(x)).logits, rtol=0, atol=1e-5)


def test_state_dict_mapping():
    hf_model = _vision_model()
    sd = siglip2_state_dict_to_timm(hf_model.state_dict())
    assert "embeddings.position_embedding.weight" not in sd and "embeds.pos_embed" not in sd
    in_proj = hf_model.head.attention.in_proj_weight
    torch.testing.assert_close(sd["attn_pool.q.weight"], in_proj[:64], rtol=0, atol=0)
    torch.testing.assert_close(sd["attn_pool.kv.weight"], in_proj[64:], rtol=0, atol=0)
    layer = hf_model.encoder.layers[1].self_attn
    qkv = torch.cat([layer.q_proj.weight, layer.k_proj.weight, layer.v_proj.weight])
    torch.testing.assert_close(sd["blocks.1.attn.qkv.weight"], qkv, rtol=0, atol=0)
    assert not any(k.startswith("attn_pool.") for k in siglip2_state_dict_to_timm(hf_model.state_dict(),
                                                                                    keep_head=False))
    with pytest.raises(ValueError, match="Cannot map transformers weight 'extra.weight'"):
        siglip2_state_dict_to_timm({"extra.weight": torch.zeros(1)})


def test_unsupported_settings_raise():
    with pytest.raises(ValueError, match="num_patches=20 is not a square"):
        siglip2_config_from_hf(Siglip2VisionConfig(**dict(VISION, num_patches=20)))
    with pytest.raises(ValueError, match="hidden_act='relu6'"):
        siglip2_config_from_hf(Siglip2VisionConfig(**dict(VISION, hidden_act="relu6")))
    model = convert_hf_siglip2(_vision_model())
    with pytest.raises(ValueError, match="multiple of its patch size"):
        set_siglip2_run_size(model, (36, 36))
    set_siglip2_run_size(model, (48, 48))
    set_siglip2_run_size(model, (48, 48))  # its own size again: nothing to do
    assert model.embeds.pos_embed.shape == (1, 6, 6, 64) and model.embeds.default_img_size == (48, 48)
    with pytest.raises(ValueError, match="already resized"):
        set_siglip2_run_size(model, (40, 40))
    with pytest.raises(TypeError, match="Siglip2VisionModel"):
        convert_hf_siglip2(nn.Linear(2, 2))
