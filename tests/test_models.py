"""The timm contract (after timm's tests/test_models.py) for the registered Raptor architectures."""

import pytest
import timm
import torch
import torch.nn as nn
from recorders import adapter_flops, assert_drop_rates, record_block_calls, record_drop_rates
from safetensors.torch import load_file, save_file
from timm.layers import Attention
from timm.models._features_fx import create_feature_extractor, get_graph_node_names

import raptor_zoo  # noqa: F401  (registers the architectures)
from raptor_zoo.flops import count_flops, count_params
from raptor_zoo.models.raptor_timm import RAPTOR_TIMM_ARCHS
from raptor_zoo.models.raptor_vit import (
    RAPTOR_ARCHS,
    RELAXED_RAPTOR_ARCHS,
    RaptorVisionTransformer,
    create_raptor_from_vit,
    even_block_schedule,
    scaled_paper_schedule,
    validate_block_schedule,
)

IMG = 42  # 3x3 patches of 14 px: keeps the full contract fast on 2 CPU cores
# representative subset: ViT-S and ViT-B teachers, k = 2 and 3, with and without registers
FULL_CONTRACT = [
    "raptor_vit_small_patch14_reg4_dinov2_k2",
    "raptor_vit_small_patch14_dinov2_k3",
    "raptor_vit_base_patch14_reg4_dinov2_k3",
    "raptor_vit_base_patch14_dinov2_k2",
]
NON_GIANT = [a for a in RAPTOR_ARCHS if "giant" not in a and "large" not in a]
LARGE = [a for a in RAPTOR_ARCHS if "giant" in a or "large" in a]


def _create(name: str, **kwargs) -> RaptorVisionTransformer:
    return timm.create_model(name, img_size=IMG, **kwargs)


def test_registry_lists_every_teacher_and_k():
    archs = set(timm.list_models("raptor_*"))
    assert len(RAPTOR_ARCHS) == 24
    # plus the rank-4 relaxed k = 2 variants, the frontier teachers of other families, and the generic archs that
    # config.json model_args build
    assert archs == (set(RAPTOR_ARCHS) | set(RELAXED_RAPTOR_ARCHS) | set(RAPTOR_TIMM_ARCHS)
                     | {"raptor_vit", "raptor_timm"})
    assert len(RELAXED_RAPTOR_ARCHS) == 8 and all(a.endswith("_k2_r4") for a in RELAXED_RAPTOR_ARCHS)
    assert timm.list_pretrained("raptor_*") == []  # nothing published yet: no cfg names a weight source
    with pytest.raises(RuntimeError, match="No pretrained weights exist"):
        timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2", pretrained=True)


def test_acceptance_command_shape():
    m = timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2")
    assert m.num_unique_blocks == 2 and len(m.blocks) == sum(m.block_schedule) == 12
    assert m(torch.randn(1, 3, 224, 224)).shape == (1, m.num_features)


@pytest.mark.parametrize("name", FULL_CONTRACT)
def test_model_forward(name):
    model = _create(name, num_classes=7).eval()
    out = model(torch.randn(2, 3, IMG, IMG))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", FULL_CONTRACT)
def test_model_backward(name):
    model = _create(name, num_classes=7).train()
    out = model(torch.randn(2, 3, IMG, IMG))
    out.mean().backward()
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    # depth-scale gates start at zero but must learn: the gradient on their last layer is non-zero
    assert model.blocks[0].depth_scale.fc2.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name", FULL_CONTRACT)
def test_model_default_cfg(name):
    model = _create(name, num_classes=5)
    cfg = model.pretrained_cfg
    for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "first_conv", "classifier", "notes"):
        assert key in cfg, key
    assert cfg["input_size"] == (3, 224, 224)
    state_dict = model.state_dict()
    assert cfg["first_conv"] + ".weight" in state_dict
    assert cfg["classifier"] + ".weight" in state_dict
    assert any(n.startswith("schedule_source: ") for n in cfg["notes"])
    x = torch.randn(2, 3, IMG, IMG)
    feats = model.forward_features(x)
    assert feats.shape == (2, model.num_prefix_tokens + (IMG // 14) ** 2, model.num_features)
    assert model.forward_head(feats, pre_logits=True).shape == (2, model.head_hidden_size)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.num_features)
    model.reset_classifier(3, global_pool="avg")
    assert model(x).shape == (2, 3)


@pytest.mark.parametrize("name", FULL_CONTRACT)
def test_model_forward_intermediates(name):
    model = _create(name).eval()
    x = torch.randn(2, 3, IMG, IMG)
    final, intermediates = model.forward_intermediates(x)
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(intermediates) == model.depth == 12 == len(model.feature_info)
    grid = IMG // 14
    assert all(t.shape == (2, model.embed_dim, grid, grid) for t in intermediates)
    # the last intermediate, normed, is the final feature map's patch tokens
    last = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)[0]
    torch.testing.assert_close(last, final[:, model.num_prefix_tokens:])
    # stop_early yields the same intermediates as a full pass
    early = model.forward_intermediates(x, indices=[2, 7], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], intermediates[2])
    torch.testing.assert_close(early[1], intermediates[7])
    as_dict = model.forward_intermediates(x, indices=[0], output_dict=True, return_prefix_tokens=True)
    assert set(as_dict) == {"image_features", "image_intermediates", "image_intermediates_prefix"}
    with pytest.raises(AssertionError, match="out of range"):  # timm's own range check
        model.forward_intermediates(x, indices=[12])


