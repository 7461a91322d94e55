"""raptor_zoo.distill: trajectory losses, the TF->AR schedule, the distillation task, stages and fidelity evaluation."""
import math

import pytest
import timm
import torch

import raptor_zoo  # noqa: F401  (registers the digits architecture)
from raptor_zoo.distill import (
    PAPER_JOINT_TOKEN_WEIGHTS,
    PAPER_PHASE_TOKEN_WEIGHTS,
    TrajectoryDistillationTask,
    evaluate_fidelity,
    fidelity_summary,
    freeze_for_distillation,
    paper_r2,
    plot_fidelity,
    stage_plan,
    teacher_forcing_weight,
    token_group_slices,
    trajectory_distance,
)
from raptor_zoo.models.raptor_vit import RaptorVisionTransformer
from raptor_zoo.teachers import load_teacher

DEPTH = 4


@pytest.fixture(scope="module")
def teacher():
    """A random-init digits-shaped teacher (cls + 4 registers + 16 patches, D=128) of 4 blocks, LayerScale 1.0 so
    every block moves the state substantially."""
    torch.manual_seed(0)
    return load_teacher("digits-vit", pretrained=False, depth=DEPTH, init_values=1.0)


@pytest.fixture(scope="module")
def images():
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def make_student(teacher, block_schedule):
    torch.manual_seed(0)
    return RaptorVisionTransformer.from_teacher(teacher, block_schedule=block_schedule, init="middle")


def count_block_calls(module_list):
    calls = []
    handles = [block.register_forward_hook(lambda *args: calls.append(1)) for block in module_list]
    return calls, handles


# ------------------------------------------------------------------------------------------ losses

def test_mse_is_the_mean_over_all_elements():
    pred = torch.zeros(2, 3, 4)
    target = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    assert trajectory_distance(pred, target, "mse").item() == pytest.approx(target.pow(2).mean().item())


def test_cosine_distance_signs():
    x = torch.randn(2, 5, 8)
    assert trajectory_distance(x, x, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert trajectory_distance(x, -x, "cosine").item() == pytest.approx(2.0, abs=1e-6)
    orthogonal = torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[0.0, 3.0]]])
    assert trajectory_distance(*orthogonal, "cosine").item() == pytest.approx(1.0)


def _per_token_errors(values):
    """pred = 0 and target rows of constant value v give per-token MSE v**2."""
    target = torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1).expand(1, len(values), 3).contiguous()
    return torch.zeros_like(target), target


def test_token_group_weights_with_registers():
    # tokens: cls (err 1), 2 registers (err 4, 4), 3 patches (err 9, 9, 9)
    pred, target = _per_token_errors([1, 2, 2, 3, 3, 3])
    loss = trajectory_distance(pred, target, "mse", (0.45, 0.10, 0.45), num_prefix_tokens=3, num_reg_tokens=2)
    assert loss.item() == pytest.approx(0.45 * 1 + 0.10 * 4 + 0.45 * 9)
    as_mapping = trajectory_distance(
        pred, target, "mse", {"cls": 0.45, "reg": 0.10, "patch": 0.45}, num_prefix_tokens=3, num_reg_tokens=2)
    assert as_mapping.item() == pytest.approx(loss.item())


def test_token_group_weights_renormalised_without_registers():
    # tokens: cls (err 1), 3 patches (err 9): the register weight drops out, .45/.45 rescaled to sum 1
    pred, target = _per_token_errors([1, 3, 3, 3])
    loss = trajectory_distance(pred, target, "mse", (0.45, 0.10, 0.45), num_prefix_tokens=1, num_reg_tokens=0)
    assert loss.item() == pytest.approx(0.5 * 1 + 0.5 * 9)
    # no class token either: everything goes to the patches, at the weights' total
    loss = trajectory_distance(pred[:, 1:], target[:, 1:], "mse", (0.45, 0.10, 0.45), num_prefix_tokens=0,
                               num_reg_tokens=0, has_class_token=False)
    assert loss.item() == pytest.approx(9.0)


def test_token_weights_on_stacked_layers_equal_the_mean_over_layers():
    pred, target = torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 4)
    kwargs = dict(distance="mse", token_weights=(0.45, 0.1, 0.45), num_prefix_tokens=3, num_reg_tokens=2)
    per_layer = [trajectory_distance(pred[:, i], target[:, i], **kwargs) for i in range(3)]
    assert trajectory_distance(pred, target, **kwargs).item() == pytest.approx(sum(per_layer).item() / 3, rel=1e-6)


