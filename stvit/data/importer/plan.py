"""Everything about a study that can be checked before a volume is read: each run's header (4D, MNI, field of
view), its repetition time (sidecar, table or header, and they agree), its events, the labels of its volumes, its
confounds; the conditions and their classes. A mistake anywhere stops the import here, before anything is
written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from stvit.data.dataset import DataError
from stvit.data.importer.clean import Cleaning, load_run_confounds
from stvit.data.importer.events import Events, read_events
from stvit.data.importer.geometry import check_mni, header_tr, open_series
from stvit.data.importer.labels import RunLabels, check_events_in_run, label_run
from stvit.data.importer.sources import RunSpec

TR_TOLERANCE = 1e-3  # s: a sidecar's 0.72 and a header's float32 0.72 agree
HCP_DEFAULTS = {"EMOTION": (("fear", "neut"), ("face", "shape"))}  # HCP task -> (EV names, class names)


@dataclass
class RunPlan:
    """One checked run: where its repetition time comes from, its labels (censored frames included as
    reason 'censored'), its confounds, and its files (for the provenance and the work files' keys)."""

    spec: RunSpec
    tr: float
    start: float  # s: acquisition time of frame 0 (the sidecar's StartTime, else 0)
    tr_source: str
    n_frames: int
    shape: tuple[int, ...]
    zooms: tuple[float, ...]
    affine: list
    labels: RunLabels
    confounds: np.ndarray | None = None  # (T, C) float64
    kept: np.ndarray | None = None  # (T',) int64 frames left after censoring
    files: list[tuple[str, int]] = field(default_factory=list)  # (path, bytes)


def read_sidecar(path: Path) -> dict:
    """A JSON sidecar as a dict; DataError for a file that is not JSON."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read this JSON sidecar ({err})", path) from None
    if not isinstance(data, dict):
        raise DataError("this JSON sidecar is not an object of keys", path)
    return data


def repetition_time(spec: RunSpec, img) -> tuple[float, float, str]:
    """(TR s, start time s, where the TR comes from): the first sidecar that gives RepetitionTime, else the
    table's `tr`, else the NIfTI header; a header that says otherwise is refused."""
    header = header_tr(img)
    for path in spec.sidecars:
        side = read_sidecar(path)
        if "RepetitionTime" in side:
            tr, where = side["RepetitionTime"], f"sidecar {path.name}"
            start = side.get("StartTime", 0.0)
            if not isinstance(tr, (int, float)) or isinstance(tr, bool) or not tr > 0:
                raise DataError(f"RepetitionTime {tr!r} is not a positive number of seconds", path)
            if not isinstance(start, (int, float)) or isinstance(start, bool):
                raise DataError(f"StartTime {start!r} is not a number of seconds", path)
            break
    else:
        tr, start, where = spec.tr, 0.0, "the table"
        if tr is None:
            tr, where = header, "the NIfTI header"
    if tr is None:
        looked = ", ".join(p.name for p in spec.sidecars) or "no JSON sidecar"
        raise DataError(f"no RepetitionTime: not in the sidecars ({looked}) and the NIfTI header's time step is "
                        "0", spec.bold)
    if header is not None and abs(header - tr) > TR_TOLERANCE:
        raise DataError(f"RepetitionTime {tr:g} s ({where}) disagrees with the NIfTI header's {header:g} s", spec.bold)
    if spec.sidecars == () and spec.tr is None:
        where = "the NIfTI header (no JSON sidecar)"
    return float(tr), float(start), where


def default_conditions(kind: str, task: str, specs: Sequence[RunSpec]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(conditions, class names) when none are given: HCP's EMOTION task -> fear, neut as face, shape; any other
    study -> DataError listing the conditions its events hold."""
    if kind == "hcp" and task in HCP_DEFAULTS:
        return HCP_DEFAULTS[task]
    found: dict[str, None] = {}
    for spec in specs:
        if spec.events.is_dir():
            found.update({p.stem: None for p in sorted(spec.events.glob("*.txt"))})
        else:
            found.update(dict.fromkeys(read_events(spec.events).conditions()))
    raise DataError(f"choose the conditions to import with --conditions (the events have: {', '.join(found)})")


def check_conditions(conditions: Sequence[str], events: dict[str, Events], specs: Sequence[RunSpec]) -> None:
    """Every chosen condition has events in some run."""
    seen = {c for e in events.values() for c in e.conditions()}
    for c in conditions:
        if c not in seen:
            where = specs[0].events
            raise DataError(f"condition '{c}' is in no events file (they have: {', '.join(sorted(seen)) or 'none'})",
                            where if not where.is_dir() else where / f"{c}.txt")


def plan_run(spec: RunSpec, conditions: Sequence[str], cleaning: Cleaning, hrf_shift: float, trim: float) -> RunPlan:
    """Check one run and label its volumes (headers, sidecars, events and confounds tables only)."""
    img = open_series(spec.bold)
    check_mni(img, spec.bold)
    tr, start, where = repetition_time(spec, img)
    n = int(img.shape[3])
    events = read_events(spec.events, list(conditions) if spec.events.is_dir() else None)
    check_events_in_run(events, n, tr, start, spec.events)
    labels = label_run(events, conditions, n, tr, start=start, hrf_shift=hrf_shift, trim=trim)
    confounds = kept = None
    files = [spec.bold, *(sorted(spec.events.glob("*.txt")) if spec.events.is_dir() else [spec.events]),
             *spec.sidecars]
    if cleaning.confounds:
        if not spec.fmriprep:
            raise DataError("confound regression reads fMRIPrep's confounds table beside an fMRIPrep-named series "
                            "(*_desc-preproc_bold.nii.gz); this run has none", spec.bold)
        confounds, kept = load_run_confounds(spec.bold, cleaning.confounds, n)
        censored = np.setdiff1d(np.arange(n), kept)
        reason = labels.reason.astype(object)
        reason[censored[labels.label[censored] >= 0]] = "censored"
        label = labels.label.copy()
        label[censored] = -1
        labels = RunLabels(label, reason.astype(str), labels.time)
        files += sorted(spec.bold.parent.glob(spec.bold.name.split("_space-")[0] + "*_desc-confounds_*"))
    return RunPlan(spec, tr, start, where, n, tuple(int(s) for s in img.shape),
                   tuple(float(z) for z in img.header.get_zooms()), np.round(img.affine, 6).tolist(), labels,
                   confounds, kept, [(str(p), p.stat().st_size) for p in files])


def read_all_events(specs: Sequence[RunSpec], conditions: Sequence[str]) -> dict[str, Events]:
    """The events of every run (by run name), for checking the conditions before labelling."""
    return {s.name: read_events(s.events, list(conditions) if s.events.is_dir() else None) for s in specs}


def check_study(plans: Sequence[RunPlan], conditions: Sequence[str], source: Path) -> None:
    """One repetition time for the study; every condition labels some volume."""
    trs = {p.tr for p in plans}
    if max(trs) - min(trs) > TR_TOLERANCE:
        a = next(p for p in plans if p.tr == min(trs))
        b = next(p for p in plans if p.tr == max(trs))
        raise DataError(f"the repetition time differs between runs: {a.tr:g} s in {a.spec.name}, {b.tr:g} s in "
                        f"{b.spec.name}; import runs of one TR at a time (--subjects)", b.spec.bold)
    counts = np.zeros(len(conditions), np.int64)
    for p in plans:
        counts += np.bincount(p.labels.label[p.labels.label >= 0], minlength=len(conditions))
    for c, k in zip(conditions, counts):
        if k == 0:
            raise DataError(f"condition '{c}' labels no volume: its events are shorter than one TR, or every volume "
                            "they cover is a transition, an overlap or censored (see --hrf-shift, --trim)", source)
