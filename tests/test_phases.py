"""Phase discovery: distance metrics, exact partitions (divisive max-cut, contiguous DP), discover()."""
import itertools
import json
import warnings

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from raptor_zoo.phases import (
    LayerDistanceAccumulator,
    PhaseResult,
    contiguous_partition,
    cut_value,
    discover,
    divisive_partition,
    exact_max_cut,
    phase_boundaries_from_schedule,
    phase_ranges,
    phase_scores,
    plot_distance_matrix,
    schedule_from_boundaries,
    schedule_from_phases,
    total_weight,
)

# DINOv2 ViT-B/14-reg layer distances (paper metric), transcribed in docs/method.md §2.1; rows/cols = layers 1..12.
PAPER_DISTANCE = np.array([
    [.00, .08, .20, .26, .32, .37, .45, .63, .70, .81, .82, 1.08],
    [.08, .00, .11, .16, .21, .27, .36, .54, .64, .75, .75, 1.09],
    [.20, .11, .00, .05, .15, .19, .32, .56, .70, .81, .79, 1.11],
    [.26, .16, .05, .00, .09, .15, .28, .52, .67, .78, .76, 1.11],
    [.32, .21, .15, .09, .00, .09, .20, .39, .53, .65, .69, 1.07],
    [.37, .27, .19, .15, .09, .00, .10, .30, .45, .58, .62, 1.06],
    [.45, .36, .32, .28, .20, .10, .00, .17, .30, .45, .54, 1.04],
    [.63, .54, .56, .52, .39, .30, .17, .00, .14, .30, .45, .94],
    [.70, .64, .70, .67, .53, .45, .30, .14, .00, .16, .35, .86],
    [.81, .75, .81, .78, .65, .58, .45, .30, .16, .00, .25, .81],
    [.82, .75, .79, .76, .69, .62, .54, .45, .35, .25, .00, .75],
    [1.08, 1.09, 1.11, 1.11, 1.07, 1.06, 1.04, .94, .86, .81, .75, .00],
])


def random_symmetric(rng: np.random.Generator, n: int) -> np.ndarray:
    matrix = rng.random((n, n))
    matrix = matrix + matrix.T
    np.fill_diagonal(matrix, 0.0)
    return matrix


def banded(n: int) -> np.ndarray:
    index = np.arange(n)
    return np.abs(index[:, None] - index[None, :]) / (n - 1)


# ---------------------------------------------------------------------------------------------- partitions

@pytest.mark.parametrize("k, expected", [
    (1, ["1-12"]),
    (2, ["1-7", "8-12"]),
    (3, ["1-7", "8-10", "11-12"]),
    (4, ["1-4", "5-7", "8-10", "11-12"]),
])
def test_divisive_reproduces_paper_phases(k, expected):
    partition = divisive_partition(PAPER_DISTANCE, k)
    assert phase_ranges(partition.phases) == expected
    assert partition.contiguous and not partition.restricted_to_contiguous
    assert len(partition.cut_values) == k - 1
    assert partition.cut_value == pytest.approx(cut_value(PAPER_DISTANCE, partition.phases))
    # docs/method.md §2.2: contiguity-constrained bisection gives identical phases on this matrix
    assert divisive_partition(PAPER_DISTANCE, k, contiguous_only=True).phases == partition.phases


def test_divisive_cut_values_on_paper_matrix():
    partition = divisive_partition(PAPER_DISTANCE, 4)
    assert total_weight(PAPER_DISTANCE) == pytest.approx(33.88, abs=0.05)
    assert partition.cut_values[0] == pytest.approx(24.46, abs=0.05)
    assert partition.cut_values[1:] == pytest.approx([3.66, 3.16], abs=0.05)  # {8-10}|{11,12}, then {1-4}|{5-7}
    assert partition.block_schedule == (4, 3, 3, 2)
    assert partition.phase_boundaries == (0, 4, 7, 10, 12)


@pytest.mark.parametrize("k, expected", [
    (2, ["1-7", "8-12"]),
    (3, ["1-5", "6-9", "10-12"]),  # docs/method.md §2.2: differs from the paper's divisive phases
    (4, ["1-4", "5-7", "8-10", "11-12"]),
])
def test_contiguous_dp_on_paper_matrix(k, expected):
    partition = contiguous_partition(PAPER_DISTANCE, k)
    assert phase_ranges(partition.phases) == expected
    assert partition.contiguous
    assert partition.cut_value == pytest.approx(cut_value(PAPER_DISTANCE, partition.phases))


