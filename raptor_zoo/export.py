"""Deployable graphs of a Raptor or its teacher: ONNX (torch's exporter) and ``torch.export`` programs, checked
against eager.

    raptor-zoo export raptor-digits-k2 --out d.onnx [--dynamic-size] [--dtype fp16] [--num-steps m]
    raptor-zoo export vit_small_patch16_dinov3 --random-init --dynamic-size --out teacher.onnx
    raptor-zoo export <folder | zoo name | repo id | timm name> --format torch-export --out d.pt2

The model is a Raptor (zoo name, Raptor folder or Hub repo, registered Raptor architecture such as
``raptor_vit_small_patch14_reg4_dinov2_k2``) or a teacher (anything :func:`raptor_zoo.load_teacher` accepts), so
both deployable files can be set side by side. Both formats go through ``torch.export`` (ONNX with torch's
dynamo-based exporter, which needs ``onnx`` and ``onnxscript``: ``pip install 'raptor_zoo[export]'``). A Raptor's
graph unrolls the L block applications but refers to each of the k unique blocks' weights once, so the file holds
what model.safetensors holds.

The input is ``pixel_values`` (normalised images [B, C, H, W]), the output ``logits``, or the pooled ``features``
of a headless model. The batch is free by default (``dynamic_batch=False`` / ``--static-batch`` fixes it); with
``dynamic_size`` H and W are free too (multiples of the patch): a family with timm's ``dynamic_img_size`` gets it
switched on in the exported copy, and the position-embedding resize and RoPE tables are computed in the graph from
the input's grid (see docs/export.md). ``dtype="fp16"`` stores weights and computes in float16 (input and output
float16). ``num_steps=m`` exports the anytime Raptor that stops after m of the L block applications.

After writing, the file is run (onnxruntime when installed, ``torch.export.load`` otherwise) at batch 3 (the fixed
batch of a static graph) and, with ``dynamic_size``, at four sizes (the built one, 3/4 and 5/4 of its grid, and a
non-square one); each output is compared with the eager float32 model. The relative error of a check is
max |graph - eager| / max |eager|; :attr:`ExportResult.within_tolerance` holds when every check is within
:data:`TOLERANCES` (1e-4 in float32, 1e-2 in float16).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import timm
import torch
from torch import nn

from .models.families import enable_dynamic_img_size, in_chans_of, make_exportable, native_img_size, patch_size_of
from .models.raptor_base import RaptorMixin

__all__ = ["FORMATS", "DTYPES", "TOLERANCES", "SizeCheck", "ExportResult", "load_model", "export", "export_onnx",
           "export_torch", "portable_resize_decompositions", "export_command"]

Format = Literal["onnx", "torch-export"]
Dtype = Literal["fp32", "fp16"]
FORMATS: tuple[str, ...] = ("onnx", "torch-export")
DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16}
TOLERANCES: dict[str, float] = {"fp32": 1e-4, "fp16": 1e-2}  # max |graph - eager fp32| / max |eager fp32|
_ONNX_PROTO_LIMIT = 2 ** 31 - 2 ** 26  # weights above ~1.9 GiB go to an external .data file (protobuf's 2 GiB cap)
_VERIFY_BATCH = 3


@dataclasses.dataclass(frozen=True)
class SizeCheck:
    """One run of the written file against eager float32 PyTorch."""

    batch_size: int
    img_size: tuple[int, int]
    max_abs_diff: float
    max_rel_diff: float


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What was written and how its outputs compare with eager PyTorch (float32)."""

    path: Path
    format: str
    num_bytes: int
    max_abs_diff: float | None
    checked_with: str | None
    dtype: str = "fp32"
    dynamic_batch: bool = True
    dynamic_size: bool = False
    checks: tuple[SizeCheck, ...] = ()
    input_shape: tuple[int | str, ...] = ()  # pixel_values: free dims by name (batch, height, width)

    @property
    def max_rel_diff(self) -> float | None:
        return max(check.max_rel_diff for check in self.checks) if self.checks else None

    @property
    def tolerance(self) -> float:
        return TOLERANCES[self.dtype]

    @property
    def within_tolerance(self) -> bool | None:
        """Whether every check is within :data:`TOLERANCES` (None when the file was not run)."""
        return None if self.max_rel_diff is None else self.max_rel_diff <= self.tolerance


