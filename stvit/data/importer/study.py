"""Generated studies with a known ground truth, written the way users have them: a BIDS dataset with fMRIPrep
derivatives (`make_study`) or an HCP release (`make_hcp_release`). For the importer's tests, and for trying the
importer before a real study is at hand:

    from stvit.data.importer.study import make_study
    truth = make_study("demo-study", subjects=4, runs=2)
    # python -m stvit.data import demo-study --out demo.h5 --conditions face house

What is written (fMRIPrep 23 names and files):
    dataset_description.json, participants.tsv
    sub-XX/func/sub-XX_task-T_run-N_events.tsv       onset, duration, trial_type (+ response_time: n/a)
    sub-XX/func/sub-XX_task-T_run-N_bold.json        RepetitionTime, TaskName
    derivatives/fmriprep/dataset_description.json    GeneratedBy fMRIPrep
    derivatives/fmriprep/sub-XX/func/sub-XX_task-T_run-N_space-S_res-2_desc-preproc_bold.nii.gz   int16 + scl_slope
        ..._desc-preproc_bold.json (RepetitionTime), ..._desc-brain_mask.nii.gz,
        sub-XX_task-T_run-N_desc-confounds_timeseries.tsv (+ .json): global_signal, csf, white_matter, the 6 motion
        parameters with derivatives and squares, framewise_displacement, dvars, std_dvars, cosine00..,
        non_steady_state_outlierXX; first rows `n/a` where fMRIPrep writes them
Grids: MNI152NLin2009cAsym res-2 is fMRIPrep's 97 x 115 x 97 (x increasing along axis 0), MNI152NLin6Asym res-2 is
FSL's MNI152 2 mm, 91 x 109 x 91, stored radiologically (x decreasing); `x_step` flips the storage of either
without moving anything in the world.

The signal of voxel v at frame t (its MNI position p_v, inside nilearn's MNI152 brain mask; 0 outside):
    B(p_v) * (1 + effect% * gain_s * sum_c R_c(t) * pattern_c(p_v) + drift% * slope_v * (t - mid) / T
               + global% * g(t) + motion% * m(t) . w(p_v) + noise% * white noise)
B: a smooth 'mean brain' near 1000 (99.9% of a raw volume's signal); R_c: condition c's boxcar convolved with
SPM's HRF (nilearn `compute_regressor`), peak 1; pattern_c: Gaussian blobs in MNI mm (`PATTERNS`, moved a few mm
per subject); m(t): 6 motion parameters (random walks, written as the confounds). The ground truth (`StudyTruth`)
gives each frame's true condition (R_c above half its peak) and recomputes any run's float series exactly.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

# (x, y, z) mm, sigma mm, weight. Class 0 lies in the LEFT hemisphere only (x < 0): an import that flips left
# and right shows it on the right.
PATTERNS = ([((-42.0, -56.0, -18.0), 8.0, 1.0)],
            [((30.0, -44.0, -10.0), 8.0, 1.0), ((-30.0, -44.0, -10.0), 8.0, 0.6)])
GRIDS = {  # space -> (shape, voxel -> mm affine) at res-2
    "MNI152NLin2009cAsym": ((97, 115, 97), [[2, 0, 0, -96], [0, 2, 0, -132], [0, 0, 2, -78], [0, 0, 0, 1]]),
    "MNI152NLin6Asym": ((91, 109, 91), [[-2, 0, 0, 90], [0, 2, 0, -126], [0, 0, 2, -72], [0, 0, 0, 1]]),
}
FMRIPREP = {"Name": "fMRIPrep - fMRI PREProcessing workflow", "BIDSVersion": "1.8.0", "DatasetType": "derivative",
            "GeneratedBy": [{"Name": "fMRIPrep", "Version": "23.2.1"}]}


@dataclass(frozen=True)
class Design:
    """Block timing of a run (s): `lead` of rest, then blocks of the conditions in turn, `rest` between them."""

    tr: float = 2.0
    frames: int = 40
    block: float = 10.0
    rest: float = 6.0
    lead: float = 6.0
    cue: float = 0.0  # > 0: an instruction event ('cue') of this length before each block (another condition)

    def events(self, conditions: Sequence[str], first: int) -> list[tuple[float, float, str]]:
        """(onset, duration, trial_type) of the run, the conditions in turn starting with `conditions[first]`."""
        out, t, k, end = [], self.lead, first, self.frames * self.tr
        while t + self.cue + self.block <= end - self.tr:
            if self.cue:
                out.append((t, self.cue, "cue"))
            out.append((t + self.cue, self.block, conditions[k % len(conditions)]))
            t += self.cue + self.block + self.rest
            k += 1
        if len({c for _, _, c in out if c != "cue"}) < len(conditions):
            raise ValueError(f"{self.frames} frames of {self.tr} s hold fewer blocks than conditions")
        return out


@dataclass
class Signal:
    """Amplitudes, in percent of the mean brain B: the task effect, per-voxel linear drift, a global
    fluctuation, the motion artefact, white noise; the class patterns (`PATTERNS` layout)."""

    effect: float = 2.0
    drift: float = 1.0
    global_: float = 0.5
    motion: float = 0.0
    noise: float = 1.0
    patterns: tuple = PATTERNS
    subject_shift_mm: float = 3.0


@dataclass
class RunTruth:
    """A generated run: who, its files, its events, and each frame's true condition ('' between blocks)."""

    subject: str
    session: str
    run: str
    bold: Path
    events: list[tuple[float, float, str]]
    truth: np.ndarray  # (T,) str


