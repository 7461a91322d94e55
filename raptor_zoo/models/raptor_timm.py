""" Raptors of every supported timm ViT family, and `from_teacher` for all of them

One Raptor class per timm family (`RaptorEva`, `RaptorBeit`, `RaptorCait`, ...): the family's own model class with
the Raptor surface of `RaptorMixin`; its `blocks` is a RecurrentBlocks. `RaptorVisionTransformer` (raptor_vit.py) is
the VisionTransformer instance of the same design.

A Raptor of a non-ViT family is described by its teacher architecture: config.json's model_args hold
`teacher_arch` (a timm name), `teacher_args`, `block_schedule` and `unique_layers` (the teacher layer each shared
block was built from, so per-layer settings such as SAM's global-attention layers carry over), and
`timm.create_model('raptor_timm', **model_args)` rebuilds it. Registered archs for the frontier teachers
(`raptor_<teacher>_k{2,3,4}`: DINOv3, EVA-02, Perception Encoder, SigLIP) use the paper's phases scaled to depth.
"""
import copy
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type, Union

import timm
import torch
import torch.nn as nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.beit import Beit
from timm.models.cait import Cait
from timm.models.deit import VisionTransformerDistilled
from timm.models.eva import Eva
from timm.models.naflexvit import NaFlexVit
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_relpos import VisionTransformerRelPos
from timm.models.vision_transformer_sam import VisionTransformerSAM
from timm.models.xcit import Xcit

from .families import family_of, relax_layers
from .raptor_base import (
    BlockType, InitMode, RaptorMixin, RelaxInit, check_k, check_relax_args, even_block_schedule, make_recurrent,
    validate_block_schedule)
from .raptor_vit import (
    PAPER_PHASE_BOUNDARIES, RaptorVisionTransformer, _cfg, scaled_paper_schedule, vit_args_from_model)
from .recurrent import RELAX_TARGETS

__all__ = [
    'RaptorEva', 'RaptorBeit', 'RaptorVisionTransformerRelPos', 'RaptorVisionTransformerSAM', 'RaptorNaFlexVit',
    'RaptorXcit', 'RaptorCait', 'RaptorVisionTransformerDistilled', 'raptor_class', 'create_raptor',
    'raptor_from_teacher', 'raptor_from_model_args', 'middle_layers', 'RAPTOR_TIMM_ARCHS', 'FRONTIER_TEACHERS',
]


class RaptorEva(RaptorMixin, Eva):
    """Raptor of timm's Eva: EVA-02, EVA-CLIP, DINOv3 and Perception Encoder teachers (RoPE passed per step)."""


class RaptorBeit(RaptorMixin, Beit):
    """Raptor of timm's Beit (relative-position bias per block or shared)."""


class RaptorVisionTransformerRelPos(RaptorMixin, VisionTransformerRelPos):
    """Raptor of timm's ViT with relative-position attention."""


class RaptorVisionTransformerSAM(RaptorMixin, VisionTransformerSAM):
    """Raptor of timm's SAM image encoder (windowed / global attention kept per shared block)."""


class RaptorNaFlexVit(RaptorMixin, NaFlexVit):
    """Raptor of timm's NaFlexVit (SigLIP NaFlex)."""


class RaptorXcit(RaptorMixin, Xcit):
    """Raptor of timm's XCiT: the XCA stack is recurrent, the class-attention blocks stay with the head."""


class RaptorCait(RaptorMixin, Cait):
    """Raptor of timm's CaiT: the self-attention stack is recurrent, the class-attention blocks stay with the head."""


class RaptorVisionTransformerDistilled(RaptorMixin, VisionTransformerDistilled):
    """Raptor of timm's distilled DeiT (class and distillation tokens)."""


