"""Deployable graphs of a Raptor: ONNX (torch's exporter) and ``torch.export`` programs, checked against eager.

    raptor-zoo export raptor-digits-k2 --format onnx --out d.onnx [--dynamic-batch] [--num-steps m]
    raptor-zoo export <folder | zoo name | repo id> --format torch-export --out d.pt2

Both go through ``torch.export`` (ONNX with torch's dynamo-based exporter, which needs ``onnx`` and ``onnxscript``:
``pip install 'raptor_zoo[export]'``). The graph unrolls the L block applications but refers to each of the k
unique blocks' weights once, so the file holds what model.safetensors holds. The input is ``pixel_values``
(normalised images [B, C, H, W] at the model's input size, :mod:`raptor_zoo.data`); the output is ``logits``, or
the pooled ``features`` of a headless Raptor. ``num_steps=m`` exports the anytime model that stops after m of the
L block applications. After writing, the file is run once (onnxruntime when installed, ``torch.export.load``
otherwise) and its largest absolute difference from eager is returned.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from .models.raptor_vit import RaptorVisionTransformer

__all__ = ["FORMATS", "ExportResult", "export", "export_onnx", "export_torch", "export_command"]

Format = Literal["onnx", "torch-export"]
FORMATS: tuple[str, ...] = ("onnx", "torch-export")
_ONNX_PROTO_LIMIT = 2 ** 31 - 2 ** 26  # weights above ~1.9 GiB go to an external .data file (protobuf's 2 GiB cap)
_VERIFY_BATCH = 3


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What was written and how its outputs compare with eager PyTorch."""

    path: Path
    format: str
    num_bytes: int
    max_abs_diff: float | None
    checked_with: str | None


class _Anytime(nn.Module):
    """The Raptor stopping after ``num_steps`` block applications, as a one-input module for export."""

    def __init__(self, raptor: RaptorVisionTransformer, num_steps: int) -> None:
        super().__init__()
        self.raptor = raptor
        self.num_steps = num_steps

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.raptor(pixel_values, num_steps=self.num_steps)


def _resolve_model(model: nn.Module | str | os.PathLike, num_steps: int | None) -> nn.Module:
    if not isinstance(model, nn.Module):
        from .hub import load_pretrained

        model = load_pretrained(model)
    if num_steps is not None:
        if not isinstance(model, RaptorVisionTransformer):
            raise ValueError(f"num_steps (anytime depth) applies to Raptors, not to a {type(model).__name__}.")
        if not 1 <= num_steps <= model.depth:
            raise ValueError(f"num_steps={num_steps} is out of range; use 1 <= num_steps <= {model.depth} "
                             f"(the Raptor's L block applications).")
        model = _Anytime(model, num_steps)
    return model.eval()


def _example_input(model: nn.Module, batch_size: int) -> torch.Tensor:
    """Random normalised images at the size the model's patch embedding takes."""
    core = model.raptor if isinstance(model, _Anytime) else model
    input_size = (core.patch_embed.proj.in_channels, *core.patch_embed.img_size)
    param = next(core.parameters())
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch_size, *input_size, generator=generator).to(param.device, param.dtype)


def _dynamic_shapes(dynamic_batch: bool) -> tuple[dict[int, torch.export.Dim], ...] | None:
    return ({0: torch.export.Dim("batch", min=1)},) if dynamic_batch else None


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


def _max_abs_diff(actual: torch.Tensor, expected: torch.Tensor) -> float:
    if actual.shape != expected.shape:
        raise RuntimeError(f"the exported graph returns shape {tuple(actual.shape)}, eager {tuple(expected.shape)}.")
    return float((actual.float() - expected.float()).abs().max())


def export_onnx(
        model: nn.Module | str | os.PathLike,
        out: str | os.PathLike,
        *,
        dynamic_batch: bool = False,
        num_steps: int | None = None,
        batch_size: int = 1,
        opset_version: int | None = None,
) -> ExportResult:
    """Write ``model`` (a module, or a Raptor folder / zoo name / repo id) as ONNX through ``torch.onnx.export``
    (dynamo exporter); checked with onnxruntime when it is installed."""
    missing = [name for name in ("onnx", "onnxscript") if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f"ONNX export needs {missing} (torch's exporter): pip install 'raptor_zoo[export]'.")
    out = _check_out(out, (".onnx",))
    model = _resolve_model(model, num_steps)
    example = _example_input(model, 2 if dynamic_batch else batch_size)
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    with torch.no_grad():
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=["pixel_values"], output_names=[_output_name(model)],
            dynamic_shapes=_dynamic_shapes(dynamic_batch), opset_version=opset_version, verbose=False)
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()  # the exporter's debug trail: Python stack traces with local paths
    program.save(out, external_data=weight_bytes > _ONNX_PROTO_LIMIT)
    num_bytes = sum(p.stat().st_size for p in (out, out.with_name(out.name + ".data")) if p.is_file())
    if importlib.util.find_spec("onnxruntime") is None:
        return ExportResult(out, "onnx", num_bytes, None, None)
    import onnxruntime

    images = _example_input(model, _VERIFY_BATCH if dynamic_batch else batch_size)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (actual,) = session.run(None, {"pixel_values": images.cpu().float().numpy()})
    with torch.no_grad():
        expected = model(images)
    return ExportResult(out, "onnx", num_bytes, _max_abs_diff(torch.from_numpy(actual), expected.cpu()),
                        "onnxruntime")


def export_torch(
        model: nn.Module | str | os.PathLike,
        out: str | os.PathLike,
        *,
        dynamic_batch: bool = False,
        num_steps: int | None = None,
        batch_size: int = 1,
) -> ExportResult:
    """Write ``model`` as a ``torch.export`` program (``torch.export.save``, a .pt2 file), reloaded with
    ``torch.export.load`` and compared with eager."""
    out = _check_out(out, (".pt2",))
    model = _resolve_model(model, num_steps)
    example = _example_input(model, 2 if dynamic_batch else batch_size)
    with torch.no_grad():
        program = torch.export.export(model, (example,), dynamic_shapes=_dynamic_shapes(dynamic_batch))
    torch.export.save(program, out)
    images = _example_input(model, _VERIFY_BATCH if dynamic_batch else batch_size)
    with torch.no_grad():
        actual, expected = torch.export.load(out).module()(images), model(images)
    return ExportResult(out, "torch-export", out.stat().st_size, _max_abs_diff(actual, expected), "torch.export.load")


def export(
        model: nn.Module | str | os.PathLike,
        out: str | os.PathLike,
        format: Format = "onnx",
        **options: int | bool | None,
) -> ExportResult:
    """:func:`export_onnx` or :func:`export_torch` by ``format`` ("onnx" or "torch-export")."""
    if format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {format!r}.")
    return (export_onnx if format == "onnx" else export_torch)(model, out, **options)


def export_command(args: argparse.Namespace) -> int:
    """``raptor-zoo export``: write the graph, then report its size and its difference from eager."""
    if args.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {args.batch_size}.")
    result = export(args.model, args.out, args.format, dynamic_batch=args.dynamic_batch, num_steps=args.num_steps,
                    batch_size=args.batch_size)
    print(f"wrote {result.path} ({result.format}, {result.num_bytes / 2 ** 20:.2f} MiB)")
    if result.max_abs_diff is None:
        print("not checked: install onnxruntime (pip install 'raptor_zoo[export]') to compare with eager")
    else:
        print(f"{result.checked_with} vs eager PyTorch: max abs diff {result.max_abs_diff:.2e}")
    return 0
