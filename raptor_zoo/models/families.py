""" Family adapters: what raptor_zoo needs to know about each family of isotropic ViTs

A Raptor runs its teacher's own architecture (DESIGN.md §9); the little that differs between families lives
here, in one registry keyed by the timm model class:
- the token layout of the block stack (its states are [B, N, D], or [B, H, W, D] for SAM) and which tokens are
  class / register tokens there (CaiT and XCiT add their class token after the self-attention stack);
- how a final block state becomes the family's `forward_features` output (`finish`: the final norm; CaiT and
  XCiT first run their class-attention blocks, SAM its neck);
- where each block type's residual branches pass a drop-path module (the depth gates and per-step stochastic
  depth sit there) and which linear layers relaxation adapts.
How a family embeds an image and what a block call takes (RoPE, relative-position bias, grid size, masks) is not
restated: raptor_zoo reads it off the family's own forward (hooks on a teacher's blocks, a capturing step loop on a
Raptor's), so that code runs unchanged.

Adding a family = one `FamilyAdapter` in `FAMILIES` (and a coverage row in benchmarks/coverage.py).
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

__all__ = [
    'FamilyAdapter', 'FAMILIES', 'family_of', 'residual_branches', 'relax_layers', 'TokenLayout', 'native_img_size',
    'patch_size_of', 'in_chans_of', 'accepts_any_img_size', 'pair', 'patch_embedding', 'EMBEDDING_PARAMETER_PREFIXES',
    'HEAD_PARAMETER_PREFIXES', 'attention_dropout', 'feature_grid', 'final_norm',
]


@dataclass(frozen=True)
class TokenLayout:
    """Token groups of the block stack's states: the first `num_prefix_tokens` are class / register tokens."""
    num_prefix_tokens: int
    num_reg_tokens: int
    has_class_token: bool


