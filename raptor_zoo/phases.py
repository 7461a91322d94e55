"""Phase discovery: layer-layer distances of a ViT trajectory and their optimal partition into phases.

The Block-Recurrent Hypothesis (Jacobs et al., arXiv 2512.19941) groups the L blocks of a trained ViT
into k contiguous *phases*. This module

* measures an L x L distance matrix between the block outputs (layers 1..L, before the final norm) over
  a stream of image batches (:class:`LayerDistanceAccumulator`; the paper's metric is the default),
* partitions the layers exactly, either by the paper's divisive max-cut (:func:`divisive_partition`)
  or by a dynamic programme over contiguous segments (:func:`contiguous_partition`),
* turns phases into a ``block_schedule`` (the phase lengths) and ``phase_boundaries``, and
* writes the result as JSON plus a heatmap (:func:`discover`, :class:`PhaseResult`).

Layers are 0-based in code (index ``i`` is block ``i + 1``'s output) and 1-based in anything meant
for people (JSON ``phase_layers``, plot ticks), as in the paper.
"""
from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from tqdm.auto import tqdm

from .plotting import annotate_cells

__all__ = [
    "METRICS",
    "TOKEN_SELECTIONS",
    "ALGORITHMS",
    "MAX_EXACT_CUT_SIZE",
    "LayerDistanceAccumulator",
    "Partition",
    "PhaseResult",
    "cut_value",
    "total_weight",
    "exact_max_cut",
    "divisive_partition",
    "contiguous_partition",
    "phase_scores",
    "schedule_from_phases",
    "phase_boundaries_from_schedule",
    "schedule_from_boundaries",
    "phase_ranges",
    "plot_distance_matrix",
    "discover",
]

METRICS = ("cls_patchmean", "token_cosine", "cka")
TOKEN_SELECTIONS = ("all", "cls", "registers", "patches")
ALGORITHMS = ("divisive", "contiguous")

# Exact max-cut enumerates 2^(n-1) - 1 bipartitions: 2^19 at n = 20 takes well under a second.
MAX_EXACT_CUT_SIZE = 20
# Hard ceiling when the caller forces exact cuts (contiguous_only=False) on a larger cluster.
_MAX_FORCED_EXACT_CUT_SIZE = 24
# Bipartitions evaluated per numpy chunk (bounds memory at ~ chunk * n * 8 bytes per array).
_CUT_CHUNK = 1 << 16
_COSINE_EPS = 1e-8


def _choice_error(option: str, value: Any, choices: Sequence[str]) -> ValueError:
    return ValueError(f"{option}={value!r} is not supported; expected one of {', '.join(map(repr, choices))}.")


# ----------------------------------------------------------------------------------------------------
# Distances
# ----------------------------------------------------------------------------------------------------