@pytest.mark.parametrize("name", FULL_CONTRACT[:2])
def test_model_features_only(name):
    out_indices = (2, 6, 11)
    model = _create(name, features_only=True, out_indices=out_indices).eval()
    x = torch.randn(2, 3, IMG, IMG)
    feats = model(x)
    assert len(feats) == 3
    assert model.feature_info.channels() == [model.model.embed_dim] * 3
    assert model.feature_info.reduction() == [14] * 3
    assert all(f.shape[-2:] == (IMG // 14, IMG // 14) for f in feats)
    reference = _create(name).eval()
    backbone_state = {k.removeprefix("model."): v for k, v in model.state_dict().items()}
    missing, unexpected = reference.load_state_dict(backbone_state, strict=False)
    assert not unexpected and all(k.split(".")[0] in ("head", "norm") for k in missing)  # pruned by the wrapper
    expected = reference.forward_intermediates(x, indices=list(out_indices), intermediates_only=True)
    for got, want in zip(feats, expected):
        torch.testing.assert_close(got, want)


def test_prune_shortens_schedule_not_blocks():
    model = _create("raptor_vit_small_patch14_reg4_dinov2_k2").eval()
    x = torch.randn(2, 3, IMG, IMG)
    full = model.forward_intermediates(x, indices=[3], intermediates_only=True)[0]
    kept = model.prune_intermediate_layers(indices=[3])
    assert kept == [3]
    assert model.block_schedule == (4, 0) and model.depth == 4 and len(model.blocks) == 4 and model.num_unique_blocks == 2
    torch.testing.assert_close(model.forward_intermediates(x, indices=[3], intermediates_only=True)[0], full)


@pytest.mark.parametrize("name", FULL_CONTRACT[:2])
def test_model_torch_export(name):
    """torch.export (the graph capture ONNX and deployment build on; TorchScript's step views are Python callables)."""
    model = _create(name, num_classes=4).eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), model(x))
        anytime = torch.export.export(model, (x,), kwargs={"num_steps": 5}).module()
        torch.testing.assert_close(anytime(x, num_steps=5), model(x, num_steps=5))


@pytest.mark.parametrize("name", FULL_CONTRACT[:2])
def test_model_forward_fx(name):
    model = _create(name, num_classes=4).eval()
    _, eval_nodes = get_graph_node_names(model)
    fx_model = create_feature_extractor(model, return_nodes=[eval_nodes[-1]])
    x = torch.randn(2, 3, IMG, IMG)
    torch.testing.assert_close(fx_model(x)[eval_nodes[-1]], model(x))


@pytest.mark.parametrize("name", NON_GIANT)
def test_every_registered_arch_builds_and_runs(name):
    spec = RAPTOR_ARCHS[name]
    model = _create(name).eval()
    assert model.num_unique_blocks == spec["k"] and len(model.blocks) == sum(spec["block_schedule"]) and model.block_schedule == spec["block_schedule"]
    assert model(torch.randn(1, 3, IMG, IMG)).shape == (1, model.num_features)


@pytest.mark.parametrize("name", LARGE)
def test_large_archs_on_meta(name):
    with torch.device("meta"):
        model = timm.create_model(name)
        out = model(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, model.num_features)
    assert sum(model.block_schedule) == (24 if "large" in name else 40)


def test_state_dict_holds_k_blocks_once_and_round_trips(tmp_path):
    model = _create("raptor_vit_base_patch14_reg4_dinov2_k3", num_classes=3).eval()
    state_dict = model.state_dict()
    block_ids = {k.split(".")[1] for k in state_dict if k.startswith("blocks.")}
    assert block_ids == {"0", "1", "2"}
    pointers = [t.data_ptr() for t in state_dict.values()]
    assert len(pointers) == len(set(pointers)), "no tensor may be shared between keys"
    path = tmp_path / "model.safetensors"
    save_file(state_dict, str(path))  # safetensors refuses aliased tensors
    fresh = _create("raptor_vit_base_patch14_reg4_dinov2_k3", num_classes=3).eval()
    fresh.load_state_dict(load_file(str(path)), strict=True)
    x = torch.randn(1, 3, IMG, IMG)
    torch.testing.assert_close(fresh(x), model(x))


