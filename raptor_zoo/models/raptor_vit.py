""" Raptor: Recurrent Approximations to Phase-structured TransfORmers

A Raptor keeps a teacher ViT's embedding, final norm and head, and replaces its L blocks by k << L unique
blocks applied recurrently on a `block_schedule` (n_1, ..., n_k) with sum(n_j) = L: block j produces the
layers of phase j. It runs exactly L block applications, so with the teacher's own block type its FLOPs
equal the teacher's while its block parameters shrink by about L / k.

Paper: `Block-Recurrent Dynamics in Vision Transformers` - https://arxiv.org/abs/2512.19941
    (Jacobs, Fel, Hakim, Brondetta, Ba, Keller; official code: github.com/KempnerInstitute/raptor)

Built on timm's VisionTransformer: the embedding, norms, pooling and head are timm's, every depth-indexed
API (forward_intermediates, prune_intermediate_layers, feature_info, ...) counts the L unrolled applications.
"""
import logging
import math
import warnings
from functools import partial
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Type, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import (
    GELUTanh, GluMlp, LayerNorm, LayerScale, Mlp, QuickGELU, RmsNorm, SwiGLUPacked, calculate_drop_path_rates,
    drop_path, get_act_layer, resample_abs_pos_embed)
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.vision_transformer import Block, VisionTransformer, global_pool_nlc

__all__ = [
    'RaptorVisionTransformer', 'RaptorBlock', 'DepthScale', 'StepAdapters', 'RELAX_TARGETS', 'RAPTOR_ARCHS',
    'RELAXED_RAPTOR_ARCHS', 'REGISTERED_RAPTOR_ARCHS',
    'PAPER_PHASE_BOUNDARIES',
    'cls_avg_pool', 'validate_block_schedule', 'even_block_schedule', 'scaled_paper_schedule', 'vit_args_from_model',
    'create_raptor_from_vit',
]

_logger = logging.getLogger(__name__)

# Phase boundaries of DINOv2 ViT-B/14-reg4 (12 blocks) found by the paper's divisive max-cut (method.md §2.3):
# block outputs 1..b_1 form phase 1, b_1+1..b_2 phase 2, ...
PAPER_PHASE_BOUNDARIES: Dict[int, Tuple[int, ...]] = {2: (7,), 3: (7, 10), 4: (4, 7, 10)}
PAPER_DEPTH = 12

BlockType = Literal['teacher', 'swiglu']
InitMode = Literal['middle', 'first', 'mean', 'random']
RelaxInit = Literal['svd', 'zeros']
# linear layers of a block that relaxation (`relax_rank` > 0) can adapt per unrolled step
RELAX_TARGETS: Tuple[str, ...] = ('qkv', 'proj', 'fc1', 'fc2')
GlobalPool = Literal['', 'token', 'avg', 'cls_avg']


def validate_block_schedule(block_schedule: Sequence[int], depth: Optional[int] = None) -> Tuple[int, ...]:
    """Check a schedule of repeat counts (every entry >= 1, summing to `depth` when given) and return it as a tuple."""
    try:
        schedule = tuple(int(n) for n in block_schedule)
    except (TypeError, ValueError):
        raise ValueError(f'block_schedule must be a sequence of positive ints, got {block_schedule!r}.') from None
    if not schedule or any(n < 1 for n in schedule):
        raise ValueError(f'block_schedule must be a non-empty sequence of repeat counts >= 1, got {schedule}.')
    if depth is not None and sum(schedule) != depth:
        raise ValueError(
            f'block_schedule {schedule} sums to {sum(schedule)} block applications but the teacher has depth '
            f'{depth}; the repeat counts must sum to the teacher depth (e.g. {even_block_schedule(depth, len(schedule))}).')
    return schedule


def _check_k(depth: int, k: int) -> None:
    if not 1 <= k <= depth:
        raise ValueError(f'k={k} unique blocks is out of range for a teacher of depth {depth}; use 1 <= k <= {depth}.')


def even_block_schedule(depth: int, k: int) -> Tuple[int, ...]:
    """Split `depth` applications over k blocks as evenly as possible (largest remainder, earlier phases longer)."""
    _check_k(depth, k)
    base, extra = divmod(depth, k)
    return tuple(base + (1 if j < extra else 0) for j in range(k))


def scaled_paper_schedule(depth: int, k: int) -> Tuple[int, ...]:
    """The paper's DINOv2-B phase boundaries scaled to `depth`: b' = round(b * depth / 12), each phase >= 1."""
    _check_k(depth, k)
    if k not in PAPER_PHASE_BOUNDARIES:
        raise ValueError(f'the paper reports phases for k in {sorted(PAPER_PHASE_BOUNDARIES)}, not k={k}.')
    boundaries = [0]
    for j, b in enumerate(PAPER_PHASE_BOUNDARIES[k]):
        scaled = int(math.floor(b * depth / PAPER_DEPTH + 0.5))
        # every phase keeps >= 1 layer and leaves room for the phases after it
        scaled = min(max(scaled, boundaries[-1] + 1), depth - (k - 1 - j))
        boundaries.append(scaled)
    boundaries.append(depth)
    return tuple(b - a for a, b in zip(boundaries[:-1], boundaries[1:]))


# layer choices by name, so that model_args are JSON-able (config.json) and rebuild the same modules
MLP_LAYERS: Dict[str, Type[nn.Module]] = {'mlp': Mlp, 'swiglu_packed': SwiGLUPacked}
ACT_LAYERS: Dict[str, Type[nn.Module]] = {
    'gelu': nn.GELU, 'gelu_tanh': GELUTanh, 'quick_gelu': QuickGELU, 'silu': nn.SiLU, 'relu': nn.ReLU}
NORM_LAYERS: Dict[str, Type[nn.Module]] = {'layernorm': LayerNorm, 'rmsnorm': RmsNorm}
# other classes computing the same function as a named layer (timm's GELU, torch's LayerNorm)
_LAYER_ALIASES: Dict[type, str] = {get_act_layer('gelu'): 'gelu', nn.LayerNorm: 'layernorm'}