def brute_force_contiguous(distance: np.ndarray, k: int) -> tuple[float, list[list[int]]]:
    depth = distance.shape[0]
    best = (np.inf, None)
    for cuts in itertools.combinations(range(1, depth), k - 1):
        bounds = (0, *cuts, depth)
        phases = [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]
        within = sum(0.5 * distance[a:b, a:b].sum() for a, b in zip(bounds, bounds[1:]))
        if within < best[0]:
            best = (within, phases)
    return best


def test_contiguous_dp_equals_brute_force():
    rng = np.random.default_rng(0)
    for depth in range(1, 13):
        for k in range(1, min(4, depth) + 1):
            for _ in range(3):
                distance = random_symmetric(rng, depth)
                within, phases = brute_force_contiguous(distance, k)
                partition = contiguous_partition(distance, k)
                assert partition.phases == phases, (depth, k)
                assert total_weight(distance) - partition.cut_value == pytest.approx(within)


def brute_force_max_cut(distance: np.ndarray) -> float:
    n = distance.shape[0]
    best = -np.inf
    for size in range(1, n):
        for side in itertools.combinations(range(n), size):
            other = [i for i in range(n) if i not in side]
            best = max(best, sum(distance[i, j] for i in side for j in other))
    return best


def test_exact_max_cut_equals_brute_force():
    rng = np.random.default_rng(1)
    for n in range(2, 9):
        for _ in range(3):
            distance = random_symmetric(rng, n)
            value, first, other = exact_max_cut(distance)
            assert value == pytest.approx(brute_force_max_cut(distance))
            assert 0 in first and sorted(first + other) == list(range(n)) and other
            assert value == pytest.approx(distance[np.ix_(first, other)].sum())


def test_divisive_restricts_to_contiguous_above_20_layers():
    distance = banded(24)
    with pytest.warns(UserWarning, match="contiguous splits"):
        partition = divisive_partition(distance, 2)
    assert partition.restricted_to_contiguous
    assert partition.block_schedule == (12, 12)
    # a planted 10|14 structure on top of the band is recovered through the restricted cut
    groups = np.repeat([0, 1], [10, 14])
    planted = 0.1 * distance + (groups[:, None] != groups[None, :])
    with pytest.warns(UserWarning, match="contiguous splits"):
        assert divisive_partition(planted, 2).block_schedule == (10, 14)
    assert divisive_partition(planted, 2, contiguous_only=True).restricted_to_contiguous
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not divisive_partition(distance, 1).restricted_to_contiguous  # no bisection made
        assert divisive_partition(banded(20), 2).block_schedule == (10, 10)  # exact, no warning
    with pytest.raises(ValueError, match="bipartitions"):
        divisive_partition(banded(25), 2, contiguous_only=False)


def test_noncontiguous_divisive_is_reported():
    groups = np.array([0, 0, 0, 1, 1, 1, 0, 0])
    distance = (groups[:, None] != groups[None, :]).astype(float) + 0.01 * banded(8)
    partition = divisive_partition(distance, 2)
    assert phase_ranges(partition.phases) == ["1-3,7-8", "4-6"]
    assert not partition.contiguous and partition.block_schedule is None
    with pytest.raises(ValueError, match="not contiguous"):
        schedule_from_phases(partition.phases)


def test_phase_scores():
    scores = phase_scores(PAPER_DISTANCE, 6)
    assert [s["k"] for s in scores] == list(range(1, 7))
    assert scores[0]["cut_value"] == 0.0 and scores[1]["cut_fraction"] == pytest.approx(24.46 / 33.88, abs=2e-3)
    fractions = [s["cut_fraction"] for s in scores]
    assert fractions == sorted(fractions) and fractions[-1] <= 1.0
    assert scores[2]["block_schedule"] == [7, 3, 2] and scores[2]["phase_boundaries"] == [0, 7, 10, 12]
    contiguous = phase_scores(PAPER_DISTANCE, 4, algorithm="contiguous")
    assert contiguous[2]["phase_layers"] == ["1-5", "6-9", "10-12"]
    # the DP maximises the cut over contiguous partitions, so it is never below the divisive one
    assert all(c["cut_value"] >= d["cut_value"] - 1e-12 for c, d in zip(contiguous, scores))
    json.dumps(scores)
    with pytest.raises(ValueError, match="algorithm"):
        phase_scores(PAPER_DISTANCE, 3, algorithm="spectral")


