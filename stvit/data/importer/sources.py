"""Find the runs of a study: a BIDS dataset with fMRIPrep derivatives, an HCP release, or a CSV table of runs.

Each source gives a list of `RunSpec` (subject, session, task, run, the 4D file, its events, where its repetition
time is written) in a fixed order (subject, session, task, run), checked before any volume is read:

- BIDS + fMRIPrep: `SOURCE/derivatives/<pipeline>/sub-*/[ses-*/]func/*_space-<SPACE>[_res-*]_desc-preproc_bold.nii.gz`
  (the folder whose dataset_description.json names fMRIPrep, or `--derivatives DIR`); events from the raw tree
  (`sub-*/[ses-*/]func/*_events.tsv`, or a less specific file up the BIDS inheritance chain). A run with derivatives
  in a non-MNI space only (`space-T1w`, or no space: native) is refused: stvit's grid is MNI.
- HCP: `SOURCE/<subject>/MNINonLinear/Results/tfMRI_<TASK>_{LR,RL}/tfMRI_<TASK>_{LR,RL}.nii.gz` with
  `EVs/<condition>.txt` (FSL 3-column); the run label is the phase-encoding direction (LR, RL). HCP has no JSON
  sidecar: the repetition time comes from the NIfTI header (0.72 s).
- CSV: one row per run, columns `bold,events,subject,run,tr` (`session`, `task` optional; paths relative to the
  table; events a BIDS .tsv, an FSL .txt, or a folder of FSL files).
"""
from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from stvit.data.dataset import DataError

MNI_PREFIX = "MNI152"  # fMRIPrep / TemplateFlow's MNI152NLin2009cAsym, MNI152NLin6Asym, ... (adult MNI152 spaces)
MNI_OUTPUT = ("stvit needs volumes in MNI space: fMRIPrep's MNI output, e.g. "
              "*_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold.nii.gz (fMRIPrep --output-spaces "
              "MNI152NLin2009cAsym:res-2)")
HCP_DIRECTIONS = ("LR", "RL")
CSV_COLUMNS = ("bold", "events", "subject", "run", "tr")


@dataclass(frozen=True)
class RunSpec:
    """One run to import. events: a BIDS .tsv, an FSL .txt or a folder of FSL files; sidecars: the JSON files
    that may give RepetitionTime, most specific first; tr: a table's repetition time (s); fmriprep: the 4D file
    carries fMRIPrep's name, so nilearn's `load_confounds` finds its confounds table."""

    subject: str
    session: str
    task: str
    run: str
    bold: Path
    events: Path
    sidecars: tuple[Path, ...] = ()
    tr: float | None = None
    fmriprep: bool = False

    @property
    def name(self) -> str:
        """`sub-01_ses-1_task-emotion_run-1`: the run's name in messages and work files."""
        parts = [f"sub-{self.subject}"] + ([f"ses-{self.session}"] if self.session else [])
        return "_".join(parts + [f"task-{self.task}", f"run-{self.run}"])

    def order(self) -> tuple:
        """The fixed order of the runs in the output file."""
        return (self.subject, self.session, self.task, _natural(self.run))


