"""Checkpoints: written atomically, holding only tensors and plain Python values.

A checkpoint loads with `torch.load(path, weights_only=True)`. It is serialized in memory, written to a temporary
file in the same folder, flushed and fsynced, then moved over the old one with `os.replace`: an interrupted write
leaves the previous checkpoint intact, and a full disk is one plain `OSError` (ENOSPC) naming nothing but the write.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def usual_mode(path) -> None:
    """Give a file made by `tempfile.mkstemp` (mode 0600) the mode any new file gets here (0666 minus the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def atomic_write_bytes(path: Path, write) -> None:
    """Write a file through `write(fileobj)` to a temp file beside `path`, fsync, then os.replace (with the usual
    file mode, not mkstemp's private one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def save(path: Path, state: dict[str, Any]) -> None:
    """`state` as a checkpoint at `path`, atomically. torch.save writes into memory first: its zip writer, when the
    disk fills under it, raises the OSError and then a second error from its own cleanup (`RuntimeError: [enforce
    fail at inline_container.cc] unexpected pos`), so the file itself is written by plain writes. The cost is one
    checkpoint's size in memory (a few tens of MB for the paper preset, with its optimizer state)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getbuffer()
    atomic_write_bytes(path, lambda f: f.write(data))


def load(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    return torch.load(path, map_location=map_location, weights_only=True)