def test_depth_scale_starts_as_identity():
    """With zero-initialised gates a Raptor block computes exactly timm's Block."""
    model = _create("raptor_vit_small_patch14_reg4_dinov2_k2").eval()
    plain = _create("raptor_vit_small_patch14_reg4_dinov2_k2", t_scale=False).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "depth_scale" not in k})
    x = torch.randn(2, 3, IMG, IMG)
    assert torch.equal(model(x), plain(x))


def test_anytime_inference_and_errors():
    model = _create("raptor_vit_small_patch14_reg4_dinov2_k2", num_classes=3).eval()
    x = torch.randn(2, 3, IMG, IMG)
    after_5 = model.forward_intermediates(x, indices=[4], norm=True, output_fmt="NLC", intermediates_only=True,
                                          return_prefix_tokens=True)[0]
    features = model.forward_features(x, num_steps=5)
    torch.testing.assert_close(features[:, 0], after_5[1][:, 0])
    assert model(x, num_steps=5).shape == (2, 3)
    assert not torch.allclose(model(x, num_steps=5), model(x))
    for bad in (0, 13):
        with pytest.raises(ValueError, match="num_steps"):
            model(x, num_steps=bad)


def test_grad_checkpointing_matches():
    torch.manual_seed(0)
    model = _create("raptor_vit_small_patch14_reg4_dinov2_k2", num_classes=3).train()
    x = torch.randn(2, 3, IMG, IMG)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)


def test_drop_path_ramps_over_unrolled_steps():
    model = _create("raptor_vit_small_patch14_reg4_dinov2_k2", drop_path_rate=0.2)
    assert len(model.step_drop_path) == 12
    assert model.step_drop_path[0] == 0. and model.step_drop_path[-1] == pytest.approx(0.2)
    model.train()
    x = torch.randn(4, 3, IMG, IMG)
    torch.manual_seed(1)
    a = model(x)
    torch.manual_seed(2)
    b = model(x)
    assert not torch.allclose(a, b)  # sampled per application in training
    model.eval()
    torch.testing.assert_close(model(x), model(x))


DROP_RATE = 0.2
RAMP = [DROP_RATE * step / 11 for step in range(12)]  # timm's linear ramp over the L = 12 unrolled steps


@pytest.mark.parametrize("relax_rank", [0, 2])
@pytest.mark.parametrize("grad_checkpointing", [False, True])
def test_each_unrolled_step_drops_at_its_own_rate(relax_rank, grad_checkpointing, monkeypatch):
    """The rate reaching timm's drop_path at application l is ramp[l], through every depth-indexed entry point."""
    model = RaptorVisionTransformer(block_schedule=(7, 5), img_size=28, patch_size=14, embed_dim=32, num_heads=2,
                                    reg_tokens=4, drop_path_rate=DROP_RATE, relax_rank=relax_rank)
    model.set_grad_checkpointing(grad_checkpointing)
    model.train()
    assert model.step_drop_path == pytest.approx(RAMP)
    x = torch.randn(2, 3, 28, 28)
    with record_block_calls(model) as blocks, record_drop_rates(model, monkeypatch) as applications:
        model(x)
    assert blocks == [0] * 7 + [1] * 5
    assert_drop_rates(applications, RAMP)
    with record_drop_rates(model, monkeypatch) as applications:
        model(x, num_steps=5)
    assert_drop_rates(applications, RAMP[:5])
    with record_drop_rates(model, monkeypatch) as applications:
        model.forward_intermediates(x, indices=[2, 8], stop_early=True)
    assert_drop_rates(applications, RAMP[:9])
    with record_drop_rates(model, monkeypatch) as applications:  # one step at a time, as teacher forcing runs them
        state = model._embed(x)
        for step in (10, 3):
            model.forward_steps(state, step, step + 1)
    assert_drop_rates(applications, [RAMP[10], RAMP[3]])
    if grad_checkpointing:  # the backward pass recomputes each step at the same rate, last step first
        with record_drop_rates(model, monkeypatch) as applications:
            model(x).sum().backward()
        assert_drop_rates(applications, RAMP + RAMP[::-1])
    model.eval()
    with record_drop_rates(model, monkeypatch) as applications:
        model(x)
    assert_drop_rates(applications, RAMP, training=False)
    # pruning keeps the rate of every remaining step
    model.prune_intermediate_layers(indices=[8])
    model.train()
    with record_block_calls(model) as blocks, record_drop_rates(model, monkeypatch) as applications:
        model.forward_intermediates(x, indices=[8])
    assert blocks == [0] * 7 + [1] * 2
    assert_drop_rates(applications, RAMP[:9])


