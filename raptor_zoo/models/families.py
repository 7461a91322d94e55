""" Family adapters: what raptor_zoo needs to know about each family of isotropic ViTs

A Raptor runs its teacher's own architecture (docs/design.md §9); the little that differs between families lives
here, in one registry keyed by the timm model class:
- the token layout of the block stack (its states are [B, N, D], or [B, H, W, D] for SAM) and which tokens are
  class / register tokens there (CaiT and XCiT add their class token after the self-attention stack);
- how a final block state becomes the family's `forward_features` output (`finish`: the final norm; CaiT and
  XCiT first run their class-attention blocks, SAM its neck);
- where each block type's residual branches pass a drop-path module (the depth gates and per-step stochastic
  depth sit there) and which linear layers relaxation adapts;
- how the family's exported graph can take image sizes other than its built one (`dynamic_size`: timm's
  `dynamic_img_size` switch, any size, or a fixed grid) and what its eager code needs to trace into a graph that is
  correct at every size
  (`make_exportable`: DINOv3's RoPE, SAM's attention), for `raptor_zoo.export`.
How a family embeds an image and what a block call takes (RoPE, relative-position bias, grid size, masks) is not
restated: raptor_zoo reads it off the family's own forward (hooks on a teacher's blocks, a capturing step loop on a
Raptor's), so that code runs unchanged.

Adding a family = one `FamilyAdapter` in `FAMILIES` (and a coverage row in benchmarks/coverage.py).
"""
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from timm.layers import Format
from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3

__all__ = [
    "FamilyAdapter", "FAMILIES", "family_of", "residual_branches", "relax_layers", "TokenLayout", "native_img_size",
    "patch_size_of", "in_chans_of", "accepts_any_img_size", "pair", "patch_embedding", "EMBEDDING_PARAMETER_PREFIXES",
    "HEAD_PARAMETER_PREFIXES", "attention_dropout", "feature_grid", "final_norm", "DYNAMIC_SIZE_MODES",
    "enable_dynamic_img_size", "make_exportable",
]

# how a family's exported graph can take other image sizes: 'flag' = timm's dynamic_img_size (a model built without
# it can switch it on), 'always' = any multiple of the patch, 'fixed' = only the grid it was built for
DYNAMIC_SIZE_MODES: tuple[str, ...] = ("flag", "always", "fixed")


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
    reg_token = getattr(model, "reg_token", None)
    num_reg = getattr(model, "num_reg_tokens", None)
    if num_reg is None:
        num_reg = 0 if reg_token is None else int(reg_token.shape[1])
    has_class = getattr(model, "has_class_token", None)
    if has_class is None:
        has_class = getattr(model, "cls_token", None) is not None
    return TokenLayout(int(getattr(model, "num_prefix_tokens", 0) or 0), int(num_reg), bool(has_class))


def _no_prefix_layout(model: nn.Module) -> TokenLayout:
    return TokenLayout(0, 0, False)


def _switch_patch_embed_to_dynamic(model: nn.Module) -> None:
    """What timm's VisionTransformer / Eva constructors do for dynamic_img_size=True: the patch embedding keeps its
    NHWC grid (flattened after the position embedding is resampled to it) and accepts any image size."""
    embedding = model.patch_embed
    if not all(hasattr(embedding, name) for name in ("strict_img_size", "flatten", "output_fmt")):
        raise ValueError(
            f"{type(model).__name__} has a {type(embedding).__name__} patch embedding that raptor_zoo cannot switch to "
            "dynamic image sizes; create the model with dynamic_img_size=True "
            "(timm.create_model(..., dynamic_img_size=True)).")
    embedding.strict_img_size = False
    embedding.flatten = False
    embedding.output_fmt = Format.NHWC
    model.dynamic_img_size = True


def _switch_eva_to_dynamic(model: nn.Module) -> None:
    """The patch embedding as ViT's; a RoPE built with a cached table for the grid (EVA-02's RotaryEmbeddingCat)
    computes it from the grid of each input instead, as timm builds it for dynamic_img_size=True (timm keeps the
    frequency bands in both modes). DINOv3's, mixed and M-RoPE tables are computed per input size already."""
    _switch_patch_embed_to_dynamic(model)
    rope = getattr(model, "rope", None)
    if rope is not None and getattr(rope, "_use_cached_embed", False):
        rope._use_cached_embed = False


