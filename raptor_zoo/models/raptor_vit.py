""" Raptor: Recurrent Approximations to Phase-structured TransfORmers

A Raptor keeps a teacher ViT's embedding, final norm and head, and replaces its L blocks by k << L unique
blocks applied recurrently on a `block_schedule` (n_1, ..., n_k) with sum(n_j) = L: block j produces the
layers of phase j. It runs exactly L block applications, so with the teacher's own block type its FLOPs
equal the teacher's while its block parameters shrink by about L / k.

Paper: `Block-Recurrent Dynamics in Vision Transformers` - https://arxiv.org/abs/2512.19941
    (Jacobs, Fel, Hakim, Brondetta, Ba, Keller; official code: github.com/KempnerInstitute/raptor)

This file holds the Raptor of timm's VisionTransformer family (vit, deit, DINOv2, CLIP, SigLIP, ...): timm's own
VisionTransformer whose `blocks` is a RecurrentBlocks (recurrent.py) — k shared timm `Block`s presented as L step
views — so timm's forward_features, forward_intermediates, prune_intermediate_layers, feature_info, ... run
unchanged and count the L unrolled applications. What the family adds: the `cls_avg` pool (DINOv2's probe head),
the paper's SwiGLU block (`block_type='swiglu'`), the JSON names of its layer arguments, the arguments of a timm
ViT read off an instance, and the converter of the flat argument schema folders saved before the one construction
path. Every family's Raptor, this one included, is built by `raptor_timm.create_raptor`, which also registers the
architectures.
"""
import logging
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.nn as nn
from timm.layers import (
    GELUTanh,
    LayerNorm,
    LayerScale,
    Mlp,
    QuickGELU,
    RmsNorm,
    SwiGLUPacked,
    get_act_layer,
    resample_abs_pos_embed,
)
from timm.models.vision_transformer import Block, VisionTransformer, global_pool_nlc

from .archs import RAPTOR_ARCHS, REGISTERED_RAPTOR_ARCHS, RELAXED_RAPTOR_ARCHS
from .raptor_base import BlockType, RaptorMixin, check_relax_args
from .recurrent import RELAX_TARGETS, DepthScale, StepAdapters
from .schedule import (
    PAPER_PHASE_BOUNDARIES,
    check_k,
    even_block_schedule,
    middle_layers,
    scaled_paper_schedule,
    validate_block_schedule,
)
from .services import service

__all__ = [
    "RaptorVisionTransformer", "DepthScale", "StepAdapters", "RELAX_TARGETS", "RAPTOR_ARCHS",
    "RELAXED_RAPTOR_ARCHS", "REGISTERED_RAPTOR_ARCHS", "PAPER_PHASE_BOUNDARIES",
    "cls_avg_pool", "validate_block_schedule", "even_block_schedule", "scaled_paper_schedule", "vit_args_from_model",
    "create_raptor_from_vit", "convert_vit_args", "SWIGLU_BLOCK_ARGS", "checkpoint_filter_fn",
]

_logger = logging.getLogger(__name__)

# the paper's block: SwiGLU MLP with one packed input projection D -> 2·4·D, LayerScale init 1e-5
SWIGLU_BLOCK_ARGS: dict[str, Any] = dict(mlp_layer=SwiGLUPacked, mlp_ratio=8., act_layer=nn.SiLU, init_values=1e-5)
_GLOBAL_POOLS = ("", "token", "avg", "avgmax", "max", "map", "cls_avg")


# layer choices by name, so that model_args are JSON-able (config.json) and rebuild the same modules
MLP_LAYERS: dict[str, type[nn.Module]] = {"mlp": Mlp, "swiglu_packed": SwiGLUPacked}
ACT_LAYERS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU, "gelu_tanh": GELUTanh, "quick_gelu": QuickGELU, "silu": nn.SiLU, "relu": nn.ReLU}
NORM_LAYERS: dict[str, type[nn.Module]] = {"layernorm": LayerNorm, "rmsnorm": RmsNorm}
# other classes computing the same function as a named layer (timm's GELU, torch's LayerNorm)
_LAYER_ALIASES: dict[type, str] = {get_act_layer("gelu"): "gelu", nn.LayerNorm: "layernorm"}


def _layer_name(layer: Any, table: dict[str, type[nn.Module]], arg: str) -> str | None:
    if layer is None or isinstance(layer, str):
        if isinstance(layer, str) and layer not in table:
            raise ValueError(f"{arg}={layer!r} is not supported; choose one of {sorted(table)}.")
        return layer
    for name, candidate in table.items():
        if layer is candidate:
            return name
    cls = layer.func if isinstance(layer, partial) else layer
    for name, candidate in table.items():
        if cls is candidate:
            return name
    if cls in _LAYER_ALIASES:
        return _LAYER_ALIASES[cls]
    raise ValueError(f"{arg}={cls.__name__} is not supported; choose one of {sorted(table)}.")


def split_layer_args(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Turn layer arguments (classes, partials or names) into (module kwargs, JSON-able names + norm_eps)."""
    json_args = dict(kwargs)
    module_args = dict(kwargs)
    norm_layer = kwargs.get("norm_layer")
    norm_eps = kwargs.pop("norm_eps", None)
    if isinstance(norm_layer, partial) and "eps" in norm_layer.keywords:
        norm_eps = norm_layer.keywords["eps"] if norm_eps is None else norm_eps
    json_args.pop("norm_eps", None)
    module_args.pop("norm_eps", None)
    for arg, table in (("mlp_layer", MLP_LAYERS), ("act_layer", ACT_LAYERS), ("norm_layer", NORM_LAYERS)):
        if arg in kwargs:
            name = _layer_name(kwargs[arg], table, arg)
            json_args[arg] = name
            module_args[arg] = table[name] if name is not None else None
    if norm_eps is not None:
        json_args["norm_eps"] = norm_eps
        module_args["norm_layer"] = partial(NORM_LAYERS[json_args.get("norm_layer") or "layernorm"], eps=norm_eps)
    if "mlp_layer" in module_args and module_args["mlp_layer"] is None:
        module_args.pop("mlp_layer")
    for key, value in json_args.items():
        if isinstance(value, tuple):
            json_args[key] = list(value)
    return module_args, json_args


def cls_avg_pool(x: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """concat(cls token, mean of the patch tokens) of tokens [B, N, D] -> [B, 2D]: DINOv2's linear-probe features."""
    return torch.cat([x[:, 0], x[:, num_prefix_tokens:].mean(dim=1)], dim=-1)


def _check_img_size(img_size: Any, patch_size: Any, dynamic_img_pad: bool) -> None:
    sizes = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    patches = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if not dynamic_img_pad and any(s % p for s, p in zip(sizes, patches)):
        raise ValueError(
            f"img_size {img_size} is not divisible by patch_size {patch_size}; use a multiple of the patch size "
            f"(e.g. {tuple(s // p * p for s, p in zip(sizes, patches))}) or dynamic_img_pad=True.")


def _check_not_causal(is_causal: bool) -> None:
    if is_causal:
        raise ValueError("is_causal attention is not supported by Raptor blocks (they attend bidirectionally, as "
                         "the teacher did); pass is_causal=False, or an attn_mask.")


class RaptorVisionTransformer(RaptorMixin, VisionTransformer):
    """ Raptor Vision Transformer: timm's VisionTransformer with k shared blocks applied on `block_schedule`.

    Every argument of timm's VisionTransformer is accepted (except `depth` and `block_fn`, which the schedule and
    the block type define). `global_pool` adds `cls_avg`: the concat of the cls token and the mean patch token
    (DINOv2's linear-probe head, 2·D inputs). `blocks` is a RecurrentBlocks: `len(model.blocks)` is L and
    `model.unique_blocks` are the k shared timm Blocks.
    """

    def __init__(
            self,
            block_schedule: Sequence[int] = (7, 5),
            block_type: BlockType = "teacher",
            t_scale: bool = True,
            global_pool: str = "token",
            drop_path_rate: float = 0.,
            fc_norm: bool | None = None,
            depth: int | None = None,
            relax_rank: int = 0,
            relax_targets: Sequence[str] = RELAX_TARGETS,
            unique_layers: Sequence[int] | None = None,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            block_schedule: Repeat count of each unique block; its length is k, its sum the teacher depth L.
            block_type: 'teacher' (the teacher's block architecture: FLOPs equal the teacher's) or 'swiglu'
                (the paper's block: SwiGLU MLP with hidden 4·D, LayerScale 1e-5; ~1.3x a GELU block's FLOPs).
            t_scale: Depth scaling gates fed the absolute layer index (zero-initialised: identity at start).
            global_pool: '', 'token', 'avg', 'map' or 'cls_avg' (plus timm's other pools).
            drop_path_rate: Stochastic depth, ramped linearly over the L unrolled applications.
            fc_norm: As timm; defaults to False for 'cls_avg' (the final norm is applied before pooling).
            depth: Optional teacher depth; when given, block_schedule must sum to it.
            relax_rank: Rank r of per-step low-rank adapters (relaxation); 0 (default) is the pure Raptor, with
                no adapter module at all. With r > 0, `relax.{l}.{target}_a` [r, in] and `relax.{l}.{target}_b`
                [out, r] make step l (0-based) compute with W_j + B_l A_l on each targeted layer of its block j.
            relax_targets: Which linear layers of the block are adapted, from ('qkv', 'proj', 'fc1', 'fc2').
            unique_layers: The layer of the L built each shared block is taken from (default: each phase's middle).
            **kwargs: Remaining timm VisionTransformer arguments (img_size, patch_size, embed_dim, num_heads, ...).
        """
        if "block_fn" in kwargs:
            raise ValueError(
                "RaptorVisionTransformer builds its own blocks; block_fn is not accepted: drop it and choose the block "
                "with block_type='teacher' or 'swiglu'. For a teacher with other blocks (ResPostBlock, parallel "
                "blocks, ...) use raptor_zoo.from_teacher(teacher, ...).")
        schedule = validate_block_schedule(block_schedule, depth)
        relax_targets = check_relax_args(relax_rank, relax_targets)
        kwargs, json_args = split_layer_args(kwargs)
        if block_type not in ("teacher", "swiglu"):
            raise ValueError(f"block_type must be 'teacher' or 'swiglu', got {block_type!r}.")
        if global_pool not in _GLOBAL_POOLS:
            raise ValueError(f"global_pool must be one of {_GLOBAL_POOLS}, got {global_pool!r}.")
        if global_pool == "cls_avg":
            if not kwargs.get("class_token", True):
                raise ValueError("global_pool='cls_avg' needs a class token (class_token=True).")
            fc_norm = False if fc_norm is None else fc_norm
        _check_img_size(kwargs.get("img_size", 224), kwargs.get("patch_size", 16), kwargs.get("dynamic_img_pad", False))
        teacher_args = dict(json_args, global_pool="token" if global_pool == "cls_avg" else global_pool)
        if fc_norm is not None:
            teacher_args["fc_norm"] = fc_norm
        super().__init__(
            block_schedule=schedule, unique_layers=unique_layers, t_scale=t_scale, drop_path_rate=drop_path_rate,
            relax_rank=relax_rank, relax_targets=relax_targets, global_pool=teacher_args["global_pool"],
            fc_norm=fc_norm, **dict(kwargs, **(SWIGLU_BLOCK_ARGS if block_type == "swiglu" else {})))
        if relax_rank and getattr(self.unique_blocks[0].attn, "gate", None) is not None:
            raise ValueError("relax_rank > 0 does not support gated attention blocks (attn.gate); use relax_rank=0 "
                             "(a pure Raptor) for this teacher.")
        # JSON-able description config.json stores: the one construction function rebuilds this architecture from it
        self.model_args: dict[str, Any] | None = dict(
            teacher_arch="VisionTransformer", teacher_args=teacher_args, block_schedule=list(schedule),
            unique_layers=middle_layers(schedule) if unique_layers is None else list(unique_layers), t_scale=t_scale,
            drop_path_rate=drop_path_rate)
        if block_type != "teacher":
            self.model_args["block_type"] = block_type
        if global_pool == "cls_avg":
            self.model_args["global_pool"] = "cls_avg"
        if relax_rank:  # pure Raptors keep their model_args (and config.json) unchanged
            self.model_args.update(relax_rank=relax_rank, relax_targets=list(relax_targets))
        self.block_type = block_type
        if global_pool == "cls_avg":
            self.reset_classifier(self.num_classes, "cls_avg")

    @classmethod
    def from_teacher(cls, teacher: Any, **kwargs: Any) -> RaptorMixin:
        """A Raptor initialised from a teacher: ``raptor_zoo.from_teacher`` (``raptor_zoo.build``), whose arguments
        this takes (k, block_schedule, images, block_type, init, phase_kwargs, relax_rank, ...). A plain timm ViT
        teacher gives a RaptorVisionTransformer; a teacher of another family gives that family's Raptor."""
        return service("from_teacher")(teacher, **kwargs)

    def init_weights(self, mode: str = "", needs_reset: bool = True) -> None:
        super().init_weights(mode, needs_reset=needs_reset)
        self.reset_raptor_parameters()

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool == "cls_avg" or (global_pool is None and self.global_pool == "cls_avg"):
            if not self.has_class_token:
                raise ValueError("global_pool='cls_avg' needs a class token and this model has none "
                                 "(class_token=False); use global_pool='avg' (mean of the patch tokens).")
            self.global_pool = "cls_avg"
            self.head_hidden_size = 2 * self.embed_dim
            self.num_classes = num_classes
            dd = {"device": self.patch_embed.proj.weight.device, "dtype": self.patch_embed.proj.weight.dtype}
            self.head = nn.Linear(self.head_hidden_size, num_classes, **dd) if num_classes > 0 else nn.Identity()
            self.head.train(self.training)
            return
        self.head_hidden_size = self.embed_dim
        super().reset_classifier(num_classes, global_pool)

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """Image -> tokens x_0 (patch embed, cls/register tokens, position embedding, pre-norm)."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        return self.norm_pre(x)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
            output_dict: bool = False,
            attn_mask: torch.Tensor | None = None,
            is_causal: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]] | dict[str, Any]:
        """ timm's VisionTransformer.forward_intermediates, indexed by the L unrolled block applications."""
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        _check_not_causal(is_causal)
        return super().forward_intermediates(
            x, indices=indices, return_prefix_tokens=return_prefix_tokens, norm=norm, stop_early=stop_early,
            output_fmt=output_fmt, intermediates_only=intermediates_only, output_dict=output_dict,
            attn_mask=attn_mask, is_causal=is_causal)

    def prune_intermediate_layers(
            self,
            indices: int | list[int] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> list[int]:
        """Shorten the schedule to the last step needed for `indices`; the unique blocks are all kept."""
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        self.feature_info = self.feature_info[:self.depth]
        return take_indices

    def forward_features(
            self,
            x: torch.Tensor,
            attn_mask: torch.Tensor | None = None,
            num_steps: int | None = None,
            is_causal: bool = False,
    ) -> torch.Tensor:
        """Embed, run the first `num_steps` (default all L) block applications, final norm."""
        _check_not_causal(is_causal)
        with self.limit_steps(num_steps):
            return super().forward_features(x, attn_mask=attn_mask, is_causal=is_causal)

    def pool(self, x: torch.Tensor, pool_type: str | None = None) -> torch.Tensor:
        if self.attn_pool is not None:
            return super().pool(x, pool_type)
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == "cls_avg":
            return cls_avg_pool(x, self.num_prefix_tokens)
        return global_pool_nlc(
            x, pool_type=pool_type, num_prefix_tokens=self.num_prefix_tokens,
            reduce_include_prefix=self.pool_include_prefix)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: torch.Tensor | None = None,
            num_steps: int | None = None,
    ) -> torch.Tensor:
        """Classify; `num_steps` < L stops early (anytime inference), then final norm and head."""
        x = self.forward_features(x, attn_mask=attn_mask, num_steps=num_steps)
        return self.forward_head(x)


def _norm_eps(norm: nn.Module) -> float | None:
    return getattr(norm, "eps", None)


def vit_args_from_model(model: nn.Module) -> dict[str, Any]:
    """Constructor arguments of a RaptorVisionTransformer that reproduces a timm VisionTransformer's architecture.

    Raises TypeError for models that are not timm VisionTransformers with plain pre-norm `Block`s.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"Expected a timm VisionTransformer (vit_*, deit*, DINOv2 ...), got {type(model).__name__}. "
            "Raptors are built from ViTs with plain pre-norm timm Blocks.")
    blocks = list(model.blocks)
    block = blocks[0]
    if type(block) is not Block:
        raise TypeError(
            f"{type(model).__name__} uses {type(block).__name__} blocks; Raptor supports timm `Block` "
            "(pre-norm attention + MLP) only.")
    if model.attn_pool is not None:
        raise TypeError("ViTs with attention pooling heads (global_pool map/prr) are not supported yet.")
    dim = model.embed_dim
    mlp = block.mlp
    if not isinstance(mlp, (Mlp, SwiGLUPacked)) and type(mlp).__name__ not in ("GluMlp",):
        raise TypeError(f"Unsupported MLP type {type(mlp).__name__} in {type(model).__name__}.")
    hidden = mlp.fc1.out_features
    norm_layer = type(block.norm1)
    eps = _norm_eps(block.norm1)
    patch_size = model.patch_embed.patch_size
    img_size = model.patch_embed.img_size
    args: dict[str, Any] = dict(
        img_size=tuple(img_size) if img_size is not None else 224,
        patch_size=patch_size[0] if patch_size[0] == patch_size[1] else tuple(patch_size),
        in_chans=model.in_chans,
        num_classes=model.num_classes,
        global_pool=model.global_pool,
        embed_dim=dim,
        num_heads=block.attn.num_heads,
        mlp_ratio=hidden / dim,
        qkv_bias=block.attn.qkv.bias is not None,
        qk_norm=not isinstance(block.attn.q_norm, nn.Identity),
        proj_bias=block.attn.proj.bias is not None,
        init_values=1e-5 if isinstance(block.ls1, LayerScale) else None,
        class_token=model.has_class_token,
        reg_tokens=model.num_reg_tokens,
        no_embed_class=model.no_embed_class,
        pos_embed="learn" if model.pos_embed is not None else "none",
        pre_norm=not isinstance(model.norm_pre, nn.Identity),
        final_norm=not (isinstance(model.norm, nn.Identity) and isinstance(model.fc_norm, nn.Identity)),
        fc_norm=not isinstance(model.fc_norm, nn.Identity),
        dynamic_img_size=model.dynamic_img_size,
        norm_layer=partial(norm_layer, eps=eps) if eps is not None else norm_layer,
        act_layer=type(mlp.act),
        mlp_layer=type(mlp),
    )
    return args


def _meta_teacher(teacher: str, **kwargs: Any) -> VisionTransformer:
    import timm

    try:
        with torch.device("meta"):
            return timm.create_model(teacher, pretrained=False, **kwargs)
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ValueError(f'Unknown timm teacher architecture {teacher!r}; see timm.list_models("vit_*").') from e
        raise


def create_raptor_from_vit(
        teacher: str | nn.Module,
        k: int | None = None,
        block_schedule: Sequence[int] | None = None,
        **kwargs: Any,
) -> RaptorVisionTransformer:
    """Build a (randomly initialised) Raptor with the architecture of any timm VisionTransformer.

    `teacher` is a timm architecture name or a VisionTransformer instance. Pass an explicit `block_schedule`,
    or `k`: k in (2, 3, 4) uses the paper's phase boundaries scaled to the teacher depth, other k an even split.
    Teacher weights are copied by `RaptorVisionTransformer.from_teacher`, not here.
    """
    teacher_model = _meta_teacher(teacher, img_size=kwargs.get("img_size", 224)) if isinstance(teacher, str) else teacher
    args = vit_args_from_model(teacher_model)
    depth = len(teacher_model.blocks)
    if block_schedule is None:
        if k is None:
            raise ValueError("Pass k (number of unique blocks) or an explicit block_schedule.")
        check_k(depth, k)
        block_schedule = scaled_paper_schedule(depth, k) if k in PAPER_PHASE_BOUNDARIES else even_block_schedule(depth, k)
    elif k is not None and len(block_schedule) != k:
        raise ValueError(f"k={k} disagrees with block_schedule {tuple(block_schedule)} of length "
                         f"{len(block_schedule)}; pass k={len(block_schedule)} or leave k out.")
    args.update(kwargs)
    model = RaptorVisionTransformer(block_schedule=block_schedule, depth=depth, **args)
    hidden = model.blocks[0].mlp.fc1.out_features
    expected_hidden = teacher_model.blocks[0].mlp.fc1.out_features
    if args.get("block_type", "teacher") == "teacher" and hidden != expected_hidden:
        raise RuntimeError(f"MLP width {hidden} differs from the teacher's {expected_hidden}.")
    return model


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: RaptorVisionTransformer) -> dict[str, torch.Tensor]:
    """Unwrap nested checkpoints and resample the position embedding to the model's grid."""
    for key in ("model", "state_dict"):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    out = {}
    for name, value in state_dict.items():
        pos_embed = getattr(model, "pos_embed", None)
        if name == "pos_embed" and isinstance(pos_embed, torch.Tensor) and value.shape != pos_embed.shape:
            num_prefix_tokens = 0 if model.no_embed_class else model.num_prefix_tokens
            value = resample_abs_pos_embed(
                value, new_size=model.patch_embed.grid_size, num_prefix_tokens=num_prefix_tokens, verbose=True)
        out[name] = value
    return out


# keys of the flat schema (RaptorVisionTransformer's own arguments) that describe the Raptor, not its teacher
_RAPTOR_KEYS = ("block_schedule", "block_type", "t_scale", "drop_path_rate", "relax_rank", "relax_targets",
                "unique_layers", "depth")


def convert_vit_args(model_args: dict[str, Any]) -> dict[str, Any]:
    """The teacher-architecture description of a Raptor saved with the flat schema: RaptorVisionTransformer's own
    keyword arguments (config.json of folders written before every Raptor was described by its teacher, and
    transformers configs built from RaptorConfig's fields). timm's argument converters do the same for renamed
    arguments; the tensors of such a folder are laid out exactly as the converted description builds them."""
    if "teacher_arch" in model_args:
        return dict(model_args)
    teacher_args = {key: value for key, value in model_args.items() if key not in _RAPTOR_KEYS}
    schedule = list(model_args.get("block_schedule", (7, 5)))
    converted: dict[str, Any] = dict(
        teacher_arch="VisionTransformer", teacher_args=teacher_args, block_schedule=schedule,
        unique_layers=list(model_args.get("unique_layers") or middle_layers(schedule)),
        t_scale=model_args.get("t_scale", True), drop_path_rate=model_args.get("drop_path_rate", 0.))
    if teacher_args.get("global_pool") == "cls_avg":
        teacher_args["global_pool"] = "token"
        teacher_args.setdefault("fc_norm", False)
        converted["global_pool"] = "cls_avg"
    if model_args.get("block_type", "teacher") != "teacher":
        converted["block_type"] = model_args["block_type"]
    if model_args.get("relax_rank"):
        converted.update(relax_rank=model_args["relax_rank"],
                         relax_targets=list(model_args.get("relax_targets", RELAX_TARGETS)))
    return converted
