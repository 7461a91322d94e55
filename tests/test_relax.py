"""Relaxed Raptors (`relax_rank` > 0): per-step low-rank adapters on the shared block's linear layers."""
import pytest
import timm
import torch

import raptor_zoo
from raptor_zoo.models.raptor_timm import raptor_from_model_args
from raptor_zoo.models.raptor_vit import RELAX_TARGETS, RaptorVisionTransformer
from raptor_zoo.teachers import load_teacher

IMG = 28  # 2x2 patches of 14 px
SCHEDULE = (7, 5)  # k = 2 < L = 12
ARCH = "raptor_vit_small_patch14_reg4_dinov2_k2"
ADAPTED_WEIGHTS = tuple(f"{name}.weight" for name in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))


@pytest.fixture(scope="module")
def phase_teacher():
    """A random-init DINOv2-S whose layers differ within a phase only in the four adapted weight matrices.

    Adapters change weights, not biases, norms or LayerScale gammas, so a full-rank SVD init can reproduce a
    teacher layer exactly only if those agree with the shared block's: every other tensor of a phase's layers
    is copied from its middle layer (the one `init='middle'` initialises the shared block from). They are
    randomised first (gammas, biases, norms) so that every block matters and the copies are not trivially equal.
    """
    teacher = load_teacher("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=IMG)
    torch.manual_seed(0)
    with torch.no_grad():
        for block in teacher.blocks:
            for name, tensor in block.named_parameters():
                if name not in ADAPTED_WEIGHTS:
                    tensor.copy_(torch.randn_like(tensor) * 0.1 + (1. if "norm" in name and "weight" in name else 0.))
            block.ls1.gamma.normal_()
            block.ls2.gamma.normal_()
        start = 0
        for repeats in SCHEDULE:
            middle = teacher.blocks[start + (repeats - 1) // 2]
            shared = {n: t for n, t in middle.named_parameters() if n not in ADAPTED_WEIGHTS}
            for layer in range(start, start + repeats):
                for name, tensor in teacher.blocks[layer].named_parameters():
                    if name in shared:
                        tensor.copy_(shared[name])
            start += repeats
    return teacher


def _trajectory(raptor, images):
    states = [raptor._embed(images)]
    for step in range(raptor.depth):
        states.append(raptor.forward_steps(states[-1], step, step + 1))
    return torch.stack(states, dim=1)


def _randomise_adapters(model, std=0.02):
    torch.manual_seed(3)
    with torch.no_grad():
        for tensor in model.relax.parameters():
            tensor.normal_(std=std)
    return model


def test_rank_zero_is_the_pure_raptor():
    pure = timm.create_model(ARCH, img_size=IMG)
    zero = timm.create_model(ARCH, img_size=IMG, relax_rank=0)
    assert list(zero.state_dict()) == list(pure.state_dict())
    assert [n for n, _ in zero.named_modules()] == [n for n, _ in pure.named_modules()]
    assert zero.relax is None and "relax_rank" not in zero.model_args
    relaxed = timm.create_model(ARCH, img_size=IMG, relax_rank=2)
    extra = set(relaxed.state_dict()) - set(pure.state_dict())
    assert set(pure.state_dict()) <= set(relaxed.state_dict())
    assert extra == {f"relax.{step}.{target}_{ab}" for step in range(12) for target in RELAX_TARGETS for ab in "ab"}
    # a fresh relaxed model is the pure Raptor (B = 0) and its adapters still get gradients
    relaxed.load_state_dict(pure.state_dict(), strict=False)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(relaxed.eval()(x), pure.eval()(x), rtol=0, atol=1e-6)


def test_full_rank_svd_init_reproduces_teacher(phase_teacher):
    full_rank = phase_teacher.embed_dim  # min(out, in) of qkv, proj, fc1 and fc2 at mlp_ratio 4
    images = torch.randn(2, 3, IMG, IMG)
    pure = RaptorVisionTransformer.from_teacher(phase_teacher, block_schedule=SCHEDULE).eval()
    relaxed = RaptorVisionTransformer.from_teacher(
        phase_teacher, block_schedule=SCHEDULE, relax_rank=full_rank, relax_init="svd").eval()
    assert relaxed.raptor_meta["relax_init"] == "svd" and relaxed.raptor_meta["relax_rank"] == full_rank
    with torch.no_grad():
        target = phase_teacher.trajectory(images)
        got = _trajectory(relaxed, images)
        pure_error = (_trajectory(pure, images) - target).abs().max()
    scale = target.abs().max()
    assert pure_error > 1e-2 * scale  # the shared blocks alone do not reproduce the teacher, ...
    torch.testing.assert_close(got, target, rtol=0, atol=1e-5 * scale.item())  # ... full rank does (fp32)
    # the steps that are the shared block's own layer have zero adapters
    assert relaxed.relax[3].qkv_b.abs().max() < 1e-6 and relaxed.relax[9].fc2_a.abs().max() < 1e-6


def test_zeros_init_and_targets(phase_teacher):
    model = RaptorVisionTransformer.from_teacher(
        phase_teacher, block_schedule=SCHEDULE, relax_rank=4, relax_init="zeros", relax_targets=("fc1", "qkv"))
    assert model.relax_targets == ("qkv", "fc1") and model.model_args["relax_targets"] == ["qkv", "fc1"]
    assert model.relax[0].proj_a is None and model.relax[0].fc2_b is None
    for adapter in model.relax:
        assert torch.equal(adapter.qkv_b, torch.zeros_like(adapter.qkv_b)) and adapter.qkv_a.abs().sum() > 0
    pure = RaptorVisionTransformer.from_teacher(phase_teacher, block_schedule=SCHEDULE)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), pure.eval()(x))