class _ExportableRopeDinoV3(RotaryEmbeddingDinoV3):
    """DINOv3's RoPE whose coordinate grid divides by the grid size as a graph value.

    timm's `_build_grid` normalises the centred coordinates by `float(H)` / `float(W)`; under `torch.export` with a
    free image size that conversion freezes the example input's grid size into the graph, so the exported model
    applies the wrong rotations at every other size. This computes the same coordinates (the same float32 ops, so
    eager outputs are bit-identical) without leaving the graph.
    """

    def _create_embed(self, feat_shape: list[int], no_aug: bool = False) -> torch.Tensor:
        if self.training and self.aug_active and not no_aug:
            return super()._create_embed(feat_shape, no_aug=no_aug)
        shape = [feat_shape[1], feat_shape[0]] if self.grid_indexing == "xy" else list(feat_shape)
        if self.normalize_coords == "separate":
            denominators = shape
        elif self.normalize_coords in ("max", "min"):
            extreme = torch.sym_max(*shape) if self.normalize_coords == "max" else torch.sym_min(*shape)
            denominators = [extreme, extreme]
        else:
            raise ValueError(f"Unknown normalize_coords: {self.normalize_coords}")
        axes = [(torch.arange(0.5, size, dtype=torch.float32) + self.grid_offset) / denominator
                for size, denominator in zip(shape, denominators)]
        grid = torch.stack(torch.meshgrid(axes, indexing=self.grid_indexing), dim=-1)
        sin, cos = self._get_pos_embed_from_coords((2.0 * grid - 1.0).flatten(0, -2))
        return torch.cat([sin, cos], dim=-1)


def _exportable_eva(model: nn.Module) -> None:
    rope = getattr(model, "rope", None)
    if type(rope) is RotaryEmbeddingDinoV3:
        rope.__class__ = _ExportableRopeDinoV3


def _exportable_sam(model: nn.Module) -> None:
    """SAM's attention calls scaled_dot_product_attention on 3-D [B * heads, N, head_dim] tensors, which torch's
    ONNX exporter does not translate (it takes 4-D ones); its unfused path (q k^T, softmax, @ v; the same maths) is
    plain MatMul / Softmax."""
    for module in model.modules():
        if type(module).__name__ == "Attention" and type(module).__module__ == "timm.models.vision_transformer_sam":
            module.fused_attn = False


def _nothing_to_change(model: nn.Module) -> None:
    return None


@dataclass(frozen=True)
class FamilyAdapter:
    """What raptor_zoo knows about one family of timm ViTs (see the module docstring)."""
    name: str
    class_names: tuple[str, ...]
    timm_modules: tuple[str, ...]
    finish: Callable[[nn.Module, torch.Tensor], torch.Tensor] = _norm_finish
    layout: Callable[[nn.Module], TokenLayout] = _default_layout
    nhwc_states: bool = False
    notes: str = ""
    block_types: tuple[str, ...] = field(default_factory=tuple)
    state_only_blocks: bool = False
    """Its blocks take the state alone (no RoPE, relative-position bias or grid argument per call)."""
    dynamic_size: str = "flag"
    fixed_size_reason: str = ""
    switch_to_dynamic: Callable[[nn.Module], None] = _switch_patch_embed_to_dynamic
    make_exportable: Callable[[nn.Module], None] = _nothing_to_change

    def __post_init__(self) -> None:
        if self.dynamic_size not in DYNAMIC_SIZE_MODES:
            raise ValueError(f"dynamic_size must be one of {DYNAMIC_SIZE_MODES}, got {self.dynamic_size!r}.")
        if self.dynamic_size == "fixed" and not self.fixed_size_reason:
            raise ValueError(f"family {self.name!r} runs at a fixed size: give fixed_size_reason (the error says it).")

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


