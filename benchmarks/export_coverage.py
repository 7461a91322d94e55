#!/usr/bin/env python3
"""Export coverage: does the Raptor of each ViT family export to ONNX with a free batch and image size, in fp32 and
fp16, and how does its file compare with its teacher's?

One row per family (and per transformers teacher type converted through `raptor_zoo.load_teacher`): a tiny
random-init teacher (depth 4, embed_dim 64, 2 heads, 4 patches per side, 10 classes; every weight perturbed with
seeded N(0, 0.05^2) noise so that LayerScale gains, position tables and depth gates all matter) and its k = 2 Raptor
(`raptor_zoo.from_teacher(teacher, block_schedule=(2, 2))`, perturbed likewise). Each is written with
`raptor_zoo.export.export_onnx`:

- the Raptor in fp32, batch free, image size free where the family runs at any size (`--dynamic-size`), checked by
  onnxruntime at batch 3 and at the built size, 3/4 and 5/4 of its grid and a non-square size;
- the Raptor in fp16 (weights and compute), the same checks against eager fp32;
- the teacher in fp32 with the Raptor's settings, for the file size.

Errors are relative: max |graph - eager fp32| / max |eager fp32| over the checks (tolerances 1e-4 fp32, 1e-2 fp16,
`raptor_zoo.export.TOLERANCES`). A failing export records a short reason. The table in docs/export.md is rewritten.

    python benchmarks/export_coverage.py                            # every row -> results/export_coverage/
    python benchmarks/export_coverage.py --rows dinov2 dinov3 --no-doc
"""
import argparse
import dataclasses
import datetime
import importlib.metadata
import platform
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import onnx
import torch
import torch.nn as nn

import raptor_zoo
from raptor_zoo.bench import write_json
from raptor_zoo.export import TOLERANCES, ExportResult, export_onnx
from raptor_zoo.models.families import family_of

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "export_coverage"
DEFAULT_DOC = REPO_ROOT / "docs" / "export.md"
TABLE_BEGIN = "<!-- export coverage table: written by benchmarks/export_coverage.py -->"
TABLE_END = "<!-- end of export coverage table -->"


@dataclasses.dataclass(frozen=True)
class TinyConfig:
    """The tiny size every row is built at."""
    depth: int = 4
    embed_dim: int = 64
    num_heads: int = 2
    patches_per_side: int = 4
    num_classes: int = 10
    block_schedule: tuple[int, ...] = (2, 2)
    noise: float = 0.05
    seed: int = 0


@dataclasses.dataclass(frozen=True)
class Row:
    """One family: how its tiny teacher is built (a timm name or a transformers model)."""
    key: str
    family: str
    teacher: str
    patch_size: int
    timm_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    transformers: Callable[[TinyConfig, int], nn.Module] | None = None


