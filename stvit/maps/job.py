"""Explaining a run: which checkpoint, which volumes, which methods, where the maps go (`MapsPlan`, every check
before anything is written), then the maps computed and written into a new folder (`explain_run`): one NIfTI per
map, a stat map in three planes and a glass brain per map, peaks.csv, and maps.json (what was computed, on which
volumes, with which checkpoint, the convergence deltas, the versions)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stvit import __version__, cli
from stvit.data import HCPData, grid_affine, load_split
from stvit.data.batches import DeviceSplit
from stvit.errors import UserError
from stvit.maps.attribution import METHODS, Explained, explain, incomplete, pick_volumes
from stvit.maps.render import render, support
from stvit.model.precision import Precision
from stvit.training.checkpoint import atomic_write_bytes
from stvit.training.rundir import RunDir, TrainedModel

INSTALL = "pip install 'stvit[maps]'"


def require_packages(methods) -> None:
    """The optional packages the maps need, or a UserError saying what to install."""
    needed = ["nibabel", "nilearn"] + (["captum"] if "ig" in methods else [])
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"brain maps need {', '.join(missing)}: {INSTALL}")


def check_out(out: Path) -> None:
    """An output folder that is new or empty (nothing already written is replaced)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("exists and is not an empty folder; choose another --out", out)


def read_affine(path: str, shape: tuple[int, ...]) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(path)
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except Exception as e:  # noqa: BLE001 - anything nibabel cannot read
        raise UserError(f"not a NIfTI image nibabel can read ({type(e).__name__})", path) from None
    if tuple(img.shape[:3]) != tuple(shape):
        raise UserError(f"the image grid is {'x'.join(map(str, img.shape[:3]))}, the model's volumes are "
                        f"{'x'.join(map(str, shape))}", path)
    return np.asarray(img.affine, dtype=np.float64)


@dataclass
class MapsPlan:
    """Everything `explain_run` will use, read and checked before anything is written."""

    run: RunDir
    trained: TrainedModel  # the classifier of the checkpoint, on the CPU
    checkpoint: str
    data: HCPData
    split: str
    positions: np.ndarray | None  # the validation split's positions in the file's training split (None: test)
    index: np.ndarray  # positions in the split of the explained volumes
    methods: tuple[str, ...]
    steps: int
    batch_size: int
    out: Path
    affine: np.ndarray
    affine_source: str
    device: torch.device

    @property
    def cfg(self):
        return self.trained.cfg


def plan_maps(run_dir: Path | str, *, checkpoint: str = "best", split: str = "test", n: int = 64,
              method: str = "all", steps: int = 32, batch_size: int | None = None, out: Path | str | None = None,
              affine_from: str | None = None, device: str | None = None, data: HCPData | None = None) -> MapsPlan:
    """Every check of the options, the run and its data (`data`: the run's data when the caller has it)."""
    for flag, v in (("--n", n), ("--steps", steps), ("--batch-size", batch_size)):
        if v is not None and v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    methods = METHODS if method == "all" else (method,)
    require_packages(methods)
    run = RunDir(run_dir, main=True, echo=False)
    if not run.path.is_dir() or not (run.path / "config.json").is_file():
        raise UserError("not a run directory (no config.json)", run.path)
    trained = run.model(f"{checkpoint}.pt") if run.has(f"{checkpoint}.pt") else None
    if trained is None:
        raise UserError("no such checkpoint", run.checkpoint(f"{checkpoint}.pt"))
    if trained.stage != "finetune":
        raise UserError(f"holds the {trained.stage} stage's model, not the classifier: explain needs a "
                        "fine-tuned checkpoint", trained.path)
    cfg = trained.cfg
    out = Path(out) if out else run.path / "maps"
    check_out(out)
    affine, source = (read_affine(affine_from, cfg.model.volume), str(affine_from)) if affine_from \
        else (grid_affine(), "SPM 3 mm grid [-78 -112 -50; 78 76 85], axis 0 left to right")
    if not affine_from and tuple(cfg.model.volume) != (53, 63, 46):
        run.note(f"note: volumes of {'x'.join(map(str, cfg.model.volume))} are not the 53x63x46 grid; the maps "
                 "take its affine anyway (use --affine-from for the right one)")
    dev = cli.resolve_device(device)
    positions = validation_positions(run) if split == "val" else None
    if data is None:
        from stvit.training.api import load_data  # the run's data, read as training read it

        data = load_data(cfg)
    n_split = len(data.y_test) if positions is None else len(positions)
    if positions is not None and len(positions) and positions.max() >= len(data.y_train):
        raise UserError(f"the training split holds {len(data.y_train)} volumes, fewer than split.json says",
                        data.source)
    return MapsPlan(run, trained, checkpoint, data, split, positions, pick_volumes(n_split, n), methods, steps,
                    batch_size or cfg.train.eval_batch_size, Path(out), affine, source, dev)


