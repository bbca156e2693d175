"""What was run, for metrics.json, cv.json and report.html: the command line as typed, the versions of stvit and of the
libraries its numbers depend on, the git commit when stvit runs from a git checkout, the start time, the host and the
device. Nothing here may stop a run: a missing git, a package without version metadata or a slow `git` is None.
"""
from __future__ import annotations

import datetime as dt
import os
import platform
import shlex
import socket
import subprocess
import sys
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

PACKAGES = ("stvit", "torch", "triton", "numpy", "scipy", "scikit-learn", "jinja2")
GIT_TIMEOUT = 5.0  # s


def command_line(prog: str, argv: Sequence[str] | None = None) -> str:
    """`prog` and the arguments of this process (or `argv`) as a shell would take them back:
    "python -m stvit.train --data 'my file.mat'"."""
    args = sys.argv[1:] if argv is None else list(argv)
    return " ".join([prog, *map(shlex.quote, args)])


def version(package: str) -> str | None:
    """The installed version of `package`, or None."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Python and each of `PACKAGES` that is installed: {"python": "3.12.3", "torch": "2.13.0", ...}."""
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        v = version(p)
        if v is not None:
            out[p] = v
    return out


def git(root: Path, *args: str) -> str | None:
    """`git -C root args` stripped, or None when git is absent, fails or takes longer than `GIT_TIMEOUT`."""
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=GIT_TIMEOUT,
                             env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@lru_cache(maxsize=1)
def commit() -> dict[str, Any] | None:
    """The commit of the git checkout stvit is imported from ({"commit", "dirty": tracked files changed}), or None
    when it is not imported from one (an installed wheel) or git cannot tell."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():  # a checkout has .git (a folder, or a file in a worktree) beside stvit/
        return None
    sha = git(root, "rev-parse", "HEAD")
    if not sha:
        return None
    status = git(root, "status", "--porcelain", "--untracked-files=no")
    return {"commit": sha, "dirty": None if status is None else bool(status)}


def device_name(device) -> str:
    """'cpu (16 threads)' or 'cuda:0 (NVIDIA H200)'."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"{device.type} ({torch.get_num_threads()} threads)"


def provenance(command: str | None, device=None) -> dict[str, Any]:
    """The `provenance` section: command (None when called from Python), versions, commit and dirty (None outside a
    git checkout), started (local time with its offset), host, device."""
    git_state = commit() or {}
    return {"command": command, "versions": versions(), "commit": git_state.get("commit"),
            "dirty": git_state.get("dirty"), "started": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": socket.gethostname(), "device": None if device is None else device_name(device)}