def _layer_name(layer: Any, table: Dict[str, Type[nn.Module]], arg: str) -> Optional[str]:
    if layer is None or isinstance(layer, str):
        if isinstance(layer, str) and layer not in table:
            raise ValueError(f'{arg}={layer!r} is not supported; choose one of {sorted(table)}.')
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
    raise ValueError(f'{arg}={cls.__name__} is not supported; choose one of {sorted(table)}.')


def _split_layer_args(kwargs: Dict[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Turn layer arguments (classes, partials or names) into (module kwargs, JSON-able names + norm_eps)."""
    json_args = dict(kwargs)
    module_args = dict(kwargs)
    norm_layer = kwargs.get('norm_layer')
    norm_eps = kwargs.pop('norm_eps', None)
    if isinstance(norm_layer, partial) and 'eps' in norm_layer.keywords:
        norm_eps = norm_layer.keywords['eps'] if norm_eps is None else norm_eps
    json_args.pop('norm_eps', None)
    module_args.pop('norm_eps', None)
    for arg, table in (('mlp_layer', MLP_LAYERS), ('act_layer', ACT_LAYERS), ('norm_layer', NORM_LAYERS)):
        if arg in kwargs:
            name = _layer_name(kwargs[arg], table, arg)
            json_args[arg] = name
            module_args[arg] = table[name] if name is not None else None
    if norm_eps is not None:
        json_args['norm_eps'] = norm_eps
        module_args['norm_layer'] = partial(NORM_LAYERS[json_args.get('norm_layer') or 'layernorm'], eps=norm_eps)
    if 'mlp_layer' in module_args and module_args['mlp_layer'] is None:
        module_args.pop('mlp_layer')
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
            f'img_size {img_size} is not divisible by patch_size {patch_size}; use a multiple of the patch size '
            f'(e.g. {tuple(s // p * p for s, p in zip(sizes, patches))}) or dynamic_img_pad=True.')


class DepthScale(nn.Module):
    """Depth scaling: s = MLP(t) + 1 gives per-channel gains on the attention update, the MLP update and the state.

    t is the absolute index (1..L) of the layer being produced. The last layer starts at zero so a fresh
    Raptor block is exactly the block it was initialised from.
    """

    def __init__(self, dim: int, hidden_dim: int = 16, device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.fc1 = nn.Linear(1, hidden_dim, **dd)
        self.act = nn.SiLU()
        self.fc2 = nn.Linear(hidden_dim, 3 * dim, **dd)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, t: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        t_in = torch.full((1,), float(t), device=self.fc1.weight.device, dtype=self.fc1.weight.dtype)
        gains = self.fc2(self.act(self.fc1(t_in))) + 1.
        gain_attn, gain_mlp, gain_out = gains.chunk(3, dim=-1)
        return gain_attn, gain_mlp, gain_out


def _target_linear(block: nn.Module, target: str) -> nn.Linear:
    """The linear layer `target` (one of RELAX_TARGETS) of a timm Block."""
    return {'qkv': block.attn.qkv, 'proj': block.attn.proj, 'fc1': block.mlp.fc1, 'fc2': block.mlp.fc2}[target]


def _check_relax_args(relax_rank: int, relax_targets: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(relax_rank, bool) or not isinstance(relax_rank, int) or relax_rank < 0:
        raise ValueError(f'relax_rank must be an int >= 0 (0 = pure Raptor), got {relax_rank!r}.')
    if isinstance(relax_targets, str):
        raise TypeError(f'relax_targets must be a sequence of layer names, e.g. {RELAX_TARGETS}, not a string.')
    targets = tuple(relax_targets)
    unknown = [name for name in targets if name not in RELAX_TARGETS]
    if unknown or not targets or len(set(targets)) != len(targets):
        raise ValueError(
            f'relax_targets must be a non-empty set of distinct names from {RELAX_TARGETS}, got {targets}.')
    return tuple(name for name in RELAX_TARGETS if name in targets)  # canonical order


def _relaxed_linear(
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: Optional[torch.Tensor],
        adapters: Dict[str, torch.Tensor],
        target: str,
) -> torch.Tensor:
    """x (W + B A)^T + b, computed as F.linear(x, W, b) + (x A^T) B^T when `target` is adapted."""
    out = F.linear(x, weight, bias)
    if target + '_a' in adapters:
        out = out + F.linear(F.linear(x, adapters[target + '_a']), adapters[target + '_b'])
    return out


class StepAdapters(nn.Module):
    """Low-rank adapters of one unrolled step: each targeted linear layer computes with W_shared + B A.

    Parameters `{target}_a` [rank, in_features] and `{target}_b` [out_features, rank] for each target in
    `targets`; the other targets hold None. Biases are not adapted. Fresh adapters are LoRA-initialised
    (B = 0, A kaiming-uniform): the step starts as the shared block and A, B still get gradients.
    """

    def __init__(self, block: nn.Module, rank: int, targets: Sequence[str], device=None, dtype=None) -> None:
        super().__init__()
        dd = {'device': device, 'dtype': dtype}
        self.rank = rank
        self.targets = tuple(targets)
        for target in RELAX_TARGETS:
            if target in self.targets:
                layer = _target_linear(block, target)
                self.register_parameter(f'{target}_a', nn.Parameter(torch.empty(rank, layer.in_features, **dd)))
                self.register_parameter(f'{target}_b', nn.Parameter(torch.empty(layer.out_features, rank, **dd)))
            else:
                self.register_parameter(f'{target}_a', None)
                self.register_parameter(f'{target}_b', None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for target in self.targets:
            a, b = getattr(self, f'{target}_a'), getattr(self, f'{target}_b')
            if a.device.type != 'meta':
                nn.init.kaiming_uniform_(a, a=math.sqrt(5))
                nn.init.zeros_(b)

    def forward(self) -> Dict[str, torch.Tensor]:
        """The adapter tensors by name ('qkv_a', 'qkv_b', ...), as RaptorBlock.forward takes them."""
        adapters: Dict[str, torch.Tensor] = {}
        if self.qkv_a is not None and self.qkv_b is not None:
            adapters['qkv_a'], adapters['qkv_b'] = self.qkv_a, self.qkv_b
        if self.proj_a is not None and self.proj_b is not None:
            adapters['proj_a'], adapters['proj_b'] = self.proj_a, self.proj_b
        if self.fc1_a is not None and self.fc1_b is not None:
            adapters['fc1_a'], adapters['fc1_b'] = self.fc1_a, self.fc1_b
        if self.fc2_a is not None and self.fc2_b is not None:
            adapters['fc2_a'], adapters['fc2_b'] = self.fc2_a, self.fc2_b
        return adapters


class RaptorBlock(Block):
    """timm's pre-norm ViT Block applied at a given depth t, with optional depth scaling and per-call drop path.

    Parameter names are those of timm's Block (plus `depth_scale`), so teacher block weights load directly.
    Given a step's low-rank `adapters` (relaxation), attention and MLP run a functional copy of timm's
    Attention / Mlp / GluMlp in which each adapted linear layer uses W + B A.
    """

    def __init__(self, *args: Any, t_scale: bool = True, **kwargs: Any) -> None:
        kwargs['drop_path'] = 0.  # stochastic depth is sampled per application by the model, see forward()
        super().__init__(*args, **kwargs)
        dim = self.norm1.normalized_shape[0]
        self.depth_scale = DepthScale(dim, device=kwargs.get('device'), dtype=kwargs.get('dtype')) if t_scale else None
        # MLP gating for the relaxed path: 0 = plain Mlp, 1 = GluMlp gating the second half, 2 = the first half
        self.mlp_gate = 0 if not isinstance(self.mlp, GluMlp) else (1 if self.mlp.gate_last else 2)

    def _relaxed_attn(
            self, x: torch.Tensor, adapters: Dict[str, torch.Tensor], attn_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """timm's Attention.forward (fused SDPA branch, whatever `fused_attn` says) with adapters on qkv and proj."""
        attn = self.attn
        B, N, C = x.shape
        qkv = _relaxed_linear(x, attn.qkv.weight, attn.qkv.bias, adapters, 'qkv')
        qkv = qkv.reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=attn.attn_drop.p if self.training else 0.)
        x = x.transpose(1, 2).reshape(B, N, attn.attn_dim)
        x = attn.norm(x)
        x = _relaxed_linear(x, attn.proj.weight, attn.proj.bias, adapters, 'proj')
        return attn.proj_drop(x)

    def _relaxed_mlp(self, x: torch.Tensor, adapters: Dict[str, torch.Tensor]) -> torch.Tensor:
        """timm's Mlp / GluMlp forward with the step's adapters on fc1 and fc2."""
        mlp = self.mlp
        x = _relaxed_linear(x, mlp.fc1.weight, mlp.fc1.bias, adapters, 'fc1')
        if self.mlp_gate == 0:
            x = mlp.act(x)
        else:
            x1, x2 = x.chunk(2, dim=-1)
            x = x1 * mlp.act(x2) if self.mlp_gate == 1 else mlp.act(x1) * x2
        x = mlp.drop1(x)
        x = mlp.norm(x)
        x = _relaxed_linear(x, mlp.fc2.weight, mlp.fc2.bias, adapters, 'fc2')
        return mlp.drop2(x)

    def forward(
            self,
            x: torch.Tensor,
            t: int = 1,
            drop_prob: float = 0.,
            attn_mask: Optional[torch.Tensor] = None,
            adapters: Optional[Dict[str, torch.Tensor]] = None,
    ) -> torch.Tensor:
        if adapters is None:
            attn_update = self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask))
        else:
            attn_update = self.ls1(self._relaxed_attn(self.norm1(x), adapters, attn_mask))
        if self.depth_scale is None:
            x = x + drop_path(attn_update, drop_prob, self.training)
            x = x + drop_path(self.ls2(self._mlp(self.norm2(x), adapters)), drop_prob, self.training)
            return x
        gain_attn, gain_mlp, gain_out = self.depth_scale(t)
        x = x + drop_path(gain_attn * attn_update, drop_prob, self.training)
        x = x + drop_path(gain_mlp * self.ls2(self._mlp(self.norm2(x), adapters)), drop_prob, self.training)
        return gain_out * x

    def _mlp(self, x: torch.Tensor, adapters: Optional[Dict[str, torch.Tensor]]) -> torch.Tensor:
        if adapters is None:
            return self.mlp(x)
        return self._relaxed_mlp(x, adapters)


