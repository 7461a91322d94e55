"""Inference benchmarks of Raptors against their teachers, in the manner of timm's ``benchmark.py``.

* :mod:`.runners` - one model: :class:`InferenceRunner` (warm-up, then synchronised iterations: CUDA events with a
  synchronise per step on GPU, ``time.perf_counter`` on CPU) and :func:`benchmark_inference` (median / p90
  latency, img/s, peak memory, params and FLOPs; an out-of-memory batch steps down, timm's ``decay_batch_step``,
  and other failures are recorded in ``error`` instead of raised).
* :mod:`.compare` - teacher against Raptor(s): :func:`compare_teacher_raptor` times them *side by side* (per cell
  of mode, dtype and batch size, rounds in alternating order; Raptor / teacher ratios per round, reported as
  median and min-max), anytime rows time the Raptor stopping after ``num_steps`` < L; :func:`flops_row` counts
  FLOPs and parameters (:func:`raptor_zoo.flops.flops_table`, the model cards' count) with the SwiGLU variant and
  the depth-scaling overhead.
* :mod:`.results` - writers: JSON (environment and settings included), Markdown tables and a PNG plot.
* :mod:`.environment` - the device and the facts written beside every result.
* :mod:`.command` - a whole run from parsed flags: ``benchmarks/throughput.py`` and ``raptor-zoo bench`` are
  :func:`add_bench_arguments` (declared without torch in ``raptor_zoo_cli.options``) + :func:`bench_command`.
"""
from raptor_zoo_cli.options import add_bench_arguments

from ..flops import FLOPS_CONVENTION
from .command import BenchSettings, bench_command, resolve_bench_settings
from .compare import CPU_BATCH_SIZES, GPU_BATCH_SIZES, compare_teacher_raptor, flops_row, ratio_stats
from .environment import device_name, device_slug, environment_info, resolve_device
from .results import markdown_table, plot_throughput, write_json, write_markdown
from .runners import (
    DTYPES,
    MEMORY_KIND,
    MODES,
    InferenceRunner,
    benchmark_inference,
    prepare_model,
    summarise_latencies,
)

__all__ = [
    "MODES", "DTYPES", "GPU_BATCH_SIZES", "CPU_BATCH_SIZES", "FLOPS_CONVENTION", "MEMORY_KIND",
    "BenchSettings", "InferenceRunner", "resolve_device", "device_name", "device_slug", "environment_info",
    "prepare_model", "summarise_latencies", "benchmark_inference", "ratio_stats", "compare_teacher_raptor",
    "flops_row", "write_json", "markdown_table", "write_markdown", "plot_throughput", "add_bench_arguments",
    "resolve_bench_settings", "bench_command",
]