# ---------------------------------------------------------------------------------------------- portable resize

def _cubic_filter(x: torch.Tensor) -> torch.Tensor:
    """Keys' cubic convolution with a = -0.5, PyTorch's (and PIL's) antialiasing bicubic kernel."""
    x = x.abs()
    a = -0.5
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def _triangle_filter(x: torch.Tensor) -> torch.Tensor:
    return (1 - x.abs()).clamp_min(0)


def _antialias_weights(
        in_size: int | torch.SymInt,
        out_size: int | torch.SymInt,
        align_corners: bool,
        scale_factor: float | None,
        kernel: Callable[[torch.Tensor], torch.Tensor],
        half_support: float,
        device: torch.device,
) -> torch.Tensor:
    """[out_size, in_size] weights of PyTorch's antialiased resize along one axis, in its float32 arithmetic
    (aten/src/ATen/native/cpu/UpSampleKernel.cpp, ``_compute_indices_min_size_weights_aa``), as graph ops of the
    sizes: the kernel widens by the scale when downsampling, is cut to the window PyTorch uses and normalised."""
    targets = torch.arange(out_size, dtype=torch.float32, device=device)
    sources = torch.arange(in_size, dtype=torch.float32, device=device)
    one = torch.ones((), dtype=torch.float32, device=device)
    if align_corners:
        last = targets.max()
        scale = torch.where(last > 0, (one * in_size - 1) / last.clamp_min(1), torch.zeros_like(one))
    elif scale_factor is not None and scale_factor > 0:
        scale = one / scale_factor
    else:
        scale = one * in_size / out_size
    downsampling = scale >= 1
    support = torch.where(downsampling, half_support * scale, one * half_support)
    inverse_scale = torch.where(downsampling, 1 / scale, one)
    centers = scale * (targets + 0.5)
    first = torch.floor(centers - support + 0.5).clamp_min(0)
    stop = torch.minimum(torch.floor(centers + support + 0.5), one * in_size)
    weights = kernel((sources[None, :] - centers[:, None] + 0.5) * inverse_scale)
    window = (sources[None, :] >= first[:, None]) & (sources[None, :] < stop[:, None])
    weights = torch.where(window, weights, torch.zeros_like(weights))
    total = weights.sum(dim=1, keepdim=True)
    return torch.where(total != 0, weights / total, weights)


def _antialiased_resize_as_matmul(
        kernel: Callable[[torch.Tensor], torch.Tensor],
        half_support: float,
) -> tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]:
    """The decompositions of the ``.default`` and ``.vec`` overloads of one antialiased resize op."""
    def resize(
            input: torch.Tensor,
            output_size: list[int],
            align_corners: bool,
            scales_h: float | None = None,
            scales_w: float | None = None,
    ) -> torch.Tensor:
        height = _antialias_weights(input.shape[-2], output_size[0], align_corners, scales_h, kernel, half_support,
                                    input.device)
        width = _antialias_weights(input.shape[-1], output_size[1], align_corners, scales_w, kernel, half_support,
                                   input.device)
        return height.to(input.dtype) @ input @ width.to(input.dtype).transpose(0, 1)

    def resize_vec(
            input: torch.Tensor,
            output_size: list[int] | None,
            align_corners: bool,
            scale_factors: list[float] | None,
    ) -> torch.Tensor:
        if output_size is None:  # F.interpolate(scale_factor=...): PyTorch's output size, floor(size * factor)
            output_size = [math.floor(size * factor) for size, factor in zip(input.shape[-2:], scale_factors)]
        scales = scale_factors if scale_factors is not None else (None, None)
        return resize(input, output_size, align_corners, scales[0], scales[1])

    return resize, resize_vec


