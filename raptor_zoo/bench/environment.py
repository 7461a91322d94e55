"""Where a benchmark ran: the device it resolves to, its name and file-name slug, and the facts written beside
every result (library versions, thread count, matmul precision, date)."""
from __future__ import annotations

import datetime
import os
import platform
import re
from typing import Any

import torch

__all__ = ["resolve_device", "device_name", "device_slug", "environment_info"]


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' / None -> cuda when available, else cpu; anything else as torch.device (CUDA must exist)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device} was asked but CUDA is not available here; use --device cpu.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda[:i]' or 'auto', got {str(device)!r}.")
    return device


def _cpu_model_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str | torch.device) -> str:
    """Human-readable device: the GPU name, or the CPU model with its core count."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{_cpu_model_name()} ({os.cpu_count()} cores)"


def device_slug(device: str | torch.device) -> str:
    """Short file-name form of the device: 'nvidia-h100-80gb-hbm3', 'cpu-amd-epyc-2c'."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu {_cpu_model_name()} {os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def environment_info(device: str | torch.device) -> dict[str, Any]:
    """Device, library versions, date and host facts written beside every result."""
    import timm

    from .. import __version__
    device = torch.device(device)
    info: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "device_slug": device_slug(device),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "raptor_zoo": __version__,
        "python": platform.python_version(),
        "host_cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
                    gpu_memory_gib=round(torch.cuda.get_device_properties(device).total_memory / 2 ** 30, 1))
    return info