@dataclass
class StudyTruth:
    """What the generator knows: the runs, the grid, and the seed that recomputes every series."""

    root: Path
    conditions: tuple[str, ...]
    space: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    design: Design
    signal: Signal
    seed: int
    runs: list[RunTruth] = field(default_factory=list)

    def brain(self) -> np.ndarray:
        """(X, Y, Z) bool: the generator's brain on the source grid (computed once)."""
        if "_brain" not in self.__dict__:
            self.__dict__["_brain"] = source_brain(self.shape, self.affine)
        return self.__dict__["_brain"]

    def series(self, i: int) -> np.ndarray:
        """(T, n_brain) float32: run i's values at the brain voxels, exactly as generated (before int16)."""
        r = self.runs[i]
        subjects = list(dict.fromkeys(x.subject for x in self.runs))
        runs_of = [x for x in self.runs if x.subject == r.subject]
        return run_series(self, subjects.index(r.subject), runs_of.index(r), r.events)[0]


def truth_accuracy(study: StudyTruth, test_subjects: Sequence[str], stride: int = 8,
                   grid: Sequence[float] = (1e-4, 1e-3, 1e-2)) -> dict:
    """An independent logistic regression from the generator's own ground truth, to put beside a model trained on
    the imported file: every run's series as generated (source grid, every `stride`-th brain voxel), detrended and
    z-scored per voxel with scipy/numpy (not the importer's code), its frames labelled by the generator (`RunTruth.
    truth`), fitted on the subjects not in `test_subjects` (C from `grid` by 3-fold subject-grouped CV among them)
    and scored on `test_subjects`. Returns {accuracy, C, cv_accuracy, n_train, n_test, n_voxels}."""
    from scipy.signal import detrend
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold, cross_val_score

    xs, ys, subjects = [], [], []
    for i, r in enumerate(study.runs):
        v = detrend(study.series(i)[:, ::stride].astype(np.float64), axis=0)
        v = (v - v.mean(0)) / np.where(v.std(0) > 0, v.std(0), 1.0)
        keep = r.truth != ""
        xs.append(v[keep])
        ys.append(np.array([study.conditions.index(c) for c in r.truth[keep]]))
        subjects += [r.subject] * int(keep.sum())
    X, y, subjects = np.concatenate(xs), np.concatenate(ys), np.array(subjects)
    te = np.isin(subjects, list(test_subjects))
    cv = [(float(np.mean(cross_val_score(LogisticRegression(C=C, max_iter=2000), X[~te], y[~te],
                                         groups=subjects[~te], cv=GroupKFold(3)))), C) for C in grid]
    best = max(cv, key=lambda t: (t[0], -t[1]))
    clf = LogisticRegression(C=best[1], max_iter=2000).fit(X[~te], y[~te])
    return {"accuracy": float(clf.score(X[te], y[te])), "C": best[1], "cv_accuracy": best[0],
            "n_train": int((~te).sum()), "n_test": int(te.sum()), "n_voxels": int(X.shape[1])}


