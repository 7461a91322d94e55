#!/usr/bin/env python3
"""Coverage of the transformers vision encoders: does each model type make an exact teacher and a working Raptor?

For every transformers model type raptor_zoo converts (`raptor_zoo.hf_convert`), a tiny random model of that type
(4 layers, width 64, 32 px images; every norm weight, bias and layer-scale gain randomised so each one matters)
goes through:

- `teacher`: `raptor_zoo.load_teacher(module)` and `load_teacher(<save_pretrained folder>)` accept it;
- `exact`: the teacher's trajectory equals transformers' own `hidden_states` (every layer, fp32): `converted`
  when the max abs difference is 0, `within 1e-5` when it is <= 1e-5 relative, else a failure;
- `reproduce`: a Raptor with schedule (1,) * L gives the teacher's forward_features exactly;
- `train`: a k = 2 Raptor runs forward and backward;
- `flops`: FLOPs of the k = 2 Raptor / its teacher at the config class's default (full) size, built on the meta
  device (`torch.utils.flop_counter`, math SDPA), 1.000 +- 0.005;
- `round_trip`: the saved Raptor folder loads with `transformers.AutoModel` (after `import raptor_zoo`) and
  `raptor_zoo.from_pretrained`, and both give the Raptor's features (<= 1e-5; AutoModel's `last_hidden_state` in
  the teacher class's convention: before the final norm for CLIP, as `CLIPVisionModel` returns it).

    python benchmarks/coverage_transformers.py            # -> results/coverage/transformers.json + docs/teachers.md
    python benchmarks/coverage_transformers.py --types clip_vision_model --no-doc
"""
from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import transformers
from torch import nn

import raptor_zoo
from raptor_zoo.distill.evaluate import raptor_trajectory
from raptor_zoo.flops import count_flops
from raptor_zoo.hf_convert import HF_CONVERTERS, hf_hidden_states
from raptor_zoo.models.schedule import even_block_schedule

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "coverage"
DEFAULT_DOC = REPO_ROOT / "docs" / "teachers.md"
TABLE_BEGIN = "<!-- transformers coverage table: written by benchmarks/coverage_transformers.py -->"
TABLE_END = "<!-- end of transformers coverage table -->"
CHECKS = ("teacher", "exact", "reproduce", "train", "flops", "round_trip")
IMG_SIZE, PATCH = 32, 8

_VIT = dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, intermediate_size=128, image_size=IMG_SIZE,
            patch_size=PATCH)
