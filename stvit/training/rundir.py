"""The run directory: every file a run writes goes through `RunDir`.

    config.json        the resolved config            split.json         the train/validation split
    log.jsonl          one line per epoch             checkpoints/       last.pt, best.pt, pretrain.pt
    metrics.json       the final evaluation           predictions.npz    the probabilities behind it
    figures/*.png      curves, confusion matrix       tensorboard/       when tensorboard is installed

Writes are atomic (a temporary file beside the target, fsynced, then `os.replace`): an interrupted write leaves
the previous file intact. Under torchrun only rank 0 writes; a checkpoint save is also a barrier, so that no rank
reads a checkpoint before it is complete.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from stvit.training import checkpoint as ckpt
from stvit.training import distributed as DIST
from stvit.errors import UserError

STAGE_ORDER = {"pretrain": 0, "finetune": 1}


class WriteError(Exception):
    """A file of the run directory could not be written (a full disk, a quota, a read-only file system). The
    atomic writes leave the previous version of the file intact, so the run can continue with --resume."""

    def __init__(self, path: Path, err: OSError):
        self.path, self.reason = Path(path), err.strerror or str(err)
        super().__init__(f"{self.path}: cannot write ({self.reason})")


@contextlib.contextmanager
def writing(path: Path):
    """Turn an OSError while writing `path` into a WriteError naming it."""
    try:
        yield
    except OSError as e:
        raise WriteError(path, e) from None
LEGACY_CHECKPOINTS = {"pretrain.pt": "mae.pt"}  # the name older runs wrote


class RunDir:
    """One run directory. `main`: this process writes (rank 0); on other ranks every write is skipped."""

    def __init__(self, path: Path | str, *, main: bool | None = None, echo: bool = True):
        self.path = Path(path)
        self.main = DIST.is_main() if main is None else main
        self.echo = echo  # print each epoch's record
        self._tb = None
        self._lock: int | None = None  # the file descriptor holding the lock
        self._annotations: dict[str, Any] = {}  # added to the next logged record

    # ---- paths ---------------------------------------------------------------------------------------------------
    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """checkpoints/<name>; for pretrain.pt, the legacy mae.pt of an older run when that is what exists."""
        path = self.checkpoints / name
        legacy = LEGACY_CHECKPOINTS.get(name)
        if legacy and not path.exists() and (self.checkpoints / legacy).exists():
            return self.checkpoints / legacy
        return path

    def has(self, name: str) -> bool:
        return self.checkpoint(name).is_file()

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(self.path.iterdir())

    def fingerprint(self) -> tuple:
        """What the directory holds now (names, sizes, modification times): equal fingerprints, same state."""
        if not self.path.exists():
            return ()
        return tuple(sorted((str(p.relative_to(self.path)), p.stat().st_size, p.stat().st_mtime_ns)
                            for p in self.path.rglob("*") if p.is_file()))

    # ---- the lock ------------------------------------------------------------------------------------------------
    def lock(self) -> None:
        """Hold an exclusive lock on the directory (flock on the directory itself: no lock file) until `close` or
        the end of the process, however it ends: the kernel releases it, so a killed run leaves nothing stuck.
        A second process on the same directory, to start, resume or evaluate, is refused."""
        if not self.main or self._lock is not None:
            return
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as e:
            raise UserError(f"cannot create or open the run directory ({e.strerror})", self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise UserError("another stvit process is using this run directory; wait for it to end, or choose "
                            "another --out", self.path) from None
        self._lock = fd

    # ---- writes --------------------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        """<name> as indented JSON, atomically."""
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """<name> as UTF-8 text, atomically."""
        if self.main:
            with writing(self.path / name):
                ckpt.atomic_write_bytes(self.path / name, lambda f: f.write(text.encode()))

    def write_arrays(self, name: str, **arrays: np.ndarray) -> None:
        """<name> as an .npz of `arrays`, atomically."""
        if self.main:
            with writing(self.path / name):
                ckpt.atomic_write_bytes(self.path / name, lambda f: np.savez(f, **arrays))

    def write_split(self, split: dict[str, np.ndarray], *, ids, seed: int, fraction: float) -> None:
        """split.json: the train/validation positions (and the validation subjects)."""
        if self.main:
            from stvit.data import save_split

            with writing(self.path / "split.json"):
                save_split(self.path, split["train"], split["val"], ids=ids, seed=seed, fraction=fraction)

    def write_figure(self, draw: Callable[[Path], Any]) -> None:
        """`draw(figures_folder)`: figures are drawn by rank 0 only."""
        if self.main:
            with writing(self.path / "figures"):
                draw(self.path / "figures")

    def save(self, name: str, state: dict[str, Any]) -> None:
        """checkpoints/<name>, atomically by rank 0; every rank waits until the file is complete."""
        if self.main:
            with writing(self.checkpoints / name):
                ckpt.save(self.checkpoints / name, state)
        DIST.barrier()

    def load(self, name: str) -> dict[str, Any]:
        """A checkpoint of this run; a missing, truncated or foreign file is a UserError naming it."""
        path = self.checkpoint(name)
        if not path.is_file():
            raise UserError("no such checkpoint", path)
        try:
            return ckpt.load(path)
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file
            raise UserError(f"cannot read checkpoint ({type(e).__name__}: {e})", path) from None

    # ---- the epoch log -------------------------------------------------------------------------------------------
    @property
    def log_path(self) -> Path:
        return self.path / "log.jsonl"

    def records(self) -> list[dict]:
        return read_log(self.log_path)

    def annotate_next(self, key: str, value: Any) -> None:
        """Add `key` to the next epoch's record (e.g. that a resumed run was lengthened)."""
        self._annotations[key] = value

    def log(self, record: dict[str, Any]) -> None:
        """One epoch: a line of log.jsonl, TensorBoard scalars, and the record on stdout."""
        if not self.main:
            return
        record, self._annotations = {**record, **self._annotations}, {}
        with writing(self.log_path), open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._tensorboard()
        if tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    tb.add_scalar(f"{record['stage']}/{k}", v, record["epoch"])
        if self.echo:
            # a nested value (the kernels' report) is in log.jsonl and the run-directory line, not on the console
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()
                           if not isinstance(v, dict)), flush=True)

    def truncate_log(self, stage: str, epoch: int) -> None:
        """Drop the lines logged after the checkpoint a run resumes from (an epoch logged, then killed before its
        checkpoint was saved)."""
        if not self.main:
            return
        keep = [r for r in self.records() if (STAGE_ORDER[r["stage"]], r["epoch"]) <= (STAGE_ORDER[stage], epoch)]
        text = "".join(json.dumps(r) + "\n" for r in keep)
        with writing(self.log_path):
            ckpt.atomic_write_bytes(self.log_path, lambda f: f.write(text.encode()))

    def note(self, message: str) -> None:
        """A line for the user on stderr (rank 0)."""
        if self.main:
            print(message, file=sys.stderr, flush=True)

    def _tensorboard(self):
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tb = False
            else:
                self._tb = SummaryWriter(str(self.path / "tensorboard"))
        return self._tb or None

    def close(self) -> None:
        """Flush TensorBoard and release the lock."""
        if self._tb:
            self._tb.close()
        self._tb = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def read_log(path: Path) -> list[dict]:
    """The records of log.jsonl; a torn last line (the disk filled up while it was appended) is left out."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines[:-1]]
    if lines:
        try:
            records.append(json.loads(lines[-1]))
        except json.JSONDecodeError:
            pass
    return records
