#!/usr/bin/env python3
"""Coverage of every isotropic ViT architecture timm registers: does each one make a working Raptor?

For every architecture of the timm modules in `TIMM_MODULES` (348 in timm 1.0.31), built at a tiny size (depth 4,
embed_dim 64 / 2 heads where the architecture takes them, 4 patches per side; random init with LayerScale gains
perturbed so every block matters), the checks are:

- `teacher`: `raptor_zoo.load_teacher(arch, pretrained=False, img_size=..., **tiny_kwargs)` builds and accepts it
  (the tiny kwargs reach config.json through the teacher, so the save / load check rebuilds the same shape);
- `exact`: `raptor_zoo.from_teacher(teacher, block_schedule=(1,) * L)` reproduces the teacher's forward_features
  (max |diff| / max |teacher| <= 1e-5, fp32);
- `train`: a k = 2 Raptor runs forward and backward in train mode, with a gradient on every shared-block parameter;
- `intermediates`: its `forward_intermediates` gives L states;
- `flops`: FLOPs of the k = 2 Raptor / its teacher at the architecture's full size and native resolution (meta
  device, `torch.utils.flop_counter` under the math SDPA backend), 1.000 +- 0.005;
- `save_load`: `raptor_zoo.save_pretrained` -> `raptor_zoo.from_pretrained` and
  `timm.create_model('local-dir:...', pretrained=True)` give the saved model's outputs.

A failing check records a short reason; later checks that need its result are skipped ('needs ...').

    python benchmarks/coverage.py                                    # all 348 -> results/coverage/coverage.json
    python benchmarks/coverage.py --families eva cait --workers 2    # docs/teachers.md table rewritten each run
    python benchmarks/coverage.py --archs vit_small_patch16_dinov3 --no-doc
"""
import argparse
import concurrent.futures
import dataclasses
import datetime
import functools
import itertools
import json
import multiprocessing
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

import raptor_zoo
from raptor_zoo.flops import count_flops
from raptor_zoo.models.families import native_img_size, patch_size_of
from raptor_zoo.models.schedule import even_block_schedule

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "benchmarks" / "results" / "coverage"
DEFAULT_DOC = REPO_ROOT / "docs" / "teachers.md"

# timm module -> the family adapter that handles it (raptor_zoo/models/families.py)
TIMM_MODULES: dict[str, str] = {
    "vision_transformer": "vit", "deit": "vit", "vision_transformer_hybrid": "vit", "vitamin": "vit",
    "eva": "eva", "beit": "beit", "vision_transformer_relpos": "relpos", "vision_transformer_sam": "sam",
    "naflexvit": "naflexvit", "xcit": "xcit", "cait": "cait",
}
CHECKS: tuple[str, ...] = ("teacher", "exact", "train", "intermediates", "flops", "save_load")
TABLE_BEGIN = "<!-- coverage table: written by benchmarks/coverage.py -->"
TABLE_END = "<!-- end of coverage table -->"


@dataclasses.dataclass(frozen=True)
class CoverageConfig:
    """Tiny-size build and tolerances of the coverage checks."""
    depth: int = 4
    embed_dim: int = 64
    num_heads: int = 2
    patches_per_side: int = 4
    num_classes: int = 10
    batch_size: int = 2
    seed: int = 0
    exact_tol: float = 1e-5
    flops_tol: float = 0.005
    save_load_tol: float = 1e-6


def list_archs(modules: Sequence[str] = tuple(TIMM_MODULES)) -> list[tuple[str, str]]:
    """(timm module, arch) of every architecture timm registers in `modules`, in module order."""
    return [(module, arch) for module in modules for arch in timm.list_models(module=module)]


def _short(err: BaseException, limit: int = 200) -> str:
    message = " ".join(str(err).split())
    message = f"{type(err).__name__}: {message}" if message else type(err).__name__
    return message if len(message) <= limit else message[:limit - 3] + "..."