_RAPTOR_CLASSES: Dict[type, type] = {
    VisionTransformer: RaptorVisionTransformer,
    VisionTransformerDistilled: RaptorVisionTransformerDistilled,
    Eva: RaptorEva,
    Beit: RaptorBeit,
    VisionTransformerRelPos: RaptorVisionTransformerRelPos,
    VisionTransformerSAM: RaptorVisionTransformerSAM,
    NaFlexVit: RaptorNaFlexVit,
    Xcit: RaptorXcit,
    Cait: RaptorCait,
}


def raptor_class(model_cls: Type[nn.Module]) -> Type[RaptorMixin]:
    """The Raptor class of a timm model class (its family's; a subclass gets a Raptor subclass of its own)."""
    if issubclass(model_cls, RaptorMixin):
        return model_cls
    if model_cls in _RAPTOR_CLASSES:
        return _RAPTOR_CLASSES[model_cls]
    for base in model_cls.__mro__[1:]:
        if base in _RAPTOR_CLASSES:
            name = f'Raptor{model_cls.__name__}'
            cls = type(name, (RaptorMixin, model_cls), {'__module__': __name__, '__doc__': f'Raptor of {name[6:]}.'})
            globals()[name] = _RAPTOR_CLASSES[model_cls] = cls
            return cls
    raise TypeError(f'{model_cls.__name__} is not a model class of a supported timm ViT family.')