@pytest.mark.parametrize("weights, match", [((0.5, 0.5), "3 values"), ((-1, 1, 1), ">= 0"), ({"foo": 1.0}, "Unknown")])
def test_bad_token_weights_raise(weights, match):
    with pytest.raises(ValueError, match=match):
        trajectory_distance(torch.zeros(1, 3, 2), torch.zeros(1, 3, 2), token_weights=weights, num_prefix_tokens=1)


def test_token_group_slices_layout():
    assert token_group_slices(21, 5, 4, True) == {"cls": slice(0, 1), "registers": slice(1, 5), "patches": slice(5, 21)}
    with pytest.raises(ValueError, match="num_prefix_tokens"):
        token_group_slices(21, 5, 2, True)


def test_teacher_forcing_weight_schedule():
    assert teacher_forcing_weight(0, 100) == 1.0
    assert teacher_forcing_weight(10, 100) == pytest.approx(0.6)
    assert teacher_forcing_weight(25, 100) == 0.0
    assert teacher_forcing_weight(90, 100) == 0.0
    assert teacher_forcing_weight(90, 100, tf_min=0.1) == pytest.approx(0.1)
    assert teacher_forcing_weight(50, 100, tf_anneal_ratio=1.0) == pytest.approx(0.5)
    assert teacher_forcing_weight(0, 100, tf_anneal_ratio=0.0) == 0.0
    with pytest.raises(ValueError, match="tf_anneal_ratio"):
        teacher_forcing_weight(0, 100, tf_anneal_ratio=1.5)


