#!/usr/bin/env python3
r"""The GPU benchmark run, in parts sized to stay under 8 minutes each on one H100 (``bash benchmarks/run_gpu.sh``).

    bash benchmarks/run_gpu.sh                  # bs1 bs256 distill relax, one after the other
    bash benchmarks/run_gpu.sh bs256 distill    # some parts
    bash benchmarks/run_gpu.sh --estimate       # the expected time of every part on one H100, nothing run
    bash benchmarks/run_gpu.sh --dry-run        # every part at tiny sizes on this machine's CPU, then the estimate

Parts (teachers DINOv2 ViT-S/14 and ViT-B/14 with 4 registers, random init, 224 px; Raptors k = 2 and 3):
  bs1      latency at batch 1: eager (bf16 and fp32; anytime rows after 3, 6 and 9 of 12 steps, bf16) and CUDA
           graphs (torch.compile mode "reduce-overhead", bf16), where launch overhead is what differs.
  bs256    throughput at batch 256: eager (bf16 and fp32; anytime rows, bf16) and torch.compile (bf16).
  distill  training-step throughput of recipes/configs/dinov2_vit{s,b}14_reg4_k2.yaml (bf16 student) and of the digits
           config, with the teacher / student / backward / optimiser breakdown (synthetic data).
  relax    ViT-B/14 reg4 Raptor k = 2 pure vs relaxed (rank-4 per-step adapters): eager and compile, bf16, batch
           1 and 256 (issue 11).
  flops    the FLOPs / params table of every registered arch (meta device, no GPU; not in the default run).

Every part runs the benchmark scripts (throughput.py, distill_throughput.py, flops.py), one process per command,
with every count given explicitly. ``--dry-run`` runs the same commands on CPU with 2 patches per side, batch 256 as
2, one warm-up call and two rounds, CUDA graphs as torch.compile: what a CUDA device adds (events, synchronise,
memory tracking, CUDA graphs) is the only code it leaves out. A run (dry or not) exits with status 1 when a
benchmark recorded a failure in its rows (they record, not raise, so that one bad cell does not stop a GPU run).
The expected H100 time is an estimate from counted FLOPs and the throughput and overhead assumptions in
:data:`H100`, printed and written to ``estimate.json``.

Results go to --out (default benchmarks/results/<gpu>-<YYYYmmdd>/; a dry run: a new temporary folder): JSON,
Markdown and PNG per command, nvidia-smi.txt and run_gpu.log.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from distill_throughput import config_stages, load_distill_config, measure_points, student_schedule

from raptor_zoo.bench import device_slug, resolve_device
from raptor_zoo.flops import count_flops
from raptor_zoo.models.archs import REGISTERED_RAPTOR_ARCHS
from raptor_zoo.teachers import load_teacher

BENCHMARKS = Path(__file__).resolve().parent
REPO_ROOT = BENCHMARKS.parent
VITS, VITB = "vit_small_patch14_reg4_dinov2", "vit_base_patch14_reg4_dinov2"
PART_BUDGET_S = 8 * 60
TINY_BATCH = 2
NOTE = "random-init weights; benchmarks/run_gpu.sh"

H100 = {
    "device": "1x H100 SXM (80 GB)",
    "peak_tflops": {"bf16": 989.0, "fp32": 67.0},
    "achieved_fraction": {"bf16": 0.30, "fp32": 0.50},
    "forward_ms_per_block_application": {"eager": 0.4, "compile": 0.1, "cudagraphs": 0.02},
    "compile_s": 40.0,
    "command_start_s": 30.0,
}
"""What the estimate assumes (not measured: no GPU was available when it was written). Peak dense TFLOP/s of an
H100 SXM (fp32 without TF32, --matmul-precision highest) and the fraction of it a ViT reaches at large batch; the
launch-bound floor of one forward, per block application (a call takes the longer of its FLOPs at that rate and
this floor; a training step's backward counts twice its forward); torch.compile time per model and compiled cell
(cold caches); and per command: interpreter start, imports, model builds and FLOP counts."""


def _call_s(gflops: float, batch_size: int, dtype: str, floor_ms: float) -> float:
    """Seconds of one call: the longer of its FLOPs at the assumed rate and its launch-bound floor."""
    rate = H100["peak_tflops"][dtype] * H100["achieved_fraction"][dtype] * 1e3  # GFLOP/s
    return max(gflops * batch_size / rate, floor_ms / 1e3)


@cache
def _teacher_facts(teacher: str, img_size: int | None) -> tuple[float, int, int]:
    """(GFLOPs per image, depth L, patch size) of a teacher, built on the meta device."""
    with torch.device("meta"):
        loaded = load_teacher(teacher, pretrained=False, img_size=img_size)
    input_size = loaded.data_config["input_size"]
    patch = loaded.model.patch_embed.patch_size
    return count_flops(loaded.model, input_size) / 1e9, loaded.depth, patch[0] if isinstance(patch, tuple) else patch


@dataclass(frozen=True)
class Throughput:
    """One ``benchmarks/throughput.py`` command: a teacher (or registered archs) against its Raptors, side by side."""
    batch_sizes: tuple[int, ...]
    modes: tuple[str, ...]
    dtypes: tuple[str, ...]
    warmup: int
    iters: int
    rounds: int
    teacher: str | None = None
    k: tuple[int, ...] = ()
    arch: tuple[str, ...] = ()
    anytime_steps: tuple[int, ...] = ()
    anytime_batch_size: int | None = None
    img_size: int = 224
    device: str = "cuda"
    num_threads: int | None = None
    note: str = NOTE

    def script(self) -> str:
        return "throughput.py"

    def argv(self, out: Path) -> list[str]:
        models = ["--teacher", self.teacher, "--k", *map(str, self.k)] if self.teacher else ["--arch", *self.arch]
        argv = [*models, "--device", self.device, "--img-size", str(self.img_size),
                "--batch-sizes", *map(str, self.batch_sizes), "--modes", *self.modes, "--dtypes", *self.dtypes,
                "--warmup", str(self.warmup), "--iters", str(self.iters), "--rounds", str(self.rounds),
                "--anytime-steps", *map(str, self.anytime_steps), "--matmul-precision", "highest",
                "--out", str(out), "--note", self.note]
        if self.anytime_batch_size is not None:
            argv += ["--anytime-batch-size", str(self.anytime_batch_size)]
        if self.num_threads is not None:
            argv += ["--num-threads", str(self.num_threads)]
        return argv

    def _teacher_name(self) -> str:
        return self.teacher or REGISTERED_RAPTOR_ARCHS[self.arch[0]]["teacher"]

    def tiny(self) -> Throughput:
        """The same command on CPU: 2 patches per side, batch <= 2, CUDA graphs as torch.compile, 1 warm-up call."""
        patch = _teacher_facts(self._teacher_name(), None)[2]
        modes = tuple(dict.fromkeys("compile" if mode == "cudagraphs" else mode for mode in self.modes))
        return dataclasses.replace(
            self, device="cpu", img_size=2 * patch, modes=modes, warmup=1, iters=1, rounds=2, num_threads=1,
            batch_sizes=tuple(min(b, TINY_BATCH) for b in self.batch_sizes),
            anytime_batch_size=None if self.anytime_batch_size is None else min(self.anytime_batch_size, TINY_BATCH),
            note="dry run: tiny sizes on CPU")

    def estimate(self) -> dict[str, float]:
        """Expected seconds and compiles on one H100 (:data:`H100`); Raptors run the teacher's FLOPs."""
        gflops, depth, _ = _teacher_facts(self._teacher_name(), self.img_size)
        models = 1 + len(self.k) + len(self.arch)
        anytime = [steps for steps in self.anytime_steps for _ in range(models - 1)]
        cells = [(mode, dtype, batch, [depth] * models) for mode in self.modes for dtype in self.dtypes
                 for batch in self.batch_sizes]
        if self.anytime_steps:
            batch = self.anytime_batch_size or max(self.batch_sizes)
            cells += [(mode, self.dtypes[0], batch, [depth] * models + anytime) for mode in self.modes]
        seconds, compiles = H100["command_start_s"], 0
        for mode, dtype, batch, steps in cells:
            calls = max(self.warmup, 1) + self.iters * self.rounds
            floor_ms = H100["forward_ms_per_block_application"][mode]
            seconds += sum(calls * _call_s(gflops * s / depth, batch, dtype, floor_ms * s) for s in steps)
            if mode != "eager":
                compiles += len(steps)
        return {"seconds": seconds + compiles * H100["compile_s"], "compiles": compiles}


@dataclass(frozen=True)
class Distill:
    """One ``benchmarks/distill_throughput.py`` command: the training step of a recipes/distill.py config."""
    config: str
    warmup: int
    rounds: int
    mixed_precision: str | None = None
    img_size: int | None = None
    batch_size: int | None = None
    device: str = "cuda"
    num_threads: int | None = None
    note: str = NOTE

    def script(self) -> str:
        return "distill_throughput.py"

    def argv(self, out: Path) -> list[str]:
        optional = {"--mixed-precision": self.mixed_precision, "--img-size": self.img_size,
                    "--batch-size": self.batch_size, "--num-threads": self.num_threads}
        return [
            "--config", str(REPO_ROOT / self.config), "--device", self.device, "--warmup", str(self.warmup),
            "--rounds", str(self.rounds), "--out", str(out), "--note", self.note,
            *[token for flag, value in optional.items() if value is not None for token in (flag, str(value))]]

    def _config(self):
        overrides = ["--no-teacher-pretrained", "--synthetic-data"]
        if self.img_size is not None:
            overrides += ["--teacher-img-size", str(self.img_size)]
        if self.batch_size is not None:
            overrides += ["--batch-size", str(self.batch_size)]
        return load_distill_config(REPO_ROOT / self.config, overrides)

    def tiny(self) -> Distill:
        """The same command on CPU: 2 patches per side, batch 2, 1 warm-up call and 2 rounds per point."""
        config = self._config()
        patch = _teacher_facts(config.teacher, None)[2]
        return dataclasses.replace(self, device="cpu", img_size=2 * patch, batch_size=TINY_BATCH, warmup=1,
                                   rounds=2, num_threads=1, note="dry run: tiny sizes on CPU")

    def estimate(self) -> dict[str, float]:
        """Expected seconds on one H100: per point, (warm-up + rounds) x (plain step, instrumented step, teacher
        forward alone, student forward-backward alone), each step the teacher's blocks run plus the student's
        applications at three times a forward (forward and backward), in the configured precisions."""
        config = self._config()
        gflops, depth, _ = _teacher_facts(config.teacher, config.teacher_img_size)
        schedule, _ = student_schedule(config, depth)
        student_dtype = "bf16" if (self.mixed_precision or config.mixed_precision) == "bf16" else "fp32"
        teacher_dtype = "bf16" if config.teacher_precision == "bf16" else "fp32"
        floor_ms = H100["forward_ms_per_block_application"]["eager"]
        boundaries = [sum(schedule[:j]) for j in range(len(schedule) + 1)]

        def teacher_s(blocks: int) -> float:
            return _call_s(gflops * blocks / depth, config.batch_size, teacher_dtype, floor_ms * blocks)

        def student_s(applications: int) -> float:
            return _call_s(3 * gflops * applications / depth, config.batch_size, student_dtype,
                           3 * floor_ms * applications)

        seconds = H100["command_start_s"]
        for stage in config_stages(config, len(schedule)):
            start, stop = ((boundaries[stage.phase_index], boundaries[stage.phase_index + 1])
                           if stage.stage == "phase" else (0, depth))
            for label, _ in measure_points(stage, config):
                applications = (stop - start) * (2 if label.startswith("tf+ar") else 1)
                step = teacher_s(stop) + student_s(applications)
                seconds += (self.warmup + self.rounds) * (2 * step + teacher_s(depth) + student_s(depth))
        return {"seconds": seconds, "compiles": 0}


@dataclass(frozen=True)
class Flops:
    """One ``benchmarks/flops.py`` command: FLOPs and parameters of registered archs (meta device, any machine)."""
    arch: tuple[str, ...] = ()
    img_size: int = 224

    def script(self) -> str:
        return "flops.py"

    def argv(self, out: Path) -> list[str]:
        return ["--img-size", str(self.img_size), "--out", str(out), *(["--arch", *self.arch] if self.arch else [])]

    def tiny(self) -> Flops:
        """Two archs (pure and relaxed) at 2 patches per side."""
        return Flops(arch=("raptor_vit_small_patch14_reg4_dinov2_k2", "raptor_vit_small_patch14_reg4_dinov2_k2_r4"),
                     img_size=28)

    def estimate(self) -> dict[str, float]:
        """The CPU run measured for benchmarks/README.md ("about a minute"), plus a command start."""
        return {"seconds": 60.0 + H100["command_start_s"], "compiles": 0}


Command = Throughput | Distill | Flops


@dataclass(frozen=True)
class Part:
    """A group of commands sized to run within :data:`PART_BUDGET_S` on one H100."""
    name: str
    what: str
    commands: tuple[Command, ...]
    gpu: bool = True
    """Whether the part needs the GPU (flops counts on the meta device and is left out of the default run)."""


def _inference_pair(batch_size: int, compiled_mode: str, warmup: int, iters: int) -> tuple[Command, ...]:
    """Per teacher: eager in bf16 and fp32 with anytime rows, then ``compiled_mode`` in bf16."""
    return tuple(
        command for teacher in (VITS, VITB) for command in (
            Throughput(teacher=teacher, k=(2, 3), batch_sizes=(batch_size,), modes=("eager",), dtypes=("bf16", "fp32"),
                       warmup=warmup, iters=iters, rounds=5, anytime_steps=(3, 6, 9), anytime_batch_size=batch_size),
            Throughput(teacher=teacher, k=(2, 3), batch_sizes=(batch_size,), modes=(compiled_mode,), dtypes=("bf16",),
                       warmup=warmup, iters=iters, rounds=5)))


PARTS: dict[str, Part] = {part.name: part for part in (
    Part("bs1", "latency at batch 1: eager (+ anytime) and CUDA graphs, ViT-S and ViT-B, k 2 and 3",
         _inference_pair(1, "cudagraphs", warmup=10, iters=20)),
    Part("bs256", "throughput at batch 256: eager (+ anytime) and torch.compile, ViT-S and ViT-B, k 2 and 3",
         _inference_pair(256, "compile", warmup=3, iters=5)),
    Part("distill", "distillation training step: ViT-S and ViT-B reg4 configs (bf16), digits config", (
        Distill("recipes/configs/dinov2_vits14_reg4_k2.yaml", warmup=3, rounds=20, mixed_precision="bf16"),
        Distill("recipes/configs/dinov2_vitb14_reg4_k2.yaml", warmup=3, rounds=20, mixed_precision="bf16"),
        Distill("recipes/configs/digits_k2.yaml", warmup=3, rounds=20))),
    Part("relax", "ViT-B k 2 pure vs relaxed r4: eager and compile, bf16, batch 1 and 256", (
        Throughput(arch=("raptor_vit_base_patch14_reg4_dinov2_k2", "raptor_vit_base_patch14_reg4_dinov2_k2_r4"),
                   batch_sizes=(1, 256), modes=("eager", "compile"), dtypes=("bf16",), warmup=3, iters=10,
                   rounds=5, note="random-init weights; relaxation overhead; benchmarks/run_gpu.sh"),)),
    Part("flops", "FLOPs / params of every registered arch (meta device)", (Flops(),), gpu=False),
)}
DEFAULT_PARTS = [name for name, part in PARTS.items() if part.gpu]


def estimate_parts(names: list[str]) -> dict[str, dict[str, float]]:
    """Expected seconds, compiles and commands of each part on one H100."""
    table = {}
    for name in names:
        estimates = [command.estimate() for command in PARTS[name].commands]
        table[name] = {"seconds": sum(e["seconds"] for e in estimates),
                       "compiles": sum(e["compiles"] for e in estimates), "commands": len(estimates)}
    return table


def estimate_report(estimates: dict[str, dict[str, float]], measured_s: dict[str, float] | None = None,
                    where: str = "") -> str:
    """The estimate as a Markdown table with its assumptions; ``measured_s``: this run's wall time per part,
    described by ``where``."""
    lines = [f"Expected time per part on {H100['device']} - an ESTIMATE from counted FLOPs and the assumptions "
             f"below, not a measurement (budget: {PART_BUDGET_S // 60} min per part)", "",
             "| part | what | commands | compiles | expected on 1x H100 | within budget |"
             + (f" {where} |" if measured_s else ""),
             "|---|---|---|---|---|---|" + ("---|" if measured_s else "")]
    for name, row in estimates.items():
        lines.append(f"| {name} | {PARTS[name].what} | {row['commands']} | {row['compiles']} | "
                     f"{row['seconds'] / 60:.1f} min | {'yes' if row['seconds'] <= PART_BUDGET_S else 'NO'} |"
                     + (f" {measured_s[name]:.0f} s |" if measured_s else ""))
    lines += ["", "Assumptions: " + "; ".join([
        "peak dense TFLOP/s " + ", ".join(f"{k} {v:g}" for k, v in H100["peak_tflops"].items())
        + " (fp32 without TF32), reached at " + ", ".join(f"{v:.0%} ({k})" for k, v in H100["achieved_fraction"].items()),
        "a call takes at least " + ", ".join(f"{v} ms ({k})" for k, v in
                                             H100["forward_ms_per_block_application"].items())
        + " per block application (launch-bound floor; backward twice a forward)",
        f"torch.compile {H100['compile_s']:g} s per model and compiled cell",
        f"{H100['command_start_s']:g} s per command to start, build models and count FLOPs",
        "Raptors run their teacher's FLOPs (FLOP parity; relaxed r4 +0.65%)"])]
    return "\n".join(lines)


def _recorded_errors(out: Path, since: float) -> list[str]:
    """Failures the benchmarks recorded in their rows instead of raising (``error``, ``flops_error``), in the JSON
    files of ``out`` written at or after ``since``."""
    found = []
    for path in sorted(out.glob("*.json")):
        if path.stat().st_mtime < since or path.name == "estimate.json":
            continue
        for row in json.loads(path.read_text()).get("rows", []):
            for key in ("error", "flops_error"):
                if row.get(key):
                    cell = " ".join(str(row[k]) for k in ("mode", "dtype", "batch_size") if k in row)
                    found.append(f"{path.name}: {row.get('model', row.get('stage', '?'))} {cell}: {key} {row[key]}")
    return found


def _run(command: Command, out: Path, log) -> None:
    """Run one benchmark script in its own process; its output goes to the terminal and the log."""
    argv = [sys.executable, str(BENCHMARKS / command.script()), *command.argv(out)]
    print(f"$ {' '.join(argv[1:])}", file=log, flush=True)
    print(f"$ {' '.join(argv[1:])}", flush=True)
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in process.stdout:
        sys.stdout.write(line)
        log.write(line)
    if process.wait():
        raise SystemExit(f"{command.script()} failed (exit status {process.returncode}); see {log.name}.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="*", metavar="PART",
                        help=f'parts to run, from {" ".join(PARTS)} (default: {" ".join(DEFAULT_PARTS)}; '
                             'with --dry-run or --estimate: all)')
    parser.add_argument("--dry-run", action="store_true",
                        help="run every command at tiny sizes on CPU (no GPU needed), then print the estimate")
    parser.add_argument("--estimate", action="store_true", help="print the expected H100 time per part, run nothing")
    parser.add_argument("--out", default=None,
                        help="output folder (default: benchmarks/results/<gpu>-<YYYYmmdd>; a dry run: a new "
                             "temporary folder)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.parts if name not in PARTS]
    if unknown:
        parser.error(f'unknown part(s) {unknown}; choose from {" ".join(PARTS)}.')
    if not (args.dry_run or args.estimate or torch.cuda.is_available()):
        parser.error("no CUDA device here: run the parts on a GPU machine, or check them on this CPU with --dry-run.")
    parts = args.parts or (list(PARTS) if args.dry_run or args.estimate else DEFAULT_PARTS)
    estimates = estimate_parts(parts)
    if args.estimate:
        print(estimate_report(estimates))
        return 0
    if args.dry_run:
        out = Path(args.out or tempfile.mkdtemp(prefix="run_gpu_dry_run_"))
    else:
        slug = device_slug(resolve_device("cuda"))
        out = Path(args.out or BENCHMARKS / "results" / f"{slug}-{datetime.date.today():%Y%m%d}")
        print(estimate_report(estimates), flush=True)
    out.mkdir(parents=True, exist_ok=True)
    if not args.dry_run:
        nvidia_smi = subprocess.run(["nvidia-smi"], capture_output=True, text=True)
        (out / "nvidia-smi.txt").write_text(nvidia_smi.stdout + nvidia_smi.stderr)
    measured_s = {}
    started = time.time()
    with open(out / "run_gpu.log", "a") as log:
        print(f"run_gpu: parts {' '.join(parts)}{' (dry run: tiny, CPU)' if args.dry_run else ''} -> {out}",
              file=log, flush=True)
        for name in parts:
            start = time.perf_counter()
            for command in PARTS[name].commands:
                _run(command.tiny() if args.dry_run else command, out, log)
            measured_s[name] = time.perf_counter() - start
            print(f"part {name}: {measured_s[name]:.0f} s (expected on one H100: "
                  f"{estimates[name]['seconds'] / 60:.1f} min)", file=log, flush=True)
    where = "this dry run (tiny, CPU)" if args.dry_run else "this run"
    report = estimate_report(estimates, measured_s, where)
    (out / "estimate.json").write_text(json.dumps(
        {"assumptions": H100, "budget_s": PART_BUDGET_S, "dry_run": args.dry_run,
         "parts": {name: dict(estimates[name], measured_s=measured_s[name]) for name in parts}}, indent=2) + "\n")
    print(report)
    errors = _recorded_errors(out, started)
    for error in errors:
        print(f"recorded error: {error}")
    print(f"{'FAILED' if errors else 'done'}: results in {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
