"""The pieces every performance report is made of: the environment it ran in, numbers formatted alike, ratios
against the seed-style baseline measured in the same run, and Markdown tables.

Used by `python -m stvit.profile`, the benchmark harness (`bench/conftest.py`) and the GPU check
(`bench/gpu_check.py`), so that their reports name the device, the software and the date the same way.
"""
from __future__ import annotations

import datetime as dt
import platform
from typing import Any, Iterable, Sequence

import torch

BASELINE = "baseline"  # the variant every ratio is taken against


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'cpu'})"


def environment(device: torch.device | str, command: str | None = None) -> dict[str, Any]:
    """Date, software versions and the device (with its compute capability on CUDA, its threads on CPU)."""
    device = torch.device(device)
    env = {"date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "python": platform.python_version(),
           "torch": torch.__version__, "platform": platform.platform(), "device": device_name(device)}
    try:
        import triton
        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
    else:
        env["threads"] = torch.get_num_threads()
    if command is not None:
        env["command"] = command
    return env


def fmt(v: float | None, spec: str = ".2f") -> str:
    """`v` formatted, or n/a when it was not measured."""
    return "n/a" if v is None else format(v, spec)


def vs_baseline(rows: Sequence[dict], row: dict, key: str = "samples_per_s", group: str = "stage") -> float | None:
    """row[key] over the baseline row of the same `group` (the same stage), or None without a baseline."""
    base = next((b for b in rows if b.get(group) == row.get(group) and b.get("variant") == BASELINE), None)
    return row[key] / base[key] if base and base.get(key) else None


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[bool] | None = None) -> list[str]:
    """A Markdown table; `right[i]` right-aligns column i (numbers)."""
    right = right or [False] * len(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if r else "---" for r in right) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines
