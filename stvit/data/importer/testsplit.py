"""The test split of an imported study: whole subjects, stratified by label, chosen by a seed.

`--test-subjects` is a count (`3`), a fraction of the subjects (`0.2`, rounded, at least one, never all) or a file
of subject ids (one a line; `sub-01` or `01`). Stratified: the subjects, sorted by their class shares, are cut into
as many strata as test subjects, and one subject is drawn from each with the seed: the same study and seed give
the same split, another seed another one, and the test split spans the study's mix of class shares. A study of
one subject has no whole subject to hold out: its test split is then whole runs (the same count or fraction, of
its runs), and the summary says so.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from stvit.data.dataset import DataError


def parse_rule(text: str) -> tuple[str, float | Path]:
    """`--test-subjects` as ("count", n), ("fraction", f) or ("file", path)."""
    try:
        value = float(text)
    except ValueError:
        path = Path(text)
        if not path.is_file():
            raise DataError("--test-subjects is not a count, a fraction in (0, 1) or a file of subject ids",
                            text) from None
        return "file", path
    if value >= 1 and value == int(value):
        return "count", int(value)
    if 0 < value < 1:
        return "fraction", value
    raise DataError(f"--test-subjects {text}: give a count >= 1, a fraction in (0, 1) or a file of subject ids")


def read_ids(path: Path, known: Sequence[str]) -> list[str]:
    """The subject ids of a file (one a line, blank lines and '#' comments skipped), each one of `known`."""
    ids = []
    for line, text in enumerate(path.read_text().splitlines(), start=1):
        s = text.strip()
        if not s or s.startswith("#"):
            continue
        s = s[4:] if s.startswith("sub-") and s[4:] in known else s
        if s not in known:
            raise DataError(f"line {line}: subject '{text.strip()}' is not in the study", path)
        ids.append(s)
    return ids


def choose(counts: np.ndarray, k: int, seed: int) -> np.ndarray:
    """(G,) bool: k of the G groups (rows of per-class volume counts (G, C)), stratified: the groups sorted by their
    class shares (ties in a seeded random order) are cut into k consecutive strata of near-equal size, and one group
    is drawn from each stratum with the seed. The test split then spans the study's mix of class shares."""
    rng = np.random.default_rng([seed % 2**63, 0x7E57])
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    shuffled = rng.permutation(len(counts))
    order = shuffled[np.lexsort(shares[shuffled].T[::-1])]  # by share of class 0, then 1, ...; ties: shuffled
    chosen = np.zeros(len(counts), bool)
    for stratum in np.array_split(order, k):
        chosen[rng.choice(stratum)] = True
    return chosen


def choose_test(groups: Sequence[str], counts: np.ndarray, rule: tuple[str, float | Path], seed: int,
                unit: str) -> np.ndarray:
    """(G,) bool: the test groups (subjects, or runs of a single subject: `unit` names them in messages)."""
    G = len(groups)
    if G < 2:
        raise DataError(f"one {unit[:-1]} only: no test split can be held out (import more {unit})")
    kind, value = rule
    if kind == "file":
        if unit != "subjects":
            raise DataError("a file of test subjects needs a study of several subjects", value)
        ids = set(read_ids(value, list(groups)))
        test = np.array([g in ids for g in groups])
        if test.all() or not test.any():
            raise DataError(f"names {'every' if test.all() else 'no'} subject of the study: both splits need "
                            "subjects", value)
        return test
    if kind == "count" and value > G - 1:
        raise DataError(f"--test-subjects {value:g} leaves no {unit[:-1]} for the training split ({G} {unit})")
    k = int(value) if kind == "count" else min(max(1, int(round(value * G))), G - 1)
    return choose(counts, k, seed)
