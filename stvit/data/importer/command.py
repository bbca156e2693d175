"""`python -m stvit.data import SOURCE --out FILE ...`: a study in, one packed data file out, one summary.

`import_study` is the whole import as a function (what the command calls): find the runs (`sources`), check and
label every run before any volume is read (`plan`), process the runs not already done (`work`: resample, clean,
keep the labelled volumes, one part file each), then write the file (`assemble`) and remove the work folder.
"""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
import numpy as np

from stvit.data.dataset import DataError
from stvit.errors import UserError

DEFAULT_SPACE = "MNI152NLin2009cAsym"
HRF_SHIFT = 5.0  # s: the canonical haemodynamic response peaks about 5 s after a stimulus
IMPORTER_VERSION = 1
PACKAGES = ("numpy", "scipy", "nibabel", "nilearn", "pandas", "h5py", "sklearn")


@dataclass
class ImportOptions:
    """Every parameter of an import (written into the file's provenance); see `python -m stvit.data import -h`."""

    task: str | None = None
    conditions: tuple[str, ...] | None = None
    class_names: tuple[str, ...] | None = None
    space: str = DEFAULT_SPACE
    res: str | None = None
    derivatives: str | None = None
    subjects: tuple[str, ...] | None = None
    hrf_shift: float = HRF_SHIFT
    trim: float = 0.0
    detrend: bool = True
    voxel_zscore: bool = True
    high_pass: float | None = None
    confounds: tuple[str, ...] = ()
    test_subjects: str = "0.2"
    seed: int = 0
    dtype: str = "float16"


@dataclass
class Summary:
    """What an import did, for the one summary it prints."""

    out: Path
    kind: str
    task: str
    space: str
    subjects: int
    runs: int
    tr: float
    tr_source: str
    n_voxels: int
    conditions: tuple[str, ...]
    class_names: tuple[str, ...]
    kept: list[int]
    dropped: dict[str, int]
    frames: int
    test: dict
    cleaning: str
    seconds: float
    bytes: int
    jobs: int
    reused: int

    def text(self) -> str:
        """The summary, a few lines."""
        cls = ", ".join(f"{n} ({c}) {k:,}" if n != c else f"{n} {k:,}"
                        for n, c, k in zip(self.class_names, self.conditions, self.kept))
        drop = sum(self.dropped.values())
        why = ", ".join(f"{r} {k:,}" for r, k in self.dropped.items() if k) or "none"
        t = self.test
        return "\n".join([
            f"imported {self.kind} (task {self.task}, space {self.space}) -> {self.out}",
            f"  {_n(self.subjects, 'subject')}, {_n(self.runs, 'run')}, {self.frames:,} volumes; TR {self.tr:g} s from "
            f"{self.tr_source}; {self.n_voxels:,} in-brain voxels on the 53 x 63 x 46 grid (3 mm)",
            f"  kept {sum(self.kept):,} volumes: {cls}",
            f"  dropped {drop:,}: {why}",
            f"  test split: {len(t['groups'])} whole {t['unit'][:-1] if len(t['groups']) == 1 else t['unit']} "
            f"({t['test']:,} volumes: {', '.join(t['groups'][:6])}{', ...' if len(t['groups']) > 6 else ''}), "
            f"train {t['train']:,} volumes"
            + ("  (one subject only: the test split holds out whole runs, not new subjects)"
               if t["unit"] == "runs" else ""),
            f"  cleaning per run: {self.cleaning}",
            f"  {self.seconds:.1f} s with {self.jobs} job{'s' * (self.jobs != 1)}"
            + (f" ({self.reused} runs reused from an interrupted import)" if self.reused else "")
            + f"; {self.bytes / 1e6:,.1f} MB"])


def _n(k: int, noun: str) -> str:
    return f"{k:,} {noun}{'s' * (k != 1)}"


def require_packages() -> None:
    """One line naming what to install when nibabel, nilearn or pandas is missing."""
    for name in ("nibabel", "nilearn", "pandas"):
        try:
            __import__(name)
        except ImportError:
            raise UserError(f"python -m stvit.data import needs nibabel, nilearn and pandas ({name} is missing): "
                            "pip install 'stvit[import]'") from None


def versions() -> dict[str, str]:
    """The versions of the libraries an import's numbers depend on."""
    import importlib.metadata as md

    out = {}
    for name in PACKAGES + ("stvit",):
        try:
            out[name] = md.version({"sklearn": "scikit-learn"}.get(name, name))
        except md.PackageNotFoundError:
            out[name] = "unknown"
    return out