def portable_resize_decompositions() -> dict[torch._ops.OpOverload, Callable[..., torch.Tensor]]:
    """Decompositions of the antialiased bicubic / bilinear resize (timm's position-embedding resize, DINOv2's) into
    two matrix products with weights computed in the graph from the sizes.

    ``F.interpolate(..., antialias=True)`` has no ONNX form below opset 18 (torch's TorchScript exporter refuses it)
    and needs Resize's ``antialias`` attribute at 18, which runtimes may not implement; these decompositions use
    only arange, elementwise ops, reductions and MatMul. They reproduce PyTorch's weights (the same float32
    arithmetic), so the graph differs from eager by float rounding only (tests/test_export.py bounds it)."""
    aten = torch.ops.aten
    table = {}
    for op, kernel, half_support in ((aten._upsample_bicubic2d_aa, _cubic_filter, 2.0),
                                     (aten._upsample_bilinear2d_aa, _triangle_filter, 1.0)):
        table[op.default], table[op.vec] = _antialiased_resize_as_matmul(kernel, half_support)
    return table


# ---------------------------------------------------------------------------------------------- models

class _Anytime(nn.Module):
    """The Raptor stopping after ``num_steps`` block applications, as a one-input module for export."""

    def __init__(self, raptor: RaptorMixin, num_steps: int) -> None:
        super().__init__()
        self.raptor = raptor
        self.num_steps = num_steps

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.raptor(pixel_values, num_steps=self.num_steps)


def _config_model_type(config_path: str | os.PathLike) -> str | None:
    with open(config_path, encoding="utf-8") as f:
        return json.load(f).get("model_type")


def _is_raptor_location(source: str) -> bool:
    """Whether a string names a saved Raptor (zoo name, folder or Hub repo whose config.json is a Raptor's)."""
    from . import zoo

    if zoo.is_zoo_name(source):
        return True
    folder = Path(os.path.expanduser(source))
    if folder.is_dir():
        return (folder / "config.json").is_file() and _config_model_type(folder / "config.json") == "raptor"
    if source.count("/") != 1 or source.startswith((".", "/", "~")) or timm.is_model(source):
        return False
    from huggingface_hub import hf_hub_download

    try:
        return _config_model_type(hf_hub_download(source, "config.json")) == "raptor"
    except (OSError, ValueError):
        return False  # not a reachable Hub repo: load_teacher says what it accepts


def _is_raptor_arch(name: str) -> bool:
    """Whether a registered timm architecture builds a Raptor (checked on the meta device)."""
    if not timm.is_model(name):
        return False
    with torch.device("meta"):
        return isinstance(timm.create_model(name, pretrained=False), RaptorMixin)


def load_model(source: str | os.PathLike, *, random_init: bool = False) -> tuple[nn.Module, str]:
    """The model ``raptor-zoo export`` writes, in eval mode, and a line saying where its weights come from.

    A saved Raptor (zoo name, Raptor folder, Hub repo) loads with :func:`raptor_zoo.from_pretrained`; a registered
    Raptor architecture builds with ``timm.create_model`` (its published weights unless ``random_init``; random when
    none are published, as ``timm.create_model`` does); anything else is a teacher, loaded with
    :func:`raptor_zoo.load_teacher` (``pretrained=not random_init``).
    """
    from .hub import load_pretrained
    from .teachers import load_teacher

    source = os.fspath(source)
    if _is_raptor_location(source):
        if random_init:
            raise ValueError(f"{source!r} is a saved Raptor; --random-init applies to architecture and teacher "
                             "names. Leave it out to export the saved weights.")
        return load_pretrained(source), "saved weights"
    if _is_raptor_arch(source):
        published = bool(timm.list_pretrained(source) or timm.list_pretrained(f"{source}.*"))
        model = timm.create_model(source, pretrained=published and not random_init).eval()
        if published and not random_init:
            return model, "published weights"
        return model, "random init" + ("" if random_init else " (no weights are published for this architecture)")
    teacher = load_teacher(source, pretrained=not random_init)
    return teacher.model.eval(), "teacher, " + ("random init" if random_init else "pretrained weights")