def validation_positions(run: RunDir) -> np.ndarray:
    """Positions in the file's training split of the run's validation volumes."""
    if not (run.path / "split.json").is_file():
        raise UserError("no split.json: cannot tell the validation volumes", run.path)
    return load_split(run.path)[1]


def load_volumes(p: MapsPlan, dtype: torch.dtype) -> DeviceSplit:
    """The explained volumes of the run's data on the device."""
    if p.positions is None:
        return DeviceSplit(p.data.X_test, p.data.y_test, p.device, dtype, index=p.index)
    return DeviceSplit(p.data.X_train, p.data.y_train, p.device, dtype, index=p.positions[p.index])


def explain_run(p: MapsPlan, quiet: bool = False) -> Path:
    """Compute the maps a plan asks for and write them into `p.out`; returns maps.json's path."""
    t0 = time.perf_counter()
    precision = Precision.resolve(p.cfg.train.precision, p.device)
    model = p.trained.model.to(p.device)
    volumes = load_volumes(p, precision.storage_dtype)
    explained = explain(model, precision, volumes, methods=p.methods, steps=p.steps, batch_size=p.batch_size,
                        quiet=quiet)
    inside = support(volumes.X)
    for name in list(explained.maps):
        if name.startswith("attention"):  # spread over patches, which reach past the brain
            explained.maps[name] = np.where(inside, explained.maps[name], 0).astype(np.float32)
    files = render(explained, inside, p.affine, quiet)
    record = describe(p, explained, precision, files, time.perf_counter() - t0)
    p.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(p.out / name, lambda f, data=data: f.write(data))
    RunDir(p.out, main=True).write_json("maps.json", record)
    return p.out / "maps.json"


def describe(p: MapsPlan, e: Explained, precision: Precision, files: dict[str, bytes], seconds: float) -> dict[str, Any]:
    """maps.json: what was computed, on which volumes, with which checkpoint; IG's completeness; versions."""
    import captum
    import nibabel
    import nilearn

    record: dict[str, Any] = {
        "run": str(p.run.path), "checkpoint": f"checkpoints/{p.checkpoint}.pt", "checkpoint_epoch": p.trained.state["epoch"],
        "split": p.split, "volumes": p.index.tolist(), "labels": e.labels.tolist(),
        "predictions": e.predictions.tolist(), "class_names": list(p.cfg.data.class_names),
        "methods": list(p.methods), "maps": sorted(e.maps), "files": sorted([*files, "maps.json"]),
        "device": str(p.device), "precision": precision.name, "batch_size": p.batch_size,
        "affine": p.affine.tolist(), "affine_source": p.affine_source, "seconds": round(seconds, 1),
        "versions": {"stvit": __version__, "torch": torch.__version__, "captum": captum.__version__,
                     "nibabel": nibabel.__version__, "nilearn": nilearn.__version__, "numpy": np.__version__},
    }
    if e.deltas is not None:
        record["integrated_gradients"] = {
            "baseline": "zeros", "steps": p.steps, "method": "gausslegendre", "targets": "each class",
            "abs_mean_target": "predicted class", "class_map_target": "class k, over volumes of class k",
            "convergence_delta": e.deltas.tolist(), "logit_gap": e.gaps.tolist(),  # (volume, class)
            "max_abs_delta": float(np.abs(e.deltas).max()), "mean_abs_delta": float(np.abs(e.deltas).mean()),
            "mean_abs_logit_gap": float(np.abs(e.gaps).mean()),
            "incomplete": int(incomplete(e.deltas, e.gaps).sum()),  # attributions off by > 5% of the logit gap
        }
    if "attention" in p.methods:
        record["attention"] = {"rollout": "spatial CLS -> patches (A + I, rows renormalized) x temporal rollout "
                                          "rows averaged (the head mean-pools the slices); spread over patch pixels"}
    return record


def summary_lines(p: MapsPlan, record: dict[str, Any]) -> tuple[str, str | None]:
    """What an explain says when it is done: the line, and a note when IG missed completeness (None otherwise)."""
    ig = record.get("integrated_gradients")
    done = f"; IG max |convergence delta| {ig['max_abs_delta']:.3g}" if ig else ""
    line = (f"explained {len(p.index)} {p.split} volumes with {'+'.join(p.methods)} in {record['seconds']:.0f} s"
            f"{done}; {p.out}")
    note = None
    if ig and ig["incomplete"]:
        from stvit.maps.attribution import COMPLETENESS

        note = (f"note: {ig['incomplete']} of {np.size(ig['convergence_delta'])} IG attributions miss completeness "
                f"by more than {COMPLETENESS:.0%} of the logit gap: raise --steps (now {p.steps})")
    return line, note


def check_explain(out: Path, stage: str) -> None:
    """What `python -m stvit.train --explain` needs, checked before the run starts: a stage that ends with the
    classifier, the optional packages, an output folder that is new or empty."""
    if stage == "pretrain":
        raise UserError("--explain maps the classifier after the final evaluation: not with --stage pretrain")
    require_packages(METHODS)
    check_out(out)