def test_schedule_helpers():
    assert phase_boundaries_from_schedule((7, 5)) == (0, 7, 12)
    assert schedule_from_boundaries((0, 7, 12)) == (7, 5)
    assert schedule_from_phases([list(range(7)), list(range(7, 12))]) == (7, 5)
    assert phase_ranges([[0], [1, 2, 4]]) == ["1", "2-3,5"]
    with pytest.raises(ValueError, match="not contiguous"):
        schedule_from_phases([[1, 2], [0]])
    with pytest.raises(ValueError, match="start at 0"):
        schedule_from_boundaries((1, 7, 12))
    with pytest.raises(ValueError, match="positive"):
        phase_boundaries_from_schedule((7, 0))


@pytest.mark.parametrize("k", [0, 13, 2.5])
def test_k_out_of_range(k):
    with pytest.raises(ValueError, match=r"1\.\.12"):
        divisive_partition(PAPER_DISTANCE, k)
    with pytest.raises(ValueError, match=r"1\.\.12"):
        contiguous_partition(PAPER_DISTANCE, k)


def test_bad_distance_matrix():
    with pytest.raises(ValueError, match="symmetric"):
        divisive_partition(np.triu(PAPER_DISTANCE), 2)
    with pytest.raises(ValueError, match="square"):
        contiguous_partition(np.zeros((3, 4)), 2)


# ---------------------------------------------------------------------------------------------- metrics

def layout(**overrides):
    return {"num_prefix_tokens": 5, "num_reg_tokens": 4, "has_class_token": True, **overrides}


def test_identical_layers_have_zero_distance():
    layer = torch.randn(6, 1, 14, 16)
    trajectory = layer.expand(6, 4, 14, 16)
    for metric, tokens in [("cls_patchmean", "all"), ("token_cosine", "all"), ("token_cosine", "patches"), ("cka", "all")]:
        distance = LayerDistanceAccumulator(4, metric, tokens, **layout()).update(trajectory).compute()
        assert distance.dtype == np.float64 and distance.shape == (4, 4)
        np.testing.assert_allclose(distance, 0.0, atol=1e-6)


def test_orthogonal_cls_tokens_contribute_half():
    eye = torch.eye(8)
    patches = torch.randn(3, 1, 4, 8).expand(3, 2, 4, 8)
    cls = torch.stack([eye[0], eye[1]]).expand(3, 2, 8).unsqueeze(2)  # layer 1: e0, layer 2: e1
    trajectory = torch.cat([cls, patches], dim=2)
    distance = LayerDistanceAccumulator(2, **layout(num_prefix_tokens=1, num_reg_tokens=0)).update(trajectory).compute()
    np.testing.assert_allclose(distance, [[0.0, 0.5], [0.5, 0.0]], atol=1e-7)
    cls_only = LayerDistanceAccumulator(2, "token_cosine", "cls", **layout(num_prefix_tokens=1, num_reg_tokens=0))
    np.testing.assert_allclose(cls_only.update(trajectory).compute()[0, 1], 1.0, atol=1e-7)
    # without a class token the first token is a patch: cos(e0, e1) = 0 moves the patch mean only partly
    no_cls = LayerDistanceAccumulator(2, **layout(num_prefix_tokens=0, num_reg_tokens=0, has_class_token=False))
    assert 0.0 < no_cls.update(trajectory).compute()[0, 1] < 1.0


def test_registers_are_excluded_from_patch_mean():
    trajectory = torch.randn(4, 1, 14, 16).repeat(1, 3, 1, 1)
    trajectory[:, 1, 1:5] = torch.randn(4, 4, 16)  # only the registers of layer 2 differ
    paper = LayerDistanceAccumulator(3, **layout()).update(trajectory).compute()
    np.testing.assert_allclose(paper, 0.0, atol=1e-6)
    registers = LayerDistanceAccumulator(3, "token_cosine", "registers", **layout()).update(trajectory).compute()
    assert registers[0, 1] > 0.5 and registers[0, 2] == pytest.approx(0.0, abs=1e-6)
    patches = LayerDistanceAccumulator(3, "token_cosine", "patches", **layout()).update(trajectory).compute()
    np.testing.assert_allclose(patches, 0.0, atol=1e-6)


