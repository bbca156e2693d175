"""Cleaning one run, without its labels (so nothing of a test subject's labels, nor of another run, leaks into
a volume): nilearn's `signal.clean` over the run's time series, then the per-volume z-score the course file has.

Per run, over all its frames (rest included), in this order (nilearn's):
  detrend            remove each voxel's linear trend (scanner drift)                          default on
  confounds          regress out the columns nilearn's fMRIPrep loader (`load_confounds`) picks for the chosen
                     strategies: motion (6 parameters, derivatives and squares), wm_csf (white matter and CSF
                     signals), global_signal, high_pass (fMRIPrep's cosine regressors), compcor; scrub censors
                     high-motion frames (framewise displacement > 0.5 mm or std DVARS > 1.5, nilearn's defaults);
                     fMRIPrep's non-steady-state frames are always censored when confounds are read    default none
  high-pass          Butterworth filter above --high-pass Hz                                   default off
  standardize        each voxel z-scored over time ("zscore_sample"): the mean brain image, which is nearly all
                     of a raw volume's signal, goes; what stays is each voxel's change        default on
Then each kept volume is z-scored over the run's in-brain voxels (mean 0, std 1), and everything outside them is
exactly 0: the layout of the course file, so a model trained on it reads imported data the same way.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from stvit.data.dataset import DataError

STRATEGIES = ("motion", "wm_csf", "global_signal", "scrub", "high_pass", "compcor")


@dataclass(frozen=True)
class Cleaning:
    """How each run is cleaned (see the module's docstring)."""

    detrend: bool = True
    standardize: bool = True
    high_pass: float | None = None  # Hz
    confounds: tuple[str, ...] = ()  # strategies of nilearn's load_confounds

    def describe(self) -> str:
        """One line for the summary."""
        parts = ["detrend" if self.detrend else "no detrend",
                 f"confounds {'+'.join(self.confounds)}" if self.confounds else "no confound regression",
                 f"high-pass {self.high_pass:g} Hz" if self.high_pass else "no high-pass",
                 "per-voxel z-score over time" if self.standardize else "no per-voxel z-score"]
        return ", ".join(parts) + "; then per-volume z-score in the brain"


def load_run_confounds(bold: Path, strategies: Sequence[str], n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(confounds (T, C) float64, kept frames (T',) int64) of an fMRIPrep run, from its confounds table beside it
    (nilearn's `load_confounds`, its default settings for each strategy)."""
    from nilearn.interfaces.fmriprep import load_confounds

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nilearn's notes on non_steady_state and on scrubbing's defaults
            table, kept = load_confounds(str(bold), strategy=tuple(strategies))
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise DataError(f"confounds ({', '.join(strategies)}): {' '.join(str(err).split())}", bold) from None
    values = np.asarray(table, np.float64)
    if len(values) != n_frames:
        raise DataError(f"the confounds table has {len(values)} rows for {n_frames} frames", bold)
    kept = np.arange(n_frames) if kept is None else np.asarray(kept, np.int64)
    return values, kept


def clean_run(series: np.ndarray, inside: np.ndarray, tr: float | None, cleaning: Cleaning,
              confounds: np.ndarray | None = None, kept: np.ndarray | None = None) -> np.ndarray:
    """(T', V) float32: the in-brain columns (`inside`, (V,) bool) of a run's series (T, V) cleaned over time,
    0 elsewhere; T' = the frames `kept` (all when None; censored frames leave, as nilearn's sample_mask does).
    `tr` (s) may be None without a high-pass filter."""
    from nilearn.signal import clean

    n = len(series)
    kept = np.arange(n) if kept is None else kept
    filt = "butterworth" if cleaning.high_pass else False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # nilearn's note that standardize needs more than 1 frame
        values = clean(series[:, inside].astype(np.float64), detrend=cleaning.detrend,
                       standardize="zscore_sample" if cleaning.standardize else False, confounds=confounds,
                       sample_mask=None if len(kept) == n else kept, filter=filt, high_pass=cleaning.high_pass,
                       t_r=tr, standardize_confounds=True)
    out = np.zeros((len(kept), series.shape[1]), np.float32)
    out[:, inside] = values
    return out


def zscore_rows(rows: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Each row (a volume, (K, V)) z-scored over the `inside` voxels in place (float64 statistics; a constant row
    only centred); the other voxels set to 0."""
    values = rows[:, inside].astype(np.float64)
    mean = values.mean(1, keepdims=True)
    std = values.std(1, keepdims=True)
    std[std == 0] = 1.0
    rows[:, inside] = (values - mean) / std
    rows[:, ~inside] = 0
    return rows
