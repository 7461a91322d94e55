"""raptor_zoo.analysis: constructed trajectories with known answers, and the analyze command on a tiny model."""
import argparse
import json
import math

import numpy as np
import pytest
import torch

from raptor_zoo.analysis import (
    AnalysisConfig,
    TokenLayout,
    angular_speed,
    basin_map,
    class_basins,
    continue_fn_for,
    directional_convergence,
    effective_rank,
    patch_coherence,
    perturb,
    self_correction,
    stable_rank,
    token_dynamics,
    update_ranks,
)
from raptor_zoo.analysis.cli import analyze_command
from raptor_zoo_cli.options import add_analyze_arguments

LAYOUT = TokenLayout(num_prefix_tokens=3, num_reg_tokens=2, has_class_token=True)  # cls, 2 registers, patches


def _random_trajectory(batch=4, depth=6, tokens=11, dim=32, seed=0):
    return torch.randn(batch, depth + 1, tokens, dim, generator=torch.Generator().manual_seed(seed))


def test_token_layout_groups_and_validation():
    groups = LAYOUT.groups(11)
    assert groups == {"cls": slice(0, 1), "registers": slice(1, 3), "patches": slice(3, 11)}
    assert list(TokenLayout(0, 0, False).groups(4)) == ["patches"]
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        TokenLayout(num_prefix_tokens=1, num_reg_tokens=4)
    with pytest.raises(ValueError, match="no patch tokens"):
        LAYOUT.groups(3)


def test_convergence_is_one_at_the_last_layer_and_speed_zero_when_constant():
    trajectory = _random_trajectory()
    gamma = directional_convergence(trajectory)
    np.testing.assert_allclose(gamma[:, -1], 1.0, atol=1e-12)
    assert (gamma[:, :-1] < 0.9).all()  # independent random states are far from the final direction
    constant = trajectory[:, :1].expand(-1, 7, -1, -1) * torch.linspace(1, 5, 7).view(1, 7, 1, 1)  # norms grow
    np.testing.assert_allclose(angular_speed(constant), 0.0, atol=1e-6)
    dynamics = token_dynamics(constant, LAYOUT)
    for name in ("cls", "registers", "patches"):
        np.testing.assert_allclose(dynamics["convergence"][name], 1.0, atol=1e-12)
        np.testing.assert_allclose(dynamics["angular_speed"][name], 0.0, atol=1e-6)


def test_angular_speed_of_a_known_rotation():
    angle = 0.3
    states = torch.stack([torch.tensor([math.cos(angle * t), math.sin(angle * t)]) for t in range(5)])
    trajectory = states.view(1, 5, 1, 2).expand(1, 5, 3, 2)
    np.testing.assert_allclose(angular_speed(trajectory), angle, atol=1e-9)


def test_patch_coherence_is_one_for_parallel_patches_and_low_for_random_ones():
    trajectory = _random_trajectory(dim=256)
    direction = torch.randn(256)
    parallel = trajectory.clone()
    parallel[:, :, 3:] = direction * torch.rand(4, 7, 8, 1).add(0.5)  # same direction, different norms
    np.testing.assert_allclose(patch_coherence(parallel, LAYOUT), 1.0, atol=1e-12)
    assert patch_coherence(trajectory, LAYOUT).max() < 0.6  # 8 random patches: ~1/sqrt(8)


def test_stable_rank_of_rank_one_and_full_rank_updates():
    generator = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 40, 1, generator=generator), torch.randn(6, 1, 64, generator=generator)
    np.testing.assert_allclose(stable_rank(u @ v).numpy(), 1.0, atol=1e-9)
    np.testing.assert_allclose(effective_rank(u @ v).numpy(), 1.0, atol=1e-4)  # float32 round-off
    full = torch.randn(6, 40, 64, generator=generator)
    assert (stable_rank(full) > 10).all() and (effective_rank(full) > 25).all()
    # a trajectory whose every update is a rank-one map x -> x + a b^T (tokens x D) vs random updates
    start = torch.randn(2, 1, 11, 32, generator=generator)
    rank_one = torch.randn(2, 6, 11, 1, generator=generator) * torch.randn(2, 6, 1, 32, generator=generator)
    trajectory = torch.cat([start, start + rank_one.cumsum(1)], dim=1)
    ranks = update_ranks(trajectory, LAYOUT)
    assert set(ranks["stable_rank"]) == {"registers", "patches", "all"}
    np.testing.assert_allclose(ranks["stable_rank"]["patches"], 1.0, atol=1e-9)
    np.testing.assert_allclose(ranks["stable_rank"]["all"], 1.0, atol=1e-9)
    random_ranks = update_ranks(_random_trajectory(dim=32), LAYOUT)
    assert (random_ranks["stable_rank"]["patches"] > 2.5).all()
    assert (random_ranks["effective_rank"]["all"] > 7).all()


def _map_continue_fn(step, depth):
    def continue_fn(state, start_layer):
        states = [state]
        for _ in range(start_layer, depth):
            states.append(step(states[-1]))
        return torch.stack(states, dim=1)
    return continue_fn