def test_cka_invariant_to_rotation_and_scale():
    torch.manual_seed(0)
    base = torch.randn(8, 14, 16)
    rotation = torch.linalg.qr(torch.randn(16, 16))[0]
    trajectory = torch.stack([base, 3.0 * base @ rotation, torch.randn(8, 14, 16)], dim=1)
    for max_samples in (4096, 40):  # all 112 rows kept, then a 40-row sample
        accumulator = LayerDistanceAccumulator(3, "cka", "all", max_cka_samples=max_samples, **layout())
        accumulator.update(trajectory[:4]).update(trajectory[4:])
        distance = accumulator.compute()
        assert distance[0, 1] == pytest.approx(0.0, abs=1e-6)
        assert distance[0, 2] > 0.1 and distance[1, 2] == pytest.approx(distance[0, 2], abs=1e-6)
        assert accumulator._cka_features.shape[1] == min(max_samples, 112)


def test_streaming_equals_one_batch_and_state_zero_is_dropped():
    trajectory = torch.randn(10, 7, 14, 16)  # 6 blocks + embeddings
    for metric in ("cls_patchmean", "token_cosine", "cka"):
        whole = LayerDistanceAccumulator(6, metric, **layout()).update(trajectory).compute()
        streamed = LayerDistanceAccumulator(6, metric, **layout())
        for chunk in trajectory[:, 1:].split(3):
            streamed.update(chunk)
        np.testing.assert_allclose(streamed.compute(), whole, atol=1e-6)
        np.testing.assert_array_equal(whole, whole.T)
        assert streamed.num_images == 10


def test_accumulator_rejects_bad_input():
    with pytest.raises(ValueError, match="has_class_token=False"):
        LayerDistanceAccumulator(4, "token_cosine", "cls", **layout(num_prefix_tokens=4, has_class_token=False))
    with pytest.raises(ValueError, match="num_reg_tokens=0"):
        LayerDistanceAccumulator(4, "cka", "registers", **layout(num_prefix_tokens=1, num_reg_tokens=0))
    with pytest.raises(ValueError, match="metric"):
        LayerDistanceAccumulator(4, "mse")
    with pytest.raises(ValueError, match="does not apply"):
        LayerDistanceAccumulator(4, "cls_patchmean", "patches")
    with pytest.raises(ValueError, match="expected depth=4"):
        LayerDistanceAccumulator(4, **layout()).update(torch.randn(2, 3, 14, 8))
    with pytest.raises(ValueError, match="No trajectories"):
        LayerDistanceAccumulator(4).compute()


# ---------------------------------------------------------------------------------------------- discover

class PlantedTeacher:
    """Duck-typed teacher whose trajectory has phases planted by ``groups`` (one direction per group)."""

    name = "planted-vit"
    num_prefix_tokens = 5
    num_reg_tokens = 4
    has_class_token = True

    def __init__(self, groups, dim=16, num_patches=9, noise=0.3, seed=0):
        generator = torch.Generator().manual_seed(seed)
        self.depth = len(groups)
        self.num_tokens = self.num_prefix_tokens + num_patches
        directions = torch.randn(max(groups) + 1, self.num_tokens, dim, generator=generator)
        states = [torch.randn(self.num_tokens, dim, generator=generator)]  # embeddings
        states += [directions[g] + 0.05 * l * torch.randn(self.num_tokens, dim, generator=generator)
                   for l, g in enumerate(groups)]
        self.states = torch.stack(states)  # [L+1, N, D]
        self.projection = noise * torch.randn(3 * 8 * 8, self.num_tokens * dim, generator=generator)
        self.calls = []

    def trajectory(self, images, layers=None):
        layers = list(range(self.depth + 1)) if layers is None else layers
        self.calls.append((list(layers), torch.is_grad_enabled()))
        per_image = (images.flatten(1) @ self.projection).view(len(images), 1, self.num_tokens, -1)
        return self.states[layers].unsqueeze(0) + per_image