def test_adapters_get_gradients_with_checkpointing_and_drop_path():
    model = _randomise_adapters(timm.create_model(ARCH, img_size=IMG, num_classes=3, relax_rank=2)).train()
    x = torch.randn(2, 3, IMG, IMG)
    model(x).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    missing = [n for n, g in grads.items() if g is None or (n.startswith("relax.") and not g.abs().sum() > 0)]
    assert not missing, f"no gradient for {missing}"
    model.zero_grad()
    model.set_grad_checkpointing(True)
    model(x).sum().backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], msg=n)
    # zeros init: B = 0 but A != 0, so B gets a gradient at the first step
    fresh = timm.create_model(ARCH, img_size=IMG, num_classes=3, relax_rank=2).train()
    fresh(x).sum().backward()
    assert fresh.relax[5].fc1_b.grad.abs().sum() > 0
    dropped = timm.create_model(ARCH, img_size=IMG, relax_rank=2, drop_path_rate=0.3).train()
    torch.manual_seed(1)
    a = dropped(x)
    torch.manual_seed(2)
    assert not torch.allclose(a, dropped(x))


def test_parameter_overhead_formula():
    dim, depth = 384, 12
    pure = sum(p.numel() for p in timm.create_model(ARCH, img_size=IMG).parameters())
    for rank in (1, 4):
        model = timm.create_model(ARCH, img_size=IMG, relax_rank=rank)
        assert sum(p.numel() for p in model.parameters()) - pure == 16 * rank * dim * depth
    # qkv: r(D + 3D), proj: 2rD, fc1 and fc2: 5rD each at mlp_ratio 4
    attn_only = timm.create_model(ARCH, img_size=IMG, relax_rank=4, relax_targets=("qkv", "proj"))
    assert sum(p.numel() for p in attn_only.relax.parameters()) == 6 * 4 * dim * depth


