#!/usr/bin/env python3
"""ONNX file size and onnxruntime-vs-eager error of a Raptor against its teacher, side by side.

A Raptor's graph unrolls its L block applications but refers to each of its k unique blocks' weights once, so
its file shrinks with the weights. Needs the [export] extra (onnx, onnxscript, onnxruntime).

    python benchmarks/export_size.py                        # raptor-digits-k2 and digits-vit
    python benchmarks/export_size.py --raptor <folder | zoo name | repo id> --out benchmarks/results/export
"""
import argparse
import datetime
import platform
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

import raptor_zoo
from raptor_zoo.bench import write_json
from raptor_zoo.export import export_onnx
from raptor_zoo.teachers import load_teacher

RESULTS_DIR = Path(__file__).resolve().parent / "results" / "export"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raptor", default="raptor-digits-k2", help="Raptor to export (default: %(default)s)")
    parser.add_argument("--teacher", default=None, help="its teacher (default: the one its config.json names)")
    parser.add_argument("--out", default=str(RESULTS_DIR), help="folder for export_size.json / .md")
    args = parser.parse_args()
    raptor = raptor_zoo.from_pretrained(args.raptor)
    teacher_name = args.teacher or raptor.raptor_meta["teacher"]
    models = {args.raptor: raptor, teacher_name: load_teacher(teacher_name).model}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in tqdm(models.items(), desc="ONNX export"):
            result = export_onnx(model, Path(tmp) / f"{len(rows)}.onnx", dynamic_batch=True)
            rows.append(dict(model=name, params=sum(p.numel() for p in model.parameters()),
                             onnx_bytes=result.num_bytes, max_abs_diff=result.max_abs_diff))
    rows[0]["size_ratio"] = rows[0]["onnx_bytes"] / rows[1]["onnx_bytes"]
    lines = ["| model | params | ONNX MiB | onnxruntime vs eager max abs diff |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['onnx_bytes'] / 2 ** 20:.2f} | {r['max_abs_diff']:.1e} |"
              for r in rows]
    lines.append(f"\nRaptor / teacher ONNX size: {rows[0]['size_ratio']:.3f}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "export_size.md").write_text("\n".join(lines) + "\n")
    environment = dict(date=datetime.date.today().isoformat(), torch=torch.__version__, machine=platform.machine(),
                       cpus=torch.get_num_threads())
    write_json(rows, out / "export_size.json", environment=environment,
               settings=dict(raptor=args.raptor, teacher=teacher_name))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