@pytest.mark.parametrize("pool", ["token", "avg", "cls_avg"])
def test_head_pooling(pool):
    model = _create("raptor_vit_small_patch14_reg4_dinov2_k2", num_classes=6, global_pool=pool).eval()
    x = torch.randn(2, 3, IMG, IMG)
    feats = model.forward_features(x)
    pre = model.forward_head(feats, pre_logits=True)
    assert model.num_features == model.embed_dim
    if pool == "cls_avg":
        assert model.head_hidden_size == 2 * model.embed_dim
        expected = torch.cat([feats[:, 0], feats[:, model.num_prefix_tokens:].mean(1)], dim=-1)
        torch.testing.assert_close(pre, expected)
    assert model.head.in_features == model.head_hidden_size
    assert model(x).shape == (2, 6)


def _tokens_at_224(model) -> int:
    return model.num_prefix_tokens + (224 // model.patch_embed.patch_size[0]) ** 2


def test_swiglu_block_costs_about_1_3x():
    with torch.device("meta"):
        raptor = timm.create_model("raptor_vit_base_patch14_reg4_dinov2_k2", block_type="swiglu")
        teacher = timm.create_model("vit_base_patch14_reg4_dinov2", img_size=224)
    ratio = count_flops(raptor, (3, 224, 224)) / count_flops(teacher, (3, 224, 224))
    assert 1.25 < ratio < 1.35
    # the paper's block: 9.49M parameters at D = 768 (docs/method.md §3.1), without the depth-scale MLP
    block = raptor.blocks[0]
    params = count_params(block) - count_params(block.depth_scale)
    assert abs(params - 9_490_976) / 9_490_976 < 0.01


def test_parameter_reduction_vit_s_k2():
    raptor = timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2")
    teacher = timm.create_model("vit_small_patch14_reg4_dinov2", img_size=224, num_classes=0)
    ratio = count_params(teacher) / count_params(raptor)
    assert 5.3 < ratio < 5.7


def test_builder_for_any_timm_vit():
    model = create_raptor_from_vit("vit_tiny_patch16_224", k=3, img_size=32, num_classes=2)
    assert model.block_schedule == (7, 3, 2) and model.embed_dim == 192
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 2)
    deit = create_raptor_from_vit("deit_tiny_patch16_224", block_schedule=(6, 6), img_size=32)
    assert deit.depth == 12
    odd = create_raptor_from_vit("vit_tiny_patch16_224", k=5, img_size=32)
    assert odd.block_schedule == (3, 3, 2, 2, 2)


def test_schedule_helpers():
    assert scaled_paper_schedule(12, 2) == (7, 5)
    assert scaled_paper_schedule(12, 3) == (7, 3, 2)
    assert scaled_paper_schedule(12, 4) == (4, 3, 3, 2)
    assert scaled_paper_schedule(24, 3) == (14, 6, 4)
    assert scaled_paper_schedule(4, 4) == (1, 1, 1, 1)
    assert even_block_schedule(12, 5) == (3, 3, 2, 2, 2)
    assert validate_block_schedule([7, 5], 12) == (7, 5)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="sums to 11"):
        RaptorVisionTransformer(block_schedule=(6, 5), depth=12, img_size=28, patch_size=14, embed_dim=32, num_heads=2)
    with pytest.raises(ValueError, match="repeat counts >= 1"):
        RaptorVisionTransformer(block_schedule=(12, 0))
    with pytest.raises(ValueError, match="out of range"):
        create_raptor_from_vit("vit_tiny_patch16_224", k=13, img_size=32)
    with pytest.raises(ValueError, match="out of range"):
        create_raptor_from_vit("vit_tiny_patch16_224", k=0, img_size=32)
    with pytest.raises(TypeError, match="VisionTransformer"):
        create_raptor_from_vit(timm.create_model("resnet18"), k=2)
    with pytest.raises(ValueError, match="Unknown timm teacher"):
        create_raptor_from_vit("not_a_model", k=2)
    with pytest.raises(ValueError, match="not divisible by patch_size"):
        timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2", img_size=225)
    with pytest.raises(ValueError, match="block_type"):
        timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2", block_type="mamba")


