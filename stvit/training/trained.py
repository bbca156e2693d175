"""A trained run as a Python object (`stvit.load`): its config, its classes and its fine-tuned model on a chosen
device and precision, with class probabilities and embeddings for volumes in memory; and the inputs of
`python -m stvit.predict` and `python -m stvit.embed` read from a file.

    run = stvit.load("runs/paper-seed0", device="cuda")     # a run that finished fine-tuning
    probs = run.predict_proba(X)                           # (N, C): X (N, 53, 63, 46) or a list of NIfTI images
    z = run.embed(X)                                       # (N, D): what the head reads
    s = run.embed(X, level="slice")                        # (N, 53, D): each sagittal slice's CLS

The model is read by the run directory's one loader (`rundir.load_model`, checkpoints/best.pt), and predicted
through the evaluation's own path (`fit.predict_split`, `engine.predict`: the same batches, padding and
precision), so a run's test volumes give exactly the probabilities its predictions.npz holds.
Input is prepared as the run's data file was (`data.nan_to_zero`, `data.max_abs`, `data.zscore` of its config).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvit import cli
from stvit.config import PRECISIONS, Config
from stvit.data import series
from stvit.data.batches import DeviceSplit
from stvit.data.dataset import VOLUME_SHAPE, DataError, check_values, fmt_shape, zscore_volumes
from stvit.errors import UserError
from stvit.model.precision import Precision
from stvit.training import steps
from stvit.training.fit import predict_split
from stvit.training.rundir import RunDir, load_model, read_checkpoint
from stvit.training.stages import FINETUNE, choose_ops

LEVELS = ("volume", "slice")
# what `load` requires of a run directory
REQUIRES = ("checkpoints/best.pt (the fine-tuned classifier) and checkpoints/last.pt showing that the fine-tuning "
            "stage ran all its epochs")


def load(run_dir, *, device: str | torch.device = "auto", precision: str = "auto") -> "TrainedRun":
    """The trained run in `run_dir` (a run that finished fine-tuning: `REQUIRES`), its model on `device` ("auto":
    a GPU when there is one) in `precision` ("auto": the run's own setting on that device). A run that did not
    finish fine-tuning, or a directory that is no run, is a one-line UserError naming it."""
    run = RunDir(run_dir, main=False)
    if not run.path.is_dir():
        raise UserError("no such run directory", run.path)
    check_finished(run)
    dev = cli.resolve_device(str(device))
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision '{precision}' (choose from {', '.join(PRECISIONS)})")
    trained = load_model(run.checkpoint("best.pt"), device=dev, stage=FINETUNE.name)
    cfg = trained.cfg
    prec = Precision.resolve(cfg.train.precision if precision == "auto" else precision, dev)
    trained.model.use_ops(choose_ops(cfg, dev, prec).ops)
    return TrainedRun(run.path, cfg, trained.model, dev, prec, dict(epoch=trained.state.get("epoch"),
                                                                     val_acc=trained.state.get("val_acc")))


def check_finished(run: RunDir) -> None:
    """A UserError naming the run directory unless its fine-tuning stage ran all its epochs (`REQUIRES`)."""
    if not run.has("best.pt"):
        if run.has("pretrain.pt"):
            raise UserError("holds a pre-trained encoder but no fine-tuned classifier (checkpoints/best.pt): "
                            f"fine-tune it first (python -m stvit.train --stage finetune --out {run.path})", run.path)
        raise UserError(f"not a trained run: it needs {REQUIRES}", run.path)
    if not run.has("last.pt"):
        raise UserError(f"has checkpoints/best.pt but no checkpoints/last.pt to show that fine-tuning finished; "
                        f"a trained run holds {REQUIRES}", run.path)
    last = read_checkpoint(run.checkpoint("last.pt"))
    try:
        epochs = Config.from_dict(last["config"]).finetune.epochs
        stage, epoch = last["stage"], int(last["epoch"])
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"not an stvit checkpoint ({type(e).__name__}: {e})", run.checkpoint("last.pt")) from None
    if stage != FINETUNE.name or epoch < epochs:
        where = f"after epoch {epoch} of {epochs}" if stage == FINETUNE.name else "before it started"
        raise UserError(f"fine-tuning stopped {where}: the run did not finish (continue it with python -m "
                        f"stvit.train --resume {run.path})", run.path)


def embeddings(model, precision: Precision, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Volumes (B, T, H, W) -> (slice embeddings (B, T, D), volume embeddings (B, D)) fp32, for evaluation (call
    under torch.no_grad, model in eval mode)."""
    with precision.autocast(), precision.sdpa():
        slices, volume = model.embed(x)
    return slices.float(), volume.float()


class TrainedRun:
    """A run's fine-tuned classifier, ready to predict. `classes`: the class names (index = class); `path`: the
    run directory; `cfg`: its config; `model`: the module (eval mode) on `device`; `precision`: its policy."""

    def __init__(self, path: Path, cfg: Config, model: torch.nn.Module, device: torch.device, precision: Precision,
                 best: dict[str, Any]):
        self.path, self.cfg, self.model, self.device, self.precision = Path(path), cfg, model, device, precision
        self.best_epoch, self.val_accuracy = best.get("epoch"), best.get("val_acc")
        self._fns: dict[str, Any] = {}

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.cfg.data.class_names)

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(self.cfg.model.volume)

    def __repr__(self) -> str:
        return (f"TrainedRun({str(self.path)!r}, preset {self.cfg.preset}, classes {list(self.classes)}, best epoch "
                f"{self.best_epoch}, {self.device}, {self.precision.name})")

    # ---- input ----------------------------------------------------------------------------------------------------
    def prepare(self, X, what: str = "X") -> np.ndarray:
        """(N, *volume) float32, a new array: volumes as an array (N, 53, 63, 46), or a list of NIfTI images or
        paths in MNI space (`series.images_on_grid`), prepared as the run's data file was (NaN/Inf and the bound on
        |voxel| checked, z-scored when its config says `data.zscore`). DataError for anything unusable."""
        shape, d = self.volume_shape, self.cfg.data
        X = as_volumes(X, shape, what)
        check_values(X, what, None, d.nan_to_zero, d.max_abs)
        return zscore_volumes(X) if d.zscore else X

    def _split(self, X: np.ndarray) -> DeviceSplit:
        return DeviceSplit(X, np.zeros(len(X), np.int64), self.device, self.precision.storage_dtype)

    def _fn(self, name: str):
        if name not in self._fns:
            fn = steps.classifier_logits if name == "prediction" else embeddings
            self._fns[name] = steps.build(fn, self.model, self.precision, compile=False, name=name)
        return self._fns[name]

    def _cfg(self, batch_size: int | None) -> Config:
        if batch_size is None:
            return self.cfg
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        return dataclasses.replace(self.cfg, train=dataclasses.replace(self.cfg.train, eval_batch_size=batch_size))

    # ---- output ---------------------------------------------------------------------------------------------------
    def predict_proba(self, X, *, batch_size: int | None = None, prepared: bool = False) -> np.ndarray:
        """(N, C) float32 class probabilities. `batch_size`: volumes per forward (default: the run's
        `train.eval_batch_size`, which its evaluation used). `prepared`: X is already `prepare`d."""
        X = X if prepared else self.prepare(X)
        probs, _, _, _ = predict_split(self._fn("prediction"), self.model, self._split(X), self._cfg(batch_size))
        return probs

    def predict(self, X, **kw) -> np.ndarray:
        """(N,) int64: the index of the most probable class (`classes[i]` is its name)."""
        return self.predict_proba(X, **kw).argmax(1)

    @torch.no_grad()
    def embed(self, X, level: str = "volume", *, batch_size: int | None = None, prepared: bool = False):
        """Embeddings, fp32: level "volume" (N, D), the temporal encoder's output mean-pooled over the slices (the
        head's input); "slice" (N, T, D), the spatial encoder's CLS of each slice; "both": the pair."""
        if level not in (*LEVELS, "both"):
            raise UserError(f"unknown level '{level}' (choose from volume, slice)")
        X = X if prepared else self.prepare(X)
        self.model.eval()
        fn, bs = self._fn("embedding"), self._cfg(batch_size).train.eval_batch_size
        slices, volume = [], []
        for x, _, _ in self._split(X).eval_batches(bs):
            s, v = fn(x)
            volume.append(v.cpu())
            if level != "volume":
                slices.append(s.cpu())
        vol = torch.cat(volume).numpy()
        if level == "volume":
            return vol
        sl = torch.cat(slices).numpy()
        return sl if level == "slice" else (sl, vol)

    # ---- pickling (a fitted estimator is pickled by joblib and by users) ------------------------------------------
    def __getstate__(self) -> dict:
        return {"path": str(self.path), "config": self.cfg.to_dict(), "weights": {k: v.cpu() for k, v in
                self.model.state_dict().items()}, "device": str(self.device), "precision": self.precision.name,
                "best": {"epoch": self.best_epoch, "val_acc": self.val_accuracy}}

    def __setstate__(self, state: dict) -> None:
        """The module rebuilt from its own weights (the run directory may be gone), on the same device if there is
        one here, else the CPU."""
        cfg = Config.from_dict(state["config"])
        device = torch.device(state["device"])
        if device.type == "cuda" and not torch.cuda.is_available():
            device = torch.device("cpu")
        prec = Precision.resolve(state["precision"] if device.type == "cuda" else "fp32", device)
        built = dataclasses.replace(cfg.model, kernels="eager")
        model = FINETUNE.build_model(built)
        model.load_state_dict(state["weights"])
        model = model.to(device).eval().use_ops(choose_ops(cfg, device, prec).ops)
        self.__init__(Path(state["path"]), cfg, model, device, prec, state["best"])