def test_discover_recovers_planted_phases(tmp_path):
    teacher = PlantedTeacher([0] * 5 + [1] * 7)
    images = torch.randn(20, 3, 8, 8)
    result = discover(teacher, images, k=2, batch_size=8, progress=False)
    assert teacher.calls == [(list(range(1, 13)), False)] * 3
    assert result.num_images == 20 and result.distance.shape == (12, 12)
    assert result.block_schedule == (5, 7) and result.phase_boundaries == (0, 5, 12)
    assert result.contiguous and result.fallback_algorithm is None
    assert [s["k"] for s in result.scores] == list(range(1, 7))
    assert result.scores[1]["block_schedule"] == [5, 7]
    assert result.cut_value == pytest.approx(cut_value(result.distance, result.phases))

    paths = result.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    for key in ("teacher", "metric", "tokens", "algorithm", "k", "num_images", "distance", "phases", "phase_layers",
                "contiguous", "phase_boundaries", "block_schedule", "cut_values", "scores", "notes"):
        assert key in data, key
    assert data["teacher"] == "planted-vit" and data["phase_layers"] == ["1-5", "6-12"]
    assert data["block_schedule"] == [5, 7] and len(data["distance"]) == 12
    assert paths["png"].name == "phases.png" and paths["png"].stat().st_size > 1000
    reloaded = PhaseResult.load(paths["json"])
    assert reloaded.block_schedule == (5, 7)
    np.testing.assert_allclose(reloaded.distance, result.distance)


def test_discover_accepts_batch_iterables_and_other_metrics():
    teacher = PlantedTeacher([0] * 3 + [1] * 3)
    images = torch.randn(12, 3, 8, 8)
    from_tensor = discover(teacher, images, k=2, batch_size=5, progress=False)
    from_loader = discover(teacher, [(images[:6], None), {"pixel_values": images[6:]}], k=2, progress=False)
    np.testing.assert_allclose(from_loader.distance, from_tensor.distance, atol=1e-7)
    for metric in ("token_cosine", "cka"):
        result = discover(teacher, images, k=2, metric=metric, tokens="patches", algorithm="contiguous",
                          max_k=3, progress=False)
        assert result.block_schedule == (3, 3) and len(result.scores) == 3 and result.tokens == "patches"


def test_discover_falls_back_to_contiguous():
    teacher = PlantedTeacher([0, 0, 0, 1, 1, 1, 0, 0])
    with pytest.warns(UserWarning, match="not contiguous"):
        result = discover(teacher, torch.randn(8, 3, 8, 8), k=2, progress=False)
    assert not result.contiguous and result.fallback_algorithm == "contiguous"
    assert phase_ranges(result.noncontiguous_phases) == ["1-3,7-8", "4-6"]
    assert sum(result.block_schedule) == 8 and result.phases == contiguous_partition(result.distance, 2).phases
    assert any("not contiguous" in note for note in result.notes)


def test_discover_rejects_bad_input():
    teacher = PlantedTeacher([0] * 6 + [1] * 6)
    images = torch.randn(4, 3, 8, 8)
    for k in (0, 13):
        with pytest.raises(ValueError, match=r"1\.\.12"):
            discover(teacher, images, k=k, progress=False)
    with pytest.raises(ValueError, match="max_k"):
        discover(teacher, images, k=4, max_k=3, progress=False)
    with pytest.raises(TypeError, match="trajectory"):
        discover(object(), images, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        discover(teacher, [], progress=False)
    assert teacher.calls == []


def test_plot_distance_matrix(tmp_path):
    figure = plot_distance_matrix(PAPER_DISTANCE, (0, 7, 12), path=tmp_path / "d.png", title="paper")
    assert isinstance(figure, Figure)
    axes = figure.axes[0]
    assert len(axes.texts) == 144 and len(axes.patches) == 2
    assert figure.axes[1].get_ylabel() == "cls_patchmean distance"
    assert (tmp_path / "d.png").stat().st_size > 1000
    large = plot_distance_matrix(banded(24), (0, 12, 24))
    assert len(large.axes[0].texts) == 0
    with pytest.raises(ValueError, match="end at the depth"):
        plot_distance_matrix(PAPER_DISTANCE, (0, 7, 10))