FAMILIES: tuple[FamilyAdapter, ...] = (
    FamilyAdapter(
        "vit", ("VisionTransformer", "VisionTransformerDistilled", "RaptorVisionTransformer"),
        ("vision_transformer", "deit", "vision_transformer_hybrid", "vitamin"),
        block_types=("Block", "ResPostBlock", "ParallelScalingBlock", "DiffParallelScalingBlock",
                     "ParallelThingsBlock"), state_only_blocks=True),
    FamilyAdapter(
        "eva", ("Eva",), ("eva",),
        notes="EVA-02, EVA-CLIP, DINOv3 and Perception Encoder: RoPE reaches every step as the family passes it.",
        block_types=("EvaBlock", "EvaBlockPostNorm"), switch_to_dynamic=_switch_eva_to_dynamic,
        make_exportable=_exportable_eva),
    FamilyAdapter(
        "beit", ("Beit",), ("beit",),
        notes="The shared relative-position bias (when used) stays in the stem; per-block biases travel with "
              "the shared blocks.",
        block_types=("Block",), dynamic_size="fixed",
        fixed_size_reason="its relative-position bias tables are built for one grid (timm's Beit has no "
                          "dynamic_img_size)"),
    FamilyAdapter(
        "relpos", ("VisionTransformerRelPos",), ("vision_transformer_relpos",),
        block_types=("RelPosBlock", "ResPostRelPosBlock"), dynamic_size="fixed",
        fixed_size_reason="its relative-position bias is built for one grid (timm's VisionTransformerRelPos has no "
                          "dynamic_img_size)"),
    FamilyAdapter(
        "sam", ("VisionTransformerSAM",), ("vision_transformer_sam",), finish=_sam_finish, nhwc_states=True,
        state_only_blocks=True,
        notes="States are [B, H, W, D] inside the stack (flattened to tokens in trajectories); each shared block "
              "keeps the window / global attention of the teacher layer it was built from; the neck is the head.",
        block_types=("Block",), make_exportable=_exportable_sam, dynamic_size="fixed",
        fixed_size_reason="its global-attention blocks resize their relative-position tables with Python ints taken "
                          "from the grid (timm's get_rel_pos), which an exported graph freezes at the traced size"),
    FamilyAdapter(
        "naflexvit", ("NaFlexVit",), ("naflexvit",),
        notes="Fixed-size image tensors; NaFlex patch dictionaries run through the same step views.",
        block_types=("Block", "EvaBlock"), dynamic_size="always"),
    FamilyAdapter(
        "xcit", ("Xcit",), ("xcit",), finish=_class_attention_finish("cls_attn_blocks"), layout=_no_prefix_layout,
        notes="The recurrent part is the self-attention (XCA) stack; the class-attention blocks stay with the head.",
        block_types=("XCABlock",), dynamic_size="always"),
    FamilyAdapter(
        "cait", ("Cait",), ("cait",), finish=_class_attention_finish("blocks_token_only"), layout=_no_prefix_layout,
        state_only_blocks=True,
        notes="The recurrent part is the self-attention stack; the class-attention blocks stay with the head.",
        block_types=("LayerScaleBlock",), dynamic_size="fixed",
        fixed_size_reason="its position embedding is a table for one grid (timm's Cait has no dynamic_img_size)"),
)


def family_of(model: nn.Module) -> FamilyAdapter | None:
    """The family adapter of a timm model (by its class or the nearest timm base class), or None."""
    for cls in type(model).__mro__:
        for family in FAMILIES:
            if cls.__name__ in family.class_names and cls.__module__.startswith(("timm.", "raptor_zoo.")):
                return family
    return None


def pair(size: Any) -> tuple[int, int]:
    """An image / patch size (an int or a pair) as a (height, width) pair of ints."""
    if isinstance(size, int):
        return size, size
    values = tuple(int(s) for s in size)
    if len(values) != 2:
        raise ValueError(f"a size is an int or a (height, width) pair; got {size!r}.")
    return values


def patch_embedding(model: nn.Module) -> nn.Module:
    """The module that turns an image into patch tokens (`patch_embed`; NaFlexVit's `embeds`)."""
    embedding = getattr(model, "patch_embed", None)
    return embedding if embedding is not None else model.embeds


def native_img_size(model: nn.Module) -> tuple[int, int]:
    """The image size a timm model was built for (its patch embedding's, else its pretrained cfg's)."""
    embedding = patch_embedding(model)
    size = getattr(embedding, "img_size", None) or getattr(embedding, "default_img_size", None)
    if size is None:
        size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3, 224, 224))[1:]
    return pair(size)


def patch_size_of(model: nn.Module) -> tuple[int, int]:
    """Input pixels per token side (a hybrid's CNN stem counts: image size / token grid)."""
    embedding = patch_embedding(model)
    img_size, grid_size = getattr(embedding, "img_size", None), getattr(embedding, "grid_size", None)
    if img_size is not None and grid_size is not None:
        img_size, grid_size = pair(img_size), pair(grid_size)
        if all(g > 0 and i % g == 0 for i, g in zip(img_size, grid_size)):
            return img_size[0] // grid_size[0], img_size[1] // grid_size[1]
    return pair(embedding.patch_size)


def in_chans_of(model: nn.Module) -> int:
    """Image channels (a hybrid's patch projection reads CNN features, so the model's own in_chans comes first)."""
    in_chans = getattr(model, "in_chans", None)
    if isinstance(in_chans, int):
        return in_chans
    proj = getattr(patch_embedding(model), "proj", None)
    if isinstance(proj, nn.Conv2d):
        return proj.in_channels
    return int((getattr(model, "pretrained_cfg", None) or {}).get("input_size", (3,))[0])


def accepts_any_img_size(model: nn.Module) -> bool:
    """Whether the model runs at sizes other than its native one (dynamic size, or a family that always does)."""
    family = family_of(model)
    return bool(getattr(model, "dynamic_img_size", False)) or (family is not None and family.dynamic_size == "always")


def _require_family(model: nn.Module) -> FamilyAdapter:
    family = family_of(model)
    if family is None:
        raise TypeError(f"{type(model).__name__} is not a model of a supported timm ViT family (see docs/teachers.md).")
    return family