def middle_layers(block_schedule: Sequence[int], init: str = 'middle') -> List[int]:
    """The teacher layer (0-based) each shared block is built from: the phase's lower median ('middle') or first."""
    layers, start = [], 0
    for repeats in block_schedule:
        layers.append(start + ((repeats - 1) // 2 if init == 'middle' else 0))
        start += repeats
    return layers


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    return value


def _raptorize(
        model: nn.Module,
        block_schedule: Tuple[int, ...],
        unique_layers: Sequence[int],
        t_scale: bool,
        drop_path_rate: float,
        relax_rank: int,
        relax_targets: Sequence[str],
        model_args: Optional[Dict[str, Any]],
) -> RaptorMixin:
    """Turn a timm model of depth L into its family's Raptor in place: layer unique_layers[j] becomes block j."""
    if family_of(model) is None:
        raise TypeError(f'{type(model).__name__} is not a supported timm ViT family (see docs/teachers.md).')
    depth = len(model.blocks)
    schedule = validate_block_schedule(block_schedule, depth)
    if len(unique_layers) != len(schedule) or not all(0 <= i < depth for i in unique_layers):
        raise ValueError(f'unique_layers {list(unique_layers)} must name one teacher layer (0..{depth - 1}) per '
                         f'block of block_schedule {schedule}.')
    blocks = [model.blocks[i] for i in unique_layers]
    model.blocks = nn.ModuleList()
    model.__class__ = raptor_class(type(model))
    make_recurrent(model, blocks, schedule, t_scale=t_scale, drop_path_rate=drop_path_rate,
                   relax_rank=relax_rank, relax_targets=relax_targets)
    model.model_args = model_args
    model.raptor_meta = {}
    model.block_type = 'teacher'
    return model


def create_raptor(
        teacher_arch: str,
        block_schedule: Sequence[int],
        teacher_args: Optional[Dict[str, Any]] = None,
        unique_layers: Optional[Sequence[int]] = None,
        t_scale: bool = True,
        drop_path_rate: float = 0.,
        relax_rank: int = 0,
        relax_targets: Sequence[str] = RELAX_TARGETS,
        **teacher_kwargs: Any,
) -> RaptorMixin:
    """A randomly initialised Raptor of the timm architecture `teacher_arch` (any supported family).

    `teacher_args` (and any other keyword, e.g. num_classes / img_size from timm's builder) go to
    `timm.create_model(teacher_arch, ...)`; block j is built at teacher layer `unique_layers[j]` (default: the
    middle layer of phase j).
    """
    teacher_args = dict(teacher_args or {}, **teacher_kwargs)
    teacher_args.pop('pretrained_cfg', None)
    teacher_args.pop('pretrained_cfg_overlay', None)
    if not timm.is_model(teacher_arch):
        raise ValueError(f'Unknown timm teacher architecture {teacher_arch!r}; see timm.list_models().')
    model = timm.create_model(teacher_arch, pretrained=False, **teacher_args)
    schedule = validate_block_schedule(block_schedule, len(model.blocks))
    unique_layers = list(unique_layers) if unique_layers is not None else middle_layers(schedule)
    relax_targets = check_relax_args(relax_rank, relax_targets)
    model_args: Dict[str, Any] = dict(
        teacher_arch=teacher_arch, teacher_args=_json_value(teacher_args), block_schedule=list(schedule),
        unique_layers=unique_layers, t_scale=t_scale, drop_path_rate=drop_path_rate)
    if relax_rank:
        model_args.update(relax_rank=relax_rank, relax_targets=list(relax_targets))
    return _raptorize(model, schedule, unique_layers, t_scale, drop_path_rate, relax_rank, relax_targets, model_args)


def raptor_from_model_args(model_args: Dict[str, Any]) -> RaptorMixin:
    """The Raptor a model_args dict describes (config.json): create_raptor for a teacher architecture, else
    RaptorVisionTransformer's own arguments."""
    if 'teacher_arch' in model_args:
        return create_raptor(**model_args)
    return RaptorVisionTransformer(**model_args)


def _teacher_arch(model: nn.Module) -> Optional[str]:
    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')
    return arch if arch and timm.is_model(arch) else None


_PLAIN_VIT_CLASSES = ('VisionTransformer', 'ClsAvgVisionTransformer', 'RaptorVisionTransformer')


def _plain_vit_args(model: nn.Module) -> Optional[Dict[str, Any]]:
    """RaptorVisionTransformer arguments for a teacher that timm's plain ViT arguments describe, else None.

    The arguments must rebuild the teacher's tensors (checked on the meta device): hybrid CNN stems, BEiT-3's
    inner norms or other embeddings fall through to the family path, a copy of the teacher itself.
    """
    if not isinstance(model, VisionTransformer) or type(model).__name__ not in _PLAIN_VIT_CLASSES:
        return None
    try:
        args = vit_args_from_model(model)
        with torch.device('meta'):
            rebuilt = RaptorVisionTransformer(block_schedule=(1,), **args)
    except (TypeError, ValueError):
        return None
    rebuilt_shapes = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items() if not k.startswith('head.')
                      and 'depth_scale' not in k}
    teacher_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.startswith('head.')
                      and (not k.startswith('blocks.') or k.startswith('blocks.0.'))}
    return args if rebuilt_shapes == teacher_shapes else None


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
            raise ValueError(f'k={k} disagrees with block_schedule {schedule} of length {len(schedule)}; pass '
                             f'k={len(schedule)} or leave k out.')
        return schedule, {'schedule_source': 'given'}
    if isinstance(block_schedule, str) and block_schedule != 'auto':
        raise ValueError(f"block_schedule must be a sequence of repeat counts or 'auto', got {block_schedule!r}.")
    k = 2 if k is None and block_schedule == 'auto' else k
    if k is None:
        raise ValueError("Pass k, block_schedule, or block_schedule='auto' with images.")
    check_k(depth, k)
    if images is None:
        if block_schedule == 'auto':
            raise ValueError("block_schedule='auto' needs images for phase discovery (pass images=...).")
        schedule = even_block_schedule(depth, k)
        warnings.warn(
            f'No images given for phase discovery: splitting the {depth} layers evenly as {schedule}. '
            'Pass images=... (or an explicit block_schedule) for measured phases.', stacklevel=4)
        return schedule, {'schedule_source': 'even'}
    from ..phases import discover
    result = discover(teacher, images, k=k, **phase_kwargs)
    meta = {
        'schedule_source': 'measured', 'phase_metric': result.metric, 'phase_algorithm': result.algorithm,
        'phase_num_images': result.num_images, 'phases': result.to_dict(),
    }
    return tuple(result.block_schedule), meta