def _candidate_kwargs(arch: str, cfg: CoverageConfig) -> list[dict[str, Any]]:
    """Size overrides to try, smallest first (an architecture that refuses one falls back to the next)."""
    dims = dict(embed_dim=cfg.embed_dim, num_heads=cfg.num_heads)
    extra: dict[str, Any] = {}
    if arch.startswith("samvit"):
        extra = dict(window_size=2, global_attn_indexes=(1, 3))
    candidates = [
        dict(depth=cfg.depth, **dims, **extra),
        dict(depth=cfg.depth, **dims, num_kv_heads=1, **extra),  # grouped-query attention (Sapiens2)
        dict(depth=cfg.depth, **extra),
        dict(**extra),
    ]
    return [dict(c, num_classes=cfg.num_classes) for c in candidates] + [{}]


def _patch_stride(model: nn.Module) -> int:
    """Input pixels per token along a side (patch size, or a hybrid backbone's total stride)."""
    embedding = getattr(model, "patch_embed", None) or getattr(model, "embeds", None)
    grid = getattr(embedding, "grid_size", None)
    size = native_img_size(model)
    if grid and grid[0]:
        return size[0] // grid[0]
    return patch_size_of(model)[0]


def tiny_teacher_kwargs(arch: str, cfg: CoverageConfig) -> dict[str, Any]:
    """`load_teacher(arch, pretrained=False, **kwargs)` kwargs of a tiny build (the first candidate timm accepts,
    checked on the meta device); img_size is `patches_per_side` tokens per side at the arch's patch stride."""
    errors = []
    for kwargs in _candidate_kwargs(arch, cfg):
        try:
            with torch.device("meta"):
                probe = timm.create_model(arch, pretrained=False, **kwargs)
            return dict(kwargs, img_size=_patch_stride(probe) * cfg.patches_per_side)
        except Exception as err:  # an arch that refuses these overrides falls back to fewer
            errors.append(_short(err, 120))
    raise RuntimeError(f"no tiny build of {arch}: " + " | ".join(errors))


def load_tiny_teacher(arch: str, cfg: CoverageConfig) -> tuple[Any, dict[str, Any]]:
    """A tiny random-init Teacher of `arch` loaded by name as a user would (LayerScale gains perturbed) and the
    kwargs that built it."""
    kwargs = tiny_teacher_kwargs(arch, cfg)
    create_kwargs = dict(kwargs)
    img_size = create_kwargs.pop("img_size")
    torch.manual_seed(cfg.seed)
    teacher = raptor_zoo.load_teacher(arch, pretrained=False, img_size=img_size, **create_kwargs)
    perturb_layer_scale(teacher.model, cfg.seed)
    return teacher, kwargs


@torch.no_grad()
def perturb_layer_scale(model: nn.Module, seed: int = 0) -> None:
    """Give LayerScale-style gains (and ResPostBlock's norm weights, initialised to init_values) unit-scale random
    values so every block changes the state (random-init gains of 1e-5 .. 0.1 would make any schedule look exact)."""
    generator = torch.Generator().manual_seed(seed)
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        tiny_weight = leaf == "weight" and bool(param.abs().max() < 1e-3)
        if param.ndim == 1 and ("gamma" in leaf or tiny_weight):
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def _max_rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).abs().max() / ref.float().abs().max().clamp_min(1e-12)).item()


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model.forward_features(x)
    return out[0] if isinstance(out, (tuple, list)) else out


def _count_flops(model: nn.Module, input_size: Sequence[int]) -> tuple[int, bool]:
    """raptor_zoo.flops.count_flops; where its no-grad forward trips torch's module tracker (CaiT), the same count
    with autograd on (a forward only; FLOPs are the same). Returns (FLOPs, whether the fallback was used)."""
    try:
        return count_flops(model, input_size), False
    except AssertionError:
        x = torch.randn(1, *input_size, device=next(model.parameters()).device)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            model.eval()(x)
        return counter.get_total_flops(), True


