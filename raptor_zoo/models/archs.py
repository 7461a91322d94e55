"""The registered Raptor architectures: one table, ``REGISTERED_RAPTOR_ARCHS`` (name -> spec).

Every registered arch is the Raptor of a timm teacher architecture, built by the one construction function
(``raptor_timm.create_raptor``) from its spec: ``teacher`` (timm name), ``teacher_args`` (what the Raptor builds the
teacher with, e.g. DINOv2 at 224 px), ``k``, ``block_schedule``, ``unique_layers`` (the teacher layer each shared
block starts from), ``schedule_source`` (``paper``: the paper's measured DINOv2-B phases; ``scaled``: those
boundaries scaled to the teacher's depth, not measured on its weights) and, for relaxed variants, ``relax_rank`` and
``base_arch``. The names of the other dicts here are views of the table, by teacher kind.
"""
from __future__ import annotations

from typing import Any

from .schedule import PAPER_PHASE_BOUNDARIES, middle_layers, scaled_paper_schedule

__all__ = ["REGISTERED_RAPTOR_ARCHS", "RAPTOR_ARCHS", "RELAXED_RAPTOR_ARCHS", "RAPTOR_TIMM_ARCHS", "DINOV2_RUN_SIZE"]

DINOV2_RUN_SIZE = 224
"""DINOv2 checkpoints store a 37 x 37 position grid (518 px) but run, and are evaluated, at 224 px."""

# teacher (timm name) -> (depth, the args its Raptor builds it with, family of the table's views)
_TEACHERS: dict[str, tuple[int, dict[str, Any], str]] = {
    **{name: (depth, {"img_size": DINOV2_RUN_SIZE}, "dinov2") for name, depth in (
        ("vit_small_patch14_dinov2", 12), ("vit_base_patch14_dinov2", 12), ("vit_large_patch14_dinov2", 24),
        ("vit_giant_patch14_dinov2", 40), ("vit_small_patch14_reg4_dinov2", 12), ("vit_base_patch14_reg4_dinov2", 12),
        ("vit_large_patch14_reg4_dinov2", 24), ("vit_giant_patch14_reg4_dinov2", 40))},
    **{name: (depth, {}, "frontier") for name, depth in (
        ("vit_small_patch16_dinov3", 12), ("vit_small_plus_patch16_dinov3", 12), ("vit_base_patch16_dinov3", 12),
        ("vit_large_patch16_dinov3", 24), ("vit_huge_plus_patch16_dinov3", 32), ("vit_7b_patch16_dinov3", 40),
        ("eva02_small_patch14_224", 12), ("eva02_base_patch14_224", 12), ("eva02_large_patch14_224", 24),
        ("vit_pe_core_small_patch16_384", 12), ("vit_pe_core_base_patch16_224", 12),
        ("vit_pe_core_large_patch14_336", 24), ("vit_base_patch16_siglip_224", 12))},
}


def _spec(teacher: str, k: int) -> dict[str, Any]:
    depth, teacher_args, kind = _TEACHERS[teacher]
    schedule = scaled_paper_schedule(depth, k)
    return dict(teacher=teacher, teacher_args=dict(teacher_args), k=k, block_schedule=schedule,
                unique_layers=middle_layers(schedule), kind=kind,
                # phases were measured (by the paper) only on DINOv2 ViT-B/14 with registers
                schedule_source="paper" if teacher == "vit_base_patch14_reg4_dinov2" else "scaled")


REGISTERED_RAPTOR_ARCHS: dict[str, dict[str, Any]] = {
    f"raptor_{teacher}_k{k}": _spec(teacher, k) for teacher in _TEACHERS for k in PAPER_PHASE_BOUNDARIES}
# relaxed k = 2 variants of the DINOv2 teachers (docs/design.md §4): rank-4 per-step adapters on all four linear layers
REGISTERED_RAPTOR_ARCHS.update({
    f"{arch}_r4": dict(spec, base_arch=arch, relax_rank=4)
    for arch, spec in list(REGISTERED_RAPTOR_ARCHS.items()) if spec["k"] == 2 and spec["kind"] == "dinov2"})

RAPTOR_ARCHS = {arch: spec for arch, spec in REGISTERED_RAPTOR_ARCHS.items()
                if spec["kind"] == "dinov2" and "relax_rank" not in spec}
RELAXED_RAPTOR_ARCHS = {arch: spec for arch, spec in REGISTERED_RAPTOR_ARCHS.items() if "relax_rank" in spec}
RAPTOR_TIMM_ARCHS = {arch: spec for arch, spec in REGISTERED_RAPTOR_ARCHS.items() if spec["kind"] == "frontier"}
