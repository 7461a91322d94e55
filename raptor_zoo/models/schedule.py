"""Block schedules: how k shared blocks cover a teacher's L layers.

A schedule ``(n_1, ..., n_k)`` gives the repeat count of each shared block (phase j produces layers
``b_{j-1}+1 .. b_j``); it sums to L. This module checks schedules, builds the even split and the paper's DINOv2-B
boundaries scaled to a depth, and names the teacher layer each shared block starts from.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "PAPER_PHASE_BOUNDARIES",
    "PAPER_DEPTH",
    "check_k",
    "validate_block_schedule",
    "even_block_schedule",
    "scaled_paper_schedule",
    "phase_boundaries",
    "middle_layers",
]

# Phase boundaries of DINOv2 ViT-B/14-reg4 (12 blocks) found by the paper's divisive max-cut (docs/method.md §2.3):
# block outputs 1..b_1 form phase 1, b_1+1..b_2 phase 2, ...
PAPER_PHASE_BOUNDARIES: dict[int, tuple[int, ...]] = {2: (7,), 3: (7, 10), 4: (4, 7, 10)}
PAPER_DEPTH = 12


def check_k(depth: int, k: int, teacher_name: str | None = None) -> None:
    """Raise unless 1 <= k <= depth: a teacher of depth L has at most L phases."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= depth:
        teacher = f"teacher {teacher_name!r}" if teacher_name else "a teacher"
        raise ValueError(f"k={k!r} unique blocks is out of range for {teacher} of depth {depth}; use 1 <= k <= {depth}.")


def validate_block_schedule(block_schedule: Sequence[int], depth: int | None = None) -> tuple[int, ...]:
    """Check a schedule of repeat counts (every entry >= 1, summing to `depth` when given) and return it as a tuple."""
    try:
        schedule = tuple(int(n) for n in block_schedule)
    except (TypeError, ValueError):
        raise ValueError(f"block_schedule must be a sequence of positive ints, got {block_schedule!r}.") from None
    if not schedule or any(n < 1 for n in schedule):
        raise ValueError(f"block_schedule must be a non-empty sequence of repeat counts >= 1, got {schedule}.")
    if depth is not None and sum(schedule) != depth:
        raise ValueError(
            f"block_schedule {schedule} sums to {sum(schedule)} block applications but the teacher has depth "
            f"{depth}; the repeat counts must sum to the teacher depth (e.g. {even_block_schedule(depth, len(schedule))}).")
    return schedule


def even_block_schedule(depth: int, k: int) -> tuple[int, ...]:
    """Split `depth` applications over k blocks as evenly as possible (largest remainder, earlier phases longer)."""
    check_k(depth, k)
    base, extra = divmod(depth, k)
    return tuple(base + (1 if j < extra else 0) for j in range(k))


def scaled_paper_schedule(depth: int, k: int) -> tuple[int, ...]:
    """The paper's DINOv2-B phase boundaries scaled to `depth`: b' = round(b * depth / 12), each phase >= 1."""
    check_k(depth, k)
    if k not in PAPER_PHASE_BOUNDARIES:
        raise ValueError(f"the paper reports phases for k in {sorted(PAPER_PHASE_BOUNDARIES)}, not k={k}.")
    boundaries = [0]
    for j, b in enumerate(PAPER_PHASE_BOUNDARIES[k]):
        scaled = int(math.floor(b * depth / PAPER_DEPTH + 0.5))
        # every phase keeps >= 1 layer and leaves room for the phases after it
        scaled = min(max(scaled, boundaries[-1] + 1), depth - (k - 1 - j))
        boundaries.append(scaled)
    boundaries.append(depth)
    return tuple(b - a for a, b in zip(boundaries[:-1], boundaries[1:]))


def phase_boundaries(block_schedule: Sequence[int]) -> tuple[int, ...]:
    """Cumulative phase ends (0, b_1, ..., L): phase j produces layers b_{j-1}+1 .. b_j."""
    ends = [0]
    for n in block_schedule:
        ends.append(ends[-1] + n)
    return tuple(ends)


def middle_layers(block_schedule: Sequence[int], init: str = "middle") -> list[int]:
    """The teacher layer (0-based) each shared block is built from: the phase's lower median ('middle') or first."""
    layers, start = [], 0
    for repeats in block_schedule:
        layers.append(start + ((repeats - 1) // 2 if init == "middle" else 0))
        start += repeats
    return layers