class GatedAttention(Attention):
    """timm's Attention with its sigmoid output gate on (attn.gate)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, gated=True, **kwargs)


def test_error_messages_name_the_problem_and_the_fix():
    tiny = dict(block_schedule=(2, 1), img_size=28, patch_size=14, embed_dim=32, num_heads=2)
    x = torch.randn(1, 3, 28, 28)
    with pytest.raises(ValueError, match=r"global_pool='cls_avg' needs a class token \(class_token=True\)"):
        RaptorVisionTransformer(global_pool="cls_avg", class_token=False, **tiny)
    no_cls = RaptorVisionTransformer(global_pool="avg", class_token=False, num_classes=3, **tiny).eval()
    with pytest.raises(ValueError, match=r"needs a class token and this model has none .* use global_pool='avg'"):
        no_cls.reset_classifier(5, "cls_avg")
    assert no_cls.global_pool == "avg" and no_cls(x).shape == (1, 3)  # the failed call changed nothing
    model = RaptorVisionTransformer(**tiny).eval()
    with pytest.raises(ValueError, match=r"output_fmt must be 'NCHW' or 'NLC', got 'NHWC'"):
        model.forward_intermediates(x, output_fmt="NHWC")
    with pytest.raises(ValueError, match=r"is_causal attention is not supported .* pass is_causal=False"):
        model.forward_intermediates(x, is_causal=True)
    with pytest.raises(ValueError, match=r"k=3 disagrees with block_schedule \(6, 6\) of length 2; pass k=2 or leave"):
        create_raptor_from_vit("vit_tiny_patch16_224", k=3, block_schedule=(6, 6), img_size=32)
    with pytest.raises(ValueError, match=r"block_fn is not accepted: drop it and choose the block with block_type"):
        RaptorVisionTransformer(block_fn=nn.Identity, **tiny)
    gated = RaptorVisionTransformer(attn_layer=GatedAttention, **tiny).eval()
    assert gated.blocks[0].attn.gate is not None and gated(x).shape == (1, 1000)  # a pure Raptor runs the gate
    with pytest.raises(ValueError, match=r"relax_rank > 0 does not support gated attention .* use relax_rank=0"):
        RaptorVisionTransformer(attn_layer=GatedAttention, relax_rank=2, **tiny)


def test_stop_early_skips_the_remaining_steps():
    model = _create("raptor_vit_small_patch14_reg4_dinov2_k2").eval()
    x = torch.randn(1, 3, IMG, IMG)
    with record_block_calls(model) as calls:
        model.forward_intermediates(x, indices=[2, 7], stop_early=True, intermediates_only=True)
    assert calls == [0] * 7 + [1]  # steps 0..7: the 7 steps of block 0, then the first of block 1
    with record_block_calls(model) as calls:
        model.forward_intermediates(x, indices=[2], stop_early=True, intermediates_only=True)
    assert calls == [0] * 3
    with record_block_calls(model) as calls:
        model.forward_intermediates(x, indices=[2, 7], intermediates_only=True)
    assert calls == [0] * 7 + [1] * 5


@pytest.mark.parametrize("name", sorted(RELAXED_RAPTOR_ARCHS))
def test_relaxed_archs_are_their_base_arch_plus_rank_4_adapters(name):
    """Rank-4 adapters on qkv, proj, fc1, fc2 cost 2 r (in + out) FLOPs per token and step; the teacher's layer
    shapes give the expected count independently of the Raptor."""
    from raptor_zoo.flops import relaxation_overhead

    with torch.device("meta"):
        model = timm.create_model(name)
        base = timm.create_model(RELAXED_RAPTOR_ARCHS[name]["base_arch"])
        teacher = timm.create_model(RELAXED_RAPTOR_ARCHS[name]["teacher"], img_size=224)
    assert model.relax_rank == 4 and model.model_args["relax_rank"] == 4
    assert set(base.state_dict()) < set(model.state_dict())
    overhead = relaxation_overhead(model, (3, 224, 224))
    dim = model.embed_dim
    # docs/design.md §4: 16 r D params per step with all four layers adapted (the MLP hidden width 4D, or SwiGLU's)
    if "giant" not in name:
        assert overhead["relax_params"] == 16 * 4 * dim * model.depth
    # with the pure Raptor's exact depth-scale excess (test above), the relaxed one is the teacher + both, exactly
    adapters = adapter_flops(teacher.blocks[0], 4, ("qkv", "proj", "fc1", "fc2"), _tokens_at_224(model), model.depth)
    assert overhead["relax_flops"] == adapters
    assert 0 < overhead["relax_flops_fraction"] < 0.02