def _resolve_model(model: nn.Module | str | os.PathLike) -> nn.Module:
    if not isinstance(model, nn.Module):
        model = load_model(model)[0]
    return model.eval()


def _anytime(model: nn.Module, num_steps: int | None) -> nn.Module:
    if num_steps is None:
        return model
    if not isinstance(model, RaptorMixin):
        raise ValueError(f"num_steps (anytime depth) applies to Raptors, not to a {type(model).__name__}.")
    if not 1 <= num_steps <= model.depth:
        raise ValueError(f"num_steps={num_steps} is out of range; use 1 <= num_steps <= {model.depth} "
                         f"(the Raptor's L block applications).")
    return _Anytime(model, num_steps).eval()


@dataclasses.dataclass
class _Prepared:
    """The module to export and the eager float32 references its outputs are checked against."""

    deploy: nn.Module
    reference: nn.Module  # the model as given (float32): checked at its built size
    reference_any_size: nn.Module  # the same with dynamic image sizes switched on: checked at the other sizes
    img_size: tuple[int, int]
    patch_size: tuple[int, int]
    in_chans: int


def _prepare(model: nn.Module, *, dynamic_size: bool, dtype: str, num_steps: int | None) -> _Prepared:
    """Copies of the model for export; the model itself is left as it is."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {tuple(DTYPES)}, got {dtype!r}.")
    float_params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    reference = model if float_params <= {torch.float32} else copy.deepcopy(model).float()
    any_size = reference
    if dynamic_size:
        any_size = copy.deepcopy(reference)
        enable_dynamic_img_size(any_size)
    deploy = copy.deepcopy(any_size)
    make_exportable(deploy)
    deploy = deploy.to(DTYPES[dtype]).eval()
    return _Prepared(
        deploy=_anytime(deploy, num_steps), reference=_anytime(reference, num_steps),
        reference_any_size=_anytime(any_size, num_steps), img_size=native_img_size(model),
        patch_size=patch_size_of(model), in_chans=in_chans_of(model))


def _check_sizes(prepared: _Prepared, dynamic_size: bool) -> list[tuple[int, int]]:
    """The built size; with dynamic sizes also 3/4 and 5/4 of its grid and a non-square size (in patches)."""
    if not dynamic_size:
        return [prepared.img_size]
    (height, width), (patch_h, patch_w) = prepared.img_size, prepared.patch_size
    grid_h, grid_w = height // patch_h, width // patch_w
    smaller = (max(1, round(grid_h * 3 / 4)) * patch_h, max(1, round(grid_w * 3 / 4)) * patch_w)
    larger = (max(grid_h + 1, round(grid_h * 5 / 4)) * patch_h, max(grid_w + 1, round(grid_w * 5 / 4)) * patch_w)
    return [prepared.img_size, smaller, larger, (smaller[0], larger[1])]


def _trace_size(prepared: _Prepared, dynamic_size: bool) -> tuple[int, int]:
    """The example size the graph is traced at: off the checked sizes, so the checks see sizes it was not traced at
    (the built size when the size is fixed)."""
    sizes = _check_sizes(prepared, dynamic_size)
    return (sizes[2][0], sizes[1][1]) if dynamic_size else prepared.img_size


def _images(prepared: _Prepared, batch_size: int, img_size: tuple[int, int], seed: int) -> torch.Tensor:
    """Random normalised images (float32) on the model's device."""
    param = next(prepared.reference.parameters())
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch_size, prepared.in_chans, *img_size, generator=generator).to(param.device)