def as_volumes(X, shape: tuple[int, ...], what: str = "X") -> np.ndarray:
    """(N, *shape) float32, C-order, a copy: from an array of volumes, or from a list of NIfTI images or paths
    (`series.images_on_grid`, for a model on the MNI grid). DataError naming `what` otherwise."""
    if isinstance(X, (list, tuple)) and len(X) and not isinstance(X[0], (list, tuple, np.ndarray, float, int)):
        if tuple(shape) != VOLUME_SHAPE:
            raise DataError(f"{what}: NIfTI images go on the MNI grid ({fmt_shape(VOLUME_SHAPE)}), but this model "
                            f"takes volumes of {fmt_shape(tuple(shape))}")
        return series.images_on_grid(X)
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{what} is not numeric (dtype {X.dtype}): volumes as an array (N, "
                        f"{fmt_shape(tuple(shape))}) or a list of NIfTI images")
    if X.shape == tuple(shape):
        raise DataError(f"{what} is one volume ({fmt_shape(X.shape)}); pass an array of volumes, X[None]")
    if X.ndim != 1 + len(shape) or X.shape[1:] != tuple(shape):
        raise DataError(f"{what} is {fmt_shape(X.shape)}, expected N volumes of {fmt_shape(tuple(shape))} (an array "
                        f"(N, {', '.join(map(str, shape))}) or a list of NIfTI images)")
    if len(X) == 0:
        raise DataError(f"{what} holds no volume")
    return np.array(X, dtype=np.float32, order="C", copy=True)


