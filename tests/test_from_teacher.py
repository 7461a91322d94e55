"""RaptorVisionTransformer.from_teacher: copying, initialisation, schedules, exact k = L reproduction."""
import warnings

import pytest
import torch
from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

from raptor_zoo.distill import raptor_trajectory
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer
from raptor_zoo.teachers import load_teacher

IMG = 28


def _perturbed(teacher):
    """Random-init DINOv2 blocks start near identity (LayerScale 1e-5): make every block matter."""
    torch.manual_seed(0)
    for block in teacher.blocks:
        block.ls1.gamma.data.normal_()
        block.ls2.gamma.data.normal_()
    return teacher


@pytest.fixture(scope="module")
def timm_teacher():
    return _perturbed(load_teacher("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=IMG))


@pytest.fixture(scope="module")
def hf_teacher():
    config = Dinov2WithRegistersConfig(
        hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
        image_size=IMG, patch_size=14, num_register_tokens=4)
    return _perturbed(load_teacher(Dinov2WithRegistersModel(config).eval()))


@pytest.mark.parametrize("teacher_fixture", ["timm_teacher", "hf_teacher"])
def test_k_equals_depth_reproduces_teacher_exactly(teacher_fixture, request):
    teacher = request.getfixturevalue(teacher_fixture)
    raptor = RaptorVisionTransformer.from_teacher(teacher, block_schedule=(1,) * teacher.depth).eval()
    assert raptor.blocks[0].depth_scale is not None  # gates on, starting at exactly 1
    images = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(raptor_trajectory(raptor, images), teacher.trajectory(images), rtol=0, atol=1e-6)
        torch.testing.assert_close(raptor(images), teacher(images), rtol=0, atol=1e-6)


def test_blocks_initialised_from_phase_layers(timm_teacher):
    raptor = RaptorVisionTransformer.from_teacher(timm_teacher, block_schedule=(7, 5), init="middle")
    torch.testing.assert_close(raptor.unique_blocks[0].attn.qkv.weight, timm_teacher.blocks[3].attn.qkv.weight)
    torch.testing.assert_close(raptor.unique_blocks[1].attn.qkv.weight, timm_teacher.blocks[9].attn.qkv.weight)
    first = RaptorVisionTransformer.from_teacher(timm_teacher, block_schedule=(7, 5), init="first")
    torch.testing.assert_close(first.unique_blocks[1].mlp.fc1.weight, timm_teacher.blocks[7].mlp.fc1.weight)
    mean = RaptorVisionTransformer.from_teacher(timm_teacher, block_schedule=(7, 5), init="mean")
    expected = torch.stack([timm_teacher.blocks[i].mlp.fc2.bias for i in range(7, 12)]).mean(0)
    torch.testing.assert_close(mean.unique_blocks[1].mlp.fc2.bias, expected)
    torch.testing.assert_close(raptor.pos_embed, timm_teacher.model.pos_embed)
    torch.testing.assert_close(raptor.reg_token, timm_teacher.model.reg_token)
    torch.testing.assert_close(raptor.norm.weight, timm_teacher.model.norm.weight)
    assert all(p.requires_grad for p in raptor.parameters())  # freezing is the recipe's choice
    assert raptor.raptor_meta["teacher"] == "vit_small_patch14_reg4_dinov2"
    assert raptor.raptor_meta["phase_boundaries"] == [0, 7, 12]


def test_schedule_resolution(timm_teacher):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        even = RaptorVisionTransformer.from_teacher(timm_teacher, k=5)
    assert even.block_schedule == (3, 3, 2, 2, 2)
    assert any("evenly" in str(w.message) for w in caught)
    images = torch.randn(6, 3, IMG, IMG)
    auto = RaptorVisionTransformer.from_teacher(
        timm_teacher, block_schedule="auto", k=3, images=images, phase_kwargs=dict(progress=False))
    assert len(auto.block_schedule) == 3 and sum(auto.block_schedule) == 12
    assert auto.raptor_meta["schedule_source"] == "measured"
    assert auto.raptor_meta["phases"]["block_schedule"] == list(auto.block_schedule)


def test_swiglu_from_teacher_and_errors(timm_teacher):
    swiglu = RaptorVisionTransformer.from_teacher(timm_teacher, k=2, block_type="swiglu", block_schedule=(7, 5))
    assert swiglu.blocks[0].mlp.fc1.out_features == 8 * timm_teacher.embed_dim
    torch.testing.assert_close(swiglu.patch_embed.proj.weight, timm_teacher.model.patch_embed.proj.weight)
    with pytest.raises(ValueError, match="init='random'"):
        RaptorVisionTransformer.from_teacher(timm_teacher, block_schedule=(7, 5), block_type="swiglu", init="middle")
    with pytest.raises(ValueError, match="sums to 11"):
        RaptorVisionTransformer.from_teacher(timm_teacher, block_schedule=(6, 5))
    with pytest.raises(ValueError, match="out of range"):
        RaptorVisionTransformer.from_teacher(timm_teacher, k=13)
    with pytest.raises(ValueError, match="needs images"):
        RaptorVisionTransformer.from_teacher(timm_teacher, block_schedule="auto")
    with pytest.raises(ValueError, match="init must be"):
        RaptorVisionTransformer.from_teacher(timm_teacher, k=2, init="median")
    with pytest.raises(ValueError, match=r"k=3 disagrees with block_schedule \(7, 5\) of length 2; pass k=2 or leave"):
        RaptorVisionTransformer.from_teacher(timm_teacher, k=3, block_schedule=(7, 5))


def test_num_classes_override_keeps_fresh_head():
    """The digits teacher has a 10-class head: a 4-class Raptor gets a fresh head and everything else as usual."""
    teacher = load_teacher("digits-vit")
    usual = RaptorVisionTransformer.from_teacher(teacher, block_schedule=(5, 7))
    raptor = RaptorVisionTransformer.from_teacher(teacher, block_schedule=(5, 7), num_classes=4)
    assert raptor(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    torch.testing.assert_close(usual.head.weight, teacher.model.head.weight)  # same class count: copied
    assert raptor.head.weight.shape == (4, 128)
    for rows in (teacher.model.head.weight[:4], teacher.model.head.weight[-4:]):
        assert not torch.allclose(raptor.head.weight, rows)
    assert not torch.allclose(raptor.head.bias, teacher.model.head.bias[:4])
    # the blocks (from the teacher's phase layers), embedding and norms are those of the usual Raptor; only the
    # depth-scale MLPs' first layers are random (their zero second layers make them identity gates)
    state = raptor.state_dict()
    for name, value in usual.state_dict().items():
        if not name.startswith("head.") and "depth_scale.fc1" not in name:
            torch.testing.assert_close(state[name], value, rtol=0, atol=0, msg=name)
    torch.testing.assert_close(raptor.unique_blocks[1].mlp.fc1.weight, teacher.blocks[5 + 3].mlp.fc1.weight)