def test_paper_r2_uses_the_prediction_as_reference():
    y = torch.randn(50, 8)
    assert paper_r2(y, y).item() == pytest.approx(1.0)
    x = y + 0.1 * torch.randn(50, 8)
    expected = 1 - ((x - y) ** 2).mean() / (((x - x.mean()) ** 2).mean() + 1e-6)
    assert paper_r2(x, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert paper_r2(x, y).item() != pytest.approx(paper_r2(y, x).item(), rel=1e-9)


# ------------------------------------------------------------------------------------------ task

def test_student_identical_to_teacher_has_zero_tf_and_ar_loss(teacher, images):
    student = make_student(teacher, (1,) * DEPTH)
    task = TrajectoryDistillationTask(student, teacher, objective="tf_ar", max_steps=8, tf_anneal_ratio=1.0)
    out = task(images, step=4)  # λ = 0.5: both terms
    assert out["tf_weight"] == pytest.approx(0.5)
    assert out["tf_loss"].item() == 0.0
    assert out["ar_loss"].item() == 0.0
    assert out["loss"].item() == 0.0
    assert out["output"].shape == (6, DEPTH, teacher.num_tokens, teacher.embed_dim)
    torch.testing.assert_close(out["output"], teacher.trajectory(images)[:, 1:], rtol=0, atol=0)


def test_tf_and_ar_differ_on_a_shared_block_student(teacher, images):
    student = make_student(teacher, (2, 2))
    task = TrajectoryDistillationTask(student, teacher, objective="tf_ar", max_steps=8, tf_anneal_ratio=1.0)
    out = task(images, step=4)
    tf_loss, ar_loss = out["tf_loss"].item(), out["ar_loss"].item()
    assert tf_loss > 0 and ar_loss > 0
    assert not math.isclose(tf_loss, ar_loss, rel_tol=1e-3)
    assert out["loss"].item() == pytest.approx(0.5 * tf_loss + 0.5 * ar_loss, rel=1e-6)


@pytest.mark.parametrize("objective, step, student_calls, computed", [
    ("tf", 0, DEPTH, {"tf_loss"}),
    ("ar", 0, DEPTH, {"ar_loss"}),
    ("tf_ar", 0, DEPTH, {"tf_loss"}),            # λ = 1: no AR rollout
    ("tf_ar", 1, 2 * DEPTH, {"tf_loss", "ar_loss"}),
    ("tf_ar", 4, DEPTH, {"ar_loss"}),            # λ = 0 after 25% of 16 steps: no teacher forcing
])
def test_a_term_with_zero_weight_is_not_computed(teacher, images, objective, step, student_calls, computed):
    student = make_student(teacher, (2, 2))
    task = TrajectoryDistillationTask(student, teacher, objective=objective, max_steps=16)
    student_counter, student_handles = count_block_calls(student.unique_blocks)
    teacher_counter, teacher_handles = count_block_calls(teacher.blocks)
    try:
        out = task(images, step=step)
    finally:
        for handle in student_handles + teacher_handles:
            handle.remove()
    assert len(student_counter) == student_calls
    assert len(teacher_counter) == DEPTH  # one teacher trajectory per batch, shared by both terms
    assert {name for name in ("tf_loss", "ar_loss") if out[name] is not None} == computed


def test_phase_stage_trains_only_its_block_on_its_segment(teacher, images):
    student = make_student(teacher, (1, 3))
    task = TrajectoryDistillationTask(student, teacher, stage="phase", phase_index=1, objective="ar")
    assert task.segment == (1, 4)
    out = task(images)
    assert out["output"].shape[1] == 3
    out["loss"].backward()
    with_grad = {name for name, p in student.named_parameters() if p.grad is not None}
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    assert with_grad == trainable == {name for name, _ in student.named_parameters() if name.startswith("blocks.1.")}
    assert all(p.grad is None for p in teacher.parameters())


def test_joint_stage_gradients_reach_all_blocks_and_nothing_frozen(teacher, images):
    student = make_student(teacher, (2, 2))
    task = TrajectoryDistillationTask(student, teacher, objective="ar")
    task(images)["loss"].backward()
    for name, param in student.named_parameters():
        is_block = name.startswith("blocks.")
        assert param.requires_grad == is_block, name
        assert (param.grad is not None) == is_block, name
        if is_block and not name.startswith(("blocks.0.depth_scale.fc1", "blocks.1.depth_scale.fc1")):
            assert param.grad.abs().sum() > 0, name  # fc1 gets no gradient while fc2 is still zero


def test_freeze_options_and_errors(teacher):
    student = make_student(teacher, (2, 2))
    names = freeze_for_distillation(student, trainable_blocks=[0], train_head=True)
    assert any(name.startswith("head.") for name in names) and any(name.startswith("norm.") for name in names)
    assert not any(name.startswith(("blocks.1.", "patch_embed.", "cls_token")) for name in names)
    with pytest.raises(ValueError, match="out of range"):
        freeze_for_distillation(student, trainable_blocks=[2])


def test_task_rejects_bad_arguments(teacher):
    student = make_student(teacher, (2, 2))
    with pytest.raises(ValueError, match="phase_index"):
        TrajectoryDistillationTask(student, teacher, stage="phase", phase_index=2, objective="ar")
    with pytest.raises(ValueError, match="max_steps"):
        TrajectoryDistillationTask(student, teacher, objective="tf_ar")
    with pytest.raises(ValueError, match="teacher_precision"):
        TrajectoryDistillationTask(student, teacher, objective="ar", teacher_precision="fp8")
    deeper = timm.create_model("raptor_vit", block_schedule=(3, 2), embed_dim=teacher.embed_dim,
                               num_heads=teacher.num_heads, img_size=teacher.img_size, patch_size=teacher.patch_size)
    with pytest.raises(ValueError, match="depth"):
        TrajectoryDistillationTask(deeper, teacher, objective="ar")


def test_state_dict_holds_the_student_only_and_reloads_strictly(teacher):
    student = make_student(teacher, (2, 2))
    task = TrajectoryDistillationTask(student, teacher, objective="ar")
    state = task.state_dict()
    assert state and all(key.startswith("student.") for key in state)
    assert set(state) == {f"student.{key}" for key in student.state_dict()}
    other = TrajectoryDistillationTask(make_student(teacher, (2, 2)), teacher, objective="ar")
    other.load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="Missing"):
        other.load_state_dict({key: value for key, value in state.items() if "blocks.0" not in key}, strict=True)