_FAMILY_OVERRIDES = ('num_classes', 'global_pool', 't_scale', 'drop_path_rate')


def _raptor_of_teacher_model(
        teacher_model: nn.Module,
        schedule: Tuple[int, ...],
        init: str,
        relax_rank: int,
        relax_targets: Sequence[str],
        overrides: Dict[str, Any],
) -> RaptorMixin:
    """A Raptor of any supported family: a copy of the teacher (its architecture and weights), blocks shared."""
    unknown = sorted(set(overrides) - set(_FAMILY_OVERRIDES))
    if unknown:
        raise ValueError(
            f'{unknown} cannot be overridden for a {type(teacher_model).__name__} teacher; its Raptor keeps the '
            f"teacher's architecture (overridable: {list(_FAMILY_OVERRIDES)}).")
    model = copy.deepcopy(teacher_model).train().requires_grad_(True)
    unique_layers = middle_layers(schedule, 'first' if init == 'first' else 'middle')
    arch = _teacher_arch(teacher_model)
    model_args = None
    t_scale = overrides.get('t_scale', True)
    drop_path_rate = overrides.get('drop_path_rate', 0.)
    if 'num_classes' in overrides or 'global_pool' in overrides:
        model.reset_classifier(overrides.get('num_classes', model.num_classes), overrides.get('global_pool'))
    if arch is not None:
        teacher_args: Dict[str, Any] = _json_value(dict(getattr(teacher_model, 'raptor_teacher_args', None) or {}))
        teacher_args['num_classes'] = model.num_classes
        if overrides.get('global_pool') is not None:
            teacher_args['global_pool'] = overrides['global_pool']
        img_size = getattr(getattr(model, 'patch_embed', None), 'img_size', None)
        if img_size is not None:
            teacher_args.setdefault('img_size', list(img_size))
        model_args = dict(
            teacher_arch=arch, teacher_args=teacher_args, block_schedule=list(schedule), unique_layers=unique_layers,
            t_scale=t_scale, drop_path_rate=drop_path_rate)
        if relax_rank:
            model_args.update(relax_rank=relax_rank, relax_targets=list(relax_targets))
    raptor = _raptorize(model, schedule, unique_layers, t_scale, drop_path_rate, relax_rank, relax_targets, model_args)
    if model_args is not None and not _rebuilds(raptor, model_args):
        raptor.model_args = None  # saving says why; the Raptor itself is complete
    return raptor


def _rebuilds(raptor: nn.Module, model_args: Dict[str, Any]) -> bool:
    """Whether create_raptor(**model_args) gives the same tensors (names and shapes), checked on the meta device."""
    try:
        with torch.device('meta'):
            rebuilt = create_raptor(**model_args)
    except (TypeError, ValueError, RuntimeError):
        return False
    expected = {k: tuple(v.shape) for k, v in raptor.state_dict().items()}
    return expected == {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}


@torch.no_grad()
def _reset_block(block: nn.Module) -> None:
    """Random init of a shared block ('random' init): every submodule with reset_parameters is reset."""
    for module in block.modules():
        if module is not block and hasattr(module, 'reset_parameters'):
            module.reset_parameters()