def enable_dynamic_img_size(model: nn.Module) -> None:
    """Let `model` run at any image size that is a multiple of its patch, in place (call it on a copy), for an
    exported graph with a free size.

    A family with timm's `dynamic_img_size` gets it switched on as timm's constructor sets it up (outputs at the
    built size are unchanged; other sizes resample the position embedding / RoPE grid as timm does); families that
    take any size already are left alone. Raises ValueError for a family whose graph is tied to one grid (position
    tables built for it), naming the way out (a graph per size).
    """
    family = _require_family(model)
    if family.dynamic_size == "always" or getattr(model, "dynamic_img_size", False):
        return
    if family.dynamic_size == "fixed":
        height, width = native_img_size(model)
        raise ValueError(
            f"An exported {type(model).__name__} takes only the image size it was built for ({height}x{width}): "
            f"{family.fixed_size_reason}. Export it at a fixed size (leave out dynamic size / --dynamic-size), one "
            "graph per size: build the model with img_size=<size> for another one.")
    family.switch_to_dynamic(model)


def make_exportable(model: nn.Module) -> None:
    """Replace, in place (call it on a copy), eager code of the model's family that traces into a graph that is
    wrong at other input sizes (DINOv3's RoPE grid) or that torch's ONNX exporter cannot translate (SAM's 3-D fused
    attention) by code computing the same outputs."""
    _require_family(model).make_exportable(model)


def residual_branches(block: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    """(drop-path module name, branch index of each of its calls) of a block: 0 = attention, 1 = MLP, 2 = a third
    branch (XCiT's local patch interaction). Raises TypeError for a block whose residual branches are unknown."""
    children = dict(block.named_children())
    name = type(block).__name__
    if name == "ParallelThingsBlock":
        return ([(f"attns.{i}.drop_path", (0,)) for i in range(len(block.attns))]
                + [(f"ffns.{i}.drop_path", (1,)) for i in range(len(block.ffns))])
    if "drop_path1" in children and "drop_path2" in children:
        branches = [("drop_path1", (0,)), ("drop_path2", (1,))]
        if "drop_path3" in children:
            branches.append(("drop_path3", (2,)))
        return branches
    if "drop_path" in children:
        # CaiT's LayerScaleBlock calls one drop-path module for both branches; parallel blocks once, on the sum
        return [("drop_path", (0, 1) if name == "LayerScaleBlock" else (0,))]
    raise TypeError(
        f"{name} blocks have no drop-path slot on their residual branches (drop_path1/drop_path2 or drop_path), "
        "so raptor_zoo cannot place depth gates or per-step stochastic depth; add the block type to "
        "raptor_zoo/models/families.py.")


# linear layers each relaxation target adapts, by module path inside a block (the first ones present are used)
_RELAX_CANDIDATES: dict[str, tuple[tuple[str, ...], ...]] = {
    "qkv": (("attn.qkv",), ("attn.q_proj", "attn.k_proj", "attn.v_proj")),
    "proj": (("attn.proj",),),
    "fc1": (("mlp.fc1",), ("mlp.fc1_g", "mlp.fc1_x")),
    "fc2": (("mlp.fc2",),),
}


def relax_layers(block: nn.Module, targets: Sequence[str]) -> dict[str, str]:
    """Adapter key -> linear module path of each layer relaxation adapts in `block` ('qkv' -> 'attn.qkv', or
    'qkv_q_proj' -> 'attn.q_proj' when a target has several layers). Raises ValueError when a target is missing."""
    modules = dict(block.named_modules())
    layers: dict[str, str] = {}
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
    "patch_embed.", "embeds.", "cls_token", "reg_token", "pos_embed", "norm_pre.", "rope.", "rel_pos_bias.",
    "shared_rel_pos.")
HEAD_PARAMETER_PREFIXES = (
    "norm.", "fc_norm.", "head.", "attn_pool.", "blocks_token_only.", "cls_attn_blocks.", "neck.")


def attention_dropout(block: nn.Module) -> nn.Module | None:
    """The module the explicit-softmax attention of a block passes its probabilities through (timm's
    `attn.attn_drop`, in every family's attention that has one), or None."""
    attn = getattr(block, "attn", None)
    return getattr(attn, "attn_drop", None)


def feature_grid(model: nn.Module, height: int, width: int) -> tuple[int, int]:
    """The token grid of an image of `height` x `width` (timm's `dynamic_feat_size` where the patch embedding has it)."""
    embedding = patch_embedding(model)
    if hasattr(embedding, "dynamic_feat_size"):
        return tuple(embedding.dynamic_feat_size((height, width)))
    patch = patch_size_of(model)
    return height // patch[0], width // patch[1]


def final_norm(model: nn.Module) -> nn.Module:
    """The norm a family applies to its last state (`norm`; Identity where it has none, as SAM, whose neck finishes)."""
    norm = getattr(model, "norm", None)
    return norm if isinstance(norm, nn.Module) else nn.Identity()