def _full_size_flops(arch: str, k: int) -> dict[str, Any]:
    """FLOPs of a k-block Raptor and its teacher at the architecture's full size and native resolution (meta)."""
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
        teacher = raptor_zoo.load_teacher(model)
        raptor = raptor_zoo.from_teacher(teacher, block_schedule=even_block_schedule(teacher.depth, k))
    input_size = (3, *teacher.img_size)
    teacher_flops, fallback_teacher = _count_flops(model, input_size)
    raptor_flops, fallback_raptor = _count_flops(raptor, input_size)
    return dict(teacher_flops=teacher_flops, raptor_flops=raptor_flops, ratio=raptor_flops / teacher_flops,
                input_size=list(input_size), depth=teacher.depth, k=k,
                counted_with_autograd=fallback_teacher or fallback_raptor)


@functools.cache
def _git_revision() -> str:
    """The commit the checks ran on ('+dirty' with uncommitted changes), or 'unknown' outside a git checkout."""
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def check_arch(arch: str, cfg: CoverageConfig = CoverageConfig(), workdir: str | None = None) -> dict[str, Any]:
    """Run every coverage check on one architecture; each failure is caught and its reason recorded."""
    start = time.perf_counter()
    result: dict[str, Any] = {"arch": arch, "git": _git_revision(), "checks": {}, "details": {}}
    checks, details = result["checks"], result["details"]

    def fail(check: str, err: BaseException) -> None:
        checks[check] = {"ok": False, "reason": _short(err)}

    def skip(check: str, needs: str) -> None:
        checks[check] = {"ok": False, "reason": f"needs {needs}"}

    warnings.simplefilter("ignore")
    torch.manual_seed(cfg.seed)
    teacher = model = None
    try:
        teacher, kwargs = load_tiny_teacher(arch, cfg)
        model = teacher.model
        result["timm_class"] = type(model).__name__
        result["family"] = teacher.family.name
        result["tiny_kwargs"] = {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()}
        result["depth"] = teacher.depth
        result["block_type"] = type(teacher.blocks[0]).__name__
        checks["teacher"] = {"ok": True}
    except Exception as err:
        fail("teacher", err)
    if teacher is None:
        for check in CHECKS[1:]:
            if check != "flops":
                skip(check, "teacher")
    else:
        depth = teacher.depth
        x = torch.randn(cfg.batch_size, 3, *teacher.img_size, generator=torch.Generator().manual_seed(cfg.seed))
        try:
            exact = raptor_zoo.from_teacher(teacher, block_schedule=(1,) * depth).eval()
            with torch.no_grad():
                ref, out = _features(model, x), _features(exact, x)
            rel = _max_rel_diff(out, ref)
            details["exact_max_rel_diff"] = rel
            checks["exact"] = {"ok": rel <= cfg.exact_tol}
            if rel > cfg.exact_tol:
                checks["exact"]["reason"] = f"max rel diff {rel:.2e} > {cfg.exact_tol:.0e}"
            del exact
        except Exception as err:
            fail("exact", err)

        raptor = None
        k = min(2, depth)
        schedule = even_block_schedule(depth, k)
        details["k2_schedule"] = list(schedule)
        try:
            raptor = raptor_zoo.from_teacher(teacher, block_schedule=schedule).train()
            out = raptor(x)
            out = out[0] if isinstance(out, (tuple, list)) else out
            out.float().square().mean().backward()
            missing = [name for name, p in raptor.blocks.named_parameters() if p.requires_grad and p.grad is None]
            finite = all(torch.isfinite(p.grad).all() for p in raptor.parameters() if p.grad is not None)
            checks["train"] = {"ok": not missing and finite}
            if missing:
                checks["train"]["reason"] = f"no gradient on {len(missing)} block params, e.g. {missing[0]}"
            elif not finite:
                checks["train"]["reason"] = "non-finite gradients"
            raptor.zero_grad(set_to_none=True)
        except Exception as err:
            fail("train", err)
            raptor = None

        if raptor is None:
            skip("intermediates", "a k = 2 Raptor")
            skip("save_load", "a k = 2 Raptor")
        else:
            raptor.eval()
            try:
                with torch.no_grad():
                    states = raptor.forward_intermediates(x, intermediates_only=True)
                checks["intermediates"] = {"ok": len(states) == depth}
                if len(states) != depth:
                    checks["intermediates"]["reason"] = f"{len(states)} states for L = {depth}"
            except Exception as err:
                fail("intermediates", err)
            try:
                with tempfile.TemporaryDirectory(dir=workdir) as folder:
                    raptor_zoo.save_pretrained(raptor, folder)
                    reloaded = raptor_zoo.from_pretrained(folder).eval()
                    via_timm = timm.create_model("local-dir:" + folder, pretrained=True).eval()
                    with torch.no_grad():
                        ref = raptor(x)
                        diffs = [_max_rel_diff(m(x), ref) for m in (reloaded, via_timm)]
                details["save_load_max_rel_diff"] = max(diffs)
                checks["save_load"] = {"ok": max(diffs) <= cfg.save_load_tol}
                if max(diffs) > cfg.save_load_tol:
                    checks["save_load"]["reason"] = (
                        f"reloaded outputs differ: from_pretrained {diffs[0]:.2e}, local-dir {diffs[1]:.2e}")
            except Exception as err:
                fail("save_load", err)
    try:
        flops = _full_size_flops(arch, 2)
        details["flops"] = flops
        ok = abs(flops["ratio"] - 1) <= cfg.flops_tol
        checks["flops"] = {"ok": ok}
        if not ok:
            checks["flops"]["reason"] = f"ratio {flops['ratio']:.4f} outside 1 +- {cfg.flops_tol}"
    except Exception as err:
        fail("flops", err)
    result["passed"] = all(checks[c]["ok"] for c in CHECKS)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    warnings.simplefilter("ignore")


