"""Writers of benchmark results: JSON (environment and settings included), Markdown tables and a PNG plot."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from raptor_zoo_cli.options import MODES

__all__ = ["write_json", "markdown_table", "write_markdown", "plot_throughput"]


def _json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.device):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(
        rows: Sequence[dict[str, Any]],
        path: str | Path,
        environment: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        notes: Sequence[str] = (),
        extra: dict[str, Any] | None = None,
) -> Path:
    """``{'environment', 'settings', 'notes', **extra, 'rows'}`` as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"environment": environment or {}, "settings": settings or {}, "notes": list(notes), **(extra or {}),
               "rows": list(rows)}
    path.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    return path


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio_text(row: dict[str, Any], key: str) -> str:
    median = row.get(key)
    if median is None:
        return "–"
    low, high = row.get(f"{key}_min"), row.get(f"{key}_max")
    return f"{median:.3f} ({low:.3f}–{high:.3f})" if low is not None else f"{median:.3f}"


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Throughput rows as a Markdown table (ratios: median over rounds, min–max in brackets)."""
    header = ("| mode | dtype | batch | model | steps | img/s | median ms | p90 ms | peak MB | GFLOPs/img | params (M) "
              "| img/s ratio | latency ratio |")
    lines = [header, "|" + "---|" * 13]
    for row in rows:
        batch = str(row["batch_size"])
        if row.get("requested_batch_size") not in (None, row["batch_size"]):
            batch += f" (asked {row['requested_batch_size']})"
        model = row["model"] + (f" error: {row['error'][:80]}" if row.get("error") else "")
        lines.append("| " + " | ".join([
            row["mode"], row["dtype"], batch, model, _fmt(row.get("num_steps")), _fmt(row.get("img_per_sec")),
            _fmt(row.get("latency_ms_median"), 2), _fmt(row.get("latency_ms_p90"), 2),
            _fmt(row.get("peak_memory_mb"), 0), _fmt(row.get("gflops"), 2),
            _fmt(row["param_count"] / 1e6 if row.get("param_count") else None, 2),
            _ratio_text(row, "img_per_sec_ratio"), _ratio_text(row, "latency_ratio")]) + " |")
    return "\n".join(lines)


def write_markdown(
        rows: Sequence[dict[str, Any]],
        path: str | Path,
        environment: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
        notes: Sequence[str] = (),
        title: str = "Inference throughput: teacher vs Raptor",
        plot_name: str | None = None,
) -> Path:
    """A Markdown report: environment, settings, notes, the main table and the anytime table."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    environment = environment or {}
    lines = [f"# {title}", ""]
    if environment:
        lines.append("- " + "; ".join(f"{key}: {value}" for key, value in environment.items()))
    if settings:
        lines.append("- settings: " + "; ".join(
            f"{key}={value}" for key, value in settings.items() if key not in ("notes", "out")))
    lines.extend(f"- {note}" for note in notes)
    lines.append("- ratios are Raptor / teacher, measured side by side in alternating rounds: median (min–max) over "
                 "rounds; latency ratio < 1 and img/s ratio > 1 mean the Raptor is faster.")
    lines += ["", markdown_table([r for r in rows if r.get("cell", "main") == "main"])]
    anytime = [r for r in rows if r.get("cell") == "anytime"]
    if anytime:
        lines += ["", "## Anytime inference (Raptor stopped after `num_steps` < L block applications)", "",
                  "Ratios are against the full-depth teacher measured in the same rounds.", "",
                  markdown_table(anytime)]
    if plot_name:
        lines += ["", f"![throughput]({plot_name})"]
    path.write_text("\n".join(lines) + "\n")
    return path