# --- the inputs of the predict and embed commands ----------------------------------------------------------------

@dataclass
class Inputs:
    """The volumes of an input file, prepared (`parts`: one array per split of a data file, one for a series, so
    that no copy joins them), and what is known of each volume, in the order of the parts: `split` (train/test of a
    data file, "" for a series), `volume` (its position in that split or series), `time` (s: index x TR of a series,
    the onset a packed file records; NaN when unknown), `subject` ("" when unknown), `label` (-1 when unknown)."""

    parts: list[np.ndarray]
    split: np.ndarray
    volume: np.ndarray
    time: np.ndarray
    subject: np.ndarray
    label: np.ndarray
    source: str
    how: str  # how it was read and prepared, for the command's summary line

    def __len__(self) -> int:
        return len(self.volume)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def read_inputs(path, run: TrainedRun, *, clean: bool = True, tr: float | None = None) -> Inputs:
    """Every volume of `path` for `run`: a data file stvit reads (both splits, prepared as `load_dataset` prepares a
    run's data with the run's config), or a NIfTI series in MNI space (`series.read_series`: resampled to the grid,
    cleaned unless `clean` is False, z-scored). DataError / UserError naming the file otherwise."""
    path = Path(path)
    if tr is not None and not (np.isfinite(tr) and tr > 0):
        raise UserError(f"--tr must be a repetition time in seconds > 0, got {tr:g}")
    if not path.exists():
        raise DataError("no such file or folder", path)
    if is_nifti(path):
        if run.volume_shape != VOLUME_SHAPE:
            raise UserError(f"a NIfTI series goes on the MNI grid ({fmt_shape(VOLUME_SHAPE)}), but the model of "
                            f"{run.path} takes volumes of {fmt_shape(run.volume_shape)}", path)
        s = series.read_series(path, clean=clean, tr=tr)
        X = s.volumes
        check_values(X, "the series", path, False, run.cfg.data.max_abs)
        if run.cfg.data.zscore:
            zscore_volumes(X)
        n = len(X)
        how = (f"NIfTI series, {n} frames{', TR %g s' % s.tr if s.tr else ', no TR in the header'}, "
               f"{'resampled to' if s.resampled else 'on'} the model grid, "
               f"{'cleaned (detrend, z-score over time) and ' if s.cleaned else ''}z-scored per volume")
        return Inputs([X], np.full(n, "", dtype="<U5"), np.arange(n), s.times.astype(np.float64), np.full(n, ""),
                      np.full(n, -1, np.int64), str(path), how)
    if tr is not None or not clean:
        raise UserError("--tr and --no-clean are for a NIfTI series; a data file is read as the run reads its data",
                        path)
    from stvit.data import load_dataset

    d = run.cfg.data
    data = load_dataset(path, volume_shape=run.volume_shape, num_classes=run.cfg.model.num_classes,
                        nan_to_zero=d.nan_to_zero, zscore=d.zscore, max_abs=d.max_abs, class_names=d.class_names)
    parts = []
    for name in ("train", "test"):
        X, y, ids = data.split(name)
        n = len(X)
        onset = (data.meta or {}).get(name, {}).get("onset")
        time = np.asarray(onset, np.float64) if onset is not None else np.full(n, np.nan)
        parts.append((X, np.full(n, name), np.arange(n), time, ids if ids is not None else np.full(n, ""), y))
    cols = [np.concatenate([p[i] for p in parts]) for i in range(1, 6)]
    counts = ", ".join(f"{len(p[0])} {p[1][0]}" for p in parts)
    return Inputs([p[0] for p in parts], *cols, source=str(path), how=f"data file, {counts} volumes")