def _check_safely(arch: str, cfg: CoverageConfig) -> dict[str, Any]:
    try:
        return check_arch(arch, cfg)
    except Exception as err:  # a crash outside the per-check handlers still gives a row
        return {"arch": arch, "checks": {c: {"ok": False, "reason": _short(err)} for c in CHECKS},
                "details": {"traceback": traceback.format_exc(limit=-3)}, "passed": False}


def run_coverage(
        archs: Sequence[tuple[str, str]],
        cfg: CoverageConfig = CoverageConfig(),
        workers: int = 1,
        journal: Path | None = None,
) -> list[dict[str, Any]]:
    """Check every (module, arch); workers > 1 runs them in a process pool (one torch thread each). Each result is
    appended to `journal` (JSON lines) as it comes; archs already there are not checked again (resume)."""
    results: dict[str, dict[str, Any]] = {}
    if journal is not None and journal.exists():
        for line in journal.read_text().splitlines():
            row = json.loads(line)
            results[row["arch"]] = row
    module_of = dict((arch, module) for module, arch in archs)
    by_module: dict[str, list[str]] = {}
    for module, arch in archs:
        if arch not in results:
            by_module.setdefault(module, []).append(arch)
    # round-robin over the modules, so an interrupted run has covered every family
    todo = [arch for group in itertools.zip_longest(*by_module.values()) for arch in group if arch is not None]
    progress = tqdm(total=len(archs), initial=len(archs) - len(todo), desc="coverage", unit="arch")

    def record(arch: str, row: dict[str, Any]) -> None:
        results[arch] = row
        if journal is not None:
            with journal.open("a") as handle:
                handle.write(json.dumps(row, default=str) + "\n")
        progress.set_postfix_str(arch)
        progress.update()

    if workers <= 1:
        for arch in todo:
            record(arch, _check_safely(arch, cfg))
    else:
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init,
                                                    initargs=(1,)) as pool:
            futures = {pool.submit(_check_safely, arch, cfg): arch for arch in todo}
            for future in concurrent.futures.as_completed(futures):
                arch = futures[future]
                try:
                    row = future.result()
                except concurrent.futures.process.BrokenProcessPool as err:
                    # a worker died (e.g. out of memory): every pending arch fails with it, so none is recorded
                    progress.close()
                    raise RuntimeError(
                        f"a coverage worker died ({_short(err)}) while checking {arch}; the {len(results)} archs "
                        f"checked so far are kept in {journal}: run again to resume (fewer --workers if memory "
                        "ran out).") from err
                record(arch, row)
    progress.close()
    rows = []
    for _, arch in archs:
        row = results[arch]
        row["timm_module"] = module_of[arch]
        row.setdefault("family", TIMM_MODULES[module_of[arch]])
        rows.append(row)
    return rows