def test_contracting_map_self_corrects_and_rotation_does_not():
    depth, dim = 8, 16
    generator = torch.Generator().manual_seed(1)
    fixed_point = torch.randn(1, 11, dim, generator=generator) * 3
    trajectory = fixed_point.unsqueeze(1).expand(3, depth + 1, 11, dim) + torch.randn(3, 1, 11, dim, generator=generator)
    contracting = _map_continue_fn(lambda x: 0.5 * x + 0.5 * fixed_point, depth)
    result = self_correction(contracting, trajectory, LAYOUT, start_layer=1, scale=0.2)
    for name, angles in result["angle"].items():
        assert np.all(np.diff(angles) < 0), name  # the angle to the clean run shrinks at every layer
        assert result["contraction"][name] < 0.05
    rotation = torch.linalg.qr(torch.randn(dim, dim, generator=generator))[0]
    rotating = _map_continue_fn(lambda x: 1.5 * x @ rotation, depth)  # rotate and expand: angles are kept
    result = self_correction(rotating, trajectory, LAYOUT, start_layer=1, scale=0.2)
    for name, angles in result["angle"].items():
        np.testing.assert_allclose(angles, angles[0], rtol=1e-6)
        assert result["contraction"][name] > 0.99
    grid = basin_map(contracting, trajectory, LAYOUT, start_layers=[0, 4, 7], scales=[0.1, 0.5], progress=False)
    assert grid["final_angle"]["patches"].shape == (3, 2)
    # perturbed earlier -> more layers of contraction -> smaller final angle
    assert (np.diff(grid["final_angle"]["patches"], axis=0) > 0).all()
    initial = grid["initial_angle"]["patches"][:, 0]  # a step of relative norm 0.1 turns x by at most asin(0.1)
    assert (initial <= math.asin(0.1) + 1e-9).all() and (initial > 0.5 * math.asin(0.1)).all()
    with pytest.raises(ValueError, match="start_layer=8"):
        self_correction(contracting, trajectory, LAYOUT, start_layer=8)


def test_perturbations():
    state = torch.randn(4, 11, 64, generator=torch.Generator().manual_seed(2))
    noisy = perturb(state, 0.3, "noise", torch.Generator().manual_seed(0))
    np.testing.assert_allclose((noisy - state).norm(dim=-1), 0.3 * state.norm(dim=-1), rtol=1e-5)
    swapped = perturb(state, 1.0, "swap", torch.Generator().manual_seed(0))
    assert torch.equal(swapped, state.roll(1, dims=0))
    with pytest.raises(ValueError, match="perturbation must be one of"):
        perturb(state, 0.1, "rotate")
    with pytest.raises(ValueError, match="fraction"):
        perturb(state, 2.0, "swap")


def test_class_basins_of_separated_classes():
    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(3, 32, generator=generator) * 5
    labels = torch.arange(12) % 3
    final = centres[labels] + 0.1 * torch.randn(12, 32, generator=generator)
    trajectory = torch.randn(12, 3, 11, 32, generator=generator)
    trajectory[:, -1, 0] = final
    basins = class_basins(trajectory, labels, LAYOUT)
    assert basins["token"] == "cls"
    assert basins["within"][-1] > 0.99 and basins["between"][-1] < basins["within"][-1] - 0.2
    assert basins["centroid_accuracy"][-1] == 1.0
    assert basins["within"][0] < 0.8


def test_continue_fn_matches_teacher_and_raptor_trajectories():
    from raptor_zoo.analysis import model_trajectory
    from raptor_zoo.models.raptor_vit import RaptorVisionTransformer
    from raptor_zoo.teachers import load_teacher

    teacher = load_teacher("digits-vit")
    raptor = RaptorVisionTransformer.from_teacher(teacher, block_schedule=(5, 7)).eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for model in (teacher, raptor):
        trajectory = model_trajectory(model, images)
        continue_fn, depth = continue_fn_for(model)
        assert depth == 12 and trajectory.shape[1] == 13
        with torch.no_grad():
            torch.testing.assert_close(continue_fn(trajectory[:, 4], 4), trajectory[:, 4:])


def test_analysis_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="perturbation"):
        AnalysisConfig(perturbation="blur")
    with pytest.raises(ValueError, match="scales"):
        AnalysisConfig(scales=(0.1, -1.0))


def test_analyze_command_writes_every_figure_on_a_tiny_raptor(tmp_path):
    from raptor_zoo.hub import save_pretrained
    from raptor_zoo.models.raptor_vit import RaptorVisionTransformer

    raptor = RaptorVisionTransformer.from_teacher("digits-vit", block_schedule=(5, 7))
    save_pretrained(raptor, tmp_path / "raptor")
    parser = add_analyze_arguments(argparse.ArgumentParser())
    out = tmp_path / "out"
    args = parser.parse_args(["--model", str(tmp_path / "raptor"), "--out", str(out), "--num-images", "12",
                              "--scales", "0.1", "0.5", "--start-layers", "0", "6"])
    assert analyze_command(args) == 0
    expected = {"analysis.json", "token_dynamics.png", "update_ranks.png", "class_basins.png", "phase_view.png",
                "self_correction_teacher.png", "basin_map_teacher.png", "self_correction_raptor.png",
                "basin_map_raptor.png"}
    assert expected <= {path.name for path in out.iterdir()}
    for name in expected - {"analysis.json"}:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "analysis.json").read_text())
    assert set(data["models"]) == {"teacher", "raptor"}
    assert data["phase_boundaries"]["raptor"] == [0, 5, 12]
    gamma = data["models"]["raptor"]["token_dynamics"]["convergence"]["cls"]
    assert len(gamma) == 13 and gamma[-1] == pytest.approx(1.0)
    assert np.asarray(data["models"]["teacher"]["basin_map"]["final_angle"]["patches"]).shape == (2, 2)
    teacher_only = parser.parse_args(["--model", "digits-vit", "--out", str(tmp_path / "t"), "--num-images", "8",
                                      "--scales", "0.2", "--start-layers", "3"])
    assert analyze_command(teacher_only) == 0
    assert set(json.loads((tmp_path / "t" / "analysis.json").read_text())["models"]) == {"teacher"}
    with pytest.raises(SystemExit, match="start-layers"):
        analyze_command(parser.parse_args(["--model", "digits-vit", "--start-layers", "12", "--out", str(out)]))