def _hf_dinov2(cfg: TinyConfig, img_size: int) -> nn.Module:
    from transformers import Dinov2Config, Dinov2Model
    return Dinov2Model(Dinov2Config(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=2 * cfg.embed_dim, image_size=img_size, patch_size=img_size // cfg.patches_per_side))


def _hf_dinov3(cfg: TinyConfig, img_size: int) -> nn.Module:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel
    return DINOv3ViTModel(DINOv3ViTConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=2 * cfg.embed_dim, image_size=img_size, patch_size=img_size // cfg.patches_per_side,
        num_register_tokens=4))


def _hf_clip(cfg: TinyConfig, img_size: int) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModel
    return CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.embed_dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
        intermediate_size=2 * cfg.embed_dim, image_size=img_size, patch_size=img_size // cfg.patches_per_side))


ROWS: tuple[Row, ...] = (
    Row("dinov2", "ViT / DINOv2", "vit_small_patch14_reg4_dinov2", 14),
    Row("dinov3", "Eva / DINOv3", "vit_small_patch16_dinov3", 16),
    Row("eva02", "Eva / EVA-02", "eva02_tiny_patch14_224", 14),
    Row("beit", "BEiT", "beit_base_patch16_224", 16),
    Row("naflexvit", "NaFlexVit", "naflexvit_base_patch16_gap", 16),
    Row("cait", "CaiT", "cait_xxs24_224", 16),
    Row("xcit", "XCiT", "xcit_nano_12_p16_224", 16),
    Row("siglip", "SigLIP attention pool", "vit_base_patch16_siglip_224", 16),
    Row("deit_distilled", "DeiT distilled", "deit_tiny_distilled_patch16_224", 16),
    Row("relpos", "ViT relative position", "vit_relpos_small_patch16_224", 16),
    Row("sam", "SAM image encoder", "samvit_base_patch16", 16, dict(window_size=2, global_attn_indexes=(1, 3))),
    Row("hf_dinov2", "transformers DINOv2", "transformers Dinov2Model", 14, transformers=_hf_dinov2),
    Row("hf_dinov3", "transformers DINOv3", "transformers DINOv3ViTModel", 16, transformers=_hf_dinov3),
    Row("hf_clip", "transformers CLIP vision", "transformers CLIPVisionModel", 16, transformers=_hf_clip),
)
ROWS_BY_KEY: dict[str, Row] = {row.key: row for row in ROWS}


@torch.no_grad()
def _perturb(model: nn.Module, seed: int, noise: float) -> None:
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(torch.randn(param.shape, generator=generator) * noise)


def tiny_models(row: Row, cfg: TinyConfig = TinyConfig()) -> tuple[nn.Module, nn.Module]:
    """(teacher, Raptor) of a row at the tiny size, random init, perturbed, eval mode."""
    img_size = row.patch_size * cfg.patches_per_side
    torch.manual_seed(cfg.seed)
    if row.transformers is not None:
        teacher = raptor_zoo.load_teacher(row.transformers(cfg, img_size).eval())
    else:
        teacher = raptor_zoo.load_teacher(
            row.teacher, pretrained=False, img_size=img_size, depth=cfg.depth, embed_dim=cfg.embed_dim,
            num_heads=cfg.num_heads, num_classes=cfg.num_classes, **row.timm_kwargs)
    _perturb(teacher.model, cfg.seed, cfg.noise)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        raptor = raptor_zoo.from_teacher(teacher, block_schedule=cfg.block_schedule)
    _perturb(raptor, cfg.seed + 1, cfg.noise)
    return teacher.model.eval(), raptor.eval()


def runs_at_any_size(model: nn.Module) -> bool:
    """Whether --dynamic-size applies to the model's family (timm's dynamic_img_size switch, or any size)."""
    return family_of(model).dynamic_size != "fixed"


def _short(err: BaseException, limit: int = 160) -> str:
    """The error's own line: torch's exporter ends its message with a pointer, its cause is in the summary."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    causes = [line for line in lines if line.startswith("<class '")]
    message = causes[0].replace("<class '", "").replace("'>", "", 1) if causes else (
        f'{type(err).__name__}: {lines[-1] if lines else ""}')
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _export(model: nn.Module, path: Path, dynamic_size: bool, dtype: str) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        result: ExportResult = export_onnx(model, path, dynamic_size=dynamic_size, dtype=dtype)
    except Exception as err:  # a family that does not export is a row of the table, not a crash
        return dict(ok=False, error=_short(err))
    resize_ops = sum(node.op_type == "Resize" for node in onnx.load(str(path)).graph.node)
    return dict(
        ok=bool(result.within_tolerance), num_bytes=result.num_bytes, max_abs_diff=result.max_abs_diff,
        max_rel_diff=result.max_rel_diff, sizes=[list(check.img_size) for check in result.checks],
        batch_sizes=sorted({check.batch_size for check in result.checks}), input_shape=list(result.input_shape),
        resize_ops=resize_ops, seconds=round(time.perf_counter() - start, 1))


def cover_row(row: Row, cfg: TinyConfig, work_dir: Path) -> dict[str, Any]:
    """Build the row's tiny pair and export the Raptor (fp32, fp16) and the teacher (fp32)."""
    teacher, raptor = tiny_models(row, cfg)
    dynamic_size = runs_at_any_size(raptor)
    record: dict[str, Any] = dict(
        key=row.key, family=row.family, teacher=row.teacher, raptor=type(raptor).__name__,
        family_adapter=family_of(raptor).name, dynamic_size=dynamic_size,
        fixed_size_reason=family_of(raptor).fixed_size_reason or None)
    record["raptor_fp32"] = _export(raptor, work_dir / f"{row.key}_raptor.onnx", dynamic_size, "fp32")
    record["raptor_fp16"] = _export(raptor, work_dir / f"{row.key}_raptor_fp16.onnx", dynamic_size, "fp16")
    record["teacher_fp32"] = _export(teacher, work_dir / f"{row.key}_teacher.onnx", dynamic_size, "fp32")
    return record


def _mib(num_bytes: int) -> str:
    return f"{num_bytes / 2 ** 20:.3f}"


def _cells(record: dict[str, Any]) -> list[str]:
    fp32, fp16, teacher = record["raptor_fp32"], record["raptor_fp16"], record["teacher_fp32"]
    if not fp32.get("num_bytes"):
        return ["no: " + fp32["error"].replace("|", "/"), "–", "–", "–", "–", "–"]
    exports = "yes" if fp32["ok"] else f"off: rel. error {fp32['max_rel_diff']:.1e}"
    batch = f"yes (run at {', '.join(map(str, fp32['batch_sizes']))})" if "batch" in fp32["input_shape"] else "no"
    if record["dynamic_size"]:
        size = "yes: " + ", ".join(f"{h}x{w}" for h, w in fp32["sizes"])
    else:
        size = f"no: {record['fixed_size_reason']}"
    half = ("yes" if fp16["ok"] else "off") if fp16.get("num_bytes") else "no: " + fp16["error"]
    errors = f"{fp32['max_rel_diff']:.1e} / " + (f"{fp16['max_rel_diff']:.1e}" if fp16.get("num_bytes") else "–")
    sizes = _mib(fp32["num_bytes"]) + " / " + (
        f"{_mib(teacher['num_bytes'])} ({fp32['num_bytes'] / teacher['num_bytes']:.2f})"
        if teacher.get("num_bytes") else "teacher: " + teacher["error"])
    return [exports, batch, size, half, errors, sizes]


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    header = ("| family | tiny teacher | Raptor class | exports | dynamic batch | dynamic size (checked) | fp16 | "
              "max rel. error vs eager fp32: fp32 / fp16 | ONNX MiB: Raptor / teacher (ratio) |")
    lines = [header, "|" + "---|" * 9]
    for record in records:
        cells = [record["family"], f"`{record['teacher']}`", record["raptor"], *_cells(record)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_line(records: Sequence[dict[str, Any]], environment: dict[str, Any]) -> str:
    exported = sum(bool(r["raptor_fp32"].get("ok")) for r in records)
    dynamic = sum(bool(r["raptor_fp32"].get("ok")) and r["dynamic_size"] for r in records)
    return (f"{exported} of {len(records)} rows export within {TOLERANCES['fp32']:.0e} (fp32), {dynamic} of them with "
            f"a free image size; measured {environment['date']} with torch {environment['torch']}, onnxscript "
            f"{environment['onnxscript']}, onnxruntime {environment['onnxruntime']} "
            f"(`python benchmarks/export_coverage.py`, {environment['seconds']:.0f} s with {environment['cpus']} CPU "
            f"thread{'s' if environment['cpus'] != 1 else ''}).")


def write_doc_table(doc: Path, table: str, summary: str) -> None:
    """Replace the table between the markers of `doc` (appended when the markers are missing)."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{TABLE_BEGIN}\n{summary}\n\n{table}\n{TABLE_END}"
    pattern = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else (
        text.rstrip("\n") + ("\n\n" if text else "") + block + "\n")
    doc.write_text(text)


def _environment(seconds: float) -> dict[str, Any]:
    versions = {name: importlib.metadata.version(name) for name in ("onnx", "onnxscript", "onnxruntime", "timm")}
    return dict(date=datetime.date.today().isoformat(), torch=torch.__version__, **versions,
                python=platform.python_version(), machine=platform.machine(), cpus=torch.get_num_threads(),
                seconds=seconds)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=None, choices=list(ROWS_BY_KEY), help="rows (default: all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--doc", default=str(DEFAULT_DOC),
                        help=f"markdown file with the table (default: {DEFAULT_DOC})")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the doc table")
    args = parser.parse_args(argv)
    rows = [ROWS_BY_KEY[key] for key in args.rows] if args.rows else list(ROWS)
    cfg = TinyConfig()
    start = time.perf_counter()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for row in rows:
            records.append(cover_row(row, cfg, Path(tmp)))
            print(f"{row.key}: {' | '.join(_cells(records[-1]))}", flush=True)
    environment = _environment(round(time.perf_counter() - start, 1))
    table, summary = markdown_table(records), summary_line(records, environment)
    out = Path(args.out)
    write_json(records, out / "export_coverage.json", environment=environment, settings=dataclasses.asdict(cfg),
               notes=["relative error: max |graph - eager fp32| / max |eager fp32| over the checks"])
    (out / "export_coverage.md").write_text(f"{summary}\n\n{table}\n")
    if not args.no_doc:
        write_doc_table(Path(args.doc), table, summary)
    print(f"\n{summary}\n\n{table}")
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