def check_out(out: Path, force: bool) -> None:
    """The output file: its folder exists, and it is new (or --force)."""
    if not out.parent.is_dir():
        raise DataError("folder does not exist", out.parent)
    if out.is_dir():
        raise DataError("is a folder; --out names the data file to write", out)
    if out.exists() and not force:
        raise DataError("file exists; pass --force to replace it", out)


@dataclass
class Prepared:
    """A study checked and labelled, nothing read from its volumes yet."""

    kind: str
    found: dict
    conditions: tuple[str, ...]
    names: tuple[str, ...]
    cleaning: object  # clean.Cleaning
    plans: list  # plan.RunPlan, in the runs' fixed order
    rule: tuple


def prepare(source: Path, out: Path, o: ImportOptions, force: bool) -> Prepared:
    """Every check of the import (output, options, runs, headers, sidecars, events, labels, confounds)."""
    from stvit.data.importer import plan as P
    from stvit.data.importer.clean import Cleaning
    from stvit.data.importer.sources import find_runs
    from stvit.data.importer.testsplit import parse_rule

    require_packages()
    check_out(out, force)
    rule = parse_rule(str(o.test_subjects))
    if o.hrf_shift < 0 or o.trim < 0 or (o.high_pass is not None and o.high_pass <= 0):
        raise DataError("--hrf-shift and --trim must be >= 0 seconds, --high-pass > 0 Hz")
    if o.dtype not in ("float16", "float32"):
        raise DataError(f"--dtype {o.dtype}: choose float16 or float32")
    kind, specs, found = find_runs(source, task=o.task, space=o.space, res=o.res,
                                   derivatives=Path(o.derivatives) if o.derivatives else None, subjects=o.subjects)
    conditions, names = (o.conditions, o.class_names) if o.conditions else \
        P.default_conditions(kind, specs[0].task, specs)
    names = tuple(o.class_names or names or conditions)
    if len(names) != len(conditions) or len(conditions) < 2 or len(set(conditions)) != len(conditions):
        raise DataError(f"--conditions ({', '.join(conditions)}) and --class-names ({', '.join(names)}): give at "
                        "least 2 distinct conditions and one class name per condition")
    P.check_conditions(conditions, P.read_all_events(specs, conditions), specs)
    cleaning = Cleaning(o.detrend, o.voxel_zscore, o.high_pass, tuple(o.confounds))
    plans = [P.plan_run(s, conditions, cleaning, o.hrf_shift, o.trim) for s in specs]
    P.check_study(plans, conditions, source)
    return Prepared(kind, found, tuple(conditions), names, cleaning, plans, rule)


def provenance(source: Path, o: ImportOptions, prep: Prepared) -> dict:
    """What the file says about where its volumes come from and how they were made (no time stamps: the same
    import gives the same bytes)."""
    from stvit.data.importer.geometry import MASK_SOURCE

    return {"importer": {"version": IMPORTER_VERSION, "kind": prep.kind, "source": str(source.resolve()),
                         **prep.found},
            "parameters": asdict(o), "cleaning": asdict(prep.cleaning),
            "grid": {"shape": [53, 63, 46], "voxel_mm": 3.0, "origin_mm": [-78.0, -112.0, -50.0],
                     "interpolation": "nilearn resample_img, continuous (cubic spline), through the affines"},
            "mask": MASK_SOURCE + ", restricted to voxels holding data (finite, non-zero, varying) in at least one run",
            "libraries": versions(), "runs": [_run_record(p) for p in prep.plans]}


def import_study(source: str | Path, out: str | Path, options: ImportOptions | None = None, *, jobs: int = 1,
                 force: bool = False, progress: bool = False) -> Summary:
    """Import the study at `source` into the packed data file `out` (see the module's docstring). Bad input:
    DataError before anything is written. A failure while the runs are processed (a truncated file found late)
    removes the work folder if this call created it; an interruption keeps it, for the rerun to continue."""
    from stvit.data.importer.assemble import assemble
    from stvit.data.importer.work import Job, WorkFolder, digest, run_jobs

    t0 = time.perf_counter()
    o = options or ImportOptions()
    source, out = Path(source).absolute(), Path(out)
    prep = prepare(source, out, o, force)
    work = WorkFolder(out)
    work.claim()
    try:
        jobs_all = [Job(p, prep.conditions, prep.cleaning, o.dtype,
                        work.part(p.spec.name, digest(p, prep.conditions, prep.cleaning, o.dtype)))
                    for p in prep.plans]
        todo = [j for j in jobs_all if not j.path.is_file()]
        bar = _progress(len(jobs_all), len(jobs_all) - len(todo), progress)
        run_jobs(todo, jobs, lambda _: bar.update(1))
        bar.close()
        done = assemble(out, prep.plans, [j.path for j in jobs_all], prep.names, o.dtype, prep.rule, o.seed,
                        provenance(source, o, prep))
    except DataError:
        work.release(remove=work.created)  # bad input found late: nothing left of this import, nothing lost
        raise
    except BaseException:
        work.release(remove=False)  # interrupted: the finished runs stay for the rerun
        raise
    work.release(remove=True)
    plans = prep.plans
    return Summary(out=out, kind=f"{KINDS[prep.kind]} {source}", task=plans[0].spec.task,
                   space={"bids": o.space, "hcp": "MNINonLinear"}.get(prep.kind, "MNI, as given"),
                   subjects=len({p.spec.subject for p in plans}),
                   runs=len(plans), tr=plans[0].tr, tr_source=tr_sources(plans), n_voxels=done.n_voxels,
                   conditions=prep.conditions, class_names=prep.names, kept=done.kept.tolist(),
                   dropped=dropped_counts(plans), frames=sum(p.n_frames for p in plans), test=done.test,
                   cleaning=prep.cleaning.describe(), seconds=time.perf_counter() - t0,
                   bytes=out.stat().st_size, jobs=jobs, reused=len(jobs_all) - len(todo))


