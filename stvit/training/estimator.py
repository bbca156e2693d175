"""`stvit.STViTClassifier`: a scikit-learn classifier of fMRI volumes that trains through the run API.

    from sklearn.model_selection import GroupKFold, cross_val_score
    clf = stvit.STViTClassifier(preset="demo", finetune_epochs=3)
    scores = cross_val_score(clf, X, y, groups=subjects, cv=GroupKFold(5))    # X (N, 53, 63, 46)

`fit(X, y, groups)` is one run of `stvit.training.api` (pre-training, then fine-tuning with the best epoch chosen on
a validation split carved from X by `groups`, whole subjects at a time): the same run `python -m stvit.train` makes
of a data file whose training split is (X, y, groups), with the same numbers for the same seed. It has no test
split (the caller holds its own) and writes its run directory under `run_dir`, or into a temporary one removed once
the fitted model is in memory. The fitted classifier is that run's `stvit.load` (`trained_`).

Parameters follow scikit-learn's rules (each one an attribute, nothing checked or derived in `__init__`): any config
value goes in `config`, as dotted keys ({"finetune.lr": 1e-3}) or nested sections ({"finetune": {"lr": 1e-3}});
the common ones are parameters of their own, None meaning the preset's (or config's) value. Labels may be anything
`np.unique` sorts (strings, ints): `classes_` holds them, the run's class names are their strings. Bad input or
parameters raise `InputError`, both a `ValueError` (as scikit-learn expects) and a one-line `stvit` error.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d

from stvit.errors import UserError

# parameter -> the config key it sets
KEYS = {"seed": "train.seed", "device": "train.device", "precision": "train.precision",
        "pretrain_epochs": "pretrain.epochs", "finetune_epochs": "finetune.epochs", "batch_size": "train.batch_size"}
FROM_LABELS = ("model.num_classes", "data.class_names")  # set by fit from y
SOURCE = "the estimator's arrays"


class InputError(UserError, ValueError):
    """Bad input or parameters of the estimator: a ValueError for scikit-learn, a one-line UserError for stvit."""


@contextlib.contextmanager
def value_errors():
    """A UserError raised inside becomes an InputError with the same message (NonFiniteLoss, WriteError pass)."""
    try:
        yield
    except InputError:
        raise
    except UserError as e:
        raise InputError(str(e)) from None


class STViTClassifier(ClassifierMixin, BaseEstimator):
    """Spatio-temporal ViT classifier of volumes (N, 53, 63, 46), or of a list of NIfTI images in MNI space.

    preset: "demo", "paper" or "notebook". config: more config values (dotted keys or nested sections).
    run_dir: a folder; each fit writes its run into a new sub-folder (fit-001, fit-002, ...: `run_dir_`). None: a
    temporary run directory, removed after fit. device, precision, seed, pretrain_epochs, finetune_epochs,
    batch_size: the config's train.device, train.precision, train.seed, pretrain.epochs, finetune.epochs and
    train.batch_size (None: the preset's). verbose: print the run-directory line and each epoch's record.
    """

    def __init__(self, preset: str = "demo", config: dict | None = None, *, run_dir: str | os.PathLike | None = None,
                 device: str | None = None, precision: str | None = None, seed: int | None = None,
                 pretrain_epochs: int | None = None, finetune_epochs: int | None = None,
                 batch_size: int | None = None, verbose: bool = False):
        self.preset = preset
        self.config = config
        self.run_dir = run_dir
        self.device = device
        self.precision = precision
        self.seed = seed
        self.pretrain_epochs = pretrain_epochs
        self.finetune_epochs = finetune_epochs
        self.batch_size = batch_size
        self.verbose = verbose

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # volumes (N, 53, 63, 46), not a table of features
        tags.non_deterministic = False  # the same seed and data give the same model (bit for bit on a CPU)
        return tags

    # ---- the request --------------------------------------------------------------------------------------------
    def config_values(self) -> tuple[dict[str, Any], dict[str, str]]:
        """(values {"section.key": value}, sources {key: where it was said}) from `config` and the parameters."""
        from stvit.training.api import flatten

        if self.preset not in ("demo", "paper", "notebook"):
            raise InputError(f"preset: unknown preset {self.preset!r} (choose from demo, paper, notebook)")
        if self.config is not None and not isinstance(self.config, dict):
            raise InputError(f"config must be a dict of config values, got {type(self.config).__name__}")
        values, sources = {}, {}
        for key, v in (self.config or {}).items():
            if not isinstance(key, str) or "." not in key and not isinstance(v, dict):
                raise InputError(f"config: {key!r} is not a config key (dotted, 'finetune.lr', or a section's dict)")
            for k, value in (flatten(v, f"{key}.") if isinstance(v, dict) else {key: v}).items():
                values[k], sources[k] = value, f"config[{k!r}]"
        for name, key in KEYS.items():
            v = getattr(self, name)
            if v is None:
                continue
            if key in values:
                raise InputError(f"{name}={v!r} and config[{key!r}] both set {key}; keep one")
            values[key], sources[key] = v, name
        for key in FROM_LABELS:
            if key in values:
                raise InputError(f"config[{key!r}]: the classes come from the labels y, not from the config")
        return values, sources

    def _request(self, out: Path, classes: np.ndarray):
        from stvit.training import api

        values, sources = self.config_values()
        values.update({"model.num_classes": len(classes), "data.class_names": [str(c) for c in classes]})
        sources.update({k: "the labels y" for k in FROM_LABELS})
        return api.Request(values=values, sources=sources, preset=self.preset, out=out, evaluate=False,
                           quiet=not self.verbose, echo=bool(self.verbose))

    # ---- fit --------------------------------------------------------------------------------------------------------
    def fit(self, X, y, groups=None):
        """One run of the run API on (X, y): pre-training, fine-tuning, the best epoch by validation accuracy on
        whole subjects of `groups` (without groups: a stratified random validation split, with a warning).
        Returns self."""
        from stvit.data import HCPData
        from stvit.training import api, trained
        from stvit.training.rundir import read_log

        with value_errors():
            y = column_or_1d(y, warn=True)
            if len(y) == 0:
                raise InputError("y holds no labels: fit needs volumes X and one label for each")
            check_classification_targets(y)
            classes, y_enc = np.unique(y, return_inverse=True)
            if len(classes) < 2:
                raise InputError(f"y holds a single class ({classes[0]!r}): a classifier needs two or more")
            # the config as the run will have it, for the shape and preparation of X (checked again by plan)
            cfg = api.resolve_config(self._request(Path("."), classes))
            X = trained.as_volumes(X, tuple(cfg.model.volume), "X")
            if len(y) != len(X):
                raise InputError(f"X has {len(X)} volumes but y has {len(y)} labels")
            ids = None
            if groups is not None:
                ids = np.asarray(groups).reshape(-1).astype(str)
                if len(ids) != len(X):
                    raise InputError(f"X has {len(X)} volumes but groups has {len(ids)} entries")
            from stvit.data.dataset import check_values, zscore_volumes

            check_values(X, "X", None, cfg.data.nan_to_zero, cfg.data.max_abs)
            if cfg.data.zscore:
                zscore_volumes(X)
            out, temporary = self._new_run_dir()
            try:
                data = HCPData(X, y_enc.astype(np.int64), ids, None, None, None, source=SOURCE)
                plan = api.plan(self._request(out, classes), data)
                api.run(plan)
                model = trained.load(out, device=plan.cfg.train.device, precision="auto")
                history = read_log(out / "log.jsonl")
            except BaseException:
                if not temporary and out.is_dir() and not any(out.iterdir()):
                    out.rmdir()  # refused before its first write: leave no empty fit folder
                raise
            finally:
                if temporary:
                    shutil.rmtree(out.parent, ignore_errors=True)
        self.classes_ = classes
        self.trained_ = model
        self.run_dir_ = None if temporary else out
        self.history_ = history
        self.best_epoch_ = model.best_epoch
        self.val_accuracy_ = model.val_accuracy
        return self

    def _new_run_dir(self) -> tuple[Path, bool]:
        """(a new, empty run directory for this fit, whether it is temporary)."""
        if self.run_dir is None:
            return Path(tempfile.mkdtemp(prefix="stvit-fit-")) / "run", True
        root = Path(self.run_dir)
        from stvit.cli import check_writable

        check_writable(root, "directory")
        root.mkdir(parents=True, exist_ok=True)
        for k in range(1, 100000):
            try:
                (root / f"fit-{k:03d}").mkdir()  # atomic: parallel fits (n_jobs) each get their own
            except FileExistsError:
                continue
            return root / f"fit-{k:03d}", False
        raise InputError(f"run_dir: no free fit-NNN folder left in {root}")

    # ---- predictions ------------------------------------------------------------------------------------------------
    def predict_proba(self, X) -> np.ndarray:
        """(N, n_classes) float32: class probabilities, columns in the order of `classes_`."""
        check_is_fitted(self)
        with value_errors():
            return self.trained_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """(N,): the most probable label of each volume (a value of `classes_`)."""
        probs = self.predict_proba(X)
        return self.classes_[probs.argmax(1)]

    def decision_function(self, X) -> np.ndarray:
        """Log-odds: (N,) log p(classes_[1]) - log p(classes_[0]) for two classes, else (N, n_classes) log p."""
        logp = np.log(np.maximum(self.predict_proba(X).astype(np.float64), np.finfo(np.float32).tiny))
        return logp[:, 1] - logp[:, 0] if len(self.classes_) == 2 else logp

    def embed(self, X, level: str = "volume") -> np.ndarray:
        """The fitted model's embeddings (`stvit.load(...).embed`): (N, D) per volume, or (N, 53, D) per slice."""
        check_is_fitted(self)
        with value_errors():
            return self.trained_.embed(X, level)