def raptor_from_teacher(
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
) -> RaptorMixin:
    """A Raptor of any supported teacher, initialised from it (arguments as `RaptorVisionTransformer.from_teacher`).

    Plain timm ViT teachers give a `RaptorVisionTransformer` built from its arguments; any other supported
    family gives its own Raptor class (`RaptorEva`, `RaptorBeit`, ...), a copy of the teacher with its block
    stack replaced by the k shared blocks.
    """
    from ..teachers import Teacher, load_teacher  # teachers import timm/transformers adapters lazily

    teacher = teacher if isinstance(teacher, Teacher) else load_teacher(teacher)
    init = init or ('middle' if block_type == 'teacher' else 'random')
    if init not in ('middle', 'first', 'mean', 'random'):
        raise ValueError(f"init must be one of 'middle', 'first', 'mean', 'random', got {init!r}.")
    if block_type not in ('teacher', 'swiglu'):
        raise ValueError(f"block_type must be 'teacher' or 'swiglu', got {block_type!r}.")
    if block_type == 'swiglu' and init != 'random':
        raise ValueError("block_type='swiglu' blocks have no teacher counterpart; use init='random'.")
    relax_targets = check_relax_args(relax_rank, relax_targets)
    if relax_init not in ('svd', 'zeros'):
        raise ValueError(f"relax_init must be 'svd' or 'zeros', got {relax_init!r}.")
    if relax_rank and relax_init == 'svd':
        if block_type != 'teacher':
            raise ValueError("relax_init='svd' needs block_type='teacher' (weights shaped like the teacher's); "
                             "use relax_init='zeros'.")
        for target, path in relax_layers(teacher.blocks[0], relax_targets).items():
            full_rank = min(teacher.blocks[0].get_submodule(path).weight.shape)
            if relax_rank > full_rank:
                raise ValueError(
                    f"relax_rank={relax_rank} exceeds the full rank {full_rank} of the teacher's {target} "
                    f"layer; use relax_rank <= {full_rank} or relax_init='zeros'.")
    schedule, meta = _resolve_schedule(teacher, k, block_schedule, images, phase_kwargs or {})

    args = _plain_vit_args(teacher.model)
    if args is not None:
        if getattr(teacher.model, 'global_pool', None) == 'cls_avg':
            args['global_pool'] = 'cls_avg'
        args.update(kwargs)
        if relax_rank:
            args.update(relax_rank=relax_rank, relax_targets=relax_targets)
        model = RaptorVisionTransformer(block_schedule=schedule, depth=teacher.depth, block_type=block_type, **args)
        model._copy_teacher_stem_and_head(teacher.model)
    else:
        if block_type != 'teacher':
            raise ValueError(
                f"block_type='swiglu' is available for plain ViT teachers; a {type(teacher.model).__name__} "
                "teacher's Raptor uses the teacher's own block type (block_type='teacher').")
        model = _raptor_of_teacher_model(teacher.model, schedule, init, relax_rank, relax_targets, kwargs)
    if init == 'random':
        if args is None:
            for block in model.unique_blocks:
                _reset_block(block)
    else:
        for j, (start, stop) in enumerate(zip(model.phase_boundaries[:-1], model.phase_boundaries[1:])):
            model._init_block_from_layers(j, [teacher.blocks[i] for i in range(start, stop)], init)
    if relax_rank and relax_init == 'svd':
        model.init_adapters_from_teacher(teacher.blocks)
    model.pretrained_cfg = dict(
        getattr(model, 'pretrained_cfg', {}) or {}, **{
            key: teacher.data_config[key]
            for key in ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode')
            if key in teacher.data_config},
        num_classes=model.num_classes)
    label_names = (getattr(teacher.model, 'pretrained_cfg', None) or {}).get('label_names')
    if label_names and len(label_names) == model.num_classes == getattr(teacher.model, 'num_classes', None):
        model.pretrained_cfg['label_names'] = tuple(label_names)  # the teacher's head, kept: its class names too
    model.raptor_meta = dict(
        meta, teacher=teacher.name, teacher_revision=teacher.revision, teacher_source=teacher.source,
        teacher_depth=teacher.depth, init=init, block_schedule=list(schedule),
        phase_boundaries=list(model.phase_boundaries), head=teacher.head_kind,
        last_hidden_state=teacher.last_hidden_state)
    if relax_rank:
        model.raptor_meta.update(relax_rank=relax_rank, relax_init=relax_init, relax_targets=list(relax_targets))
    model.image_processor = teacher.image_processor  # saved with the Raptor: pipelines prepare images as the teacher's
    return model


# ---------------------------------------------------------------------------------------------- registry