KINDS = {"bids": "BIDS + fMRIPrep", "hcp": "HCP release", "table": "table of runs"}


def dropped_counts(plans) -> dict[str, int]:
    """Volumes dropped over the study, by reason (`labels.REASONS`, then 'censored')."""
    from stvit.data.importer.labels import REASONS

    out = {r: 0 for r in REASONS + ("censored",)}
    for p in plans:
        for r, k in zip(*np.unique(p.labels.reason[p.labels.reason != ""], return_counts=True)):
            out[str(r)] += int(k)
    return out


def tr_sources(plans) -> str:
    """Where the repetition times came from, in words."""
    said = sorted({"the JSON sidecars" if p.tr_source.startswith("sidecar") else p.tr_source for p in plans})
    return " and ".join(said) + ("" if said == ["the NIfTI header (no JSON sidecar)"] else
                                 " (the NIfTI headers agree where they give one)")


def _run_record(p) -> dict:
    """A run in the provenance: who, which files (with sizes), timing, geometry, what was kept."""
    s = p.spec
    reasons, counts = np.unique(p.labels.reason, return_counts=True)
    return {"subject": s.subject, "session": s.session, "task": s.task, "run": s.run, "files": p.files,
            "tr": p.tr, "tr_source": p.tr_source, "start": p.start, "frames": p.n_frames, "shape": list(p.shape),
            "zooms": list(p.zooms), "affine": p.affine,
            "volumes": {("kept" if r == "" else str(r)): int(k) for r, k in zip(reasons, counts)}}


def _progress(total: int, initial: int, show: bool):
    """A progress bar over runs on stderr (off unless asked and stderr is a terminal)."""
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="import", unit="run", disable=not (show and sys.stderr.isatty()))


# --- command line ---------------------------------------------------------------------------------------------------

