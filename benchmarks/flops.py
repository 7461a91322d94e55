#!/usr/bin/env python3
"""FLOPs and parameters of every registered Raptor architecture (relaxed ones included) against its teacher
(meta device, no weights).

Convention: FLOPs = 2 x multiply-accumulates, counted by torch.utils.flop_counter under the math SDPA backend
(matmuls, convolutions and attention; element-wise ops such as norms, activations and the depth-scaling gains
are not counted), for one image at --img-size. Each row also gives the paper's SwiGLU block variant (about 1.3x
the teacher's FLOPs) and the depth-scaling overhead (the Raptor with and without t_scale).

    python benchmarks/flops.py                     # -> benchmarks/results/flops.json, flops.md
    python benchmarks/flops.py --img-size 518 --arch raptor_vit_base_patch14_reg4_dinov2_k2
"""
import argparse
import datetime
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
from tqdm import tqdm

import raptor_zoo
from raptor_zoo.bench import FLOPS_CONVENTION, flops_row, write_json
from raptor_zoo.models.archs import REGISTERED_RAPTOR_ARCHS

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def markdown_flops_table(rows: Sequence[dict[str, Any]]) -> str:
    """The FLOPs / params rows as a Markdown table."""
    lines = [
        "| arch | k | schedule | teacher GFLOPs | Raptor GFLOPs | FLOPs ratio | teacher params (M) | Raptor params (M) "
        "| params ratio | block params ratio | SwiGLU FLOPs ratio | SwiGLU params ratio | depth-scale MFLOPs (share) "
        "| depth-scale params | relax r | relax params (share of blocks) | relax FLOPs share |",
        "|" + "---|" * 17,
    ]
    for r in rows:
        lines.append("| " + " | ".join([
            r["arch"], str(r["k"]), ",".join(map(str, r["block_schedule"])), f"{r['teacher_gflops']:.2f}",
            f"{r['raptor_gflops']:.2f}", f"{r['flops_ratio']:.5f}", f"{r['teacher_params'] / 1e6:.2f}",
            f"{r['raptor_params'] / 1e6:.2f}", f"{r['params_ratio']:.3f}", f"{r['block_params_ratio']:.3f}",
            f"{r['swiglu_flops_ratio']:.3f}", f"{r['swiglu_params_ratio']:.3f}",
            f"{r['depth_scale_flops'] / 1e6:.2f} ({r['depth_scale_flops_fraction']:.1e})",
            f"{r['depth_scale_params']:,}", str(r["relax_rank"]),
            f"{r['relax_params']:,} ({r['relax_params_ratio']:.3f})" if r["relax_rank"] else "-",
            f"{r['relax_flops_fraction']:.4f}" if r["relax_rank"] else "-"]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=None,
                        help='registered Raptor archs (default: every one, timm.list_models("raptor_*"))')
    parser.add_argument("--img-size", type=int, default=224, help="input resolution (default: 224)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help=f"output folder (default: {RESULTS_DIR})")
    args = parser.parse_args(argv)
    archs = args.arch or list(REGISTERED_RAPTOR_ARCHS)
    unknown = [a for a in archs if a not in REGISTERED_RAPTOR_ARCHS]
    if unknown:
        parser.error(f'unknown Raptor arch(s) {unknown}; choose from timm.list_models("raptor_*").')
    if args.img_size < 1:
        parser.error(f"--img-size must be >= 1, got {args.img_size}.")

    rows = [flops_row(arch, img_size=args.img_size) for arch in tqdm(archs, desc="flops")]
    environment = {"date": datetime.date.today().isoformat(), "torch": torch.__version__, "timm": timm.__version__,
                   "raptor_zoo": raptor_zoo.__version__, "device": "meta"}
    settings = {"img_size": args.img_size, "batch_size": 1, "weights": "none (meta device)"}
    notes = [FLOPS_CONVENTION,
             "params ratio: whole model (embedding, norms and head are the teacher's); block params ratio: the k "
             "unique blocks (with their depth-scaling MLPs) against the L teacher blocks",
             "SwiGLU: the paper's block (SwiGLU MLP, hidden 4D, packed input projection 8D) instead of the "
             "teacher's; depth scale: FLOPs and params of the t_scale MLPs (the Raptor minus the same Raptor "
             "built with t_scale=False)",
             "relax: the *_r4 archs add rank-4 per-step adapters on qkv, proj, fc1 and fc2 (docs/design.md §4); their "
             "params (and share of the k blocks' params) and FLOPs share over the same pure Raptor"]
    out = Path(args.out)
    suffix = "" if args.img_size == 224 else f"_{args.img_size}px"
    json_path = write_json(rows, out / f"flops{suffix}.json", environment, settings, notes)
    table = markdown_flops_table(rows)
    md_path = out / f"flops{suffix}.md"
    md_path.write_text("\n".join([
        f"# FLOPs and parameters: every registered Raptor vs its teacher ({args.img_size} px, batch 1)", "",
        *[f"- {note}" for note in notes],
        f"- generated {environment['date']} with torch {environment['torch']}, timm {environment['timm']}: "
        f'`python benchmarks/flops.py{" --img-size " + str(args.img_size) if suffix else ""}`', "",
        table, ""]))
    print(table)
    print(f"wrote json: {json_path}\nwrote md: {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
