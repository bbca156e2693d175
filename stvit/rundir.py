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

import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import checkpoint as ckpt
from . import distributed as DIST
from .errors import UserError

STAGE_ORDER = {"pretrain": 0, "finetune": 1}
LEGACY_CHECKPOINTS = {"pretrain.pt": "mae.pt"}  # the name older runs wrote


class RunDir:
    """One run directory. `main`: this process writes (rank 0); on other ranks every write is skipped."""

    def __init__(self, path: Path | str, *, main: bool | None = None, echo: bool = True):
        self.path = Path(path)
        self.main = DIST.is_main() if main is None else main
        self.echo = echo  # print each epoch's record
        self._tb = None

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

    # ---- writes --------------------------------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        """<name> as indented JSON, atomically."""
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def write_text(self, name: str, text: str) -> None:
        """<name> as UTF-8 text, atomically."""
        if self.main:
            ckpt.atomic_write_bytes(self.path / name, lambda f: f.write(text.encode()))

    def write_arrays(self, name: str, **arrays: np.ndarray) -> None:
        """<name> as an .npz of `arrays`, atomically."""
        if self.main:
            ckpt.atomic_write_bytes(self.path / name, lambda f: np.savez(f, **arrays))

    def write_split(self, split: dict[str, np.ndarray], *, ids, seed: int, fraction: float) -> None:
        """split.json: the train/validation positions (and the validation subjects)."""
        if self.main:
            from .data import save_split

            save_split(self.path, split["train"], split["val"], ids=ids, seed=seed, fraction=fraction)

    def write_figure(self, draw: Callable[[Path], Any]) -> None:
        """`draw(figures_folder)`: figures are drawn by rank 0 only."""
        if self.main:
            draw(self.path / "figures")

    def save(self, name: str, state: dict[str, Any]) -> None:
        """checkpoints/<name>, atomically by rank 0; every rank waits until the file is complete."""
        if self.main:
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

    def log(self, record: dict[str, Any]) -> None:
        """One epoch: a line of log.jsonl, TensorBoard scalars, and the record on stdout."""
        if not self.main:
            return
        with open(self.log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        tb = self._tensorboard()
        if tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    tb.add_scalar(f"{record['stage']}/{k}", v, record["epoch"])
        if self.echo:
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                  flush=True)

    def truncate_log(self, stage: str, epoch: int) -> None:
        """Drop the lines logged after the checkpoint a run resumes from (an epoch logged, then killed before its
        checkpoint was saved)."""
        if not self.main:
            return
        keep = [r for r in self.records() if (STAGE_ORDER[r["stage"]], r["epoch"]) <= (STAGE_ORDER[stage], epoch)]
        text = "".join(json.dumps(r) + "\n" for r in keep)
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
        if self._tb:
            self._tb.close()
        self._tb = None


def read_log(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
