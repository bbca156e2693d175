"""The per-run work of an import, and the work folder that makes it resumable.

One run = one job (`process_run`): read its frames a chunk at a time, resample them onto the grid, clean the
run, keep its labelled volumes, z-score each, and write them as one part file. Parts live in `FILE.parts/` next
to the output, each written atomically (a temporary name, then `os.replace`) and named by the run and a digest of
everything that shapes it (the run's files with their sizes and modification times, its labels, the cleaning,
the dtype, this module's version): a rerun of a killed import finds the parts already done and skips them, and
a rerun with other parameters does not reuse them. One import at a time may use a work folder (an OS lock that
dies with its process).

Jobs run in this process (`jobs=1`) or in `jobs` worker processes (spawned, one BLAS thread each: a part's
numbers do not depend on how many jobs made it).
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from stvit.data.dataset import DataError
from stvit.data.importer.clean import Cleaning, clean_run, zscore_rows
from stvit.data.importer.geometry import CHUNK_FRAMES, open_series, series_on_grid, support
from stvit.data.importer.plan import RunPlan

PART_VERSION = 2  # bump when a part's content changes for the same inputs


@dataclass
class Job:
    """A run to import and where its part goes."""

    plan: RunPlan
    conditions: tuple[str, ...]
    cleaning: Cleaning
    dtype: str
    path: Path
    chunk: int = CHUNK_FRAMES


def digest(plan: RunPlan, conditions: Sequence[str], cleaning: Cleaning, dtype: str) -> str:
    """16 hex digits of everything that shapes a run's part."""
    files = [(p, size, Path(p).stat().st_mtime_ns) for p, size in plan.files]
    key = {"version": PART_VERSION, "run": plan.spec.name, "files": files, "tr": plan.tr, "start": plan.start,
           "conditions": list(conditions), "label": plan.labels.label.tolist(), "cleaning": vars(cleaning),
           "dtype": dtype, "kept": None if plan.kept is None else plan.kept.tolist()}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=list).encode()).hexdigest()[:16]


def process_run(job: Job) -> dict:
    """Import one run into its part file; returns {"run", "kept", "seconds"}."""
    t0 = time.perf_counter()
    p = job.plan
    img = open_series(p.spec.bold)
    series = series_on_grid(img, p.spec.bold, job.chunk)  # (T, V) on the grid mask
    inside = support(series)
    if not inside.any():
        raise DataError("no voxel of the MNI brain holds data in every frame of this run", p.spec.bold)
    frames = np.arange(p.n_frames) if p.kept is None else p.kept
    rows = clean_run(series, inside, p.tr, job.cleaning, p.confounds, frames)
    del series
    keep = p.labels.label[frames] >= 0
    rows, frames = zscore_rows(rows[keep], inside), frames[keep]
    label = p.labels.label[frames]
    write_part(job.path, rows=rows.astype(job.dtype), inside=inside, label=label, volume=frames.astype(np.int64),
               onset=p.labels.time[frames], condition=np.asarray(job.conditions, dtype=str)[label])
    return {"run": p.spec.name, "kept": int(len(frames)), "seconds": time.perf_counter() - t0}


def write_part(path: Path, **arrays: np.ndarray) -> None:
    """Arrays into `path` (.npz), atomically: a killed process leaves a temporary file or nothing, never half a
    part under the final name."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _one_thread() -> None:
    """Worker initializer: one BLAS/OpenMP thread (jobs processes share the cores; results independent of it)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)


def run_jobs(jobs: Sequence[Job], n_jobs: int, on_done: Callable[[dict], None]) -> None:
    """Run every job, in this process or in `n_jobs` spawned workers; `on_done` after each. The first DataError
    stops the others (parts finished meanwhile stay) and is raised."""
    if n_jobs <= 1:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            for job in jobs:
                on_done(process_run(job))
        return
    import multiprocessing
    from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(n_jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_one_thread) as ex:
        pending = {ex.submit(process_run, job) for job in jobs}
        while pending:
            done, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in done:
                if f.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise f.exception()
                on_done(f.result())


class WorkFolder:
    """`FILE.parts/`: the finished runs of an import into FILE, locked while an import uses it."""

    def __init__(self, out: Path):
        self.path = out.parent / f"{out.name}.parts"
        self.created = False
        self._lock: int | None = None

    def claim(self) -> None:
        """Create (or reuse) the folder, lock it, and drop the temporary files of a killed import."""
        self.created = not self.path.exists()
        self.path.mkdir(exist_ok=True)
        fd = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise DataError("another import into this file is running (its work folder is locked)", self.path) \
                from None
        self._lock = fd
        for stale in self.path.glob(".*.tmp"):
            stale.unlink()

    def part(self, name: str, key: str) -> Path:
        return self.path / f"{name}-{key}.npz"

    def release(self, remove: bool) -> None:
        """Unlock; remove the folder (the import is done, or failed before any run of an earlier one was kept)."""
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None
        if remove:
            shutil.rmtree(self.path, ignore_errors=True)
