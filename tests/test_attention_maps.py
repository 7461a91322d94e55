"""Per-step attention maps of a timm Raptor (raptor_zoo.models.attention_maps)."""
import pytest
import torch

from raptor_zoo.models.attention_maps import attention_maps, attention_probs, cls_attention_maps
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer

ARGS = dict(img_size=28, patch_size=7, embed_dim=32, num_heads=4, block_schedule=(2, 1), reg_tokens=2,
            init_values=1e-5, no_embed_class=True)


def _raptor(**overrides) -> RaptorVisionTransformer:
    torch.manual_seed(0)
    model = RaptorVisionTransformer(**{**ARGS, **overrides})
    with torch.no_grad():
        for param in model.parameters():  # non-trivial depth scaling, LayerScale and adapters
            param.add_(torch.randn_like(param) * 0.05)
    return model.eval()


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(1))


def _probabilities_the_blocks_used(model: RaptorVisionTransformer, images: torch.Tensor) -> list[torch.Tensor]:
    """Ground truth: timm's explicit-softmax attention passes its probabilities through attn_drop; record them."""
    recorded = []
    handles = []
    for block in model.unique_blocks:
        block.attn.fused_attn = False
        handles.append(block.attn.attn_drop.register_forward_hook(lambda m, args, out: recorded.append(out)))
    with torch.no_grad():
        model.forward_features(images)
    for handle in handles:
        handle.remove()
    return recorded


def test_one_map_per_unrolled_step_equal_to_what_the_blocks_computed():
    model = _raptor()
    images = _images()
    expected = _probabilities_the_blocks_used(model, images)
    for block in model.unique_blocks:
        block.attn.fused_attn = True  # the helper recomputes, whatever kernel the blocks run
    with torch.no_grad():
        maps = attention_maps(model, images)
    tokens = 1 + 2 + 16
    assert len(maps) == model.depth == 3  # L maps from k = 2 blocks
    for step_map, reference in zip(maps, expected, strict=True):
        assert step_map.shape == (2, 4, tokens, tokens)
        assert torch.allclose(step_map, reference, atol=1e-6)
    assert not torch.allclose(maps[0], maps[1], atol=1e-4)  # block 0 applied twice, on different states


def test_num_steps_and_class_token_grids():
    model = _raptor()
    images = _images()
    with torch.no_grad():
        maps = attention_maps(model, images)
        assert len(attention_maps(model, images, num_steps=2)) == 2
        grids = cls_attention_maps(model, images)
    assert grids.shape == (3, 2, 4, 4, 4)
    assert torch.equal(grids[2], maps[2][:, :, 0, model.num_prefix_tokens:].reshape(2, 4, 4, 4))
    with pytest.raises(ValueError, match="num_steps"):
        attention_maps(model, images, num_steps=4)


def test_relaxed_steps_use_their_adapters():
    relaxed = _raptor(relax_rank=2)
    images = _images()
    with torch.no_grad():
        maps = attention_maps(relaxed, images)
        for adapter in relaxed.relax:
            adapter.qkv_b.zero_()
        pure_maps = attention_maps(relaxed, images)
        x = relaxed._embed(images)
        unadapted = attention_probs(relaxed.unique_blocks[0], x)
    assert torch.allclose(pure_maps[0], unadapted, atol=1e-6)  # zero adapters: the shared block's attention
    assert not torch.allclose(maps[0], pure_maps[0], atol=1e-4)


def test_attention_probs_masks_and_gradients():
    model = _raptor()
    x = model._embed(_images())
    keep = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool)
    keep[:, -1] = False
    masked = attention_probs(model.unique_blocks[0], x, attn_mask=keep)
    assert torch.all(masked[..., -1] == 0) and torch.allclose(masked.sum(-1), torch.ones(()), atol=1e-6)
    images = _images().requires_grad_(True)
    attention_maps(model, images)[-1][:, :, 0, -1].sum().backward()  # a row sums to 1: take one entry
    assert images.grad is not None and images.grad.abs().sum() > 0
