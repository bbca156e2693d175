"""Task events: BIDS `_events.tsv` (onset, duration, trial_type) or FSL's 3-column files (onset, duration,
weight; one file per condition, named by it: HCP's `EVs/fear.txt`), read into one table.

An `Events` holds three aligned arrays: onset and duration in seconds from the first volume, and the condition
name. Everything a user can get wrong (a missing column, a number that is not one, a negative duration) is a
`DataError` naming the file and the line.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stvit.data.dataset import DataError

BIDS_COLUMNS = ("onset", "duration", "trial_type")


@dataclass(frozen=True)
class Events:
    """onset, duration (E,) float64 seconds; condition (E,) str."""

    onset: np.ndarray
    duration: np.ndarray
    condition: np.ndarray

    def conditions(self) -> list[str]:
        """The condition names, in order of first appearance."""
        return list(dict.fromkeys(self.condition.tolist()))

    def of(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(onsets, durations) of one condition."""
        keep = self.condition == name
        return self.onset[keep], self.duration[keep]


def _number(text: str, what: str, line: int, path: Path) -> float:
    """A finite number from a table cell; DataError naming the line otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"line {line}: {what} '{text}' is not a number", path)
    return value


def read_bids_events(path: Path) -> Events:
    """A BIDS events table (tab-separated, header line; `n/a` allowed in any other column; rows whose trial_type
    is `n/a` or empty carry no condition and are left out)."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the events table ({err})", path) from None
    rows = [line.split("\t") for line in lines if line.strip()]
    if not rows:
        raise DataError("events table is empty (expected a header with onset, duration, trial_type)", path)
    header = [c.strip().lower() for c in rows[0]]
    missing = [c for c in BIDS_COLUMNS if c not in header]
    if missing:
        raise DataError(f"events table lacks the column(s) {', '.join(missing)} (it has: {', '.join(header)}; "
                        "BIDS events need onset, duration, trial_type)", path)
    at = [header.index(c) for c in BIDS_COLUMNS]
    onset, duration, condition = [], [], []
    for line, cells in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in cells] + [""] * (len(header) - len(cells))
        name = cells[at[2]]
        if name in ("", "n/a"):
            continue
        onset.append(_number(cells[at[0]], "onset", line, path))
        duration.append(_number(cells[at[1]], "duration", line, path))
        if duration[-1] < 0:
            raise DataError(f"line {line}: negative duration {duration[-1]:g}", path)
        condition.append(name)
    return Events(np.array(onset, np.float64), np.array(duration, np.float64), np.array(condition, dtype=str))


def read_fsl_events(path: Path, condition: str | None = None) -> Events:
    """One FSL 3-column file (onset, duration, weight per line, blank-separated): the events of `condition`
    (default: the file's stem, `fear` for `EVs/fear.txt`). Rows of weight 0 are no event and are left out."""
    name = condition or path.name.split(".")[0]
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read the events file ({err})", path) from None
    onset, duration = [], []
    for line, text in enumerate(lines, start=1):
        cells = text.split()
        if not cells or cells[0].startswith("#"):
            continue
        if len(cells) != 3:
            raise DataError(f"line {line}: {len(cells)} columns, expected FSL's 3 (onset, duration, weight)", path)
        o, d, w = (_number(c, what, line, path) for c, what in zip(cells, ("onset", "duration", "weight")))
        if d < 0:
            raise DataError(f"line {line}: negative duration {d:g}", path)
        if w != 0:
            onset.append(o)
            duration.append(d)
    return Events(np.array(onset, np.float64), np.array(duration, np.float64), np.array([name] * len(onset), dtype=str))


def read_events(path: Path, names: list[str] | None = None) -> Events:
    """Events from a BIDS `.tsv`, one FSL `.txt` file, or a folder of FSL files (`names`: the conditions to read
    from a folder, `<name>.txt` each; every `.txt` of the folder when None)."""
    if path.is_dir():
        files = [path / f"{n}.txt" for n in names] if names else sorted(path.glob("*.txt"))
        found = [f for f in files if f.is_file()]
        if not found:
            raise DataError("no FSL 3-column event files (<condition>.txt) in this folder", path)
        parts = [read_fsl_events(f) for f in found]
        return Events(*(np.concatenate([getattr(p, k) for p in parts]) for k in ("onset", "duration", "condition")))
    if not path.is_file():
        raise DataError("no such events file", path)
    if path.suffix.lower() == ".tsv":
        return read_bids_events(path)
    return read_fsl_events(path)