EPILOG = """examples:
  python -m stvit.data import /data/ds-emotion --out emotion.h5 --task emotion --conditions face house
  python -m stvit.data import /data/HCP_1200 --out hcp-emotion.h5 --task EMOTION --jobs 4
        (HCP's EMOTION task: conditions fear, neut as classes face, shape by default)
  python -m stvit.data import runs.csv --out study.h5 --conditions A B --confounds motion wm_csf
then: python -m stvit.train --data emotion.h5 --class-names face house

exit codes: 0 done; 2 bad input (one 'error:' line, nothing written). A killed import continues where it
stopped when run again with the same options (its finished runs wait in FILE.parts/). See docs/import.md."""


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def add_parser(sub) -> argparse.ArgumentParser:
    """The `import` subcommand of `python -m stvit.data`."""
    from stvit.data.importer.clean import STRATEGIES

    p = sub.add_parser("import", help="turn a BIDS/fMRIPrep study, an HCP release or a table of runs into a data file",
                       description="Turn a study into one packed data file for python -m stvit.train --data FILE: "
                                   "resample every run to the 53 x 63 x 46 MNI grid (3 mm), label its volumes by "
                                   "the events shifted for the haemodynamic delay, clean each run, z-score each "
                                   "volume, and hold out whole subjects as the test split.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", metavar="SOURCE", help=(
        "a BIDS dataset with fMRIPrep derivatives (under SOURCE/derivatives/, or --derivatives), an HCP release "
        "folder (<subject>/MNINonLinear/Results/tfMRI_<TASK>_{LR,RL}), or a CSV table of runs with the columns "
        "bold,events,subject,run,tr (session, task optional; events a BIDS .tsv, an FSL 3-column .txt or a folder "
        "of them)"))
    p.add_argument("--out", required=True, metavar="FILE", help="the data file to write (packed HDF5, e.g. study.h5)")
    s = p.add_argument_group("what to import")
    s.add_argument("--task", metavar="NAME", help="the task (BIDS task-<NAME>, HCP tfMRI_<NAME>); default: the only "
                                                  "one the study has")
    s.add_argument("--conditions", nargs="+", metavar="NAME", help=(
        "the conditions to import, one class each, by their name in the events (BIDS trial_type, FSL file name); "
        "default for HCP's EMOTION: fear neut; otherwise required"))
    s.add_argument("--class-names", nargs="+", metavar="NAME", help=(
        "names of the classes, one per condition, in the same order (e.g. --conditions fear neut --class-names face "
        "shape); default: the condition names (HCP EMOTION: face shape)"))
    s.add_argument("--space", default=DEFAULT_SPACE, metavar="NAME", help=(
        "fMRIPrep output space to read (an MNI152 space; T1w or native series are refused); default: "
        f"{DEFAULT_SPACE}"))
    s.add_argument("--res", metavar="N", help="fMRIPrep res-<N> to read when there are several; default: the only one")
    s.add_argument("--derivatives", metavar="DIR", help="the fMRIPrep derivatives folder; default: found under "
                                                        "SOURCE/derivatives/")
    s.add_argument("--subjects", nargs="+", metavar="ID",
                   help="import these subjects only (sub-01 or 01); default: all")
    lab = p.add_argument_group("labels")
    lab.add_argument("--hrf-shift", type=float, default=HRF_SHIFT, metavar="S", help=(
        "a volume acquired at time t takes the condition of the event that holds t - S: the BOLD response peaks "
        f"about 5 s after a stimulus, so a volume shows what was on screen S seconds before; default: {HRF_SHIFT:g}"))
    lab.add_argument("--trim", type=float, default=0.0, metavar="S", help=(
        "also drop volumes within S seconds of the start or end of their (shifted) block, where the neighbouring "
        "block's response still mixes in; default: 0 (keep every volume inside a block)"))
    c = p.add_argument_group("cleaning (per run, without the labels)")
    c.add_argument("--detrend", action=argparse.BooleanOptionalAction, default=True,
                   help="remove each voxel's linear trend over the run; default: on")
    c.add_argument("--voxel-zscore", action=argparse.BooleanOptionalAction, default=True, help=(
        "z-score each voxel over the run's time (removes the mean brain image, nearly all of a raw volume's signal); "
        "default: on"))
    c.add_argument("--high-pass", type=float, metavar="HZ", help="Butterworth high-pass filter at HZ (e.g. 0.008); "
                                                                 "default: off")
    c.add_argument("--confounds", nargs="+", choices=STRATEGIES, metavar="STRATEGY", help=(
        f"regress out fMRIPrep confounds with nilearn's load_confounds strategies ({', '.join(STRATEGIES)}; scrub "
        "censors high-motion volumes); default: none"))
    o = p.add_argument_group("output")
    o.add_argument("--test-subjects", default="0.2", metavar="N|F|FILE", help=(
        "the test split, whole subjects, stratified by label, chosen by --seed: a count, a fraction of the subjects, "
        "or a file of subject ids (one a line); one subject only: whole runs instead; default: 0.2"))
    o.add_argument("--seed", type=int, default=0, metavar="N", help="seeds the test split; default: 0")
    o.add_argument("--dtype", choices=("float16", "float32"), default="float16",
                   help="voxel storage (z-scored data needs no more than float16); default: float16")
    o.add_argument("--jobs", type=_positive_int, default=1, metavar="N", help="runs processed in parallel; default: 1")
    o.add_argument("--force", action="store_true", help="replace an existing FILE; default: refuse")
    o.add_argument("--quiet", action="store_true",
                   help="no progress bar (it is off anyway when stderr is not a terminal)")
    return p


def options_from(args: argparse.Namespace) -> ImportOptions:
    """The ImportOptions of a parsed command line."""
    tup = (lambda v: tuple(v) if v else None)
    return ImportOptions(task=args.task, conditions=tup(args.conditions), class_names=tup(args.class_names),
                         space=args.space, res=args.res, derivatives=args.derivatives, subjects=tup(args.subjects),
                         hrf_shift=args.hrf_shift, trim=args.trim, detrend=args.detrend,
                         voxel_zscore=args.voxel_zscore, high_pass=args.high_pass,
                         confounds=tuple(args.confounds or ()), test_subjects=args.test_subjects, seed=args.seed,
                         dtype=args.dtype)


def main(args: argparse.Namespace) -> int:
    """`python -m stvit.data import`: the import, then its summary on stdout."""
    summary = import_study(args.source, args.out, options_from(args), jobs=args.jobs, force=args.force,
                           progress=not args.quiet)
    print(summary.text())
    return 0