# --- the files of the predict and embed commands -----------------------------------------------------------------

def check_out(path) -> Path:
    """The output file of a command: new (an existing file is never overwritten) and writable; UserError otherwise."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise UserError("exists; choose a new file name (outputs are never overwritten)", path)
    cli.check_writable(path, "file")
    return path


def predictions_table(inputs: Inputs, probs: np.ndarray, classes) -> str:
    """The CSV of `python -m stvit.predict`: one row per volume, `split,volume,time,subject,label,predicted` and
    `prob_<class>` per class (9 significant digits: a float32 probability reads back exactly)."""
    import csv
    import io

    f = io.StringIO()
    w = csv.writer(f, lineterminator="\n")
    w.writerow(["split", "volume", "time", "subject", "label", "predicted", *(f"prob_{c}" for c in classes)])
    for i in range(len(inputs)):
        t, label = inputs.time[i], int(inputs.label[i])
        w.writerow([inputs.split[i], int(inputs.volume[i]), "" if np.isnan(t) else f"{t:g}", inputs.subject[i],
                    classes[label] if label >= 0 else "", classes[int(probs[i].argmax())],
                    *(f"{float(p):.9g}" for p in probs[i])])
    return f.getvalue()


def write_output(path: Path, write) -> None:
    """`write(fileobj)` into `path` atomically; an OSError is a WriteError naming it."""
    from stvit.training.checkpoint import atomic_write_bytes
    from stvit.training.rundir import writing

    with writing(path):
        atomic_write_bytes(path, write)


def add_input_flags(ap, argv=None) -> None:
    """The flags of `python -m stvit.predict` and `python -m stvit.embed`: RUN_DIR, INPUT, how to read INPUT and
    where to compute."""
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory whose fine-tuning finished")
    ap.add_argument("input", metavar="INPUT", help="a data file stvit reads, or a NIfTI series in MNI space")
    ap.add_argument("--no-clean", dest="clean", action="store_false",
                    help="a NIfTI series already cleaned and masked: only resampled and z-scored per volume over its "
                         "non-zero voxels; default: cleaned like an imported run (detrend, each voxel z-scored)")
    ap.add_argument("--tr", type=float, metavar="SECONDS",
                    help="repetition time of a NIfTI series, for the time column; default: the header's")
    ap.add_argument("--batch-size", type=int, metavar="N", help="volumes per forward; default: the run's eval batch size")
    cli.add_run_flags(ap, argv, only=("--device", "--precision"), help_for={
        "--device": "where to compute: auto (a CUDA GPU if there is one), cpu or cuda; default: auto",
        "--precision": "auto (the run's setting on this device), fp32, bf16 or fp16; default: auto"})


def embedding_rows(inputs: Inputs, run: TrainedRun) -> dict[str, np.ndarray]:
    """What `python -m stvit.embed` stores beside the embeddings: per volume split, index, time, subject, label
    (-1 when unknown); the class names, the run directory and the input."""
    return {"split": inputs.split.astype(str), "index": inputs.volume.astype(np.int64), "time": inputs.time,
            "subject": inputs.subject.astype(str), "label": inputs.label.astype(np.int64),
            "class_names": np.array(run.classes, dtype=str), "run": np.array(str(run.path)),
            "source": np.array(inputs.source)}