def _plain_log_ticks(ax: Any, xticks: Sequence[int]) -> None:
    """Batch sizes as plain x tick labels on the log x axis instead of 10^x notation."""
    from matplotlib.ticker import NullFormatter, ScalarFormatter
    ax.set_xticks(list(xticks))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_throughput(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """PNG: img/s vs batch size per dtype (teacher solid, Raptors dashed, a colour per mode), the Raptor/teacher
    img/s ratio with its min–max over rounds, and anytime img/s vs steps."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    main = [r for r in rows if r.get("cell", "main") == "main" and r.get("img_per_sec")]
    anytime = [r for r in rows if r.get("cell") == "anytime" and r.get("img_per_sec")]
    dtypes = sorted({r["dtype"] for r in main}) or ["fp32"]
    modes = [m for m in MODES if any(r["mode"] == m for r in rows)]
    colours = dict(zip(MODES, ("tab:blue", "tab:orange", "tab:green")))
    panels = len(dtypes) + 1 + (1 if anytime else 0)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.2), squeeze=False)
    axes = axes[0]
    models = list(dict.fromkeys(r["model"] for r in main))
    batch_sizes = sorted({r["batch_size"] for r in main})
    styles = ["-", "--", ":", "-."]
    for ax, dtype in zip(axes, dtypes):
        for mode in modes:
            for index, model in enumerate(models):
                points = sorted((r["batch_size"], r["img_per_sec"]) for r in main
                                if r["mode"] == mode and r["dtype"] == dtype and r["model"] == model)
                if points:
                    ax.plot(*zip(*points), styles[index % len(styles)], marker="o", color=colours[mode],
                            label=f"{model} {mode}")
        speeds = [r["img_per_sec"] for r in main if r["dtype"] == dtype]
        # a log img/s axis only when the values span a decade (a narrower log axis gets no labelled ticks)
        ax.set(xscale="log", yscale="log" if max(speeds) >= 10 * min(speeds) else "linear", xlabel="batch size",
               ylabel="img/s", title=f"throughput ({dtype})")
        _plain_log_ticks(ax, batch_sizes)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    ratio_ax = axes[len(dtypes)]
    for mode in modes:
        for dtype_index, dtype in enumerate(dtypes):
            for model in models:
                points = sorted((r["batch_size"], r["img_per_sec_ratio"], r["img_per_sec_ratio_min"],
                                 r["img_per_sec_ratio_max"]) for r in main
                                if r["role"] == "raptor" and r["mode"] == mode and r["dtype"] == dtype
                                and r["model"] == model and r.get("img_per_sec_ratio") is not None)
                if points:
                    x, y, low, high = zip(*points)
                    ratio_ax.errorbar(x, y, yerr=[[a - b for a, b in zip(y, low)], [b - a for a, b in zip(y, high)]],
                                      fmt=styles[dtype_index % len(styles)], marker="o", color=colours[mode],
                                      capsize=3, label=f"{model} {mode} {dtype}")
    ratio_ax.axhline(1.0, color="grey", lw=1)
    ratio_ax.set(xscale="log", xlabel="batch size", ylabel="Raptor / teacher img/s",
                 title="speed ratio (median, min–max over rounds)")
    _plain_log_ticks(ratio_ax, batch_sizes)
    ratio_ax.grid(True, alpha=0.3)
    ratio_ax.legend(fontsize=7)
    if anytime:
        ax = axes[-1]
        for mode in modes:
            for dtype in sorted({r["dtype"] for r in anytime}):
                cell = [r for r in anytime if r["mode"] == mode and r["dtype"] == dtype]
                teacher = [r for r in cell if r["role"] == "teacher"]
                bases = sorted({r["model"].split("@")[0] for r in cell if r["role"] == "anytime"})
                for index, base in enumerate(bases):
                    points = [(r["num_steps"], r["img_per_sec"]) for r in cell
                              if r["role"] != "teacher" and r["model"].split("@")[0] == base]
                    batch = cell[0]["batch_size"]
                    ax.plot(*zip(*sorted(points)), styles[index % len(styles)], marker="o", color=colours[mode],
                            label=f"{base} {mode} {dtype} (batch {batch})")
                if teacher:
                    ax.axhline(teacher[0]["img_per_sec"], color=colours[mode], lw=1, alpha=0.6,
                               label=f"{teacher[0]['model']} (full depth)")
        ax.set(xlabel="block applications run (num_steps)", ylabel="img/s", title="anytime inference")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path