def _unit(x: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` (last dim) scaled to unit norm, norms clamped at the cosine eps."""
    return x / x.norm(dim=-1, keepdim=True).clamp_min(_COSINE_EPS)


def _layer_cosine_distance(vectors: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between every pair of layers, per leading index: ``[..., L, D] -> [..., L, L]``."""
    unit = _unit(vectors.float())
    cosine = (unit @ unit.transpose(-1, -2)).clamp(-1.0, 1.0)
    return 1.0 - cosine


class LayerDistanceAccumulator:
    """Streams trajectories batch by batch into an L x L layer distance matrix.

    ``update(trajectory)`` takes ``[B, L, N, D]`` (layers 1..L) or ``[B, L + 1, N, D]`` (state 0, the
    embeddings, first; it is dropped). Tokens are laid out as timm/DINOv2 do: ``num_prefix_tokens``
    prefix tokens (the class token first when ``has_class_token``, the ``num_reg_tokens`` registers last
    among them), then the patch tokens.

    Metrics:

    * ``cls_patchmean`` (the paper's): per image, the class token and the mean patch token (registers
      excluded); ``D[i, j]`` = mean over images of ``0.5 * [(1 - cos(cls_i, cls_j)) + (1 - cos(pmean_i,
      pmean_j))]``. Without a class token only the patch-mean term is used. ``tokens`` must stay "all".
    * ``token_cosine``: mean over images and selected tokens of the per-token ``1 - cos``.
    * ``cka``: ``1 -`` linear CKA between layers, features = selected tokens of all images (rows =
      images x tokens), centred. Linear CKA needs all rows at once, so the accumulator keeps the features
      themselves, bounded: a uniform random sample of at most ``max_cka_samples`` rows (the same rows in
      every layer; bottom-k sampling on seeded random keys). While the stream has no more rows than
      that, the CKA is exact over all of them. Memory: ``L * M * D`` floats on the trajectory's device
      (M = kept rows); ``compute()`` costs ``L^2 * M * D^2 / 2`` float64 MACs (``L * M^2 * D`` when
      M <= D): about 14 s on 2 CPU cores for L = 12, M = 4096, D = 768.

    Sums are kept in float64; ``compute()`` returns a float64, symmetric matrix with a zero diagonal.
    """

    def __init__(
            self,
            depth: int,
            metric: str = "cls_patchmean",
            tokens: str = "all",
            num_prefix_tokens: int = 1,
            num_reg_tokens: int = 0,
            has_class_token: bool = True,
            max_cka_samples: int = 4096,
            seed: int = 0,
    ) -> None:
        if metric not in METRICS:
            raise _choice_error("metric", metric, METRICS)
        if tokens not in TOKEN_SELECTIONS:
            raise _choice_error("tokens", tokens, TOKEN_SELECTIONS)
        if metric == "cls_patchmean" and tokens != "all":
            raise ValueError(
                f"tokens={tokens!r} does not apply to metric='cls_patchmean', which is defined on the class "
                "token and the mean patch token; use metric='token_cosine' or 'cka' to select tokens.")
        if int(depth) < 1:
            raise ValueError(f"depth must be >= 1 (the number of blocks L), got {depth}.")
        if num_reg_tokens < 0 or num_prefix_tokens < int(has_class_token) + num_reg_tokens:
            raise ValueError(
                f"Inconsistent token layout: num_prefix_tokens={num_prefix_tokens} must be >= "
                f"has_class_token ({int(has_class_token)}) + num_reg_tokens ({num_reg_tokens}), "
                "and num_reg_tokens >= 0.")
        if tokens == "cls" and not has_class_token:
            raise ValueError("tokens='cls' needs a class token, but has_class_token=False; use 'patches' or 'all'.")
        if tokens == "registers" and num_reg_tokens == 0:
            raise ValueError("tokens='registers' needs register tokens, but num_reg_tokens=0; use 'patches' or 'all'.")
        if max_cka_samples < 2:
            raise ValueError(f"max_cka_samples must be >= 2, got {max_cka_samples}.")
        self.depth = int(depth)
        self.metric = metric
        self.tokens = tokens
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.num_reg_tokens = int(num_reg_tokens)
        self.has_class_token = bool(has_class_token)
        self.max_cka_samples = int(max_cka_samples)
        self.num_images = 0
        self._distance_sum = np.zeros((self.depth, self.depth), dtype=np.float64)
        self._generator = torch.Generator().manual_seed(seed)
        self._cka_features: torch.Tensor | None = None  # [L, M, D], the kept rows
        self._cka_keys: torch.Tensor | None = None  # [M], their sampling keys

    def _token_slice(self, num_tokens: int) -> slice:
        """Token positions selected by ``tokens``."""
        start_reg = self.num_prefix_tokens - self.num_reg_tokens
        return {
            "all": slice(0, num_tokens),
            "cls": slice(0, 1),
            "registers": slice(start_reg, self.num_prefix_tokens),
            "patches": slice(self.num_prefix_tokens, num_tokens),
        }[self.tokens]

    def _layers(self, trajectory: torch.Tensor) -> torch.Tensor:
        """Validated block outputs ``[B, L, N, D]`` of ``trajectory``."""
        if not isinstance(trajectory, torch.Tensor) or trajectory.ndim != 4:
            shape = tuple(trajectory.shape) if isinstance(trajectory, torch.Tensor) else type(trajectory).__name__
            raise ValueError(f"trajectory must be a tensor [batch, layers, tokens, dim], got {shape}.")
        num_states = trajectory.shape[1]
        if num_states == self.depth + 1:
            trajectory = trajectory[:, 1:]
        elif num_states != self.depth:
            raise ValueError(
                f"trajectory has {num_states} states on dim 1; expected depth={self.depth} block outputs "
                f"(layers 1..{self.depth}) or {self.depth + 1} states (embeddings first).")
        if trajectory.shape[2] <= self.num_prefix_tokens:
            raise ValueError(
                f"trajectory has {trajectory.shape[2]} tokens but num_prefix_tokens={self.num_prefix_tokens}; "
                "no patch tokens are left. Check the teacher's token layout.")
        return trajectory.detach()

    def update(self, trajectory: torch.Tensor) -> LayerDistanceAccumulator:
        """Adds one batch of trajectories."""
        layers = self._layers(trajectory)
        if self.metric == "cka":
            self._update_cka(layers)
        else:
            if self.metric == "cls_patchmean":
                patch_mean = layers[:, :, self.num_prefix_tokens:].float().mean(dim=2)  # [B, L, D]
                per_image = _layer_cosine_distance(patch_mean)
                if self.has_class_token:
                    per_image = 0.5 * (per_image + _layer_cosine_distance(layers[:, :, 0]))
            else:  # token_cosine
                selected = layers[:, :, self._token_slice(layers.shape[2])]  # [B, L, T, D]
                per_image = _layer_cosine_distance(selected.transpose(1, 2)).mean(dim=1)
            self._distance_sum += per_image.double().sum(dim=0).cpu().numpy()
        self.num_images += layers.shape[0]
        return self

    def _update_cka(self, layers: torch.Tensor) -> None:
        """Keeps a uniform sample of at most ``max_cka_samples`` feature rows (bottom-k random keys)."""
        features = layers[:, :, self._token_slice(layers.shape[2])].float()  # [B, L, T, D]
        features = features.permute(1, 0, 2, 3).reshape(self.depth, -1, features.shape[-1])  # [L, B*T, D]
        keys = torch.rand(features.shape[1], generator=self._generator).to(features.device)
        if self._cka_keys is not None:
            if self._cka_keys.numel() >= self.max_cka_samples:
                candidates = keys < self._cka_keys.max()
                keys, features = keys[candidates], features[:, candidates]
            keys = torch.cat([self._cka_keys, keys])
            features = torch.cat([self._cka_features, features], dim=1)
        if keys.numel() > self.max_cka_samples:
            keys, kept = torch.topk(keys, self.max_cka_samples, largest=False, sorted=False)
            features = features[:, kept]
        self._cka_keys, self._cka_features = keys, features

    def _compute_cka_distance(self) -> np.ndarray:
        # float64 avoids TF32 matmuls on GPU (allowed globally by the recipes) corrupting CKA near 1.
        dtype = torch.float64 if self._cka_features.device.type in ("cpu", "cuda") else torch.float32
        features = self._cka_features.to(dtype)
        features = features - features.mean(dim=1, keepdim=True)
        num_rows, dim = features.shape[1:]
        if num_rows <= dim:  # sample space: <K_i, K_j> with K = X X^T
            grams = (features @ features.transpose(1, 2)).flatten(1)  # [L, M*M]
            hsic = grams @ grams.T
        else:  # feature space: ||X_i^T X_j||_F^2
            hsic = torch.empty(self.depth, self.depth, dtype=dtype, device=features.device)
            for i in range(self.depth):
                cross = torch.einsum("md,jme->jde", features[i], features[i:])
                values = cross.square().sum(dim=(1, 2))
                hsic[i, i:] = values
                hsic[i:, i] = values
        hsic = hsic.double().cpu().numpy()
        self_hsic = np.sqrt(np.clip(np.diag(hsic), 0.0, None))
        denominator = np.outer(self_hsic, self_hsic)
        cka = np.divide(hsic, denominator, out=np.zeros_like(hsic), where=denominator > 0)
        return np.clip(1.0 - cka, 0.0, 1.0)

    def compute(self) -> np.ndarray:
        """The ``[L, L]`` distance matrix (float64, symmetric, zero diagonal)."""
        if self.num_images == 0:
            raise ValueError("No trajectories were accumulated; call update() with at least one batch first.")
        if self.metric == "cka":
            distance = self._compute_cka_distance()
        else:
            distance = self._distance_sum / self.num_images
        distance = 0.5 * (distance + distance.T)
        np.fill_diagonal(distance, 0.0)
        return distance


# ----------------------------------------------------------------------------------------------------
# Partitions
# ----------------------------------------------------------------------------------------------------

def _validate_distance(distance: Any) -> np.ndarray:
    """A float64 copy of a square, finite, symmetric distance matrix with its diagonal zeroed."""
    matrix = np.array(distance, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1] or matrix.shape[0] == 0:
        raise ValueError(f"distance must be a non-empty square [L, L] matrix, got shape {matrix.shape}.")
    if not np.isfinite(matrix).all():
        raise ValueError("distance contains NaN or inf values; recompute it from finite trajectories.")
    if not np.allclose(matrix, matrix.T, rtol=1e-6, atol=1e-9):
        raise ValueError("distance must be symmetric (D[i, j] == D[j, i]); symmetrise it with 0.5 * (D + D.T).")
    np.fill_diagonal(matrix, 0.0)
    return matrix


def _validate_k(k: int, depth: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= depth:
        raise ValueError(f"{name} must be an integer in 1..{depth} (the number of layers), got {k!r}.")
    return int(k)


def total_weight(distance: Any) -> float:
    """Total edge weight ``0.5 * sum(D)`` of the layer graph."""
    return float(0.5 * _validate_distance(distance).sum())


def cut_value(distance: Any, phases: Sequence[Sequence[int]]) -> float:
    """Total weight of the edges between different phases (``total_weight`` minus within-phase weight)."""
    matrix = _validate_distance(distance)
    within = sum(matrix[np.ix_(phase, phase)].sum() for phase in phases)
    return float(0.5 * (matrix.sum() - within))


def phase_ranges(phases: Sequence[Sequence[int]]) -> list[str]:
    """Phases as 1-based layer ranges for people: ``[[0, ..., 6], [7, ..., 11]] -> ['1-7', '8-12']``."""
    ranges = []
    for phase in phases:
        runs: list[list[int]] = []
        for layer in sorted(int(i) + 1 for i in phase):
            if runs and layer == runs[-1][1] + 1:
                runs[-1][1] = layer
            else:
                runs.append([layer, layer])
        ranges.append(",".join(f"{a}-{b}" if b > a else f"{a}" for a, b in runs))
    return ranges


def _is_contiguous(phases: Sequence[Sequence[int]]) -> bool:
    """Whether the phases, in order, are consecutive runs covering 0..L-1."""
    flat = [int(i) for phase in phases for i in phase]
    return all(len(phase) > 0 for phase in phases) and flat == list(range(len(flat)))


def schedule_from_phases(phases: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """Phase lengths ``(n_1, ..., n_k)`` of contiguous, ordered phases covering layers 0..L-1."""
    if not phases or not _is_contiguous(phases):
        raise ValueError(
            f"phases {phase_ranges(phases) if phases else []} (1-based) are not contiguous runs covering every layer "
            "in order, so they have no block_schedule; use algorithm='contiguous' or contiguous_partition().")
    return tuple(len(phase) for phase in phases)


def phase_boundaries_from_schedule(block_schedule: Sequence[int]) -> tuple[int, ...]:
    """Cumulative boundaries ``(0, b_1, ..., L)`` of a schedule: ``(7, 5) -> (0, 7, 12)``."""
    if not block_schedule or any(isinstance(n, bool) or int(n) != n or n < 1 for n in block_schedule):
        raise ValueError(f"block_schedule must be a non-empty sequence of positive ints, got {block_schedule!r}.")
    return (0, *np.cumsum([int(n) for n in block_schedule]).tolist())


def schedule_from_boundaries(phase_boundaries: Sequence[int]) -> tuple[int, ...]:
    """Phase lengths of boundaries ``(0, b_1, ..., L)``: ``(0, 7, 12) -> (7, 5)``."""
    bounds = [int(b) for b in phase_boundaries]
    if len(bounds) < 2 or bounds[0] != 0 or any(b <= a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(
            f"phase_boundaries must start at 0 and increase strictly, e.g. (0, 7, 12); got {tuple(phase_boundaries)}.")
    return tuple(b - a for a, b in zip(bounds, bounds[1:]))


def exact_max_cut(distance: Any) -> tuple[float, list[int], list[int]]:
    """Exact two-way max-cut of the complete graph with weights ``distance``.

    Enumerates all ``2^(n-1) - 1`` bipartitions with vertex 0 pinned to the first side, in numpy chunks.
    Returns ``(cut value, side with vertex 0, other side)``, both sides sorted; ties go to the first
    bipartition in enumeration order.
    """
    matrix = _validate_distance(distance)
    n = matrix.shape[0]
    if n < 2:
        raise ValueError("A max-cut needs at least 2 vertices.")
    if n > _MAX_FORCED_EXACT_CUT_SIZE:
        raise ValueError(
            f"Exact max-cut over {n} vertices would enumerate 2^{n - 1} bipartitions; the limit is "
            f"{_MAX_FORCED_EXACT_CUT_SIZE}. Use contiguous splits (divisive_partition(contiguous_only=True)).")
    row_sums = matrix.sum(axis=1)
    shifts = np.arange(n - 1, dtype=np.int64)
    best_value, best_mask = -math.inf, 0
    for start in range(1, 1 << (n - 1), _CUT_CHUNK):
        masks = np.arange(start, min(start + _CUT_CHUNK, 1 << (n - 1)), dtype=np.int64)
        other_side = np.zeros((masks.size, n))
        other_side[:, 1:] = (masks[:, None] >> shifts) & 1
        # cut(T) = sum_{i in T} rowsum_i - sum_{i, j in T} w_ij
        values = other_side @ row_sums - np.einsum("mi,mi->m", other_side @ matrix, other_side)
        index = int(np.argmax(values))
        if values[index] > best_value:
            best_value, best_mask = float(values[index]), int(masks[index])
    other = [i for i in range(1, n) if (best_mask >> (i - 1)) & 1]
    first = [i for i in range(n) if i not in other]
    return best_value, first, other


def _contiguous_max_cut(matrix: np.ndarray) -> tuple[float, int]:
    """Best split of ordered vertices into a prefix ``[:p]`` and suffix ``[p:]``: (cut value, p)."""
    n = matrix.shape[0]
    values = [matrix[:p, p:].sum() for p in range(1, n)]
    index = int(np.argmax(values))
    return float(values[index]), index + 1


@dataclass
class Partition:
    """Layers split into phases by one of the algorithms.

    ``cut_values`` decompose the total cut (``sum(cut_values) == cut_value(D, phases)``): for ``divisive``
    they are the bisection values in the order the splits were made; for ``contiguous`` entry j is the
    weight between phase j and all later phases.
    """

    phases: list[list[int]]
    contiguous: bool
    cut_values: list[float]
    algorithm: str
    restricted_to_contiguous: bool = False

    @property
    def k(self) -> int:
        return len(self.phases)

    @property
    def cut_value(self) -> float:
        """Total weight between different phases."""
        return float(sum(self.cut_values))

    @property
    def block_schedule(self) -> tuple[int, ...] | None:
        """Phase lengths, or None when the phases are not contiguous."""
        return schedule_from_phases(self.phases) if self.contiguous else None

    @property
    def phase_boundaries(self) -> tuple[int, ...] | None:
        """``(0, b_1, ..., L)``, or None when the phases are not contiguous."""
        schedule = self.block_schedule
        return phase_boundaries_from_schedule(schedule) if schedule else None


def _divisive_sequence(
        distance: np.ndarray, max_k: int, contiguous_only: bool | None,
) -> list[Partition]:
    """Divisive partitions for k = 1..max_k (each refines the previous one by one bisection)."""
    depth = distance.shape[0]

    def best_split(cluster: list[int]) -> tuple[float, list[int], list[int], bool]:
        """(cut value, side with the cluster's first layer, other side, whether splits were contiguous only)."""
        if len(cluster) < 2:
            return -math.inf, cluster, [], False
        sub = distance[np.ix_(cluster, cluster)]
        restricted = contiguous_only if contiguous_only is not None else len(cluster) > MAX_EXACT_CUT_SIZE
        if restricted:
            value, p = _contiguous_max_cut(sub)
            return value, cluster[:p], cluster[p:], True
        value, first, other = exact_max_cut(sub)
        return value, [cluster[i] for i in first], [cluster[i] for i in other], False

    clusters = [list(range(depth))]
    splits = [best_split(clusters[0])]
    cut_values: list[float] = []
    restricted_sizes: list[int] = []  # sizes of the clusters bisected with contiguous splits only
    sequence = []
    for k in range(1, max_k + 1):
        phases = sorted(clusters, key=lambda c: c[0])
        sequence.append(Partition(
            phases=[list(c) for c in phases],
            contiguous=_is_contiguous(phases),
            cut_values=list(cut_values),
            algorithm="divisive",
            restricted_to_contiguous=bool(restricted_sizes),
        ))
        if k == max_k:
            break
        index = max(range(len(clusters)), key=lambda i: splits[i][0])
        value, first, other, restricted = splits[index]
        cut_values.append(value)
        if restricted:
            restricted_sizes.append(len(first) + len(other))
        clusters[index:index + 1] = [first, other]
        splits[index:index + 1] = [best_split(first), best_split(other)]
    if restricted_sizes and contiguous_only is None:
        warnings.warn(
            f"Exact max-cut is limited to clusters of <= {MAX_EXACT_CUT_SIZE} layers (2^(n-1) bipartitions); "
            f"clusters of {sorted(set(restricted_sizes), reverse=True)} layers were bisected with contiguous splits "
            "only (the partition records restricted_to_contiguous=True). Pass contiguous_only=False to force "
            "exact cuts.", UserWarning, stacklevel=3)
    return sequence


def divisive_partition(distance: Any, k: int, contiguous_only: bool | None = None) -> Partition:
    """The paper's divisive max-cut: k - 1 times, bisect the cluster with the largest exact max-cut value.

    ``contiguous_only``: None (default) bisects clusters of more than ``MAX_EXACT_CUT_SIZE`` layers with
    contiguous splits only, with a warning; True always does; False always cuts exactly (up to 24 layers, ~10 s at 24).
    """
    matrix = _validate_distance(distance)
    k = _validate_k(k, matrix.shape[0])
    return _divisive_sequence(matrix, k, contiguous_only)[-1]


def _contiguous_sequence(distance: np.ndarray, max_k: int) -> list[Partition]:
    """Contiguous partitions minimising the within-phase weight, for k = 1..max_k (O(max_k L^2))."""
    depth = distance.shape[0]
    prefix = np.zeros((depth + 1, depth + 1))
    prefix[1:, 1:] = distance.cumsum(axis=0).cumsum(axis=1)
    diagonal = np.diag(prefix)
    # within[a, b] = weight inside the segment [a, b) = 0.5 * sum(D[a:b, a:b]) for a < b
    within = 0.5 * (diagonal[:, None] + diagonal[None, :] - prefix - prefix.T)
    cost = np.full((max_k + 1, depth + 1), math.inf)
    back = np.zeros((max_k + 1, depth + 1), dtype=np.int64)
    cost[1, 1:] = within[0, 1:]
    for j in range(2, max_k + 1):
        for b in range(j, depth + 1):
            candidates = cost[j - 1, j - 1:b] + within[j - 1:b, b]
            index = int(np.argmin(candidates))
            cost[j, b], back[j, b] = candidates[index], index + j - 1
    sequence = []
    for k in range(1, max_k + 1):
        bounds = [depth]
        for j in range(k, 1, -1):
            bounds.append(int(back[j, bounds[-1]]))
        bounds = [0, *reversed(bounds)]
        phases = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
        cut_values = [float(distance[a:b, b:].sum()) for a, b in zip(bounds[:-2], bounds[1:-1])]
        sequence.append(Partition(phases=phases, contiguous=True, cut_values=cut_values, algorithm="contiguous"))
    return sequence


def contiguous_partition(distance: Any, k: int) -> Partition:
    """Exact contiguous partition into k phases minimising the within-phase distance (maximising the cut)."""
    matrix = _validate_distance(distance)
    k = _validate_k(k, matrix.shape[0])
    return _contiguous_sequence(matrix, k)[-1]


def _partition_sequence(
        distance: np.ndarray, max_k: int, algorithm: str, contiguous_only: bool | None = None,
) -> list[Partition]:
    if algorithm == "divisive":
        return _divisive_sequence(distance, max_k, contiguous_only)
    return _contiguous_sequence(distance, max_k)


def _score(partition: Partition, weight: float) -> dict[str, Any]:
    schedule = partition.block_schedule
    return {
        "k": partition.k,
        "phases": partition.phases,
        "phase_layers": phase_ranges(partition.phases),
        "contiguous": partition.contiguous,
        "block_schedule": list(schedule) if schedule else None,
        "phase_boundaries": list(partition.phase_boundaries) if schedule else None,
        "cut_values": partition.cut_values,
        "cut_value": partition.cut_value,
        "cut_fraction": partition.cut_value / weight if weight > 0 else 0.0,
    }


def phase_scores(
        distance: Any, max_k: int, algorithm: str = "divisive", contiguous_only: bool | None = None,
) -> list[dict[str, Any]]:
    """For k = 1..max_k: the partition, its schedule, its cut value and cut / total weight, to choose k."""
    if algorithm not in ALGORITHMS:
        raise _choice_error("algorithm", algorithm, ALGORITHMS)
    matrix = _validate_distance(distance)
    max_k = _validate_k(max_k, matrix.shape[0], "max_k")
    weight = float(0.5 * matrix.sum())
    return [_score(p, weight) for p in _partition_sequence(matrix, max_k, algorithm, contiguous_only)]


# ----------------------------------------------------------------------------------------------------
# Plot
# ----------------------------------------------------------------------------------------------------

def plot_distance_matrix(
        distance: Any,
        phase_boundaries: Sequence[int] | None = None,
        path: str | Path | None = None,
        title: str | None = None,
        metric: str = "cls_patchmean",
) -> Figure:
    """Heatmap of a layer distance matrix (layers 1..L) with the phases boxed on the diagonal.

    Values are written in the cells when L <= 16. Saved as PNG to ``path`` when given. The figure is
    built without pyplot, so no GUI backend is touched.
    """
    matrix = np.asarray(distance, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"distance must be a square [L, L] matrix, got shape {matrix.shape}.")
    depth = matrix.shape[0]
    if phase_boundaries is not None:
        schedule_from_boundaries(phase_boundaries)
        if phase_boundaries[-1] != depth:
            raise ValueError(f"phase_boundaries {tuple(phase_boundaries)} must end at the depth L={depth}.")
    size = min(4.0 + 0.35 * depth, 14.0)
    figure = Figure(figsize=(size + 1.2, size))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", interpolation="nearest")
    colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label(f"{metric} distance")
    step = 1 if depth <= 24 else math.ceil(depth / 20)
    ticks = list(range(0, depth, step))
    ax.set_xticks(ticks, [str(t + 1) for t in ticks])
    ax.set_yticks(ticks, [str(t + 1) for t in ticks])
    ax.set_xlabel("layer")
    ax.set_ylabel("layer")
    if depth <= 16:
        annotate_cells(ax, matrix, "{:.2f}", threshold=matrix.min() + 0.5 * (matrix.max() - matrix.min()))
    if phase_boundaries is not None:
        for start, end in zip(phase_boundaries, phase_boundaries[1:]):
            ax.add_patch(Rectangle((start - 0.5, start - 0.5), end - start, end - start,
                                   fill=False, edgecolor="red", linewidth=2.0))
    if title:
        ax.set_title(title)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


# ----------------------------------------------------------------------------------------------------
# Discovery
# ----------------------------------------------------------------------------------------------------

@dataclass
class PhaseResult:
    """Outcome of :func:`discover`.

    ``phases`` are the phases in use (0-based layer indices), always contiguous; ``contiguous`` says
    whether the requested ``algorithm`` produced contiguous phases itself. When it did not,
    ``fallback_algorithm`` is "contiguous" and ``noncontiguous_phases`` keeps what it produced.
    ``scores`` hold every k = 1..max_k of the requested algorithm.
    """

    teacher: str
    metric: str
    tokens: str
    algorithm: str
    k: int
    num_images: int
    distance: np.ndarray
    phases: list[list[int]]
    contiguous: bool
    phase_boundaries: tuple[int, ...]
    block_schedule: tuple[int, ...]
    cut_values: list[float]
    scores: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fallback_algorithm: str | None = None
    noncontiguous_phases: list[list[int]] | None = None
    restricted_to_contiguous: bool = False

    @property
    def depth(self) -> int:
        return int(self.distance.shape[0])

    @property
    def total_weight(self) -> float:
        return float(0.5 * np.asarray(self.distance).sum())

    @property
    def cut_value(self) -> float:
        return float(sum(self.cut_values))

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict; ``phase_layers`` gives the phases as 1-based ranges ("1-7")."""
        weight = self.total_weight
        return {
            "teacher": self.teacher,
            "metric": self.metric,
            "tokens": self.tokens,
            "algorithm": self.algorithm,
            "k": self.k,
            "depth": self.depth,
            "num_images": self.num_images,
            "block_schedule": list(self.block_schedule),
            "phase_boundaries": list(self.phase_boundaries),
            "phases": [list(map(int, p)) for p in self.phases],
            "phase_layers": phase_ranges(self.phases),
            "contiguous": self.contiguous,
            "fallback_algorithm": self.fallback_algorithm,
            "noncontiguous_phases": self.noncontiguous_phases,
            "restricted_to_contiguous": self.restricted_to_contiguous,
            "cut_values": [float(v) for v in self.cut_values],
            "cut_value": self.cut_value,
            "total_weight": weight,
            "cut_fraction": self.cut_value / weight if weight > 0 else 0.0,
            "scores": self.scores,
            "notes": list(self.notes),
            "distance": np.asarray(self.distance, dtype=np.float64).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PhaseResult:
        """Inverse of :meth:`to_dict` (derived keys are ignored)."""
        return cls(
            teacher=data["teacher"], metric=data["metric"], tokens=data["tokens"], algorithm=data["algorithm"],
            k=int(data["k"]), num_images=int(data["num_images"]), distance=np.asarray(data["distance"], dtype=np.float64),
            phases=[list(p) for p in data["phases"]], contiguous=bool(data["contiguous"]),
            phase_boundaries=tuple(data["phase_boundaries"]), block_schedule=tuple(data["block_schedule"]),
            cut_values=list(data["cut_values"]), scores=list(data.get("scores", [])), notes=list(data.get("notes", [])),
            fallback_algorithm=data.get("fallback_algorithm"), noncontiguous_phases=data.get("noncontiguous_phases"),
            restricted_to_contiguous=bool(data.get("restricted_to_contiguous", False)),
        )

    @classmethod
    def load(cls, path: str | Path) -> PhaseResult:
        """Reads a ``phases.json`` written by :meth:`save`."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No phase result at {path}; write one with `raptor-zoo phases` or PhaseResult.save().")
        return cls.from_dict(json.loads(path.read_text()))

    def plot(self, path: str | Path | None = None) -> Figure:
        """Distance heatmap with this result's phases boxed."""
        title = f"{self.teacher}: k={self.k}, schedule {tuple(self.block_schedule)} ({self.algorithm})"
        return plot_distance_matrix(self.distance, self.phase_boundaries, path=path, title=title, metric=self.metric)

    def save(self, out_dir: str | Path, stem: str = "phases") -> dict[str, Path]:
        """Writes ``{stem}.json`` and ``{stem}.png`` into ``out_dir``; returns their paths."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = {"json": out_dir / f"{stem}.json", "png": out_dir / f"{stem}.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        self.plot(paths["png"])
        return paths


def _is_path_list(images: Any) -> bool:
    return isinstance(images, (list, tuple)) and bool(images) and all(
        isinstance(image, (str, os.PathLike)) for image in images)


def _path_batches(
        paths: Sequence[str | os.PathLike], data_config: Mapping[str, Any], batch_size: int, device: torch.device,
) -> Iterable[torch.Tensor]:
    """Batches of the image files ``paths``, normalised at the teacher's ``data_config`` (its eval transform)."""
    from PIL import Image

    from .data import build_transform

    missing = [os.fspath(path) for path in paths if not Path(path).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of the {len(paths)} image paths do not exist, first: {missing[:3]}.")
    transform = build_transform(dict(data_config), is_training=False)
    for start in range(0, len(paths), batch_size):
        batch = []
        for path in paths[start:start + batch_size]:
            with Image.open(path) as image:
                batch.append(transform(image.convert("RGB")))
        yield torch.stack(batch).to(device)


def _image_batches(images: torch.Tensor | Iterable[Any], batch_size: int) -> Iterable[Any]:
    if isinstance(images, torch.Tensor):
        if images.ndim != 4:
            raise ValueError(f"images must be a tensor [B, C, H, W] or an iterable of such batches, got {tuple(images.shape)}.")
        return torch.split(images, batch_size)
    if not isinstance(images, Iterable):
        raise TypeError(f"images must be a tensor [B, C, H, W] or an iterable of batches, got {type(images).__name__}.")
    return images


def _batch_tensor(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: a tensor, the first item of an (images, labels) pair, or pixel_values."""
    if isinstance(batch, Mapping):
        batch = batch.get("pixel_values", batch.get("image"))
    elif isinstance(batch, (tuple, list)) and batch:
        batch = batch[0]
    if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
        found = tuple(batch.shape) if isinstance(batch, torch.Tensor) else type(batch).__name__
        raise ValueError(
            "Each image batch must be a normalised tensor [B, C, H, W] (alone, first in a tuple, or under "
            f"'pixel_values'), got {found}.")
    return batch


_TEACHER_ATTRIBUTES = ("depth", "num_prefix_tokens", "num_reg_tokens", "has_class_token", "trajectory")


def discover(
        teacher: Any,
        images: torch.Tensor | Iterable[Any],
        k: int = 2,
        metric: str = "cls_patchmean",
        algorithm: str = "divisive",
        max_k: int | None = None,
        tokens: str = "all",
        batch_size: int = 32,
        progress: bool = True,
        max_cka_samples: int = 4096,
) -> PhaseResult:
    """Measures the teacher's layer distances on ``images`` and splits its L blocks into ``k`` phases.

    ``teacher`` needs ``depth``, ``num_prefix_tokens``, ``num_reg_tokens``, ``has_class_token``, ``name``
    and ``trajectory(images, layers)`` (see raptor_zoo.teachers.Teacher). ``images`` is a normalised
    tensor ``[B, C, H, W]`` (split into ``batch_size`` batches), an iterable of batches, or a list of image
    file paths (read with PIL and normalised with the teacher's ``data_config``). ``scores`` cover
    k = 1..max_k (default ``min(L, max(k, 6))``). A divisive result that is not contiguous falls back to
    the contiguous DP with a warning.
    """
    missing = [name for name in _TEACHER_ATTRIBUTES if not hasattr(teacher, name)]
    if missing:
        raise TypeError(
            f"teacher lacks {missing}; pass a raptor_zoo Teacher (raptor_zoo.load_teacher(...)) or an object with "
            f"{list(_TEACHER_ATTRIBUTES)}.")
    depth = int(teacher.depth)
    k = _validate_k(k, depth)
    max_k = min(depth, max(k, 6)) if max_k is None else _validate_k(max_k, depth, "max_k")
    if max_k < k:
        raise ValueError(f"max_k={max_k} must be >= k={k} so the scores include the chosen k.")
    if algorithm not in ALGORITHMS:
        raise _choice_error("algorithm", algorithm, ALGORITHMS)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    accumulator = LayerDistanceAccumulator(
        depth, metric=metric, tokens=tokens, num_prefix_tokens=teacher.num_prefix_tokens,
        num_reg_tokens=teacher.num_reg_tokens, has_class_token=teacher.has_class_token,
        max_cka_samples=max_cka_samples,
    )
    name = str(getattr(teacher, "name", type(teacher).__name__))
    if _is_path_list(images):
        if not hasattr(teacher, "data_config"):
            raise TypeError("image paths need a teacher with a data_config to normalise them; pass tensors instead.")
        device = next(iter(teacher.parameters())).device if isinstance(teacher, torch.nn.Module) else "cpu"
        batches = _path_batches(images, teacher.data_config, batch_size, device)
    else:
        batches = _image_batches(images, batch_size)
    layers = list(range(1, depth + 1))
    with torch.no_grad():
        for batch in tqdm(batches, desc=f"phases: {name}", unit="batch", disable=not progress):
            accumulator.update(teacher.trajectory(_batch_tensor(batch), layers=layers))
    if accumulator.num_images == 0:
        raise ValueError("images yielded no batches; pass at least one image.")
    distance = accumulator.compute()

    sequence = _partition_sequence(distance, max_k, algorithm)
    weight = float(0.5 * distance.sum())
    scores = [_score(p, weight) for p in sequence]
    chosen = sequence[k - 1]
    notes = [f"distance over layers 1..{depth} (block outputs before the final norm) on {accumulator.num_images} images"]
    if metric == "cka":
        notes.append(f"cka on a uniform sample of at most {max_cka_samples} token rows")
    if chosen.restricted_to_contiguous:
        notes.append(f"clusters of more than {MAX_EXACT_CUT_SIZE} layers were bisected with contiguous splits only")
    fallback_algorithm = noncontiguous_phases = None
    used = chosen
    if not chosen.contiguous:
        fallback_algorithm, noncontiguous_phases = "contiguous", chosen.phases
        used = _contiguous_sequence(distance, k)[-1]
        message = (f"The {algorithm} partition {phase_ranges(chosen.phases)} of {name} is not contiguous; "
                   f"using the contiguous DP partition {phase_ranges(used.phases)} instead.")
        warnings.warn(message, UserWarning, stacklevel=2)
        notes.append(message)
    schedule = schedule_from_phases(used.phases)
    return PhaseResult(
        teacher=name, metric=metric, tokens=tokens, algorithm=algorithm, k=k, num_images=accumulator.num_images,
        distance=distance, phases=used.phases, contiguous=chosen.contiguous,
        phase_boundaries=phase_boundaries_from_schedule(schedule), block_schedule=schedule,
        cut_values=used.cut_values, scores=scores, notes=notes, fallback_algorithm=fallback_algorithm,
        noncontiguous_phases=noncontiguous_phases, restricted_to_contiguous=chosen.restricted_to_contiguous,
    )
