"""What the fault tests share: the one-line error check, a run directory made without training, a real small or
read-only file system (tmpfs), and a second process that holds a directory's lock."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import ROOT, TINY_RUN

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def one_line(err: str, *parts: str) -> str:
    """`err` (a command's stderr) is one `error: ...` line, without a traceback, holding every one of `parts` (lines
    of `warning: ` and `note: ` beside it are what the command says on the way)."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("warning: ", "note: "))]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err[-3000:]
    for p in parts:
        assert p in lines[0], (p, lines[0])
    return lines[0]


def snapshot(d: Path) -> dict:
    """Every file under `d` with its size, modification time and bytes: equal snapshots, nothing written."""
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in d.rglob("*") if p.is_file()}


def tiny_config(data_path: Path, **sections):
    """The resolved config of the tiny run on `data_path` (sections: values over TINY_RUN, {"model": {...}})."""
    from stvit.training import api

    cfg = json.loads(json.dumps(TINY_RUN))
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    return api.resolve_config(api.Request(config=cfg, values={"data.path": str(data_path)}))


def fake_run(path: Path, cfg, stage: str = "finetune") -> Path:
    """A run directory as training leaves it, without training: config.json, log.jsonl, checkpoints/best.pt (or
    pretrain.pt) of freshly initialized weights, and a figure."""
    from stvit.training import checkpoint as ckpt
    from stvit.training.stages import STAGES

    model = STAGES[stage].build_model(cfg.model)
    (path / "figures").mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    (path / "log.jsonl").write_text("".join(json.dumps(
        {"stage": "finetune", "epoch": e, "train_loss": 0.7, "train_acc": 0.5, "val_loss": 0.7, "val_acc": 0.5}) + "\n"
        for e in (1, 2)))  # records a run's figures are drawn from
    (path / "figures" / "finetune_loss.png").write_bytes(b"an earlier figure")
    name = "best.pt" if stage == "finetune" else "pretrain.pt"
    ckpt.save(path / "checkpoints" / name, {"stage": stage, "epoch": 1, "model": model.state_dict(),
                                            "config": cfg.to_dict()})
    return path


# --- real faults ----------------------------------------------------------------------------------------------

def can_mount() -> str | None:
    """None when this process can mount a tmpfs (root), else why not."""
    if os.geteuid() != 0:
        return "mounting a tmpfs needs root (CI runs as root)"
    return None


@contextlib.contextmanager
def tmpfs(path: Path, size_kb: int, *, read_only: bool = False):
    """A real tmpfs of `size_kb` at `path` (read-only when asked) for the duration; the test is skipped, saying
    why, where mounting is impossible."""
    why = can_mount()
    if why:
        pytest.skip(why)
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size_kb}k" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path, leave_kb: int) -> Path:
    """Fill the file system of `folder` with one file until `leave_kb` KB are free; the file."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    filler = folder / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_kb * 1024))
    return filler


HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)  # as a running stvit process holds it (RunDir.lock)
print("locked", flush=True)
time.sleep(120)
"""


@contextlib.contextmanager
def held_by_another_process(folder: Path):
    """Another process holds `folder`'s lock (flock on the directory, as stvit's commands take it) meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked"
        yield p
    finally:
        p.kill()
        p.wait(timeout=30)
        time.sleep(0.05)