def source_brain(shape, affine) -> np.ndarray:
    """nilearn's MNI152 brain mask (1 mm) resampled (nearest) to a source grid."""
    from nilearn.datasets import load_mni152_brain_mask
    from nilearn.image import resample_img

    img = resample_img(load_mni152_brain_mask(), target_affine=np.asarray(affine, float), target_shape=shape,
                       interpolation="nearest", force_resample=True, copy_header=True)
    return np.asarray(img.get_fdata() > 0.5)


def positions(mask: np.ndarray, affine) -> np.ndarray:
    """(n, 3) MNI mm of the mask's voxels, in C order."""
    a = np.asarray(affine, float)
    return np.argwhere(mask) @ a[:3, :3].T + a[:3, 3]


def smooth_field(p: np.ndarray, rng: np.random.Generator, waves: int = 4, wavelength: float = 60.0) -> np.ndarray:
    """(n,) a smooth field over positions p (n, 3) mm: a sum of random plane waves, unit-ish amplitude."""
    out = np.zeros(len(p))
    for _ in range(waves):
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        out += np.cos(p @ direction * (2 * np.pi / wavelength) + rng.uniform(0, 2 * np.pi))
    return out / np.sqrt(waves / 2)


def pattern(p: np.ndarray, blobs, shift: np.ndarray) -> np.ndarray:
    """(n,) sum of Gaussian blobs (centre mm, sigma mm, weight), every centre moved by `shift` mm."""
    out = np.zeros(len(p))
    for centre, sigma, weight in blobs:
        d2 = ((p - (np.asarray(centre) + shift)) ** 2).sum(1)
        out += weight * np.exp(-0.5 * d2 / sigma ** 2)
    return out


def regressors(events, conditions: Sequence[str], times: np.ndarray) -> np.ndarray:
    """(T, C): each condition's boxcar convolved with SPM's HRF at the frame times (nilearn), peak 1."""
    from nilearn.glm.first_level import compute_regressor

    out = np.zeros((len(times), len(conditions)))
    for k, c in enumerate(conditions):
        mine = [(o, d) for o, d, name in events if name == c]
        if mine:
            o, d = np.array(mine).T
            reg, _ = compute_regressor(np.vstack([o, d, np.ones_like(o)]), "spm", times)
            out[:, k] = reg[:, 0] / max(reg.max(), 1e-12)
    return out


def motion_walk(rng: np.random.Generator, n: int) -> np.ndarray:
    """(T, 6) motion parameters: translations (mm) and rotations (rad) as small random walks."""
    steps = rng.standard_normal((n, 6)) * np.array([0.03] * 3 + [0.0005] * 3)
    return np.cumsum(steps, 0)