def _natural(text: str) -> tuple:
    """'run-10' after 'run-9'."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", text))


def entities(path: Path) -> dict[str, str]:
    """BIDS entities of a file name, with its suffix under 'suffix' (nilearn's parser)."""
    from nilearn.interfaces.bids import parse_bids_filename

    parsed = parse_bids_filename(str(path))
    return {**parsed["entities"], "suffix": parsed["suffix"]}


def kind_of(source: Path) -> str:
    """'bids', 'hcp' or 'table' from what is at `source`; DataError when it is none of them."""
    if not source.exists():
        raise DataError("no such file or folder", source)
    if source.is_file():
        if source.suffix.lower() == ".csv":
            return "table"
        raise DataError("not a CSV table of runs (nor a BIDS or HCP folder)", source)
    if (source / "MNINonLinear").is_dir() or any(source.glob("*/MNINonLinear")):
        return "hcp"
    if (source / "dataset_description.json").is_file() or any(source.glob("sub-*")):
        return "bids"
    raise DataError("not a BIDS dataset (no dataset_description.json or sub-* folders), an HCP release "
                    "(no <subject>/MNINonLinear) or a CSV table of runs", source)


def find_runs(source: Path, *, task: str | None, space: str, res: str | None, derivatives: Path | None,
              subjects: Sequence[str] | None) -> tuple[str, list[RunSpec], dict]:
    """(kind, runs in their fixed order, what was found: {"derivatives": path, ...}) of a study."""
    kind = kind_of(source)
    if kind == "bids":
        runs, found = find_bids(source, task, space, res, derivatives, subjects)
    elif kind == "hcp":
        runs, found = find_hcp(source, task, subjects), {}
    else:
        runs, found = read_table(source, subjects), {}
    return kind, sorted(runs, key=RunSpec.order), found


# --- BIDS + fMRIPrep ------------------------------------------------------------------------------------------

def _bare(subject: str) -> str:
    return subject[4:] if subject.startswith("sub-") else subject


def find_fmriprep(root: Path) -> Path:
    """The fMRIPrep derivatives folder under `root/derivatives`: the one whose dataset_description.json says
    fMRIPrep generated it, else the one folder holding `*_desc-preproc_bold` files."""
    base = root / "derivatives"
    candidates = sorted(p.parent for p in base.glob("*/dataset_description.json")) if base.is_dir() else []
    for folder in candidates:
        try:
            desc = json.loads((folder / "dataset_description.json").read_text())
        except (OSError, ValueError):
            continue
        names = [g.get("Name", "") for g in desc.get("GeneratedBy", []) if isinstance(g, dict)]
        names.append(str(desc.get("PipelineDescription", {}).get("Name", "")))
        if any("fmriprep" in n.lower() for n in names):
            return folder
    holding = sorted({p.parent for p in base.glob("*") if next(p.rglob("*_desc-preproc_bold.nii*"), None)}) \
        if base.is_dir() else []
    if len(holding) == 1:
        return holding[0]
    raise DataError("no fMRIPrep derivatives under derivatives/ (give them with --derivatives DIR)", root)


def _pick_task(tasks: set[str], task: str | None, where: Path) -> str:
    if task is not None:
        if task not in tasks:
            raise DataError(f"no runs of task '{task}' (tasks found: {', '.join(sorted(tasks)) or 'none'})", where)
        return task
    if len(tasks) != 1:
        raise DataError(f"{len(tasks)} tasks ({', '.join(sorted(tasks)) or 'none'}): choose one with --task", where)
    return next(iter(tasks))


def _pick_space(files: list[tuple[Path, dict]], space: str, res: str | None, name: str) -> Path:
    """The derivative of one run in the requested space (and resolution); DataError when it has none."""
    spaces = sorted({e.get("space", "") for _, e in files})
    mine = [(p, e) for p, e in files if e.get("space") == space and (res is None or e.get("res") == res)]
    if not mine:
        mni = [s for s in spaces if s.startswith(MNI_PREFIX)]
        first = files[0][0]
        if mni:
            raise DataError(f"{name} has no space-{space}{f' res-{res}' if res else ''} output (it has "
                            f"{', '.join('space-' + s for s in mni)}): pass --space {mni[0]}", first)
        said = ", ".join(f"space-{s}" if s else "no space entity (native)" for s in spaces)
        raise DataError(f"{said} is not MNI space: {MNI_OUTPUT}", first)
    if len(mine) > 1:
        found = ", ".join(f"res-{e.get('res', '?')}" for _, e in mine)
        raise DataError(f"{name} has several space-{space} outputs ({found}): choose one with --res", mine[0][0])
    return mine[0][0]


def _events_for(root: Path, e: dict, bold: Path) -> Path:
    """The run's events table in the raw tree: its own, or a less specific one up the inheritance chain."""
    sub, ses, task = e["sub"], e.get("ses"), e["task"]
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
    keys = [k for k in ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo") if k in e]
    name = "_".join(f"{k}-{e[k]}" for k in keys)
    candidates = [folder / f"{name}_events.tsv",
                  folder / ("_".join(f"{k}-{e[k]}" for k in keys if k != "run") + "_events.tsv"),
                  root / f"sub-{sub}" / f"sub-{sub}_task-{task}_events.tsv", root / f"task-{task}_events.tsv"]
    for c in candidates:
        if c.is_file():
            return c
    raise DataError(f"no events table for this run (looked for {candidates[0].relative_to(root)} and the "
                    "files it inherits from in the raw BIDS tree)", bold)


def _sidecars_for(root: Path, e: dict, bold: Path) -> tuple[Path, ...]:
    """JSON sidecars that may give RepetitionTime: the derivative's own, then the raw ones (inheritance)."""
    stem = bold.name.split(".nii")[0]
    sub, ses, task = e["sub"], e.get("ses"), e["task"]
    keys = [k for k in ("sub", "ses", "task", "acq", "ce", "rec", "dir", "run", "echo") if k in e]
    folder = root / f"sub-{sub}" / (f"ses-{ses}" if ses else "") / "func"
    raw = ["_".join(f"{k}-{e[k]}" for k in keys), "_".join(f"{k}-{e[k]}" for k in keys if k != "run")]
    out = [bold.with_name(stem + ".json")] + [folder / f"{r}_bold.json" for r in raw]
    out += [root / f"sub-{sub}" / f"sub-{sub}_task-{task}_bold.json", root / f"task-{task}_bold.json"]
    return tuple(p for p in out if p.is_file())


def find_bids(root: Path, task: str | None, space: str, res: str | None, derivatives: Path | None,
              subjects: Sequence[str] | None) -> tuple[list[RunSpec], dict]:
    """The runs of a BIDS dataset from its fMRIPrep derivatives (see the module's docstring)."""
    if not space.startswith(MNI_PREFIX):
        raise DataError(f"--space {space} is not an MNI152 space: {MNI_OUTPUT}")
    deriv = derivatives if derivatives is not None else find_fmriprep(root)
    if not deriv.is_dir():
        raise DataError("no such derivatives folder", deriv)
    files = [(p, entities(p)) for p in sorted(deriv.rglob("sub-*_desc-preproc_bold.nii*"))]
    files = [(p, e) for p, e in files if e.get("suffix") == "bold" and "sub" in e and "task" in e]
    task = _pick_task({e["task"] for _, e in files}, task, deriv)
    wanted = None if subjects is None else {_bare(s) for s in subjects}
    groups: dict[tuple, list] = {}
    for p, e in files:
        if e["task"] == task and (wanted is None or e["sub"] in wanted):
            key = tuple(e.get(k, "") for k in ("sub", "ses", "task", "acq", "dir", "run", "echo"))
            groups.setdefault(key, []).append((p, e))
    runs = []
    for key, group in sorted(groups.items()):
        name = "_".join(f"{k}-{v}" for k, v in zip(("sub", "ses", "task", "acq", "dir", "run", "echo"), key) if v)
        bold = _pick_space(group, space, res, name)
        e = entities(bold)
        run = "-".join(v for v in (e.get("acq"), e.get("dir"), e.get("run"), e.get("echo")) if v) or "1"
        runs.append(RunSpec(e["sub"], e.get("ses", ""), task, run, bold, _events_for(root, e, bold),
                            _sidecars_for(root, e, bold), None, True))
    _check_subjects(root, deriv, task, runs, wanted)
    return runs, {"derivatives": str(deriv)}


def _check_subjects(root: Path, deriv: Path, task: str, runs: list[RunSpec], wanted: set[str] | None) -> None:
    """Every subject asked for (--subjects), and every raw subject with events of the task, has runs."""
    have = {r.subject for r in runs}
    if wanted is not None:
        missing = sorted(wanted - have)
    else:
        raw = {p.name[4:] for p in root.glob("sub-*") if p.is_dir()
               and next(p.rglob(f"*_task-{task}*_events.tsv"), None) is not None}
        missing = sorted(raw - have)
    if missing:
        raise DataError(f"sub-{missing[0]}{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}: no "
                        f"fMRIPrep run of task '{task}' in {deriv} (choose the subjects to import with --subjects)",
                        root / f"sub-{missing[0]}")
    if not runs:
        raise DataError(f"no fMRIPrep runs of task '{task}'", deriv)


# --- HCP --------------------------------------------------------------------------------------------------------

def find_hcp(root: Path, task: str | None, subjects: Sequence[str] | None) -> list[RunSpec]:
    """The runs of an HCP release (see the module's docstring); `task` as HCP spells it (EMOTION)."""
    folders = [root] if (root / "MNINonLinear").is_dir() else sorted(p.parent for p in root.glob("*/MNINonLinear"))
    if subjects is not None:
        named = {s: root / s for s in subjects}
        absent = [s for s, p in named.items() if not (p / "MNINonLinear").is_dir()]
        if absent:
            raise DataError(f"subject {absent[0]}: no {absent[0]}/MNINonLinear folder in this release", root)
        folders = sorted(named.values())
    pattern = re.compile(r"^tfMRI_(.+)_(LR|RL)$")
    tasks = {m.group(1) for f in folders for d in (f / "MNINonLinear" / "Results").glob("tfMRI_*")
             if (m := pattern.match(d.name))}
    task = _pick_task(tasks, task.upper() if task else None, root)
    runs = []
    for folder in folders:
        found = 0
        for direction in HCP_DIRECTIONS:
            results = folder / "MNINonLinear" / "Results" / f"tfMRI_{task}_{direction}"
            bold = results / f"tfMRI_{task}_{direction}.nii.gz"
            if bold.is_file():
                if not (results / "EVs").is_dir():
                    raise DataError("no EVs folder beside this run (HCP's EVs/<condition>.txt)", bold)
                runs.append(RunSpec(folder.name, "", task, direction, bold, results / "EVs"))
                found += 1
        if not found:
            raise DataError(f"subject {folder.name}: no tfMRI_{task}_LR or _RL run in MNINonLinear/Results "
                            "(choose the subjects to import with --subjects)", folder)
    return runs


# --- a CSV table of runs -------------------------------------------------------------------------------------------

def read_table(path: Path, subjects: Sequence[str] | None) -> list[RunSpec]:
    """The runs of a CSV table (columns bold, events, subject, run, tr; session, task optional)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = [c.strip().lower() for c in reader.fieldnames or []]
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise DataError(f"table lacks the column(s) {', '.join(missing)} (expected {','.join(CSV_COLUMNS)}"
                                "[,session,task])", path)
            rows = [(line, {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k is not None})
                    for line, raw in enumerate(reader, start=2)]
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read the table ({err})", path) from None
    runs = []
    for line, row in rows:
        if subjects is not None and row["subject"] not in subjects:
            continue
        runs.append(_table_run(path, line, row))
    if not runs:
        raise DataError("no runs in the table" + (" for --subjects" if subjects else ""), path)
    if subjects is not None:
        absent = sorted(set(subjects) - {r.subject for r in runs})
        if absent:
            raise DataError(f"subject {absent[0]}: no run in the table", path)
    seen: dict[str, int] = {}
    for (line, _), r in zip(rows, runs):
        if r.name in seen:
            raise DataError(f"line {line}: the same subject, session, task and run as line {seen[r.name]}", path)
        seen[r.name] = line
    return runs


def _table_run(path: Path, line: int, row: dict) -> RunSpec:
    """One row of the table as a RunSpec; DataError naming the line for an empty cell or a bad TR."""
    for c in ("bold", "events", "subject", "run", "tr"):
        if not row.get(c):
            raise DataError(f"line {line}: empty {c}", path)
    try:
        tr = float(row["tr"])
    except ValueError:
        tr = math.nan
    if not math.isfinite(tr) or tr <= 0:
        raise DataError(f"line {line}: tr '{row['tr']}' is not a repetition time in seconds", path)
    bold, events = path.parent / row["bold"], path.parent / row["events"]
    for what, p in (("4D file", bold), ("events", events)):
        if not p.exists():
            raise DataError(f"line {line}: no such {what} file", p)
    e = entities(bold) if "_bold.nii" in bold.name else {}
    if e.get("space") and not e["space"].startswith(MNI_PREFIX):
        raise DataError(f"space-{e['space']} is not MNI space: {MNI_OUTPUT}", bold)
    if e and "space" not in e and "sub" in e:
        raise DataError(f"a BIDS series with no space entity is a native (raw) series: {MNI_OUTPUT}", bold)
    return RunSpec(row["subject"], row.get("session", ""), row.get("task") or "task", row["run"], bold, events,
                   (), tr, e.get("desc") == "preproc" and "space" in e)
