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
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from stvit.training import checkpoint as ckpt
from stvit.training import distributed as DIST
from stvit.errors import UserError, WriteError



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
        return read_checkpoint(self.checkpoint(name))

    def model(self, name: str = "best.pt", *, device: torch.device | str = "cpu", ops=None) -> "TrainedModel":
        """The model of checkpoints/<name> (the classifier of best.pt or last.pt, the MAE of pretrain.pt), checked
        and on `device` (`load_model`)."""
        return load_model(self.checkpoint(name), device=device, ops=ops)

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
        from stvit.training.stages import order

        keep = [r for r in self.records() if (order(r["stage"]), r["epoch"]) <= (order(stage), epoch)]
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


def read_checkpoint(path: Path | str) -> dict[str, Any]:
    """A checkpoint's contents (tensors and plain values only: `torch.load(weights_only=True)`); a missing, truncated
    or foreign file, or one that holds other Python objects, is a one-line UserError naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError("no such checkpoint", path)
    try:
        state = ckpt.load(path)
    except Exception as e:  # noqa: BLE001 - a truncated, foreign or unsafe file
        text = str(e)
        if "WeightsUnpickler error:" in text:  # torch's safe loader refused it; its advice to turn that off is not ours
            detail = " ".join(text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation")[0].split())
            if "Unsupported global" in detail:
                raise UserError("not a checkpoint stvit reads: it holds Python objects other than tensors and plain "
                                f"values ({detail.split('.')[0]}), and loading those would run code from the file",
                                path) from None
            raise UserError(f"cannot read checkpoint (damaged or not a checkpoint: {detail.split('.')[0]})",
                            path) from None
        first = text.strip().splitlines()[0] if text.strip() else ""
        raise UserError(f"cannot read checkpoint ({type(e).__name__}{': ' + first if first else ''})", path) from None
    if not isinstance(state, dict):
        raise UserError(f"not an stvit checkpoint (it holds a {type(state).__name__}, not a dict)", path)
    return state


@dataclass
class TrainedModel:
    """A model read from a checkpoint: the module (on its device, in eval mode), the run's config, the checkpoint's
    other contents (`stage`, `epoch`, ...) and where it came from."""

    model: torch.nn.Module
    cfg: Any  # stvit.config.Config
    state: dict[str, Any]
    path: Path

    @property
    def stage(self) -> str:
        return self.state["stage"]


def load_model(path: Path | str, *, device: torch.device | str = "cpu", ops=None,
               stage: str | None = None) -> TrainedModel:
    """The one loader of a trained model: the checkpoint read safely, its config checked, the model of its stage
    built (the classifier for `finetune`, the MAE for `pretrain`) with the plain-torch reference ops (or `ops`, a
    `kernels.select` choice), its weights loaded strictly. `stage`: the stage the caller needs ("finetune" for
    anything that classifies); another one is a UserError saying which checkpoint to use. Every problem is one
    line naming the file."""
    import dataclasses

    from stvit.config import Config
    from stvit.training.stages import STAGES

    path = Path(path)
    state = read_checkpoint(path)
    if "model" not in state or "config" not in state or state.get("stage") not in STAGES:
        raise UserError("not an stvit checkpoint (needs 'model', 'config' and the stage that wrote it)", path)
    if stage is not None and state["stage"] != stage:
        want = "a fine-tuned classifier (checkpoints/best.pt)" if stage == "finetune" else f"a {stage} checkpoint"
        raise UserError(f"holds the {state['stage']} stage's model; this needs {want}", path)
    try:
        cfg = Config.from_dict(state["config"])
    except (ValueError, TypeError) as e:
        raise UserError(f"bad config in the checkpoint ({e})", path) from None
    built = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, kernels="eager"))
    try:
        model = STAGES[state["stage"]].build_model(built.model)
    except (RuntimeError, ValueError, MemoryError) as e:  # a config that names a model too large to build
        raise UserError(f"cannot build the model of its config ({type(e).__name__}: {e})", path) from None
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0]
        raise UserError(f"the weights do not fit a model of its config ({first})", path) from None
    model = model.to(device).eval()
    if ops is not None:
        model.use_ops(ops)
    return TrainedModel(model, cfg, state, path)


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