def run_series(study: StudyTruth, s: int, r: int, events) -> tuple[np.ndarray, dict]:
    """(values (T, n_brain) float32 at the brain voxels, parts {motion, global, regressors}) of subject s's run r:
    a pure function of (seed, s, r) and the design. Built in place: a few (T, n_brain) arrays at most."""
    sig, des = study.signal, study.design
    p = positions(study.brain(), study.affine)
    subject = np.random.default_rng([study.seed, s])
    run = np.random.default_rng([study.seed, s, r, 1])
    base = (1000.0 * (1.0 + 0.15 * smooth_field(p, np.random.default_rng([study.seed])) +
                      0.05 * smooth_field(p, subject))).astype(np.float32)
    gain = subject.uniform(0.7, 1.3)
    shift = subject.normal(0, sig.subject_shift_mm, 3)
    times = np.arange(des.frames) * des.tr
    reg = regressors(events, study.conditions, times)
    slope = run.standard_normal(len(p)).astype(np.float32)
    glob = np.convolve(run.standard_normal(des.frames + 4), np.ones(5) / np.sqrt(5), "valid")
    motion = motion_walk(run, des.frames)
    rel = run.standard_normal((des.frames, len(p)), dtype=np.float32)  # white noise, then every relative term
    rel *= np.float32(sig.noise / 100)
    for k in range(len(study.conditions)):
        rel += np.outer(reg[:, k] * (sig.effect * gain / 100), pattern(p, sig.patterns[k], shift)).astype(np.float32)
    ramp = (times - times.mean()) / max(times[-1], 1.0) * sig.drift / 100
    rel += np.outer(ramp, slope).astype(np.float32)
    rel += (glob * sig.global_ / 100).astype(np.float32)[:, None]
    if sig.motion:
        maps = np.stack([p[:, 0] / 70, p[:, 1] / 100, p[:, 2] / 80, p[:, 1] / 100, p[:, 0] / 70, p[:, 2] / 80], 1)
        rel += ((motion / np.array([0.3] * 3 + [0.005] * 3)) @ maps.T * (sig.motion / 100)).astype(np.float32)
    rel += np.float32(1.0)
    rel *= base[None]
    return rel, {"motion": motion, "global": rel.mean(1, dtype=np.float64), "regressors": reg}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def _grid(space: str, x_step: int | None) -> tuple[tuple[int, int, int], np.ndarray]:
    """(shape, affine) of a space's res-2 grid, its x axis stored increasing (x_step 1), decreasing (-1), or as
    the template stores it (None)."""
    shape, affine = GRIDS[space]
    a = np.array(affine, float)
    if x_step is not None and np.sign(a[0, 0]) != x_step:
        a[0, 3] = a[0, 3] + a[0, 0] * (shape[0] - 1)
        a[0, 0] = -a[0, 0]
    return shape, a


def save_series(path: Path, brain: np.ndarray, values: np.ndarray, affine, tr: float, dtype: str = "int16",
                code: str = "mni") -> None:
    """Values (T, n_brain) as a 4D NIfTI (0 outside the brain) with the TR in pixdim[4] (seconds), stored as int16
    with a scale factor (nibabel picks scl_slope and scl_inter) or as float32."""
    import nibabel

    data = np.zeros(brain.shape + (len(values),), np.float32)
    data[brain] = values.T
    img = nibabel.Nifti1Image(data, affine)
    img.set_data_dtype(np.int16 if dtype == "int16" else np.float32)
    img.header.set_xyzt_units("mm", "sec")
    img.header.set_zooms(tuple(abs(float(z)) for z in np.diag(affine)[:3]) + (tr,))
    img.set_sform(affine, code=code)
    img.set_qform(affine, code=code)
    path.parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(img, path)


def confounds_table(parts: dict, tr: float, dummy: int) -> tuple[list[str], np.ndarray]:
    """fMRIPrep's confounds columns (names, (T, K) with NaN where fMRIPrep writes n/a) from a run's parts."""
    motion, glob = parts["motion"], parts["global"]
    n = len(glob)
    rng = np.random.default_rng(int(abs(glob[0]) * 1000) % 2**32)
    cols: dict[str, np.ndarray] = {}

    def expand(name: str, v: np.ndarray) -> None:
        d = np.concatenate([[np.nan], np.diff(v)])
        cols.update({name: v, f"{name}_derivative1": d, f"{name}_power2": v ** 2, f"{name}_derivative1_power2": d ** 2})

    expand("global_signal", glob)
    expand("csf", glob * 0.5 + rng.standard_normal(n))
    expand("white_matter", glob * 0.8 + rng.standard_normal(n))
    for k, name in enumerate(("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")):
        expand(name, motion[:, k])
    fd = np.abs(np.diff(motion[:, :3], axis=0)).sum(1) + 50 * np.abs(np.diff(motion[:, 3:], axis=0)).sum(1)
    cols["framewise_displacement"] = np.concatenate([[np.nan], fd])
    dv = np.abs(np.diff(glob))
    cols["dvars"] = np.concatenate([[np.nan], dv])
    cols["std_dvars"] = np.concatenate([[np.nan], 1.0 + 0.1 * rng.standard_normal(n - 1)])
    cols["rmsd"] = np.concatenate([[np.nan], fd / 2])
    k_cos = max(1, int(np.floor(2 * n * tr / 128.0)))
    t = np.arange(n)
    for k in range(k_cos):
        cols[f"cosine{k:02d}"] = np.sqrt(2.0 / n) * np.cos(np.pi * (2 * t + 1) * (k + 1) / (2 * n))
    for k in range(dummy):
        cols[f"non_steady_state_outlier{k:02d}"] = (t == k).astype(float)
    return list(cols), np.stack(list(cols.values()), 1)


