"""ONNX and torch.export graphs of a Raptor or its teacher: k shared weights stored once, numerics equal to eager at
a free batch and image size (every family), fp16, anytime depth."""
import copy
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F

import raptor_zoo
from raptor_zoo import cli, export
from raptor_zoo.data import build_transform, load_digits_split
from raptor_zoo.models.families import enable_dynamic_img_size, family_of, make_exportable

REPO = Path(__file__).resolve().parent.parent

# every weight matrix above onnxscript's constant-folding limit (8192 elements), as in any real ViT: smaller ones
# are folded into per-step transposed copies by the exporter's optimiser
TINY = dict(img_size=28, embed_dim=96, num_heads=2, block_schedule=(2, 1), num_classes=5)


@pytest.fixture
def tiny_raptor():
    model = timm.create_model("raptor_vit_small_patch14_reg4_dinov2_k2", **TINY)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model.eval()


def _images(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 28, 28, generator=torch.Generator().manual_seed(batch))


def test_onnx_graph_stores_each_block_once_and_matches_eager_at_any_batch(tiny_raptor, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    result = export.export_onnx(tiny_raptor, tmp_path / "tiny.onnx", dynamic_batch=True, num_steps=2)
    assert result.checked_with == "onnxruntime" and result.max_abs_diff < 1e-4
    graph = onnx.load(str(result.path)).graph
    names = [init.name for init in graph.initializer]
    assert sum(name.endswith("blocks.0.attn.qkv.weight") for name in names) == 1  # shared by steps 1 and 2
    assert not any("blocks.1." in name for name in names)  # block 1 only runs at step 3, after the exit
    weights = sum(t.numel() * t.element_size() for t in tiny_raptor.state_dict().values())
    assert sum(np.prod(init.dims) * 4 for init in graph.initializer) <= weights  # no per-step copies
    assert not any(node.metadata_props for node in graph.node)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    for batch in (1, 4):
        images = _images(batch)
        (logits,) = session.run(None, {"pixel_values": images.numpy()})
        with torch.no_grad():
            anytime, full = tiny_raptor(images, num_steps=2), tiny_raptor(images)
        assert np.abs(logits - anytime.numpy()).max() < 1e-4
        assert np.abs(logits - full.numpy()).max() > 1e-3  # the graph stops after 2 of the 3 steps


def test_torch_export_round_trips_with_a_free_batch(tiny_raptor, tmp_path):
    result = export.export_torch(tiny_raptor, tmp_path / "tiny.pt2", dynamic_batch=True)
    assert result.max_abs_diff == 0.0 and result.path.stat().st_size == result.num_bytes
    program = torch.export.load(result.path).module()
    for batch in (1, 5):
        with torch.no_grad():
            assert torch.equal(program(_images(batch)), tiny_raptor(_images(batch)))
    anytime = torch.export.load(export.export_torch(tiny_raptor, tmp_path / "t1.pt2", num_steps=1).path).module()
    with torch.no_grad():
        assert torch.equal(anytime(_images(1)), tiny_raptor(_images(1), num_steps=1))


def test_bad_export_requests_fail_before_exporting(tiny_raptor, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="should end in .pt2"):
        export.export_torch(tiny_raptor, tmp_path / "x.onnx")
    with pytest.raises(ValueError, match="1 <= num_steps <= 3"):
        export.export_torch(tiny_raptor, tmp_path / "x.pt2", num_steps=4)
    with pytest.raises(ValueError, match="applies to Raptors"):
        export.export_torch(timm.create_model("vit_digits_patch8_reg4"), tmp_path / "x.pt2", num_steps=1)
    with pytest.raises(ValueError, match="format must be one of"):
        export.export(tiny_raptor, tmp_path / "x.tflite", "tflite")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxscript" else real_find_spec(name, *args))
    with pytest.raises(ImportError, match=r"raptor_zoo\[export\]"):
        export.export_onnx(tiny_raptor, tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_exports_the_digits_raptor_to_onnx_within_1e_4(tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = tmp_path / "d.onnx"
    run = subprocess.run([sys.executable, "-m", "raptor_zoo.cli", "export", "raptor-digits-k2", "--format", "onnx",
                          "--out", str(out)], capture_output=True, text=True, check=True)
    assert "onnxruntime vs eager PyTorch: max abs diff" in run.stdout
    model = raptor_zoo.from_pretrained("raptor-digits-k2")
    transform = build_transform(timm.data.resolve_model_data_config(model), is_training=False)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for example in load_digits_split("test").select(range(4)):
        image = transform(example["image"].convert("RGB"))[None]
        (logits,) = session.run(None, {"pixel_values": image.numpy()})
        with torch.no_grad():
            assert np.abs(logits - model(image).numpy()).max() < 1e-4


# ---------------------------------------------------------------------------------------------- free batch and size

@pytest.fixture(scope="module")
def coverage():
    """benchmarks/export_coverage.py: the tiny per-family models the coverage table is measured on."""
    spec = importlib.util.spec_from_file_location("export_coverage", REPO / "benchmarks" / "export_coverage.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(actual.astype(np.float32) - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("mode, op", [("bicubic", "_upsample_bicubic2d_aa"), ("bilinear", "_upsample_bilinear2d_aa")])
def test_portable_resize_reproduces_pytorchs_antialiased_interpolate(mode, op):
    decompositions = export.portable_resize_decompositions()
    resize = decompositions[getattr(torch.ops.aten, op).default]
    resize_vec = decompositions[getattr(torch.ops.aten, op).vec]
    generator = torch.Generator().manual_seed(0)
    cases = [((16, 16), (12, 12)), ((16, 16), (20, 20)), ((37, 37), (16, 24)), ((4, 5), (1, 3)), ((7, 7), (49, 5))]
    for align_corners in (False, True):
        for (h, w), size in cases:
            x = torch.randn(1, 8, h, w, generator=generator)
            expected = F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=align_corners)
            assert (resize(x, list(size), align_corners) - expected).abs().max() < 1e-5
            assert (resize_vec(x, list(size), align_corners, None) - expected).abs().max() < 1e-5
    x = torch.randn(2, 3, 16, 16, generator=generator)
    by_factor = F.interpolate(x, scale_factor=0.6, mode=mode, antialias=True)
    assert (resize_vec(x, None, False, [0.6, 0.6]) - by_factor).abs().max() < 1e-5
    assert torch.equal(resize(x, [16, 16], False), x)  # the built grid: the identity, exactly


def test_dinov3_rope_written_for_export_is_bit_identical_in_eager():
    model = timm.create_model("vit_small_patch16_dinov3", img_size=64, depth=1, embed_dim=64, num_heads=2)
    exportable = copy.deepcopy(model)
    make_exportable(exportable)
    assert type(exportable.rope) is not type(model.rope)
    for normalize_coords in ("separate", "max", "min"):
        for grid_indexing in ("ij", "xy"):
            for rope in (model.rope, exportable.rope):
                rope.normalize_coords, rope.grid_indexing = normalize_coords, grid_indexing
            for shape in ((4, 4), (3, 5), (7, 2)):
                assert torch.equal(exportable.rope.get_embed(shape), model.rope.get_embed(shape))


@pytest.mark.parametrize("arch, img_size", [
    ("vit_small_patch14_reg4_dinov2", 56), ("vit_small_patch16_dinov3", 64), ("eva02_tiny_patch14_224", 56)])
def test_switching_dynamic_img_size_on_equals_timms_dynamic_model(arch, img_size):
    kwargs = dict(img_size=img_size, depth=2, embed_dim=64, num_heads=2, num_classes=5)
    fixed = timm.create_model(arch, dynamic_img_size=False, **kwargs).eval()
    with torch.no_grad():
        for param in fixed.parameters():
            param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(param.numel())) * 0.05)
    built_dynamic = timm.create_model(arch, dynamic_img_size=True, **kwargs).eval()
    built_dynamic.load_state_dict(fixed.state_dict())
    switched = copy.deepcopy(fixed)
    enable_dynamic_img_size(switched)
    patch = img_size // 4
    with torch.no_grad():
        native = torch.randn(2, 3, img_size, img_size)
        assert torch.equal(switched(native), fixed(native))
        for size in ((3 * patch, 3 * patch), (6 * patch, 6 * patch), (3 * patch, 5 * patch)):
            images = torch.randn(2, 3, *size)
            with pytest.raises(AssertionError):
                fixed(images)
            assert torch.equal(switched(images), built_dynamic(images))


@pytest.mark.parametrize("key", ["beit", "relpos", "cait", "sam"])
def test_fixed_grid_families_refuse_a_free_size_naming_the_fix(coverage, key, tmp_path):
    _, raptor = coverage.tiny_models(coverage.ROWS_BY_KEY[key])
    with pytest.raises(ValueError, match=r"takes only the image size it was built for \(64x64\).*one graph per size"):
        export.export_onnx(raptor, tmp_path / "x.onnx", dynamic_size=True)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("key", ["dinov2", "dinov3", "beit", "naflexvit", "xcit", "cait", "sam"])
def test_each_family_exports_with_a_free_batch_and_size_matching_eager(coverage, key, tmp_path):
    """One representative per family adapter (tiny, random, perturbed weights); the full table is the benchmark's."""
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    _, raptor = coverage.tiny_models(coverage.ROWS_BY_KEY[key])
    dynamic_size = family_of(raptor).dynamic_size != "fixed"
    result = export.export_onnx(raptor, tmp_path / "r.onnx", dynamic_size=dynamic_size)
    assert result.within_tolerance and result.max_rel_diff < 1e-4
    assert {check.batch_size for check in result.checks} == {3}
    assert len({check.img_size for check in result.checks}) == (4 if dynamic_size else 1)
    assert not any(node.op_type == "Resize" for node in onnx.load(str(result.path)).graph.node)
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == ["batch", 3, *(["height", "width"] if dynamic_size else [64, 64])]
    any_size = copy.deepcopy(raptor)
    if dynamic_size:
        enable_dynamic_img_size(any_size)
    patch = 16 if key != "dinov2" else 14
    sizes = [(4 * patch, 4 * patch)] + ([(2 * patch, 2 * patch), (5 * patch, 2 * patch)] if dynamic_size else [])
    for batch, size in zip((1, 5, 2), sizes):  # batches and sizes the export did not check
        images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        (graph,) = session.run(None, {"pixel_values": images.numpy()})
        with torch.no_grad():
            assert _rel(graph, any_size(images).numpy()) < 1e-4


def test_fp16_graph_stores_half_weights_and_reports_its_error_against_fp32(coverage, tmp_path):
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    _, raptor = coverage.tiny_models(coverage.ROWS_BY_KEY["dinov2"])
    result = export.export_onnx(raptor, tmp_path / "half.onnx", dynamic_size=True, dtype="fp16")
    assert result.dtype == "fp16" and result.tolerance == 1e-2 and result.within_tolerance
    assert 1e-6 < result.max_rel_diff < 1e-2  # really computed in half precision, and close to fp32
    initializers = onnx.load(str(result.path)).graph.initializer
    half_bytes = sum(len(init.raw_data) for init in initializers if init.data_type == onnx.TensorProto.FLOAT16)
    assert half_bytes > 0.9 * sum(len(init.raw_data) for init in initializers)  # timm resizes pos_embed in fp32
    fp32_bytes = sum(t.numel() * 4 for t in raptor.state_dict().values())
    assert result.num_bytes < 0.6 * fp32_bytes
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].type == "tensor(float16)"
    images = torch.randn(2, 3, 42, 70, generator=torch.Generator().manual_seed(0))
    (half,) = session.run(None, {"pixel_values": images.half().numpy()})
    any_size = copy.deepcopy(raptor)
    enable_dynamic_img_size(any_size)
    with torch.no_grad():
        assert half.dtype == np.float16 and _rel(half, any_size(images).numpy()) < 1e-2