def test_depth_indexed_apis_index_adapters_by_step():
    model = _randomise_adapters(timm.create_model(ARCH, img_size=IMG, num_classes=3, relax_rank=2)).eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x, output_fmt="NLC")
        torch.testing.assert_close(final, model.forward_features(x))
        early = model.forward_intermediates(x, indices=[2, 7], stop_early=True, intermediates_only=True,
                                            output_fmt="NLC")
        torch.testing.assert_close(early[1], intermediates[7])
        features = model.forward_features(x, num_steps=5)
        after_5 = model.forward_intermediates(x, indices=[4], norm=True, output_fmt="NLC", intermediates_only=True,
                                              return_prefix_tokens=True)[0]
        torch.testing.assert_close(features[:, 0], after_5[1][:, 0])
        # pruning shortens the schedule; the adapters of all L steps are kept (state_dict unchanged)
        keys = [key for key in model.state_dict() if key.startswith(("blocks.", "relax."))]
        model.prune_intermediate_layers(indices=[8])
        assert model.block_schedule == (7, 2) and len(model.relax) == 12
        assert [key for key in model.state_dict() if key.startswith(("blocks.", "relax."))] == keys
        torch.testing.assert_close(model.forward_intermediates(x, indices=[8], intermediates_only=True,
                                                               output_fmt="NLC")[0], intermediates[8])


def test_save_load_round_trip(tmp_path, phase_teacher):
    model = _randomise_adapters(RaptorVisionTransformer.from_teacher(
        phase_teacher, block_schedule=SCHEDULE, relax_rank=3, relax_targets=("qkv", "fc2"))).eval()
    folder = raptor_zoo.save_pretrained(model, tmp_path / "relaxed", card=False)
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        expected = model(x)
        ours = raptor_zoo.from_pretrained(folder).eval()
        assert ours.relax_rank == 3 and ours.relax_targets == ("qkv", "fc2")
        assert torch.equal(ours(x), expected)
        assert torch.equal(timm.create_model(f"local-dir:{folder}", pretrained=True).eval()(x), expected)
    assert raptor_from_model_args(model.model_args).state_dict().keys() == model.state_dict().keys()


def test_torch_export_relaxed():
    model = _randomise_adapters(timm.create_model(ARCH, img_size=IMG, num_classes=3, relax_rank=2)).eval()
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), model(x))
        anytime = torch.export.export(model, (x,), kwargs={"num_steps": 5}).module()
        torch.testing.assert_close(anytime(x, num_steps=5), model(x, num_steps=5))


def test_bad_relax_arguments(phase_teacher):
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="relax_rank"):
            timm.create_model(ARCH, img_size=IMG, relax_rank=bad)
    with pytest.raises(ValueError, match="relax_targets"):
        timm.create_model(ARCH, img_size=IMG, relax_rank=2, relax_targets=("qkv", "out"))
    with pytest.raises(TypeError, match="relax_targets"):
        timm.create_model(ARCH, img_size=IMG, relax_rank=2, relax_targets="qkv")
    with pytest.raises(ValueError, match="relax_init"):
        RaptorVisionTransformer.from_teacher(phase_teacher, block_schedule=SCHEDULE, relax_rank=2, relax_init="lora")
    with pytest.raises(ValueError, match="full rank 384"):
        RaptorVisionTransformer.from_teacher(phase_teacher, block_schedule=SCHEDULE, relax_rank=385)
    with pytest.raises(ValueError, match="block_type='teacher'"):
        RaptorVisionTransformer.from_teacher(phase_teacher, block_schedule=SCHEDULE, block_type="swiglu",
                                             relax_rank=2)


def test_step_adapters_drive_single_block_applications():
    """Callers that apply blocks themselves (a family's own loop, teacher forcing) get the same step as
    forward_steps through the step view; the bare shared block is not that step."""
    model = _randomise_adapters(timm.create_model(ARCH, img_size=IMG, relax_rank=2)).eval()
    x = model._embed(torch.randn(2, 3, IMG, IMG))
    with torch.no_grad():
        for step in (0, 8):
            expected = model.forward_steps(x, step, step + 1)
            torch.testing.assert_close(model.blocks[step](x), expected)
            assert not torch.allclose(model.unique_blocks[model.step_block_indices[step]](x), expected)
    assert timm.create_model(ARCH, img_size=IMG).step_adapters(0) is None