def write_tsv(path: Path, names: Sequence[str], values: np.ndarray) -> None:
    """A tab-separated table, NaN written as n/a (fMRIPrep's and BIDS's way)."""
    lines = ["\t".join(names)]
    for row in values:
        lines.append("\t".join("n/a" if not np.isfinite(v) else repr(float(v)) for v in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def write_events(path: Path, events) -> None:
    """A BIDS events table with an n/a column, as presentation software exports them."""
    lines = ["onset\tduration\ttrial_type\tresponse_time"]
    lines += [f"{o:g}\t{d:g}\t{c}\tn/a" for o, d, c in events]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def make_study(root: str | Path, *, subjects: int = 2, runs: int = 1, sessions: int = 0, task: str = "emotion",
               conditions: Sequence[str] = ("face", "house"), space: str = "MNI152NLin2009cAsym",
               x_step: int | None = None, design: Design | None = None, signal: Signal | None = None,
               seed: int = 0, dummy: int = 0, dtype: str = "int16", write: bool = True) -> StudyTruth:
    """Write a BIDS dataset with fMRIPrep derivatives under `root` (see the module's docstring); returns its ground
    truth. `dummy`: non-steady-state frames flagged in each confounds table. write=False: write nothing, return the
    ground truth of the study these arguments write (its series recomputed on demand by `StudyTruth.series`)."""
    root = Path(root)
    shape, affine = _grid(space, x_step)
    study = StudyTruth(root, tuple(conditions), space, shape, affine, design or Design(), signal or Signal(), seed)
    if not write:
        for s in range(subjects):
            for r in range(runs * max(sessions, 1)):
                study.runs.append(_run_truth(study, s, r, f"{r // runs + 1}" if sessions else "", f"{r % runs + 1}",
                                             task))
        return study
    brain = study.brain()
    _write_json(root / "dataset_description.json", {"Name": "generated study", "BIDSVersion": "1.8.0"})
    _write_json(root / "derivatives" / "fmriprep" / "dataset_description.json", FMRIPREP)
    (root / "participants.tsv").write_text("participant_id\n" + "".join(f"sub-{s + 1:02d}\n" for s in range(subjects)))
    for s in range(subjects):
        for r in range(runs * max(sessions, 1)):
            ses = f"{r // runs + 1}" if sessions else ""
            run = f"{r % runs + 1}"
            _write_run(study, brain, s, r, ses, run, task, dummy, dtype)
    return study


def _write_run(study: StudyTruth, brain, s: int, r: int, ses: str, run: str, task: str, dummy: int,
               dtype: str) -> None:
    """One run's raw events and sidecar, and its fMRIPrep derivatives."""
    des = study.design
    sub = f"{s + 1:02d}"
    rel = Path(f"sub-{sub}") / (f"ses-{ses}" if ses else "") / "func"
    stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_task-{task}_run-{run}"
    events = des.events(study.conditions, (s + r) % len(study.conditions))
    write_events(study.root / rel / f"{stem}_events.tsv", events)
    _write_json(study.root / rel / f"{stem}_bold.json", {"RepetitionTime": des.tr, "TaskName": task})
    values, parts = run_series(study, s, r, events)
    func = study.root / "derivatives" / "fmriprep" / rel
    bold = func / f"{stem}_space-{study.space}_res-2_desc-preproc_bold.nii.gz"
    save_series(bold, brain, values, study.affine, des.tr, dtype)
    _write_json(bold.with_name(bold.name.replace(".nii.gz", ".json")),
                {"RepetitionTime": des.tr, "SkullStripped": False, "TaskName": task})
    import nibabel

    mask = nibabel.Nifti1Image(brain.astype(np.uint8), study.affine)
    mask.set_sform(study.affine, code="mni")
    nibabel.save(mask, func / f"{stem}_space-{study.space}_res-2_desc-brain_mask.nii.gz")
    names, table = confounds_table(parts, des.tr, dummy)
    write_tsv(func / f"{stem}_desc-confounds_timeseries.tsv", names, table)
    _write_json(func / f"{stem}_desc-confounds_timeseries.json",
                {n: {"Method": "generated"} for n in names if not n.endswith(("_power2", "_derivative1"))})
    truth = _truth(parts["regressors"], study.conditions)
    study.runs.append(RunTruth(sub, ses, run, bold, events, truth))


def _run_truth(study: StudyTruth, s: int, r: int, ses: str, run: str, task: str) -> RunTruth:
    """The ground truth of one run of `make_study`, without generating its series."""
    des = study.design
    sub = f"{s + 1:02d}"
    stem = f"sub-{sub}" + (f"_ses-{ses}" if ses else "") + f"_task-{task}_run-{run}"
    bold = (study.root / "derivatives" / "fmriprep" / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func" /
            f"{stem}_space-{study.space}_res-2_desc-preproc_bold.nii.gz")
    events = des.events(study.conditions, (s + r) % len(study.conditions))
    reg = regressors(events, study.conditions, np.arange(des.frames) * des.tr)
    return RunTruth(sub, ses, run, bold, events, _truth(reg, study.conditions))


def _truth(reg: np.ndarray, conditions: Sequence[str]) -> np.ndarray:
    """Each frame's true condition: the one whose response is above half its peak ('' if none or both)."""
    on = reg > 0.5
    out = np.full(len(reg), "", dtype=object)
    one = on.sum(1) == 1
    out[one] = np.asarray(conditions, dtype=object)[on[one].argmax(1)]
    return out.astype(str)


def make_hcp_release(root: str | Path, *, subjects: int = 2, task: str = "EMOTION",
                     conditions: Sequence[str] = ("fear", "neut"), design: Design | None = None,
                     signal: Signal | None = None, seed: int = 0, x_step: int | None = None) -> StudyTruth:
    """Write an HCP-like release under `root`: <id>/MNINonLinear/Results/tfMRI_<TASK>_{LR,RL}/ with the 4D series
    on FSL's MNI152 2 mm grid (91 x 109 x 91, radiological), TR 0.72 s in the header only (HCP has no sidecar), and
    EVs/<condition>.txt in FSL's 3-column form (plus Sync.txt, which is not an EV)."""
    root = Path(root)
    shape, affine = _grid("MNI152NLin6Asym", x_step)
    design = design or Design(tr=0.72, frames=60, block=9.0, rest=3.0, lead=4.0)
    study = StudyTruth(root, tuple(conditions), "MNI152NLin6Asym", shape, affine, design, signal or Signal(), seed)
    brain = study.brain()
    ids = np.random.default_rng([seed, 7]).choice(np.arange(100000, 1000000), subjects, replace=False)
    for s, sid in enumerate(sorted(ids)):
        for r, direction in enumerate(("LR", "RL")):
            results = root / str(sid) / "MNINonLinear" / "Results" / f"tfMRI_{task}_{direction}"
            events = design.events(study.conditions, (s + r) % len(conditions))
            values, parts = run_series(study, s, r, events)
            bold = results / f"tfMRI_{task}_{direction}.nii.gz"
            save_series(bold, brain, values, affine, design.tr)
            for c in conditions:
                rows = [f"{o:g}\t{d:g}\t1" for o, d, name in events if name == c]
                (results / "EVs").mkdir(parents=True, exist_ok=True)
                (results / "EVs" / f"{c}.txt").write_text("\n".join(rows) + "\n")
            (results / "EVs" / "Sync.txt").write_text("0.0\n")
            motion = parts["motion"]
            np.savetxt(results / "Movement_Regressors.txt", np.hstack([motion, np.gradient(motion, axis=0)]),
                       fmt="%.6f")
            study.runs.append(RunTruth(str(sid), "", direction, bold, events, _truth(parts["regressors"], conditions)))
    return study