def test_dinov3_graph_runs_at_other_sizes_only_with_the_exportable_rope(coverage, tmp_path, monkeypatch):
    """Without the family's exportable RoPE (the family test above exports with it) the graph is tied to the size
    it was traced at, and the export says so instead of returning a file that looks fine."""
    pytest.importorskip("onnxruntime")
    _, raptor = coverage.tiny_models(coverage.ROWS_BY_KEY["dinov3"])
    monkeypatch.setattr(export, "make_exportable", lambda model: None)  # timm's rope: float(H) freezes the grid
    with pytest.raises(RuntimeError, match=r"does not run at batch 3, 64x64 \(it was traced at 80x48\)"):
        export.export_onnx(raptor, tmp_path / "frozen.onnx", dynamic_size=True)


def test_batch_is_free_by_default_and_static_batch_fixes_it(tiny_raptor, tmp_path):
    program = torch.export.load(export.export_torch(tiny_raptor, tmp_path / "free.pt2").path).module()
    with torch.no_grad():
        for batch in (1, 5):
            assert torch.equal(program(_images(batch)), tiny_raptor(_images(batch)))
    result = export.export_torch(tiny_raptor, tmp_path / "two.pt2", dynamic_batch=False, batch_size=2)
    assert not result.dynamic_batch and result.input_shape == (2, 3, 28, 28)
    with pytest.raises(Exception):
        torch.export.load(result.path).module()(_images(3))