def test_bf16_teacher_targets_are_fp32_and_close(teacher, images):
    student = make_student(teacher, (2, 2))
    fp32 = TrajectoryDistillationTask(student, teacher, objective="ar").teacher_targets(images)
    bf16 = TrajectoryDistillationTask(student, teacher, objective="ar", teacher_precision="bf16").teacher_targets(images)
    assert fp32.dtype == bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)
    torch.testing.assert_close(bf16, fp32, rtol=0.1, atol=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an enclosing autocast does not reach fp32 targets
        assert torch.equal(TrajectoryDistillationTask(student, teacher, objective="ar").teacher_targets(images), fp32)


def test_input_noise_only_while_training(teacher, images):
    student = make_student(teacher, (1,) * DEPTH)
    task = TrajectoryDistillationTask(student, teacher, objective="ar", input_noise_std=0.1)
    assert task.train()(images)["loss"].item() > 0
    assert task.eval()(images)["loss"].item() == 0.0


# ------------------------------------------------------------------------------------------ stages

def test_two_stage_plan_follows_the_paper():
    plan = stage_plan("two_stage", k=3, max_steps=100, phase_max_steps=40)
    assert [stage.name for stage in plan] == ["phase_0", "phase_1", "phase_2", "joint"]
    assert [stage.token_weights for stage in plan] == [None, None, PAPER_PHASE_TOKEN_WEIGHTS, PAPER_JOINT_TOKEN_WEIGHTS]
    assert [stage.objective for stage in plan] == ["tf_ar", "tf_ar", "tf_ar", "ar"]
    assert [stage.max_steps for stage in plan] == [40, 40, 40, 100]
    one_job = stage_plan("two_stage", k=3, max_steps=100, phase_index="1")
    assert [(stage.name, stage.phase_index) for stage in one_job] == [("phase_1", 1)]
    joint = stage_plan("joint", k=2, max_steps=300)
    assert [(stage.name, stage.objective, stage.token_weights) for stage in joint] == [
        ("joint", "tf_ar", PAPER_JOINT_TOKEN_WEIGHTS)]
    with pytest.raises(ValueError, match="phase_index"):
        stage_plan("two_stage", k=2, max_steps=10, phase_index=2)


# ------------------------------------------------------------------------------------------ evaluation

def _labelled_batches(teacher, images, correct_first):
    """Labels = the teacher's predictions on the first `correct_first` images, a wrong class on the others."""
    with torch.no_grad():
        predictions = teacher(images).argmax(-1)
    labels = predictions.clone()
    labels[correct_first:] = (labels[correct_first:] + 1) % 10
    return [(images[:4], labels[:4]), (images[4:], labels[4:])]


def test_evaluate_fidelity_of_the_identical_student(teacher, images, tmp_path):
    student = make_student(teacher, (1,) * DEPTH)
    metrics = evaluate_fidelity(student, teacher, _labelled_batches(teacher, images, 3), progress=False)
    assert metrics["num_images"] == 6 and metrics["layers"] == list(range(DEPTH + 1))
    assert set(metrics["cosine"]) == {"cls", "registers", "patches", "all"}
    for values in metrics["cosine"].values():
        assert values == pytest.approx([1.0] * (DEPTH + 1), abs=1e-6)
    assert metrics["r2_paper"] == pytest.approx([1.0] * (DEPTH + 1))
    assert metrics["r2_per_feature"] == pytest.approx([1.0] * (DEPTH + 1))
    assert metrics["teacher_accuracy"] == pytest.approx(0.5)
    assert metrics["raptor_accuracy"] == pytest.approx(0.5)
    assert metrics["recovery"] == 1.0 and metrics["agreement"] == 1.0
    plot_fidelity(metrics, tmp_path / "fidelity.png")
    assert (tmp_path / "fidelity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "recovery 1.0000" in fidelity_summary(metrics)


def test_evaluate_fidelity_matches_direct_computation(teacher, images):
    student = make_student(teacher, (2, 2))
    batches = _labelled_batches(teacher, images, 6)
    metrics = evaluate_fidelity(student, teacher, batches, max_batches=5, progress=False)
    with torch.no_grad():
        target = teacher.trajectory(images)
        x = student.forward_features(images)  # normed last state
        pred_logits = teacher.model.forward_head(x)
        raptor_states = [student._embed(images)]
        for step in range(DEPTH):
            raptor_states.append(student.forward_steps(raptor_states[-1], step, step + 1))
    last = raptor_states[-1]
    expected_cos = torch.nn.functional.cosine_similarity(last, target[:, -1], dim=-1)
    assert metrics["cosine"]["all"][-1] == pytest.approx(expected_cos.mean().item(), rel=1e-5)
    assert metrics["cosine"]["cls"][-1] == pytest.approx(expected_cos[:, 0].mean().item(), rel=1e-5)
    flat_x, flat_y = last.reshape(-1, last.shape[-1]), target[:, -1].reshape(-1, last.shape[-1])
    assert metrics["r2_paper"][-1] == pytest.approx(paper_r2(flat_x, flat_y).item(), rel=1e-6)
    from sklearn.metrics import r2_score
    assert metrics["r2_per_feature"][-1] == pytest.approx(r2_score(flat_y.numpy(), flat_x.numpy()), rel=1e-4)
    assert metrics["teacher_accuracy"] == 1.0
    labels = torch.cat([batch[1] for batch in batches])
    assert metrics["raptor_accuracy"] == pytest.approx((pred_logits.argmax(-1) == labels).float().mean().item())
    assert metrics["recovery"] == pytest.approx(metrics["raptor_accuracy"])
    assert metrics["r2_paper"][0] == pytest.approx(1.0)  # layer 0 is the shared embedding