# frontier teachers with registered Raptors: timm name -> depth L
FRONTIER_TEACHERS: Dict[str, int] = {
    'vit_small_patch16_dinov3': 12, 'vit_small_plus_patch16_dinov3': 12, 'vit_base_patch16_dinov3': 12,
    'vit_large_patch16_dinov3': 24, 'vit_huge_plus_patch16_dinov3': 32, 'vit_7b_patch16_dinov3': 40,
    'eva02_small_patch14_224': 12, 'eva02_base_patch14_224': 12, 'eva02_large_patch14_224': 24,
    'vit_pe_core_small_patch16_384': 12, 'vit_pe_core_base_patch16_224': 12, 'vit_pe_core_large_patch14_336': 24,
    'vit_base_patch16_siglip_224': 12,
}

# arch name -> dict(teacher, k, block_schedule, schedule_source, unique_layers)
RAPTOR_TIMM_ARCHS: Dict[str, Dict[str, Any]] = {
    f'raptor_{teacher}_k{k}': dict(
        teacher=teacher, k=k, block_schedule=scaled_paper_schedule(depth, k), schedule_source='scaled',
        unique_layers=middle_layers(scaled_paper_schedule(depth, k)))
    for teacher, depth in FRONTIER_TEACHERS.items() for k in PAPER_PHASE_BOUNDARIES
}


def _teacher_cfg(teacher: str) -> Dict[str, Any]:
    """The data settings of the teacher's default pretrained cfg (input size, mean / std, interpolation, crop)."""
    cfg = timm.models.get_pretrained_cfg(teacher)
    if cfg is None:
        return {}
    keys = ('input_size', 'mean', 'std', 'interpolation', 'crop_pct', 'crop_mode', 'fixed_input_size')
    return {key: getattr(cfg, key) for key in keys if getattr(cfg, key, None) is not None}


default_cfgs = generate_default_cfgs({
    **{
        arch: _cfg(**_teacher_cfg(spec['teacher']), notes=(
            f"teacher: {spec['teacher']}",
            f"block_schedule: {spec['block_schedule']}",
            f"schedule_source: {spec['schedule_source']}",
        ))
        for arch, spec in RAPTOR_TIMM_ARCHS.items()
    },
    'raptor_timm': _cfg(),  # generic: the teacher architecture and schedule come from model_args
})


def _create_raptor_timm(variant: str, pretrained: bool = False, **kwargs: Any) -> RaptorMixin:
    out_indices = kwargs.pop('out_indices', 3)
    return build_model_with_cfg(
        create_raptor,
        variant,
        pretrained,
        feature_cfg=dict(out_indices=out_indices, feature_cls='getter'),
        **kwargs,
    )


@register_model
def raptor_timm(pretrained: bool = False, **kwargs: Any) -> RaptorMixin:
    """Raptor of any supported timm ViT: teacher_arch, teacher_args, block_schedule, ... from kwargs (config.json)."""
    return _create_raptor_timm('raptor_timm', pretrained=pretrained, **kwargs)


def _make_entrypoint(arch: str, spec: Dict[str, Any]) -> None:
    def entrypoint(pretrained: bool = False, **kwargs: Any) -> RaptorMixin:
        model_args = dict(teacher_arch=spec['teacher'], block_schedule=spec['block_schedule'],
                          unique_layers=spec['unique_layers'])
        return _create_raptor_timm(arch, pretrained=pretrained, **dict(model_args, **kwargs))

    entrypoint.__name__ = entrypoint.__qualname__ = arch
    entrypoint.__module__ = __name__
    entrypoint.__doc__ = (f"Raptor of {spec['teacher']}, k={spec['k']} blocks on schedule {spec['block_schedule']} "
                          f"({spec['schedule_source']} phases).")
    globals()[arch] = register_model(entrypoint)


for _arch, _spec in RAPTOR_TIMM_ARCHS.items():
    _make_entrypoint(_arch, _spec)