def _cli_export_options(monkeypatch, argv):
    """The options `raptor-zoo export` passes on (loading and exporting stubbed)."""
    calls = []
    unchecked = export.ExportResult(Path("x.onnx"), "onnx", 0, None, None)
    monkeypatch.setattr(export, "load_model", lambda source, random_init: (torch.nn.Linear(1, 1), "weights"))
    monkeypatch.setattr(export, "export", lambda model, out, format, **options: calls.append(options) or unchecked)
    assert cli.main(["export", "some-model", "--out", "x.onnx", *argv]) == 0
    return calls[0]


def test_cli_batch_flags_old_commands_keep_working(monkeypatch):
    assert _cli_export_options(monkeypatch, [])["dynamic_batch"] is True
    assert _cli_export_options(monkeypatch, ["--dynamic-batch"])["dynamic_batch"] is True  # the old flag: a no-op
    assert _cli_export_options(monkeypatch, ["--static-batch"]) == dict(
        dynamic_batch=False, dynamic_size=False, dtype="fp32", num_steps=None, batch_size=1)
    assert _cli_export_options(monkeypatch, ["--batch-size", "4"])["dynamic_batch"] is False  # as before
    options = _cli_export_options(monkeypatch, ["--dynamic-size", "--dtype", "fp16"])
    assert options["dynamic_size"] is True and options["dtype"] == "fp16"
    with pytest.raises(SystemExit):
        cli.main(["export", "m", "--out", "x.onnx", "--static-batch", "--dynamic-batch"])
    with pytest.raises(SystemExit, match="leave out --dynamic-batch"):
        cli.main(["export", "m", "--out", "x.onnx", "--batch-size", "4", "--dynamic-batch"])