def test_flops_row_counts_relaxation_overhead():
    from raptor_zoo.bench import flops_row

    pure = flops_row("raptor_vit_small_patch14_reg4_dinov2_k2", img_size=56)
    assert pure["relax_rank"] == 0 and pure["relax_flops"] == 0 and pure["relax_params"] == 0
    model = timm.create_model(ARCH, img_size=56, relax_rank=4)
    row = flops_row(model, teacher="vit_small_patch14_reg4_dinov2", img_size=56)
    dim, depth, tokens = 384, 12, 1 + 4 + (56 // 14) ** 2
    assert row["relax_params"] == 16 * 4 * dim * depth
    # every adapter weight is one multiply-accumulate per token: FLOPs = 2 x params x tokens
    assert row["relax_flops"] == 2 * row["relax_params"] * tokens
    # about 4rL/(3kD) of the block parameters (+8% at D=384, L=12, k=2, r=4; blocks also hold biases, norms)
    assert row["relax_params_ratio"] == pytest.approx(4 * 4 * depth / (3 * 2 * dim), rel=2e-2)
    assert 0 < row["relax_flops_fraction"] < 0.05


def test_distillation_task_applies_and_trains_step_adapters():
    from raptor_zoo.distill import TrajectoryDistillationTask

    teacher = load_teacher("vit_small_patch14_reg4_dinov2", pretrained=False, img_size=28)
    student = RaptorVisionTransformer.from_teacher(teacher, block_schedule=(7, 5), relax_rank=2, relax_init="zeros")
    task = TrajectoryDistillationTask(student, teacher, stage="joint", objective="ar", max_steps=10)
    task(torch.randn(2, 3, 28, 28), step=0)["loss"].backward()
    assert all(p.requires_grad for n, p in student.named_parameters() if n.startswith("relax."))
    assert student.relax[3].qkv_b.grad.abs().sum() > 0 and student.relax[11].fc2_b.grad.abs().sum() > 0


def test_relaxed_student_from_a_trained_pure_raptor_svd_inits_against_its_blocks(phase_teacher, tmp_path):
    """--init-from a pure Raptor + --relax-rank: the adapters span teacher layer - the *trained* shared block."""
    from raptor_zoo.hub import save_pretrained
    from raptor_zoo.recipes.distill import DistillConfig, load_student_weights

    pure = RaptorVisionTransformer.from_teacher(phase_teacher, block_schedule=SCHEDULE)
    with torch.no_grad():  # stand-in for distillation: the shared weights moved away from the teacher's
        for block in pure.blocks:
            for name in ADAPTED_WEIGHTS:
                block.get_parameter(name).add_(torch.randn_like(block.get_parameter(name)) * 0.05)
    save_pretrained(pure, tmp_path)
    full_rank = phase_teacher.embed_dim
    relaxed = RaptorVisionTransformer.from_teacher(phase_teacher, block_schedule=SCHEDULE, relax_rank=full_rank)
    config = DistillConfig(block_schedule=SCHEDULE, relax_rank=full_rank, init_from=str(tmp_path),
                           train_adapters_only=True)
    load_student_weights(relaxed, config, phase_teacher)
    for key, value in pure.state_dict().items():
        assert torch.equal(relaxed.state_dict()[key], value), key
    images = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        target = phase_teacher.trajectory(images)
        got = _trajectory(relaxed.eval(), images)
    torch.testing.assert_close(got, target, rtol=0, atol=1e-5 * target.abs().max().item())


def test_freeze_for_adapters_only_training():
    from raptor_zoo.distill.task import freeze_for_distillation

    model = timm.create_model(ARCH, img_size=IMG, relax_rank=2)
    names = freeze_for_distillation(model, train_adapters_only=True)
    assert names and all(name.startswith("relax.") for name in names)
    assert len(names) == sum(1 for name, _ in model.named_parameters() if name.startswith("relax."))
    # stage 1 of phase 1 trains block 1 and the adapters of its steps (7..11) only
    names = freeze_for_distillation(model, trainable_blocks=[1])
    assert {name.split(".")[1] for name in names if name.startswith("relax.")} == {str(s) for s in range(7, 12)}
    assert {name.split(".")[1] for name in names if name.startswith("blocks.")} == {"1"}
    with pytest.raises(ValueError, match="needs a relaxed Raptor"):
        freeze_for_distillation(timm.create_model(ARCH, img_size=IMG), train_adapters_only=True)