def _dynamic_shapes(
        prepared: _Prepared,
        dynamic_batch: bool,
        dynamic_size: bool,
) -> tuple[dict[int, torch.export.Dim], ...] | None:
    dims = {}
    if dynamic_batch:
        dims[0] = torch.export.Dim("batch", min=1)
    if dynamic_size:
        dims[2] = prepared.patch_size[0] * torch.export.Dim("grid_height", min=1)
        dims[3] = prepared.patch_size[1] * torch.export.Dim("grid_width", min=1)
    return (dims,) if dims else None


def _trace(
        prepared: _Prepared,
        dynamic_batch: bool,
        dynamic_size: bool,
        batch_size: int,
) -> torch.export.ExportedProgram:
    example = _images(prepared, 2 if dynamic_batch else batch_size, _trace_size(prepared, dynamic_size), seed=0)
    with torch.no_grad():
        return torch.export.export(
            prepared.deploy, (example.to(next(prepared.deploy.parameters()).dtype),),
            dynamic_shapes=_dynamic_shapes(prepared, dynamic_batch, dynamic_size))


def _check_out(out: str | os.PathLike, suffixes: tuple[str, ...]) -> Path:
    out = Path(out)
    if out.suffix not in suffixes:
        raise ValueError(f"--out {str(out)!r} should end in {' or '.join(suffixes)}.")
    if out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a folder; pass a file path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _output_name(model: nn.Module) -> str:
    core = model.raptor if isinstance(model, _Anytime) else model
    return "logits" if getattr(core, "num_classes", 1) else "features"


def _compare(actual: torch.Tensor, expected: torch.Tensor) -> tuple[float, float]:
    if actual.shape != expected.shape:
        raise RuntimeError(f"the exported graph returns shape {tuple(actual.shape)}, eager {tuple(expected.shape)}.")
    diff = float((actual.float() - expected.float()).abs().max())
    return diff, diff / max(float(expected.float().abs().max()), torch.finfo(torch.float32).tiny)


def _run_checks(
        out: Path,
        prepared: _Prepared,
        run: Callable[[torch.Tensor], torch.Tensor],
        dtype: str,
        dynamic_batch: bool,
        dynamic_size: bool,
        batch_size: int,
) -> tuple[SizeCheck, ...]:
    """Run the written graph (``run`` takes images in the graph's dtype) against eager float32 at every check."""
    checks = []
    batch = _VERIFY_BATCH if dynamic_batch else batch_size
    for seed, img_size in enumerate(_check_sizes(prepared, dynamic_size), start=1):
        images = _images(prepared, batch, img_size, seed)
        reference = prepared.reference if img_size == prepared.img_size else prepared.reference_any_size
        with torch.no_grad():
            expected = reference(images)
            try:
                actual = run(images.to(DTYPES[dtype]))
            except Exception as err:  # onnxruntime's and torch's guard errors have no common base
                traced = "x".join(map(str, _trace_size(prepared, dynamic_size)))
                raise RuntimeError(
                    f"{out} was written but does not run at batch {batch}, {img_size[0]}x{img_size[1]} (it was traced "
                    f"at {traced}): {type(err).__name__}: {str(err).splitlines()[0]}. The model's code freezes the "
                    "traced shape somewhere (a Python number taken from a tensor size); do not deploy the file."
                ) from err
        checks.append(SizeCheck(batch, img_size, *_compare(actual.cpu(), expected.cpu())))
    return tuple(checks)


def _input_shape(prepared: _Prepared, dynamic_batch: bool, dynamic_size: bool, batch_size: int
                 ) -> tuple[int | str, ...]:
    """pixel_values' shape, its free dims named as Optimum names them (batch, height, width)."""
    return ("batch" if dynamic_batch else batch_size, prepared.in_chans,
            *(("height", "width") if dynamic_size else prepared.img_size))