class RaptorVisionTransformer(VisionTransformer):
    """ Raptor Vision Transformer: k unique blocks applied on `block_schedule`, sum(block_schedule) = L steps.

    Every argument of timm's VisionTransformer is accepted (except `depth` and `block_fn`, which the schedule and
    the block type define). `global_pool` adds `cls_avg`: the concat of the cls token and the mean patch token
    (DINOv2's linear-probe head, 2·D inputs).
    """
    __jit_unused_properties__ = ['step_block_indices', 'phase_boundaries']
    __jit_ignored_attributes__ = ['model_args', 'raptor_meta']

    def __init__(
            self,
            block_schedule: Sequence[int] = (7, 5),
            block_type: BlockType = 'teacher',
            t_scale: bool = True,
            global_pool: str = 'token',
            drop_path_rate: float = 0.,
            fc_norm: Optional[bool] = None,
            depth: Optional[int] = None,
            relax_rank: int = 0,
            relax_targets: Sequence[str] = RELAX_TARGETS,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            block_schedule: Repeat count of each unique block; its length is k, its sum the teacher depth L.
            block_type: 'teacher' (the teacher's block architecture: FLOPs equal the teacher's) or 'swiglu'
                (the paper's block: SwiGLU MLP with hidden 4·D, LayerScale 1e-5; ~1.3x a GELU block's FLOPs).
            t_scale: Depth scaling gates fed the absolute layer index (zero-initialised: identity at start).
            global_pool: '', 'token', 'avg' or 'cls_avg' (plus timm's other pools).
            drop_path_rate: Stochastic depth, ramped linearly over the L unrolled applications.
            fc_norm: As timm; defaults to False for 'cls_avg' (the final norm is applied before pooling).
            depth: Optional teacher depth; when given, block_schedule must sum to it.
            relax_rank: Rank r of per-step low-rank adapters (relaxation); 0 (default) is the pure Raptor, with
                no adapter module at all. With r > 0, `relax.{l}.{target}_a` [r, in] and `relax.{l}.{target}_b`
                [out, r] make step l (0-based) compute with W_j + B_l A_l on each targeted layer of its block j.
            relax_targets: Which linear layers of the block are adapted, from ('qkv', 'proj', 'fc1', 'fc2').
            **kwargs: Remaining timm VisionTransformer arguments (img_size, patch_size, embed_dim, num_heads, ...).
        """
        if 'block_fn' in kwargs:
            raise ValueError('RaptorVisionTransformer builds its own blocks; block_fn is not accepted.')
        schedule = validate_block_schedule(block_schedule, depth)
        relax_targets = _check_relax_args(relax_rank, relax_targets)
        kwargs, json_args = _split_layer_args(kwargs)
        if block_type not in ('teacher', 'swiglu'):
            raise ValueError(f"block_type must be 'teacher' or 'swiglu', got {block_type!r}.")
        if block_type == 'swiglu':
            # the paper's block: SwiGLU MLP with one packed input projection D -> 2·4·D, LayerScale init 1e-5
            kwargs.update(mlp_layer=SwiGLUPacked, mlp_ratio=8., act_layer=nn.SiLU, init_values=1e-5)
        valid_pools = ('', 'token', 'avg', 'avgmax', 'max', 'cls_avg')
        if global_pool not in valid_pools:
            raise ValueError(f'global_pool must be one of {valid_pools}, got {global_pool!r}.')
        if global_pool == 'cls_avg':
            if not kwargs.get('class_token', True):
                raise ValueError("global_pool='cls_avg' needs a class token (class_token=True).")
            fc_norm = False if fc_norm is None else fc_norm
        _check_img_size(kwargs.get('img_size', 224), kwargs.get('patch_size', 16), kwargs.get('dynamic_img_pad', False))
        self.block_schedule: Tuple[int, ...] = schedule
        self.depth = sum(schedule)  # L, the number of block applications
        # JSON-able constructor arguments: RaptorVisionTransformer(**model_args) rebuilds this architecture
        self.model_args: Dict[str, Any] = dict(
            json_args, block_schedule=list(schedule), block_type=block_type, t_scale=t_scale,
            global_pool=global_pool, drop_path_rate=drop_path_rate, fc_norm=fc_norm)
        if relax_rank:  # pure Raptors keep their model_args (and config.json) unchanged
            self.model_args.update(relax_rank=relax_rank, relax_targets=list(relax_targets))
        # provenance written to config.json and model cards: teacher id, schedule source, phases, ...
        self.raptor_meta: Dict[str, Any] = {}
        self.block_type = block_type
        self.t_scale = t_scale
        super().__init__(
            depth=len(schedule),
            global_pool='token' if global_pool == 'cls_avg' else global_pool,
            fc_norm=fc_norm,
            block_fn=partial(RaptorBlock, t_scale=t_scale),
            **kwargs,
        )
        self.blocks = nn.ModuleList(self.blocks)  # k unique blocks, each stored once, applied by the schedule
        self.drop_path_rate = drop_path_rate
        self.step_drop_path: List[float] = calculate_drop_path_rates(drop_path_rate, self.depth)
        reduction = self.feature_info[0]['reduction'] if self.feature_info else 1
        self.feature_info = [
            dict(module=f'blocks.{j}', num_chs=self.embed_dim, reduction=reduction) for j in self.step_block_indices]
        if global_pool == 'cls_avg':
            self.global_pool = 'cls_avg'
            self.head_hidden_size = 2 * self.embed_dim
            self.reset_classifier(self.num_classes)
        self.relax_rank = relax_rank
        self.relax_targets = relax_targets
        # relaxation: one StepAdapters per unrolled step (index = 0-based step), kept whole by pruning
        self.relax = None
        if relax_rank:
            if getattr(self.blocks[0].attn, 'gate', None) is not None:
                raise ValueError('relax_rank > 0 does not support gated attention blocks.')
            dd = {'device': self.patch_embed.proj.weight.device, 'dtype': self.patch_embed.proj.weight.dtype}
            self.relax = nn.ModuleList([
                StepAdapters(self.blocks[j], relax_rank, relax_targets, **dd) for j in self.step_block_indices])

    @property
    def step_block_indices(self) -> List[int]:
        """Index of the unique block applied at each of the L steps."""
        return [j for j, n in enumerate(self.block_schedule) for _ in range(n)]

    @property
    def phase_boundaries(self) -> Tuple[int, ...]:
        """Cumulative phase ends (0, b_1, ..., L): phase j produces layers b_{j-1}+1 .. b_j."""
        ends = [0]
        for n in self.block_schedule:
            ends.append(ends[-1] + n)
        return tuple(ends)

    @classmethod
    def from_teacher(
            cls,
            teacher: Any,
            k: Optional[int] = None,
            block_schedule: Optional[Union[Sequence[int], str]] = None,
            images: Optional[Any] = None,
            block_type: BlockType = 'teacher',
            init: Optional[InitMode] = None,
            phase_kwargs: Optional[Dict[str, Any]] = None,
            relax_rank: int = 0,
            relax_init: RelaxInit = 'svd',
            relax_targets: Sequence[str] = RELAX_TARGETS,
            **kwargs: Any,
    ) -> 'RaptorVisionTransformer':
        """A Raptor initialised from a teacher: embedding, final norm and head copied, block j from phase j.

        Args:
            teacher: a `raptor_zoo.teachers.Teacher`, or anything `load_teacher` accepts (timm name, Hub repo id,
                folder, 'digits-vit', a timm or transformers ViT module).
            k: number of unique blocks. With `images`, phases are discovered on them (`phases.discover`);
                without, the depth is split evenly (largest remainder) with a warning.
            block_schedule: explicit repeat counts (win over k), or "auto" for phase discovery on `images`.
            images: normalised image batches (a tensor or an iterable of tensors) for phase discovery.
            block_type: 'teacher' (the teacher's block; exact FLOP parity) or 'swiglu' (the paper's block).
            init: how block j is initialised from the teacher layers of phase j: 'middle' (lower median layer;
                default for the teacher block type), 'first', 'mean' (parameter-wise mean), or 'random'
                (default and only choice for 'swiglu').
            phase_kwargs: extra arguments for `phases.discover` (metric, algorithm, batch_size, ...).
            relax_rank: rank r of per-step low-rank adapters (0 = pure Raptor).
            relax_init: 'svd': adapters of step l from the rank-r truncated SVD of (teacher layer l's weight - its
                shared block's weight), B = U_r sqrt(S_r), A = sqrt(S_r) V_r^T (r must not exceed min(out, in)
                of any target); 'zeros': LoRA init (B = 0, A random). Biases are not adapted.
            relax_targets: linear layers adapted, from ('qkv', 'proj', 'fc1', 'fc2').
            **kwargs: model overrides (num_classes, global_pool, drop_path_rate, t_scale, ...).
        """
        from ..teachers import Teacher, load_teacher  # teachers import timm/transformers adapters lazily

        teacher = teacher if isinstance(teacher, Teacher) else load_teacher(teacher)
        init = init or ('middle' if block_type == 'teacher' else 'random')
        if init not in ('middle', 'first', 'mean', 'random'):
            raise ValueError(f"init must be one of 'middle', 'first', 'mean', 'random', got {init!r}.")
        if block_type == 'swiglu' and init != 'random':
            raise ValueError("block_type='swiglu' blocks have no teacher counterpart; use init='random'.")
        relax_targets = _check_relax_args(relax_rank, relax_targets)
        if relax_init not in ('svd', 'zeros'):
            raise ValueError(f"relax_init must be 'svd' or 'zeros', got {relax_init!r}.")
        if relax_rank and relax_init == 'svd':
            if block_type != 'teacher':
                raise ValueError("relax_init='svd' needs block_type='teacher' (weights shaped like the teacher's); "
                                 "use relax_init='zeros'.")
            for target in relax_targets:
                full_rank = min(_target_linear(teacher.blocks[0], target).weight.shape)
                if relax_rank > full_rank:
                    raise ValueError(
                        f"relax_rank={relax_rank} exceeds the full rank {full_rank} of the teacher's {target} "
                        f"layer; use relax_rank <= {full_rank} or relax_init='zeros'.")
        schedule, meta = _resolve_schedule(teacher, k, block_schedule, images, phase_kwargs or {})

        args = vit_args_from_model(teacher.model)
        if getattr(teacher.model, 'global_pool', None) == 'cls_avg':
            args['global_pool'] = 'cls_avg'
        args.update(kwargs)
        if relax_rank:
            args.update(relax_rank=relax_rank, relax_targets=relax_targets)
        model = cls(block_schedule=schedule, depth=teacher.depth, block_type=block_type, **args)
        model._copy_teacher_stem_and_head(teacher.model)
        if init != 'random':
            for j, (start, stop) in enumerate(zip(model.phase_boundaries[:-1], model.phase_boundaries[1:])):
                model._init_block_from_layers(j, [teacher.blocks[i] for i in range(start, stop)], init)
        if relax_rank and relax_init == 'svd':
            model.init_adapters_from_teacher(teacher.blocks)
        model.pretrained_cfg = dict(
            getattr(model, 'pretrained_cfg', {}) or {}, **{
                key: teacher.data_config[key] for key in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct')
                if key in teacher.data_config},
            num_classes=model.num_classes)
        model.raptor_meta = dict(
            meta, teacher=teacher.name, teacher_revision=teacher.revision, teacher_source=teacher.source,
            teacher_depth=teacher.depth, init=init, block_schedule=list(schedule),
            phase_boundaries=list(model.phase_boundaries))
        if relax_rank:
            model.raptor_meta.update(relax_rank=relax_rank, relax_init=relax_init, relax_targets=list(relax_targets))
        return model

    @torch.no_grad()
    def init_adapters_from_teacher(self, teacher_blocks: Sequence[nn.Module]) -> None:
        """Step l's adapters: rank-r truncated SVD of (teacher layer l's weight - its shared block's weight)."""
        for step, (j, adapter) in enumerate(zip(self.step_block_indices, self.relax)):
            for target in self.relax_targets:
                shared = _target_linear(self.blocks[j], target).weight
                delta = _target_linear(teacher_blocks[step], target).weight.double() - shared.double()
                u, s, vh = torch.linalg.svd(delta, full_matrices=False)
                root = s[:self.relax_rank].sqrt()
                getattr(adapter, f'{target}_b').copy_(u[:, :self.relax_rank] * root)
                getattr(adapter, f'{target}_a').copy_(root[:, None] * vh[:self.relax_rank])

    def _copy_teacher_stem_and_head(self, teacher_model: nn.Module) -> None:
        """Copy every non-block tensor (embedding, registers, norms, head) from the teacher, strictly."""
        teacher_state = {k: v for k, v in teacher_model.state_dict().items() if not k.startswith('blocks.')}
        own_state = {k for k in self.state_dict() if not k.startswith(('blocks.', 'relax.'))}
        keep = {k: v for k, v in teacher_state.items() if k in own_state}
        head_keys = {k for k in own_state if k.startswith('head.')}
        missing = own_state - set(keep) - head_keys
        if missing:
            raise RuntimeError(f'teacher lacks tensors the Raptor needs: {sorted(missing)}')
        mismatched_head = [k for k in head_keys if k in keep and keep[k].shape != self.state_dict()[k].shape]
        for k in mismatched_head:  # a num_classes override keeps the Raptor's fresh head
            keep.pop(k)
        self.load_state_dict(keep, strict=False)

    @torch.no_grad()
    def _init_block_from_layers(self, index: int, layers: List[nn.Module], init: InitMode) -> None:
        """Initialise unique block `index` from the teacher layers of its phase."""
        if init == 'first':
            source = layers[0].state_dict()
        elif init == 'middle':
            source = layers[(len(layers) - 1) // 2].state_dict()
        else:
            states = [layer.state_dict() for layer in layers]
            source = {key: torch.stack([state[key].float() for state in states]).mean(0).to(states[0][key].dtype)
                      for key in states[0]}
        missing, unexpected = self.blocks[index].load_state_dict(source, strict=False)
        if unexpected or any(not key.startswith('depth_scale.') for key in missing):
            raise RuntimeError(
                f'teacher block layout does not match the Raptor block: missing {missing}, unexpected {unexpected}')

    def init_weights(self, mode: str = '', needs_reset: bool = True) -> None:
        super().init_weights(mode, needs_reset=needs_reset)
        for block in self.blocks:
            if block.depth_scale is not None:
                block.depth_scale.reset_parameters()
        for adapter in getattr(self, 'relax', None) or []:
            adapter.reset_parameters()

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        if global_pool == 'cls_avg' or (global_pool is None and self.global_pool == 'cls_avg'):
            if not self.has_class_token:
                raise ValueError("global_pool='cls_avg' needs a class token.")
            self.global_pool = 'cls_avg'
            self.head_hidden_size = 2 * self.embed_dim
            self.num_classes = num_classes
            dd = {'device': self.patch_embed.proj.weight.device, 'dtype': self.patch_embed.proj.weight.dtype}
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

    def _check_num_steps(self, num_steps: Optional[int]) -> int:
        if not torch.jit.is_scripting():
            if isinstance(num_steps, torch.fx.Proxy):
                # symbolic tracing without concrete_args={'num_steps': m} traces the full L-step graph
                return self.depth
        if num_steps is None:
            return self.depth
        if not 1 <= num_steps <= self.depth:
            raise ValueError(f'num_steps={num_steps} is out of range; use 1 <= num_steps <= {self.depth}.')
        return num_steps

    def forward_steps(
            self,
            x: torch.Tensor,
            start: int = 0,
            stop: Optional[int] = None,
            attn_mask: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Run unrolled steps start..stop-1 (0-based; step s produces layer t = s + 1) on token state x_start."""
        stop = self.depth if stop is None else stop
        step_adapters = self._step_adapters()
        step = 0
        for j, block in enumerate(self.blocks):
            for _ in range(self.block_schedule[j]):
                if start <= step < stop:
                    drop_prob = self.step_drop_path[step]
                    adapters: Optional[Dict[str, torch.Tensor]] = None
                    if len(step_adapters) > 0:
                        adapters = step_adapters[step]
                    if self.grad_checkpointing and not torch.jit.is_scripting():
                        x = torch.utils.checkpoint.checkpoint(
                            block, x, step + 1, drop_prob, attn_mask, adapters, use_reentrant=False)
                    else:
                        x = block(x, step + 1, drop_prob, attn_mask, adapters)
                step += 1
        return x

    def step_adapters(self, step: int) -> Optional[Dict[str, torch.Tensor]]:
        """Adapter tensors of unrolled step `step` (0-based) for `blocks[step_block_indices[step]](..., adapters)`.

        None for a pure Raptor. Code that applies blocks itself (e.g. teacher forcing) must pass them on.
        """
        return None if self.relax is None else self.relax[step]()

    def _step_adapters(self) -> List[Dict[str, torch.Tensor]]:
        """Adapter tensors of each unrolled step (relaxation); empty for a pure Raptor."""
        step_adapters: List[Dict[str, torch.Tensor]] = []
        if self.relax is not None:
            for adapter in self.relax:
                step_adapters.append(adapter())
        return step_adapters

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
            output_dict: bool = False,
            attn_mask: Optional[torch.Tensor] = None,
            is_causal: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]], Dict[str, Any]]:
        """ Forward features that returns intermediates, indexed by the L unrolled block applications.

        Args and returns as timm's VisionTransformer.forward_intermediates.
        """
        if output_fmt not in ('NCHW', 'NLC'):
            raise ValueError(f"output_fmt must be 'NCHW' or 'NLC', got {output_fmt!r}.")
        if is_causal:
            raise ValueError('is_causal attention is not supported by Raptor blocks.')
        reshape = output_fmt == 'NCHW'
        intermediates = []
        take_indices, max_index = feature_take_indices(self.depth, indices)

        B, _, height, width = x.shape
        x = self._embed(x)
        done = 0
        for index in sorted(take_indices):
            x = self.forward_steps(x, done, index + 1, attn_mask)
            done = index + 1
            intermediates.append(self.norm(x) if norm else x)
        if not stop_early:
            x = self.forward_steps(x, done, self.depth, attn_mask)

        if self.num_prefix_tokens:
            prefix_tokens = [y[:, 0:self.num_prefix_tokens] for y in intermediates]
            intermediates = [y[:, self.num_prefix_tokens:] for y in intermediates]
        else:
            prefix_tokens = None

        if reshape:
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            intermediates = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in intermediates]

        if output_dict:
            result_dict: Dict[str, Any] = {'image_intermediates': intermediates}
            if prefix_tokens is not None and return_prefix_tokens:
                result_dict['image_intermediates_prefix'] = prefix_tokens
            if not intermediates_only:
                result_dict['image_features'] = self.norm(x)
            return result_dict

        if not torch.jit.is_scripting() and return_prefix_tokens and prefix_tokens is not None:
            intermediates = list(zip(intermediates, prefix_tokens))
        if intermediates_only:
            return intermediates
        return self.norm(x), intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Shorten the schedule to the last step needed for `indices`; the unique blocks are all kept."""
        take_indices, max_index = feature_take_indices(self.depth, indices)
        remaining = max_index + 1
        pruned = []
        for repeats in self.block_schedule:
            pruned.append(min(repeats, remaining))
            remaining -= pruned[-1]
        self.block_schedule = tuple(pruned)
        self.depth = max_index + 1
        self.step_drop_path = self.step_drop_path[:max_index + 1]
        self.feature_info = self.feature_info[:max_index + 1]
        if prune_norm:
            self.norm = nn.Identity()
        if prune_head:
            self.fc_norm = nn.Identity()
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            num_steps: Optional[int] = None,
    ) -> torch.Tensor:
        """Embed, run the first `num_steps` (default all L) block applications, final norm."""
        stop = self._check_num_steps(num_steps)
        x = self._embed(x)
        x = self.forward_steps(x, 0, stop, attn_mask)
        return self.norm(x)

    def pool(self, x: torch.Tensor, pool_type: Optional[str] = None) -> torch.Tensor:
        pool_type = self.global_pool if pool_type is None else pool_type
        if pool_type == 'cls_avg':
            return cls_avg_pool(x, self.num_prefix_tokens)
        return global_pool_nlc(
            x, pool_type=pool_type, num_prefix_tokens=self.num_prefix_tokens,
            reduce_include_prefix=self.pool_include_prefix)

    def forward(
            self,
            x: torch.Tensor,
            attn_mask: Optional[torch.Tensor] = None,
            num_steps: Optional[int] = None,
    ) -> torch.Tensor:
        """Classify; `num_steps` < L stops early (anytime inference), then final norm and head."""
        x = self.forward_features(x, attn_mask=attn_mask, num_steps=num_steps)
        return self.forward_head(x)


def _resolve_schedule(
        teacher: Any,
        k: Optional[int],
        block_schedule: Optional[Union[Sequence[int], str]],
        images: Optional[Any],
        phase_kwargs: Dict[str, Any],
) -> Tuple[Tuple[int, ...], Dict[str, Any]]:
    """Schedule and its provenance for from_teacher: explicit > discovered on images > even split."""
    depth = teacher.depth
    if block_schedule is not None and not isinstance(block_schedule, str):
        schedule = validate_block_schedule(block_schedule, depth)
        if k is not None and k != len(schedule):
            raise ValueError(f'k={k} disagrees with block_schedule {schedule} of length {len(schedule)}.')
        return schedule, {'schedule_source': 'given'}
    if isinstance(block_schedule, str) and block_schedule != 'auto':
        raise ValueError(f"block_schedule must be a sequence of repeat counts or 'auto', got {block_schedule!r}.")
    k = 2 if k is None and block_schedule == 'auto' else k
    if k is None:
        raise ValueError("Pass k, block_schedule, or block_schedule='auto' with images.")
    _check_k(depth, k)
    if images is None:
        if block_schedule == 'auto':
            raise ValueError("block_schedule='auto' needs images for phase discovery (pass images=...).")
        schedule = even_block_schedule(depth, k)
        warnings.warn(
            f'No images given for phase discovery: splitting the {depth} layers evenly as {schedule}. '
            'Pass images=... (or an explicit block_schedule) for measured phases.', stacklevel=3)
        return schedule, {'schedule_source': 'even'}
    from ..phases import discover
    result = discover(teacher, images, k=k, **phase_kwargs)
    meta = {
        'schedule_source': 'measured', 'phase_metric': result.metric, 'phase_algorithm': result.algorithm,
        'phase_num_images': result.num_images, 'phases': result.to_dict(),
    }
    return tuple(result.block_schedule), meta


def _norm_eps(norm: nn.Module) -> Optional[float]:
    return getattr(norm, 'eps', None)


def vit_args_from_model(model: nn.Module) -> Dict[str, Any]:
    """Constructor arguments of a RaptorVisionTransformer that reproduces a timm VisionTransformer's architecture.

    Raises TypeError for models that are not timm VisionTransformers with plain pre-norm `Block`s.
    """
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f'Expected a timm VisionTransformer (vit_*, deit*, DINOv2 ...), got {type(model).__name__}. '
            'Raptors are built from ViTs with plain pre-norm timm Blocks.')
    blocks = list(model.blocks)
    block = blocks[0]
    if type(block) not in (Block, RaptorBlock):
        raise TypeError(
            f'{type(model).__name__} uses {type(block).__name__} blocks; Raptor supports timm `Block` '
            '(pre-norm attention + MLP) only.')
    if model.attn_pool is not None:
        raise TypeError('ViTs with attention pooling heads (global_pool map/prr) are not supported yet.')
    dim = model.embed_dim
    mlp = block.mlp
    if not isinstance(mlp, (Mlp, SwiGLUPacked)) and type(mlp).__name__ not in ('GluMlp',):
        raise TypeError(f'Unsupported MLP type {type(mlp).__name__} in {type(model).__name__}.')
    hidden = mlp.fc1.out_features
    norm_layer = type(block.norm1)
    eps = _norm_eps(block.norm1)
    patch_size = model.patch_embed.patch_size
    img_size = model.patch_embed.img_size
    args: Dict[str, Any] = dict(
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
        pos_embed='learn' if model.pos_embed is not None else 'none',
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
        with torch.device('meta'):
            return timm.create_model(teacher, pretrained=False, **kwargs)
    except RuntimeError as e:
        if 'Unknown model' in str(e):
            raise ValueError(f'Unknown timm teacher architecture {teacher!r}; see timm.list_models("vit_*").') from e
        raise


def create_raptor_from_vit(
        teacher: Union[str, nn.Module],
        k: Optional[int] = None,
        block_schedule: Optional[Sequence[int]] = None,
        **kwargs: Any,
) -> RaptorVisionTransformer:
    """Build a (randomly initialised) Raptor with the architecture of any timm VisionTransformer.

    `teacher` is a timm architecture name or a VisionTransformer instance. Pass an explicit `block_schedule`,
    or `k`: k in (2, 3, 4) uses the paper's phase boundaries scaled to the teacher depth, other k an even split.
    Teacher weights are copied by `RaptorVisionTransformer.from_teacher`, not here.
    """
    teacher_model = _meta_teacher(teacher, img_size=kwargs.get('img_size', 224)) if isinstance(teacher, str) else teacher
    args = vit_args_from_model(teacher_model)
    depth = len(teacher_model.blocks)
    if block_schedule is None:
        if k is None:
            raise ValueError('Pass k (number of unique blocks) or an explicit block_schedule.')
        _check_k(depth, k)
        block_schedule = scaled_paper_schedule(depth, k) if k in PAPER_PHASE_BOUNDARIES else even_block_schedule(depth, k)
    elif k is not None and len(block_schedule) != k:
        raise ValueError(f'k={k} disagrees with block_schedule {tuple(block_schedule)} of length {len(block_schedule)}.')
    args.update(kwargs)
    model = RaptorVisionTransformer(block_schedule=block_schedule, depth=depth, **args)
    hidden = model.blocks[0].mlp.fc1.out_features
    expected_hidden = teacher_model.blocks[0].mlp.fc1.out_features
    if args.get('block_type', 'teacher') == 'teacher' and hidden != expected_hidden:
        raise RuntimeError(f'MLP width {hidden} differs from the teacher\'s {expected_hidden}.')
    return model


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: RaptorVisionTransformer) -> Dict[str, torch.Tensor]:
    """Unwrap nested checkpoints and resample the position embedding to the model's grid."""
    for key in ('model', 'state_dict'):
        if key in state_dict and isinstance(state_dict[key], dict):
            state_dict = state_dict[key]
    out = {}
    for name, value in state_dict.items():
        if name == 'pos_embed' and model.pos_embed is not None and value.shape != model.pos_embed.shape:
            num_prefix_tokens = 0 if model.no_embed_class else model.num_prefix_tokens
            value = resample_abs_pos_embed(
                value, new_size=model.patch_embed.grid_size, num_prefix_tokens=num_prefix_tokens, verbose=True)
        out[name] = value
    return out


def _cfg(url: str = '', **kwargs: Any) -> Dict[str, Any]:
    return {
        'url': url,
        'num_classes': 0, 'input_size': (3, 224, 224), 'pool_size': None,
        'crop_pct': 0.875, 'interpolation': 'bicubic', 'fixed_input_size': True,
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'first_conv': 'patch_embed.proj', 'classifier': 'head',
        'license': 'apache-2.0',
        'paper_ids': 'arXiv:2512.19941', 'paper_name': 'Block-Recurrent Dynamics in Vision Transformers',
        **kwargs,
    }


# Registered Raptor architectures: teacher (timm name), its depth and the model args the DINOv2 teachers use in timm.
_DINOV2_TEACHERS: Dict[str, Dict[str, Any]] = {
    'vit_small_patch14_dinov2': dict(patch_size=14, embed_dim=384, num_heads=6, init_values=1e-5, depth=12),
    'vit_base_patch14_dinov2': dict(patch_size=14, embed_dim=768, num_heads=12, init_values=1e-5, depth=12),
    'vit_large_patch14_dinov2': dict(patch_size=14, embed_dim=1024, num_heads=16, init_values=1e-5, depth=24),
    'vit_giant_patch14_dinov2': dict(
        patch_size=14, embed_dim=1536, num_heads=24, init_values=1e-5, depth=40,
        mlp_ratio=2.66667 * 2, mlp_layer=SwiGLUPacked, act_layer=nn.SiLU),
}
for _name, _args in list(_DINOV2_TEACHERS.items()):
    _DINOV2_TEACHERS[_name.replace('_patch14_', '_patch14_reg4_')] = dict(_args, reg_tokens=4, no_embed_class=True)

# arch name -> dict(teacher, k, block_schedule, schedule_source, model_args)
RAPTOR_ARCHS: Dict[str, Dict[str, Any]] = {}
for _teacher, _args in _DINOV2_TEACHERS.items():
    for _k in (2, 3, 4):
        _depth = _args['depth']
        RAPTOR_ARCHS[f'raptor_{_teacher}_k{_k}'] = dict(
            teacher=_teacher,
            k=_k,
            block_schedule=scaled_paper_schedule(_depth, _k),
            # phases were measured (by the paper) only on DINOv2 ViT-B/14 with registers
            schedule_source='paper' if _teacher == 'vit_base_patch14_reg4_dinov2' else 'scaled',
            model_args={key: value for key, value in _args.items() if key != 'depth'},
        )

# relaxed k = 2 variants (DESIGN.md §4): the same arch with rank-4 per-step adapters on all four linear layers
RELAXED_RAPTOR_ARCHS: Dict[str, Dict[str, Any]] = {
    f'{arch}_r4': dict(spec, base_arch=arch, model_args=dict(spec['model_args'], relax_rank=4))
    for arch, spec in RAPTOR_ARCHS.items() if spec['k'] == 2
}
REGISTERED_RAPTOR_ARCHS: Dict[str, Dict[str, Any]] = {**RAPTOR_ARCHS, **RELAXED_RAPTOR_ARCHS}

default_cfgs = generate_default_cfgs({
    **{
        arch: _cfg(notes=(
            f"teacher: {spec['teacher']}",
            f"block_schedule: {spec['block_schedule']}",
            f"schedule_source: {spec['schedule_source']}",
        ) + ((f"relax_rank: {spec['model_args']['relax_rank']}",) if 'relax_rank' in spec['model_args'] else ()))
        for arch, spec in REGISTERED_RAPTOR_ARCHS.items()
    },
    'raptor_vit': _cfg(),  # generic: every architecture argument comes from model_args
})


def _create_raptor_vit(variant: str, pretrained: bool = False, **kwargs: Any) -> RaptorVisionTransformer:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        RaptorVisionTransformer,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


@register_model
def raptor_vit(pretrained: bool = False, **kwargs: Any) -> RaptorVisionTransformer:
    """Raptor of any timm ViT: every architecture argument comes from kwargs (config.json model_args)."""
    return _create_raptor_vit('raptor_vit', pretrained=pretrained, **kwargs)


def _make_entrypoint(arch: str, spec: Dict[str, Any]) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> RaptorVisionTransformer:
        model_args = dict(spec['model_args'], block_schedule=spec['block_schedule'])
        return _create_raptor_vit(arch, pretrained=pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__module__ = __name__
    relax_rank = spec['model_args'].get('relax_rank', 0)
    entrypoint.__doc__ = (
        f"Raptor of {spec['teacher']}, k={spec['k']} blocks on schedule {spec['block_schedule']} "
        f"({spec['schedule_source']} phases)" + (f", rank-{relax_rank} per-step adapters." if relax_rank else "."))
    globals()[arch] = register_model(entrypoint)


for _arch, _spec in REGISTERED_RAPTOR_ARCHS.items():
    _make_entrypoint(_arch, _spec)
