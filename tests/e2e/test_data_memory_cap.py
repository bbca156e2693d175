"""Training from a packed file ten times larger than the memory it may use: `python -m stvit.train` in a memory cgroup
limited to CAP (a real limit: the kernel kills the run if it goes over; when this machine gives no cgroup, the
peak memory of the run's processes is measured instead), on a file of more than 10 x CAP bytes whose pages were
dropped from the page cache first, so the run reads it from disk. The placement must choose streaming by itself
(the budget comes from the cgroup's room), the run must end normally, having read every row (but the training
split's last partial batch), and the summed proportional set size (PSS) of the run's processes must stay under CAP
throughout."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from stvit.data.packed import PackedWriter
from stvit.perf.memory import tree_pss

from helpers import ROOT


CAP = 1536 << 20  # what the run may use: Python, torch (its libraries charged here in a fresh venv), the model
SHAPE = (2, 512, 512)  # every voxel in the mask: a row is 1 MiB in float16, so the file has few rows
ROWS = math.ceil(10.1 * CAP / (np.prod(SHAPE) * 2))
RUN = {
    "model": {"volume": list(SHAPE), "patch": [64, 64], "dim": 16, "depth": 1, "heads": 2, "temporal_depth": 1,
              "temporal_heads": 2, "head_hidden": 8, "decoder_dim": 8, "decoder_depth": 1, "decoder_heads": 2,
              "dropout": 0.0},
    "pretrain": {"epochs": 0},
    "finetune": {"epochs": 1, "lr": 1e-3, "warmup_epochs": 0.0},
    # 1,000 permutations and resamples: the statistics' (resamples x test units) matrices are not what is measured
    "train": {"batch_size": 8, "eval_batch_size": 8, "compile": False, "device": "cpu", "precision": "fp32",
              "permutations": 1000},
    # the loader holds workers x prefetch batches: 2 x 2 x 8 MiB here (2 x 4 x 1 MB for batches of 8 real volumes)
    "data": {"val_fraction": 0.1, "loader_prefetch": 2},
}


def write_big(path: Path) -> None:
    """ROWS rows of SHAPE, float16; 1 in 10 in the test split, of both classes; labels learnable (a class offset)."""
    rng = np.random.default_rng(0)
    V = int(np.prod(SHAPE))
    base = rng.standard_normal((64, V), dtype=np.float32)
    with PackedWriter(path, np.ones(SHAPE, bool), dtype="float16") as w:
        for s in range(0, ROWS, 64):
            k = min(64, ROWS - s)
            n = s + np.arange(k)
            y = n % 2
            w.add((base[:k] + y[:, None]).astype(np.float16), y, np.where(n % 20 >= 18, "test", "train"),
                  subject=np.array([f"s{i // 16:05d}" for i in n]))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # the run reads the file from disk, not from cache
    finally:
        os.close(fd)


def memory_cgroup(limit: int) -> tuple[Path, str] | None:
    """A new memory cgroup under this process's own (v1, or v2 where its controller is delegated) limited to
    `limit` bytes: (its folder, its version); None where none can be made here (not root, no memory controller)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            parent, version, limit_file = Path("/sys/fs/cgroup/memory" + path), "v1", "memory.limit_in_bytes"
        elif hierarchy == "0" and controllers == "":
            parent, version, limit_file = Path("/sys/fs/cgroup" + path), "v2", "memory.max"
        else:
            continue
        group = parent / f"stvit-memory-cap-{os.getpid()}"
        try:
            group.mkdir()
        except OSError:
            continue
        try:
            (group / limit_file).write_text(str(limit))
            if version == "v2":
                (group / "memory.swap.max").write_text("0")
            return group, version
        except OSError:
            group.rmdir()
    return None


def oom_kills(group: Path, version: str) -> int:
    name = "memory.oom_control" if version == "v1" else "memory.events"
    fields = dict(line.split() for line in (group / name).read_text().splitlines())
    return int(fields.get("oom_kill", 0))


def test_streamed_training_from_a_file_ten_times_its_memory_cap(tmp_path):
    size = ROWS * np.prod(SHAPE) * 2
    if shutil.disk_usage(tmp_path).free < 1.5 * size:
        pytest.skip(f"needs {1.5 * size / 1e9:.1f} GB of free disk in {tmp_path}")
    data, out = tmp_path / "big.h5", tmp_path / "run"
    (tmp_path / "run.json").write_text(json.dumps(RUN))
    group = memory_cgroup(CAP)
    try:
        t0 = time.perf_counter()
        write_big(data)
        written = time.perf_counter() - t0
        assert data.stat().st_size >= 10 * CAP
        enter = None
        if group is not None:
            def enter():
                (group[0] / "cgroup.procs").write_text(str(os.getpid()))
        cmd = [sys.executable, "-m", "stvit.train", "--data", str(data), "--config", str(tmp_path / "run.json"),
               "--out", str(out), "--quiet"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                preexec_fn=enter)
        peak = 0
        while proc.poll() is None:
            peak = max(peak, tree_pss(proc.pid))
            time.sleep(0.05)
        output = proc.stdout.read()
        seconds = time.perf_counter() - t0
        print(f"file {data.stat().st_size / 2**30:.2f} GiB ({data.stat().st_size / CAP:.1f} x the cap, written in "
              f"{written:.0f} s); run {seconds:.0f} s; peak PSS of its processes {peak / 2**20:.0f} MiB; cap "
              f"{CAP / 2**20:.0f} MiB; cgroup {group[1] if group else 'none (measured only)'}")
        assert proc.returncode == 0, output[-3000:]
        if group is not None:
            assert oom_kills(*group) == 0
        assert 0 < peak < CAP, (peak, output[-2000:])
        first = json.loads((out / "log.jsonl").read_text().splitlines()[0])["data_placement"]
        assert first["placement"] == "stream" and first["test"] == "stream" and "exceed" in first["why"], first
        metrics = json.loads((out / "metrics.json").read_text())
        n_test = sum(1 for i in range(ROWS) if i % 20 >= 18)
        assert metrics["test"]["n"] == n_test and "baseline_skipped" in metrics  # its features would not fit either
        assert first["bytes"] == (ROWS - n_test) * np.prod(SHAPE) * 2  # train + validation rows, streamed
    finally:
        data.unlink(missing_ok=True)
        if group is not None:
            for _ in range(50):  # the run's processes are gone; the kernel may take a moment to empty the group
                try:
                    group[0].rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