def coverage_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown: pass counts per check for each timm module, then every failing arch with its reasons."""
    header = "| timm module | family | archs | " + " | ".join(CHECKS) + " | all checks |"
    lines = [header, "|" + "---|" * (len(CHECKS) + 4)]
    modules = list(dict.fromkeys(row["timm_module"] for row in rows))
    for module in modules + [None]:
        group = [row for row in rows if module is None or row["timm_module"] == module]
        counts = [sum(row["checks"][c]["ok"] for row in group) for c in CHECKS]
        passed = sum(row["passed"] for row in group)
        name = "**all**" if module is None else module
        family = "" if module is None else TIMM_MODULES.get(module, "?")
        cells = [f"{n}/{len(group)}" for n in counts]
        share = f"{passed}/{len(group)} ({100 * passed / max(len(group), 1):.1f}%)"
        if module is None:
            share = f"**{share}**"
        lines.append(f"| {name} | {family} | {len(group)} | " + " | ".join(cells) + f" | {share} |")
    failing = [row for row in rows if not row["passed"]]
    lines.append("")
    if not failing:
        lines.append("Every architecture passes every check.")
    else:
        lines += ["Failing architectures (first failing reason of each check):", "",
                  "| arch | timm module | failed checks | reason |", "|---|---|---|---|"]
        for row in failing:
            bad = [c for c in CHECKS if not row["checks"][c]["ok"]]
            by_reason: dict[str, list[str]] = {}
            for c in bad:
                reason = row["checks"][c].get("reason", "?")
                if not reason.startswith("needs "):
                    by_reason.setdefault(reason[:160], []).append(c)
            reasons = "; ".join(f"{', '.join(cs)}: {reason}" for reason, cs in by_reason.items())
            reasons = reasons.replace("|", "\\|")
            lines.append(f"| {row['arch']} | {row['timm_module']} | {', '.join(bad)} | {reasons} |")
    return "\n".join(lines)


def write_doc_table(doc: Path, table: str, summary: str) -> None:
    """Replace the coverage table between the markers of `doc` (appended when the markers are missing)."""
    text = doc.read_text() if doc.exists() else ""
    block = f"{TABLE_BEGIN}\n{summary}\n\n{table}\n{TABLE_END}"
    pattern = re.compile(re.escape(TABLE_BEGIN) + ".*?" + re.escape(TABLE_END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    doc.write_text(text)


def coverage_summary(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    """The sentence above the table: how many pass, on which versions, date, cores and the command."""
    passed = sum(row["passed"] for row in rows)
    return (f"{passed} of {len(rows)} architectures ({100 * passed / max(len(rows), 1):.1f}%) pass every check "
            f"(timm {meta['timm']}, torch {meta['torch']}, {meta['date']}, {meta['cpu_count']} CPU cores, "
            f"{meta['check_seconds_total'] / 60:.0f} min of checks; `{meta['command'].strip()}`).")


def publish(summary: str, table: str, args: argparse.Namespace) -> None:
    """Print the summary and the table, and write them into the doc unless --no-doc."""
    print(summary)
    print(table)
    if not args.no_doc:
        write_doc_table(Path(args.doc), table, summary)


def report_finished_run(results: Path, selected: set[str], args: argparse.Namespace) -> int:
    """``--report-only`` after a run that finished (its journal is gone): the table of the selected rows of its
    coverage.json, with the run's own metadata; the JSON is left as the run wrote it."""
    stored = json.loads(results.read_text())
    rows = [row for row in stored["results"] if row["arch"] in selected]
    publish(coverage_summary(rows, stored["meta"]), coverage_table(rows), args)
    print(f"read {results}" + ("" if args.no_doc else f"; wrote the table in {args.doc}"))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=None, choices=sorted(set(TIMM_MODULES.values())),
                        help="family adapters to cover (default: all)")
    parser.add_argument("--modules", nargs="+", default=None, choices=list(TIMM_MODULES),
                        help="timm modules to cover (default: all)")
    parser.add_argument("--archs", nargs="+", default=None, help="only these timm architectures")
    parser.add_argument("--limit", type=int, default=None, help="at most this many architectures")
    parser.add_argument("--workers", type=int, default=1, help="processes (default: 1)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default: {DEFAULT_OUT})")
    parser.add_argument("--doc", default=str(DEFAULT_DOC),
                        help=f"markdown file whose coverage table is rewritten (default: {DEFAULT_DOC})")
    parser.add_argument("--no-doc", action="store_true", help="do not rewrite the doc table")
    parser.add_argument("--report-only", action="store_true",
                        help="write the JSON and table from the archs an interrupted run has checked (partial)")
    parser.add_argument("--fresh", action="store_true",
                        help="ignore the results an interrupted run kept in OUT/coverage.partial.jsonl "
                             "(default: resume)")
    parser.add_argument("--depth", type=int, default=CoverageConfig.depth, help="tiny depth (default: 4)")
    parser.add_argument("--patches-per-side", type=int, default=CoverageConfig.patches_per_side)
    args = parser.parse_args(argv)

    modules = [m for m in (args.modules or TIMM_MODULES)
               if args.families is None or TIMM_MODULES[m] in args.families]
    archs = list_archs(modules)
    if args.archs:
        known = {arch for _, arch in archs}
        unknown = [a for a in args.archs if a not in known]
        if unknown:
            parser.error(f"{unknown} are not architectures of the timm modules {modules}.")
        archs = [(m, a) for m, a in archs if a in args.archs]
    if args.limit is not None:
        archs = archs[:args.limit]
    if not archs:
        parser.error("no architecture selected.")
    cfg = CoverageConfig(depth=args.depth, patches_per_side=args.patches_per_side)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    journal = out / "coverage.partial.jsonl"
    if args.fresh and journal.exists():
        journal.unlink()
    started = time.perf_counter()
    revision = _git_revision()  # of the code this invocation runs (each row records its own)
    num_selected = len(archs)
    if args.report_only and not journal.exists() and (out / "coverage.json").is_file():
        return report_finished_run(out / "coverage.json", {arch for _, arch in archs}, args)
    if args.report_only:
        checked = {json.loads(line)["arch"] for line in journal.read_text().splitlines()} if journal.exists() else set()
        archs = [(m, a) for m, a in archs if a in checked]
        if not archs:
            parser.error(f"--report-only: {journal} holds no checked architecture of the selection.")
    rows = run_coverage(archs, cfg, workers=args.workers, journal=journal)
    elapsed = time.perf_counter() - started
    passed = sum(row["passed"] for row in rows)
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "timm": timm.__version__, "torch": torch.__version__, "raptor_zoo": raptor_zoo.__version__,
        "git": revision, "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "workers": args.workers, "seconds": round(elapsed, 1),
        "check_seconds_total": round(sum(row.get("seconds", 0) for row in rows), 1), "num_archs": len(rows),
        "num_passed": passed, "num_selected": num_selected,
        "partial": len(rows) < num_selected,
        "config": dataclasses.asdict(cfg), "checks": list(CHECKS),
        "command": "python benchmarks/coverage.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    (out / "coverage.json").write_text(json.dumps({"meta": meta, "results": rows}, indent=1, default=str) + "\n")
    table = coverage_table(rows)
    partial = (f"PARTIAL: {len(rows)} of the {num_selected} selected architectures checked so far (run "
               f"`python benchmarks/coverage.py` again to check the rest). " if len(rows) < num_selected else "")
    publish(partial + coverage_summary(rows, meta), table, args)
    if len(rows) == num_selected:
        journal.unlink()
    print(f'wrote {out / "coverage.json"}' + ("" if args.no_doc else f" and the table in {args.doc}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
