"""ONNX and torch.export graphs of a Raptor: k shared weights stored once, numerics equal to eager, anytime depth."""
import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch

import raptor_zoo
from raptor_zoo import export
from raptor_zoo.data import build_transform, load_digits_split

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