_CLIP = dict(_VIT, projection_dim=32)
TINY_MODELS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "vit": ("ViTModel", "ViTConfig", _VIT),
    "deit": ("DeiTModel", "DeiTConfig", _VIT),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(_VIT, intermediate_size=None, mlp_ratio=2)),
    "dinov2_with_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                              dict(_VIT, intermediate_size=None, mlp_ratio=2, num_register_tokens=2)),
    "vit_mae": ("ViTMAEModel", "ViTMAEConfig", dict(_VIT, mask_ratio=0.0)),
    "vit_msn": ("ViTMSNModel", "ViTMSNConfig", _VIT),
    "ijepa": ("IJepaModel", "IJepaConfig", _VIT),
    "clip_vision_model": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", _CLIP),
    "siglip_vision_model": ("SiglipVisionModel", "SiglipVisionConfig", _VIT),
    "siglip2_vision_model": ("Siglip2VisionModel", "Siglip2VisionConfig",
                             dict(_VIT, image_size=None, num_patches=(IMG_SIZE // PATCH) ** 2)),
    "aimv2_vision_model": ("Aimv2VisionModel", "Aimv2VisionConfig", _VIT),
    "beit": ("BeitModel", "BeitConfig", dict(_VIT, use_relative_position_bias=True, layer_scale_init_value=0.1)),
    "data2vec-vision": ("Data2VecVisionModel", "Data2VecVisionConfig",
                        dict(_VIT, use_relative_position_bias=True, layer_scale_init_value=0.1)),
    "dinov3_vit": ("DINOv3ViTModel", "DINOv3ViTConfig", dict(_VIT, num_register_tokens=2)),
}
"""transformers model_type -> (model class, config class, tiny config kwargs)."""


def tiny_model(model_type: str, seed: int = 0) -> nn.Module:
    """A tiny random model of ``model_type`` whose 1-d parameters are randomised (norm weights and gains in
    [0.5, 1.5], biases N(0, 0.1)) so that a dropped or misplaced one changes the output."""
    model_name, config_name, kwargs = TINY_MODELS[model_type]
    config = getattr(transformers, config_name)(**{k: v for k, v in kwargs.items() if v is not None})
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.ndim == 1 and name.endswith("bias"):
                param.normal_(0, 0.1)
            elif param.ndim == 1:
                param.uniform_(0.5, 1.5)
    return model


def _short(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _max_rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def _run(checks: dict[str, Any], name: str, fn: Callable[[], dict[str, Any]]) -> Any:
    try:
        checks[name] = fn()
    except Exception as err:  # each failure is recorded with its reason; later checks say what they need
        checks[name] = {"ok": False, "reason": _short(err)}
    return checks[name]


def check_type(model_type: str, seed: int = 0) -> dict[str, Any]:
    """Every check of one model type; a failure records its reason."""
    start = time.perf_counter()
    warnings.simplefilter("ignore")
    checks: dict[str, Any] = {}
    hf_model = tiny_model(model_type, seed)
    x = torch.randn(2, 3, IMG_SIZE, IMG_SIZE, generator=torch.Generator().manual_seed(seed))
    state: dict[str, Any] = {}

    def teacher() -> dict[str, Any]:
        state["teacher"] = raptor_zoo.load_teacher(hf_model)
        with tempfile.TemporaryDirectory() as folder:
            hf_model.save_pretrained(folder)
            from_folder = raptor_zoo.load_teacher(folder)
            with torch.no_grad():
                same = (from_folder.model.forward_features(x) - state["teacher"].model.forward_features(x)).abs().max()
        return {"ok": same.item() == 0, "timm_class": type(state["teacher"].model).__name__,
                **({} if same.item() == 0 else {"reason": f"folder teacher differs by {same.item():.2e}"})}

    def exact() -> dict[str, Any]:
        with torch.no_grad():
            trajectory, reference = state["teacher"].trajectory(x), hf_hidden_states(hf_model, x)
        if trajectory.shape != reference.shape:
            return {"ok": False, "reason": f"trajectory {tuple(trajectory.shape)} vs hidden_states "
                                           f"{tuple(reference.shape)}"}
        abs_diff, rel_diff = (trajectory - reference).abs().max().item(), _max_rel(trajectory, reference)
        kind = "converted" if abs_diff == 0 else "within 1e-5" if rel_diff <= 1e-5 else None
        result = {"ok": kind is not None, "kind": kind, "max_abs_diff": abs_diff, "max_rel_diff": rel_diff}
        if kind is None:
            result["reason"] = f"max rel diff {rel_diff:.2e} > 1e-5"
        return result

    def reproduce() -> dict[str, Any]:
        teacher_ = state["teacher"]
        raptor = raptor_zoo.from_teacher(teacher_, block_schedule=(1,) * teacher_.depth).eval()
        with torch.no_grad():
            diff = (raptor.forward_features(x) - teacher_.model.forward_features(x)).abs().max().item()
        return {"ok": diff == 0, "max_abs_diff": diff, **({} if diff == 0 else {"reason": f"differs by {diff:.2e}"})}

    def train() -> dict[str, Any]:
        teacher_ = state["teacher"]
        depth = teacher_.depth
        raptor = raptor_zoo.from_teacher(teacher_, block_schedule=(depth // 2, depth - depth // 2)).train()
        raptor(x).float().square().mean().backward()
        missing = [n for n, p in raptor.blocks.named_parameters() if p.requires_grad and p.grad is None]
        state["raptor"] = raptor.eval()
        return {"ok": not missing, **({"reason": f"no gradient on {missing[0]}"} if missing else {})}

    def flops() -> dict[str, Any]:
        model_name, config_name, _ = TINY_MODELS[model_type]
        with torch.device("meta"):  # the config class's default (full) size, no memory
            full = raptor_zoo.load_teacher(getattr(transformers, model_name)(getattr(transformers, config_name)()))
            raptor = raptor_zoo.from_teacher(full, block_schedule=even_block_schedule(full.depth, 2))
        input_size = (3, *full.img_size)
        ratio = count_flops(raptor, input_size) / count_flops(full.model, input_size)
        ok = abs(ratio - 1) <= 0.005
        return {"ok": ok, "ratio": ratio, "input_size": list(input_size), "depth": full.depth,
                **({} if ok else {"reason": f"ratio {ratio:.4f}"})}

    def round_trip() -> dict[str, Any]:
        raptor = state["raptor"]
        with tempfile.TemporaryDirectory() as folder:
            raptor_zoo.save_pretrained(raptor, folder)
            auto = transformers.AutoModel.from_pretrained(folder).eval()
            reloaded = raptor_zoo.from_pretrained(folder).eval()
            with torch.no_grad():
                ref = raptor.forward_features(x)
                # AutoModel's last_hidden_state follows the teacher class's convention (config.last_hidden_state):
                # CLIP's vision tower returns the last block's output before the final norm
                auto_ref = raptor_trajectory(raptor, x)[:, -1] if auto.config.last_hidden_state == "pre_norm" else ref
                diffs = [_max_rel(auto(pixel_values=x).last_hidden_state, auto_ref),
                         _max_rel(reloaded.forward_features(x), ref)]
        ok = max(diffs) <= 1e-5
        return {"ok": ok, "max_rel_diff": max(diffs),
                **({} if ok else {"reason": f"AutoModel {diffs[0]:.2e}, from_pretrained {diffs[1]:.2e}"})}

    for name, fn, needs in (("teacher", teacher, None), ("exact", exact, "teacher"),
                            ("reproduce", reproduce, "teacher"), ("train", train, "teacher"),
                            ("flops", flops, "teacher"), ("round_trip", round_trip, "raptor")):
        if needs is not None and needs not in state:
            checks[name] = {"ok": False, "reason": f"needs {needs}"}
            continue
        _run(checks, name, fn)
    return {"model_type": model_type, "model_class": TINY_MODELS[model_type][0], "checks": checks,
            "passed": all(checks[c]["ok"] for c in CHECKS), "seconds": round(time.perf_counter() - start, 2)}


def coverage_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one row per model type: converted into which timm class, exactness, FLOP ratio, round trip."""
    lines = ["| model type | transformers class | timm class | exactness vs hidden_states | (1,)*L reproduces | "
             "k = 2 trains | FLOP ratio | AutoModel / from_pretrained round trip | all checks |",
             "|---|---|---|---|---|---|---|---|---|"]

    def cell(check: dict[str, Any], text: str) -> str:
        return text if check["ok"] else f"fails: {check.get('reason', '?')}".replace("|", "\\|")

    for row in rows:
        c = row["checks"]
        exact = c["exact"]
        exact_text = (f"{exact.get('kind')} (max abs {exact.get('max_abs_diff', 0):.1e})" if exact["ok"] else "")
        lines.append(
            f"| `{row['model_type']}` | {row['model_class']} | {c['teacher'].get('timm_class', '-')} | "
            f"{cell(exact, exact_text)} | {cell(c['reproduce'], 'exact')} | {cell(c['train'], 'yes')} | "
            f"{cell(c['flops'], format(c['flops'].get('ratio', 0), '.4f'))} | {cell(c['round_trip'], 'yes')} | "
            f"{'pass' if row['passed'] else '**fail**'} |")
    return "\n".join(lines)


def write_doc_table(doc: Path, block: str) -> None:
    """Replace the table between the markers of ``doc`` (appended when the markers are missing)."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{TABLE_BEGIN}\n{block}\n{TABLE_END}"
    pattern = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=None, choices=sorted(TINY_MODELS),
                        help="model types to cover (default: all)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--doc", default=str(DEFAULT_DOC), help="markdown file whose table is rewritten")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the doc table")
    args = parser.parse_args(argv)
    unconverted = sorted(set(TINY_MODELS) - set(HF_CONVERTERS))
    types = args.types or list(TINY_MODELS)
    rows = []
    for model_type in types:
        if model_type in unconverted:
            checks = {c: {"ok": False, "reason": "no converter registered"} for c in CHECKS}
            rows.append({"model_type": model_type, "model_class": TINY_MODELS[model_type][0], "checks": checks,
                         "passed": False})
        else:
            rows.append(check_type(model_type))
        print(f"{model_type}: {'pass' if rows[-1]['passed'] else 'FAIL'}", file=sys.stderr)
    passed = sum(row["passed"] for row in rows)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "python benchmarks/coverage_transformers.py " + " ".join(sys.argv[1:] if argv is None else argv)
    summary = (f"{passed} of {len(rows)} transformers model types pass every check (transformers "
               f"{transformers.__version__}, torch {torch.__version__}, {date}; `{command.strip()}`).")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": date, "transformers": transformers.__version__, "torch": torch.__version__,
            "command": command.strip(), "num_types": len(rows), "num_passed": passed, "checks": list(CHECKS)}
    (out / "transformers.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1, default=str) + "\n")
    table = coverage_table(rows)
    print(summary)
    print(table)
    if not args.no_doc:
        write_doc_table(Path(args.doc), f"{summary}\n\n{table}")
    return rows


if __name__ == "__main__":
    main()