def _norm_finish(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.norm(x)


def _class_attention_finish(attribute: str) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    def finish(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if getattr(model, attribute) is not None:
            x = model.forward_cls(x)
        return model.norm(x)
    return finish


def _sam_finish(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.neck(x.permute(0, 3, 1, 2))


def _default_layout(model: nn.Module) -> TokenLayout:
    reg_token = getattr(model, 'reg_token', None)
    num_reg = getattr(model, 'num_reg_tokens', None)
    if num_reg is None:
        num_reg = 0 if reg_token is None else int(reg_token.shape[1])
    has_class = getattr(model, 'has_class_token', None)
    if has_class is None:
        has_class = getattr(model, 'cls_token', None) is not None
    return TokenLayout(int(getattr(model, 'num_prefix_tokens', 0) or 0), int(num_reg), bool(has_class))


def _no_prefix_layout(model: nn.Module) -> TokenLayout:
    return TokenLayout(0, 0, False)


@dataclass(frozen=True)
class FamilyAdapter:
    """What raptor_zoo knows about one family of timm ViTs (see the module docstring)."""
    name: str
    class_names: Tuple[str, ...]
    timm_modules: Tuple[str, ...]
    finish: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _norm_finish
    layout: Callable[[nn.Module], TokenLayout] = _default_layout
    nhwc_states: bool = False
    notes: str = ''
    block_types: Tuple[str, ...] = field(default_factory=tuple)
    state_only_blocks: bool = False
    """Its blocks take the state alone (no RoPE, relative-position bias or grid argument per call)."""
    any_img_size: bool = False
    """Its models run at any image size without being built for it (NaFlex)."""

    def token_layout(self, model: nn.Module) -> TokenLayout:
        return self.layout(model)

    def to_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """A block-stack state as tokens [B, N, D]."""
        return x.flatten(1, 2) if self.nhwc_states and x.ndim == 4 else x

    def to_state(self, x: torch.Tensor, grid_size: Sequence[int]) -> torch.Tensor:
        """Tokens [B, N, D] as the block stack's state layout."""
        if self.nhwc_states and x.ndim == 3:
            return x.reshape(x.shape[0], grid_size[0], grid_size[1], x.shape[-1])
        return x


FAMILIES: Tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        'vit', ('VisionTransformer', 'VisionTransformerDistilled', 'RaptorVisionTransformer'),
        ('vision_transformer', 'deit', 'vision_transformer_hybrid', 'vitamin'),
        block_types=('Block', 'ResPostBlock', 'ParallelScalingBlock', 'DiffParallelScalingBlock',
                     'ParallelThingsBlock'), state_only_blocks=True),
    FamilyAdapter(
        'eva', ('Eva',), ('eva',),
        notes='EVA-02, EVA-CLIP, DINOv3 and Perception Encoder: RoPE reaches every step as the family passes it.',
        block_types=('EvaBlock', 'EvaBlockPostNorm')),
    FamilyAdapter(
        'beit', ('Beit',), ('beit',),
        notes='The shared relative-position bias (when used) stays in the stem; per-block biases travel with '
              'the shared blocks.',
        block_types=('Block',)),
    FamilyAdapter(
        'relpos', ('VisionTransformerRelPos',), ('vision_transformer_relpos',),
        block_types=('RelPosBlock', 'ResPostRelPosBlock')),
    FamilyAdapter(
        'sam', ('VisionTransformerSAM',), ('vision_transformer_sam',), finish=_sam_finish, nhwc_states=True,
        state_only_blocks=True,
        notes='States are [B, H, W, D] inside the stack (flattened to tokens in trajectories); each shared block '
              'keeps the window / global attention of the teacher layer it was built from; the neck is the head.',
        block_types=('Block',)),
    FamilyAdapter(
        'naflexvit', ('NaFlexVit',), ('naflexvit',), any_img_size=True,
        notes='Fixed-size image tensors; NaFlex patch dictionaries run through the same step views.',
        block_types=('Block', 'EvaBlock')),
    FamilyAdapter(
        'xcit', ('Xcit',), ('xcit',), finish=_class_attention_finish('cls_attn_blocks'), layout=_no_prefix_layout,
        notes='The recurrent part is the self-attention (XCA) stack; the class-attention blocks stay with the head.',
        block_types=('XCABlock',)),
    FamilyAdapter(
        'cait', ('Cait',), ('cait',), finish=_class_attention_finish('blocks_token_only'), layout=_no_prefix_layout,
        state_only_blocks=True,
        notes='The recurrent part is the self-attention stack; the class-attention blocks stay with the head.',
        block_types=('LayerScaleBlock',)),
)


def family_of(model: nn.Module) -> Optional[FamilyAdapter]:
    """The family adapter of a timm model (by its class or the nearest timm base class), or None."""
    for cls in type(model).__mro__:
        for family in FAMILIES:
            if cls.__name__ in family.class_names and cls.__module__.startswith(('timm.', 'raptor_zoo.')):
                return family
    return None


def pair(size: Any) -> Tuple[int, int]:
    """An image / patch size (an int or a pair) as a (height, width) pair of ints."""
    if isinstance(size, int):
        return size, size
    values = tuple(int(s) for s in size)
    if len(values) != 2:
        raise ValueError(f'a size is an int or a (height, width) pair; got {size!r}.')
    return values


def patch_embedding(model: nn.Module) -> nn.Module:
    """The module that turns an image into patch tokens (`patch_embed`; NaFlexVit's `embeds`)."""
    embedding = getattr(model, 'patch_embed', None)
    return embedding if embedding is not None else model.embeds


def native_img_size(model: nn.Module) -> Tuple[int, int]:
    """The image size a timm model was built for (its patch embedding's, else its pretrained cfg's)."""
    embedding = patch_embedding(model)
    size = getattr(embedding, 'img_size', None) or getattr(embedding, 'default_img_size', None)
    if size is None:
        size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3, 224, 224))[1:]
    return pair(size)


def patch_size_of(model: nn.Module) -> Tuple[int, int]:
    """Input pixels per token side (a hybrid's CNN stem counts: image size / token grid)."""
    embedding = patch_embedding(model)
    img_size, grid_size = getattr(embedding, 'img_size', None), getattr(embedding, 'grid_size', None)
    if img_size is not None and grid_size is not None:
        img_size, grid_size = pair(img_size), pair(grid_size)
        if all(g > 0 and i % g == 0 for i, g in zip(img_size, grid_size)):
            return img_size[0] // grid_size[0], img_size[1] // grid_size[1]
    return pair(embedding.patch_size)


def in_chans_of(model: nn.Module) -> int:
    """Image channels (a hybrid's patch projection reads CNN features, so the model's own in_chans comes first)."""
    in_chans = getattr(model, 'in_chans', None)
    if isinstance(in_chans, int):
        return in_chans
    proj = getattr(patch_embedding(model), 'proj', None)
    if isinstance(proj, nn.Conv2d):
        return proj.in_channels
    return int((getattr(model, 'pretrained_cfg', None) or {}).get('input_size', (3,))[0])


def accepts_any_img_size(model: nn.Module) -> bool:
    """Whether the model runs at sizes other than its native one (dynamic size, or a family that always does)."""
    family = family_of(model)
    return bool(getattr(model, 'dynamic_img_size', False)) or (family is not None and family.any_img_size)