def _result(out: Path, format: str, num_bytes: int, checked_with: str | None, checks: tuple[SizeCheck, ...],
            prepared: _Prepared, dtype: str, dynamic_batch: bool, dynamic_size: bool, batch_size: int) -> ExportResult:
    max_abs_diff = max(check.max_abs_diff for check in checks) if checks else None
    return ExportResult(out, format, num_bytes, max_abs_diff, checked_with, dtype, dynamic_batch, dynamic_size, checks,
                        _input_shape(prepared, dynamic_batch, dynamic_size, batch_size))


def _name_dims(onnx_program: torch.onnx.ONNXProgram, input_shape: tuple[int | str, ...], dynamic_batch: bool) -> None:
    """The graph's input (and output batch) dims named instead of the tracer's symbols (s77, 14*s39, ...)."""
    import onnx_ir as ir

    graph = onnx_program.model.graph
    graph.inputs[0].shape = ir.Shape(list(input_shape))
    if dynamic_batch:
        for output in graph.outputs:
            output.shape = ir.Shape(["batch", *output.shape[1:]])


def export_onnx(
        model: nn.Module | str | os.PathLike,
        out: str | os.PathLike,
        *,
        dynamic_batch: bool = True,
        dynamic_size: bool = False,
        dtype: Dtype = "fp32",
        num_steps: int | None = None,
        batch_size: int = 1,
        opset_version: int | None = None,
) -> ExportResult:
    """Write ``model`` (a module, or anything :func:`load_model` takes) as ONNX through ``torch.onnx.export``
    (dynamo exporter), antialiased resizes decomposed (:func:`portable_resize_decompositions`); checked with
    onnxruntime when it is installed.

    Args:
        dynamic_batch: batch free at run time (default); False fixes it at ``batch_size``.
        dynamic_size: height and width free (multiples of the patch); ValueError for a family with fixed grids.
        dtype: "fp32" or "fp16" (weights and compute; input and output in that dtype).
        num_steps: anytime depth of a Raptor (default: all L steps).
    """
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {missing} (torch's exporter): pip install 'raptor_zoo[export]'.")
    import numpy

    out = _check_out(out, (".onnx",))
    prepared = _prepare(_resolve_model(model), dynamic_size=dynamic_size, dtype=dtype, num_steps=num_steps)
    weight_bytes = sum(t.numel() * t.element_size() for t in prepared.deploy.state_dict().values())
    program = _trace(prepared, dynamic_batch, dynamic_size, batch_size)
    program = program.run_decompositions(portable_resize_decompositions())
    # constant folding evaluates both branches of a sigmoid in fp16: the overflowing one is discarded
    with torch.no_grad(), numpy.errstate(over="ignore", invalid="ignore"):
        onnx_program = torch.onnx.export(
            program, dynamo=True, input_names=["pixel_values"], output_names=[_output_name(prepared.deploy)],
            opset_version=opset_version, verbose=False)
    for node in onnx_program.model.graph.all_nodes():
        node.metadata_props.clear()  # the exporter's debug trail: Python stack traces with local paths
    _name_dims(onnx_program, _input_shape(prepared, dynamic_batch, dynamic_size, batch_size), dynamic_batch)
    onnx_program.save(out, external_data=weight_bytes > _ONNX_PROTO_LIMIT)
    num_bytes = sum(p.stat().st_size for p in (out, out.with_name(out.name + ".data")) if p.is_file())
    if importlib.util.find_spec("onnxruntime") is None:
        return _result(out, "onnx", num_bytes, None, (), prepared, dtype, dynamic_batch, dynamic_size, batch_size)
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: fp16 graphs log every MatMul the CPU provider cannot pre-fold
    session = onnxruntime.InferenceSession(str(out), options, providers=["CPUExecutionProvider"])

    def run(images: torch.Tensor) -> torch.Tensor:
        (output,) = session.run(None, {"pixel_values": images.cpu().numpy()})
        return torch.from_numpy(output)

    checks = _run_checks(out, prepared, run, dtype, dynamic_batch, dynamic_size, batch_size)
    return _result(out, "onnx", num_bytes, "onnxruntime", checks, prepared, dtype, dynamic_batch, dynamic_size,
                   batch_size)


def export_torch(
        model: nn.Module | str | os.PathLike,
        out: str | os.PathLike,
        *,
        dynamic_batch: bool = True,
        dynamic_size: bool = False,
        dtype: Dtype = "fp32",
        num_steps: int | None = None,
        batch_size: int = 1,
) -> ExportResult:
    """Write ``model`` as a ``torch.export`` program (``torch.export.save``, a .pt2 file; PyTorch's own ops, the
    resize included), reloaded with ``torch.export.load`` and compared with eager. Arguments as :func:`export_onnx`."""
    out = _check_out(out, (".pt2",))
    prepared = _prepare(_resolve_model(model), dynamic_size=dynamic_size, dtype=dtype, num_steps=num_steps)
    torch.export.save(_trace(prepared, dynamic_batch, dynamic_size, batch_size), out)
    checks = _run_checks(out, prepared, torch.export.load(out).module(), dtype, dynamic_batch, dynamic_size, batch_size)
    return _result(out, "torch-export", out.stat().st_size, "torch.export.load", checks, prepared, dtype,
                   dynamic_batch, dynamic_size, batch_size)


def export(
        model: nn.Module | str | os.PathLike,
        out: str | os.PathLike,
        format: Format = "onnx",
        **options: int | bool | str | None,
) -> ExportResult:
    """:func:`export_onnx` or :func:`export_torch` by ``format`` ("onnx" or "torch-export")."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    return (export_onnx if format == "onnx" else export_torch)(model, out, **options)


def export_command(args: argparse.Namespace) -> int:
    """``raptor-zoo export``: write the graph, then report its size and its difference from eager. An fp32 graph
    beyond the tolerance is wrong (exit 1); an fp16 graph beyond it gets a warning, as fp16 loses what the model's
    own numbers need (values below fp16's normal range, large activations), which says nothing about the export."""
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}.")
        if args.dynamic_batch:
            raise SystemExit("--batch-size fixes the batch of the graph; leave out --dynamic-batch.")
    dynamic_batch = not (args.static_batch or args.batch_size is not None)
    model, weights = load_model(args.model, random_init=args.random_init)
    print(f"{args.model}: {type(model).__name__}, {weights}")
    result = export(model, args.out, args.format, dynamic_batch=dynamic_batch, dynamic_size=args.dynamic_size,
                    dtype=args.dtype, num_steps=args.num_steps, batch_size=args.batch_size or 1)
    print(f"wrote {result.path} ({result.format}, {result.num_bytes / 2 ** 20:.2f} MiB, {result.dtype}; "
          f"input pixel_values [{', '.join(map(str, result.input_shape))}])")
    if result.max_abs_diff is None:
        print("not checked: install onnxruntime (pip install 'raptor_zoo[export]') to compare with eager")
        return 0
    for check in result.checks:
        print(f"  batch {check.batch_size}, {check.img_size[0]}x{check.img_size[1]}: max abs diff "
              f"{check.max_abs_diff:.2e}, relative {check.max_rel_diff:.2e}")
    print(f"{result.checked_with} vs eager PyTorch: max abs diff {result.max_abs_diff:.2e}, max relative diff "
          f"{result.max_rel_diff:.2e} over {len(result.checks)} checks ({result.dtype} graph against fp32 eager; "
          f"tolerance {result.tolerance:.0e})")
    if result.within_tolerance:
        return 0
    if result.dtype == "fp16":
        print(f"warning: fp16 differs from eager fp32 by more than {result.tolerance:.0e} (relative) for this model; "
              "the fp32 graph is the faithful one: measure your task's metric before deploying fp16")
        return 0
    print(f"error: the written graph differs from eager by more than {result.tolerance:.0e} (relative); the file "
          "is kept for inspection, but do not deploy it")
    return 1
