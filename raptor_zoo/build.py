"""Building a Raptor from a teacher: the teacher loaded, its block schedule resolved (given, discovered on images by
max-cut, or split evenly) and the Raptor initialised from it, with its provenance.

This module sits above the model layer (``raptor_zoo.models``), the teachers and phase discovery: it is what
``raptor_zoo.from_teacher`` and ``RaptorVisionTransformer.from_teacher`` run (the model classes reach it through
:mod:`raptor_zoo.models.services`), and the distillation recipe resolves its schedule with
:func:`resolve_block_schedule`.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

from .models.raptor_base import BlockType, InitMode, RaptorMixin, RelaxInit, check_relax_args
from .models.raptor_timm import check_relax_rank_fits, raptor_of_teacher_model
from .models.recurrent import RELAX_TARGETS
from .models.schedule import check_k, even_block_schedule, validate_block_schedule
from .phases import PhaseResult, discover
from .teachers import Teacher, load_teacher

__all__ = ["from_teacher", "resolve_block_schedule"]

_INITS = ("middle", "first", "mean", "random")


def resolve_block_schedule(
        teacher: Teacher,
        k: int | None = None,
        block_schedule: Sequence[int] | str | None = None,
        images: Any = None,
        phase_kwargs: dict[str, Any] | None = None,
) -> tuple[tuple[int, ...], PhaseResult | None, str]:
    """(schedule, phase result or None, schedule_source): an explicit schedule ('given') > phases discovered on
    ``images`` ('measured'; ``block_schedule='auto'`` asks for it) > an even split of the depth ('even', with a
    warning that no phases were measured)."""
    depth = teacher.depth
    if block_schedule is not None and not isinstance(block_schedule, str):
        schedule = validate_block_schedule(block_schedule, depth)
        if k is not None and k != len(schedule):
            raise ValueError(f"k={k} disagrees with block_schedule {schedule} of length {len(schedule)}; pass "
                             f"k={len(schedule)} or leave k out.")
        return schedule, None, "given"
    if isinstance(block_schedule, str) and block_schedule != "auto":
        raise ValueError(f"block_schedule must be a sequence of repeat counts or 'auto', got {block_schedule!r}.")
    k = 2 if k is None and block_schedule == "auto" else k
    if k is None:
        raise ValueError("Pass k, block_schedule, or block_schedule='auto' with images.")
    check_k(depth, k)
    if images is None:
        if block_schedule == "auto":
            raise ValueError("block_schedule='auto' needs images for phase discovery (pass images=...).")
        schedule = even_block_schedule(depth, k)
        warnings.warn(f"No images given for phase discovery: splitting the {depth} layers evenly as {schedule}. Pass "
                      "images=... (or an explicit block_schedule) for measured phases.", stacklevel=3)
        return schedule, None, "even"
    result = discover(teacher, images, k=k, **(phase_kwargs or {}))
    return tuple(result.block_schedule), result, "measured"


def from_teacher(
        teacher: Any,
        k: int | None = None,
        block_schedule: Sequence[int] | str | None = None,
        images: Any = None,
        block_type: BlockType = "teacher",
        init: InitMode | None = None,
        phase_kwargs: dict[str, Any] | None = None,
        relax_rank: int = 0,
        relax_init: RelaxInit = "svd",
        relax_targets: Sequence[str] = RELAX_TARGETS,
        **overrides: Any,
) -> RaptorMixin:
    """A Raptor initialised from a teacher: embedding, final norm and head copied, block j from phase j.

    Args:
        teacher: a :class:`~raptor_zoo.teachers.Teacher`, or anything ``load_teacher`` accepts (timm name, Hub repo id,
            folder, 'digits-vit', a timm or transformers ViT module).
        k: number of unique blocks. With ``images``, phases are discovered on them (``phases.discover``); without,
            the depth is split evenly (largest remainder) with a warning.
        block_schedule: explicit repeat counts (win over k), or "auto" for phase discovery on ``images``.
        images: normalised image batches (a tensor or an iterable of tensors) for phase discovery.
        block_type: 'teacher' (the teacher's block; exact FLOP parity) or 'swiglu' (the paper's block; ViT teachers).
        init: how block j is initialised from the teacher layers of phase j: 'middle' (lower median layer; default for
            the teacher block type), 'first', 'mean' (parameter-wise mean), or 'random' (the only choice for
            'swiglu').
        phase_kwargs: extra arguments for ``phases.discover`` (metric, algorithm, batch_size, ...).
        relax_rank: rank r of per-step low-rank adapters (0 = pure Raptor).
        relax_init: 'svd': adapters of step l from the rank-r truncated SVD of (teacher layer l's weight - its shared
            block's weight); 'zeros': LoRA init (B = 0, A random). Biases are not adapted.
        relax_targets: linear layers adapted, from ('qkv', 'proj', 'fc1', 'fc2').
        **overrides: num_classes, global_pool (incl. 'cls_avg' for ViTs), t_scale, drop_path_rate.

    A teacher of any supported family gives its own Raptor class (RaptorVisionTransformer, RaptorEva, ...): a copy
    of the teacher with its block stack replaced by the k shared blocks.
    """
    teacher = teacher if isinstance(teacher, Teacher) else load_teacher(teacher)
    init = init or ("middle" if block_type == "teacher" else "random")
    if init not in _INITS:
        raise ValueError(f"init must be one of {_INITS}, got {init!r}.")
    if block_type not in ("teacher", "swiglu"):
        raise ValueError(f"block_type must be 'teacher' or 'swiglu', got {block_type!r}.")
    if block_type == "swiglu" and init != "random":
        raise ValueError("block_type='swiglu' blocks have no teacher counterpart; use init='random'.")
    relax_targets = check_relax_args(relax_rank, relax_targets)
    if relax_init not in ("svd", "zeros"):
        raise ValueError(f"relax_init must be 'svd' or 'zeros', got {relax_init!r}.")
    if relax_rank and relax_init == "svd":
        if block_type != "teacher":
            raise ValueError("relax_init='svd' needs block_type='teacher' (weights shaped like the teacher's); use "
                             "relax_init='zeros'.")
        check_relax_rank_fits(teacher.blocks[0], relax_rank, relax_targets)
    schedule, phases, source = resolve_block_schedule(teacher, k, block_schedule, images, phase_kwargs)
    model = raptor_of_teacher_model(teacher.model, schedule, block_type=block_type, init=init, relax_rank=relax_rank,
                                    relax_targets=relax_targets, **overrides)
    if relax_rank and relax_init == "svd":
        model.init_adapters_from_teacher(teacher.blocks)
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", {}) or {}, **{
        key: teacher.data_config[key] for key in ("input_size", "mean", "std", "interpolation", "crop_pct", "crop_mode")
        if key in teacher.data_config}, num_classes=model.num_classes)
    label_names = (getattr(teacher.model, "pretrained_cfg", None) or {}).get("label_names")
    if label_names and len(label_names) == model.num_classes == getattr(teacher.model, "num_classes", None):
        model.pretrained_cfg["label_names"] = tuple(label_names)  # the teacher's head, kept: its class names too
    model.raptor_meta = dict(
        schedule_source=source, teacher=teacher.name, teacher_revision=teacher.revision, teacher_source=teacher.source,
        teacher_depth=teacher.depth, init=init, block_schedule=list(schedule),
        phase_boundaries=list(model.phase_boundaries), head=teacher.head_kind,
        last_hidden_state=teacher.last_hidden_state)
    if phases is not None:
        model.raptor_meta.update(phase_metric=phases.metric, phase_algorithm=phases.algorithm,
                                 phase_num_images=phases.num_images, phases=phases.to_dict())
    if relax_rank:
        model.raptor_meta.update(relax_rank=relax_rank, relax_init=relax_init, relax_targets=list(relax_targets))
    model.image_processor = teacher.image_processor  # saved with the Raptor: pipelines prepare images as the teacher's
    return model