def residual_branches(block: nn.Module) -> List[Tuple[str, Tuple[int, ...]]]:
    """(drop-path module name, branch index of each of its calls) of a block: 0 = attention, 1 = MLP, 2 = a third
    branch (XCiT's local patch interaction). Raises TypeError for a block whose residual branches are unknown."""
    children = dict(block.named_children())
    name = type(block).__name__
    if name == 'ParallelThingsBlock':
        return ([(f'attns.{i}.drop_path', (0,)) for i in range(len(block.attns))]
                + [(f'ffns.{i}.drop_path', (1,)) for i in range(len(block.ffns))])
    if 'drop_path1' in children and 'drop_path2' in children:
        branches = [('drop_path1', (0,)), ('drop_path2', (1,))]
        if 'drop_path3' in children:
            branches.append(('drop_path3', (2,)))
        return branches
    if 'drop_path' in children:
        # CaiT's LayerScaleBlock calls one drop-path module for both branches; parallel blocks once, on the sum
        return [('drop_path', (0, 1) if name == 'LayerScaleBlock' else (0,))]
    raise TypeError(
        f'{name} blocks have no drop-path slot on their residual branches (drop_path1/drop_path2 or drop_path), '
        'so raptor_zoo cannot place depth gates or per-step stochastic depth; add the block type to '
        'raptor_zoo/models/families.py.')


# linear layers each relaxation target adapts, by module path inside a block (the first ones present are used)
_RELAX_CANDIDATES: Dict[str, Tuple[Tuple[str, ...], ...]] = {
    'qkv': (('attn.qkv',), ('attn.q_proj', 'attn.k_proj', 'attn.v_proj')),
    'proj': (('attn.proj',),),
    'fc1': (('mlp.fc1',), ('mlp.fc1_g', 'mlp.fc1_x')),
    'fc2': (('mlp.fc2',),),
}


def relax_layers(block: nn.Module, targets: Sequence[str]) -> Dict[str, str]:
    """Adapter key -> linear module path of each layer relaxation adapts in `block` ('qkv' -> 'attn.qkv', or
    'qkv_q_proj' -> 'attn.q_proj' when a target has several layers). Raises ValueError when a target is missing."""
    modules = dict(block.named_modules())
    layers: Dict[str, str] = {}
    for target in targets:
        for paths in _RELAX_CANDIDATES[target]:
            if all(isinstance(modules.get(path), nn.Linear) for path in paths):
                if len(paths) == 1:
                    layers[target] = paths[0]
                else:
                    layers.update({f'{target}_{path.rsplit(".", 1)[-1]}': path for path in paths})
                break
        else:
            raise ValueError(
                f'relax target {target!r} has no linear layer in {type(block).__name__} blocks (looked for '
                f'{" or ".join("+".join(p) for p in _RELAX_CANDIDATES[target])}); pass relax_targets without it.')
    return layers


# parameters a Raptor copies from its teacher in front of the block stack (embedding, tokens, position codes) and
# after it (final norm, head, and what a family runs after the stack: CaiT / XCiT class attention, SAM's neck)
EMBEDDING_PARAMETER_PREFIXES = (
    'patch_embed.', 'embeds.', 'cls_token', 'reg_token', 'pos_embed', 'norm_pre.', 'rope.', 'rel_pos_bias.',
    'shared_rel_pos.')
HEAD_PARAMETER_PREFIXES = (
    'norm.', 'fc_norm.', 'head.', 'attn_pool.', 'blocks_token_only.', 'cls_attn_blocks.', 'neck.')


def attention_dropout(block: nn.Module) -> Optional[nn.Module]:
    """The module the explicit-softmax attention of a block passes its probabilities through (timm's
    `attn.attn_drop`, in every family's attention that has one), or None."""
    attn = getattr(block, 'attn', None)
    return getattr(attn, 'attn_drop', None)


def feature_grid(model: nn.Module, height: int, width: int) -> Tuple[int, int]:
    """The token grid of an image of `height` x `width` (timm's `dynamic_feat_size` where the patch embedding has it)."""
    embedding = patch_embedding(model)
    if hasattr(embedding, 'dynamic_feat_size'):
        return tuple(embedding.dynamic_feat_size((height, width)))
    patch = patch_size_of(model)
    return height // patch[0], width // patch[1]


def final_norm(model: nn.Module) -> nn.Module:
    """The norm a family applies to its last state (`norm`; Identity where it has none, as SAM, whose neck finishes)."""
    norm = getattr(model, 'norm', None)
    return norm if isinstance(norm, nn.Module) else nn.Identity()