def test_load_model_takes_raptors_and_teachers():
    raptor, weights = export.load_model("raptor-digits-k2")
    assert isinstance(raptor, raptor_zoo.RaptorMixin) and weights == "saved weights"
    teacher, weights = export.load_model("digits-vit")
    assert not isinstance(teacher, raptor_zoo.RaptorMixin) and weights == "teacher, pretrained weights"
    arch, weights = export.load_model("raptor_vit_small_patch14_reg4_dinov2_k2")
    assert arch.block_schedule == (7, 5) and "no weights are published" in weights
    assert export.load_model("digits-vit", random_init=True)[1] == "teacher, random init"
    with pytest.raises(ValueError, match="--random-init applies to architecture and teacher names"):
        export.load_model("raptor-digits-k2", random_init=True)


def test_cli_exports_raptor_and_teacher_side_by_side(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    assert cli.main(["export", "raptor-digits-k2", "--dynamic-size", "--dtype", "fp16",
                     "--out", str(tmp_path / "raptor.onnx")]) == 0
    raptor_out = capsys.readouterr().out
    assert "RaptorVisionTransformer, saved weights" in raptor_out
    assert "MiB, fp16; input pixel_values [batch, 3, height, width]" in raptor_out
    assert [f"{h}x{w}" in raptor_out for h, w in ((32, 32), (24, 24), (40, 40), (24, 40))] == [True] * 4
    assert "(fp16 graph against fp32 eager; tolerance 1e-02)" in raptor_out
    assert cli.main(["export", "digits-vit", "--dynamic-size", "--out", str(tmp_path / "teacher.onnx")]) == 0
    teacher_out = capsys.readouterr().out
    assert "teacher, pretrained weights" in teacher_out
    assert "(fp32 graph against fp32 eager; tolerance 1e-04)" in teacher_out
    assert (tmp_path / "teacher.onnx").stat().st_size > 4 * (tmp_path / "raptor.onnx").stat().st_size


@pytest.mark.slow
@pytest.mark.parametrize("arch, sizes", [
    ("raptor_vit_small_patch14_reg4_dinov2_k2", (168, 224, 280)),
    ("raptor_vit_small_patch16_dinov3_k2", (160, 224, 288)),
])
def test_full_size_dinov2_and_dinov3_raptors_deploy_at_any_batch_and_size(arch, sizes, tmp_path):
    """The issue's acceptance: the CLI writes a size-free graph (random init) and reports fp16's error and size;
    onnxruntime runs an export of known weights at batch 3 and three sizes within 1e-4 of eager."""
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    for extra, dtype in (([], "fp32"), (["--dtype", "fp16"], "fp16")):
        run = subprocess.run(
            [sys.executable, "-m", "raptor_zoo.cli", "export", arch, "--dynamic-size", *extra,
             "--out", str(tmp_path / f"{dtype}.onnx")], capture_output=True, text=True)
        assert run.returncode == 0, run.stdout + run.stderr
        assert f"MiB, {dtype}; input pixel_values [batch, 3, height, width]" in run.stdout
        assert f"({dtype} graph against fp32 eager" in run.stdout
    torch.manual_seed(0)
    model = timm.create_model(arch).eval()
    with torch.no_grad():
        for param in model.parameters():  # random init leaves the class token nearly constant: make outputs vary
            param.add_(torch.randn(param.shape) * 0.02)
    result = export.export_onnx(model, tmp_path / "known.onnx", dynamic_size=True)
    assert result.within_tolerance
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    any_size = copy.deepcopy(model)
    enable_dynamic_img_size(any_size)
    for size in sizes:
        images = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(size))
        (graph,) = session.run(None, {"pixel_values": images.numpy()})
        with torch.no_grad():
            assert _rel(graph, any_size(images).numpy()) < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("keys", [
    pytest.param(["siglip", "deit_distilled", "hf_dinov2"], id="families-the-default-run-leaves-out"),
    pytest.param(["eva02", "relpos", "sam", "hf_dinov3", "hf_clip"], id="the-other-rows", marks=pytest.mark.sweep),
])
def test_export_coverage_rows_beyond_the_default_run(keys, coverage, tmp_path):
    """The table's other rows (the default run exports one per family adapter; CI's slow step adds the SigLIP
    attention pool, DeiT distilled and a transformers-converted teacher, the sweep the rest): Raptor fp32 and fp16
    and the teacher, every one within tolerance."""
    records = coverage.main(["--rows", *keys, "--no-doc", "--out", str(tmp_path)])
    assert [record["key"] for record in records] == keys
    for record in records:
        assert record["raptor_fp32"]["ok"] and record["raptor_fp16"]["ok"] and record["teacher_fp32"]["ok"], record
        assert record["dynamic_size"] == (record["key"] not in ("relpos", "sam"))
        assert record["raptor_fp32"]["resize_ops"] == 0
        assert record["raptor_fp32"]["num_bytes"] < record["teacher_fp32"]["num_bytes"]
    table = (tmp_path / "export_coverage.md").read_text()
    assert all(f"| {coverage.ROWS_BY_KEY[key].family} |" in table for key in keys)
