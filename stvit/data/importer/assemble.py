"""The last step of an import: the parts of every run into one packed data file, in the runs' fixed order.

The file's mask is the grid's MNI152 brain mask restricted to the voxels that hold data in at least one run (a
run whose field of view misses some of them has 0 there, the value of its mean after z-scoring). The test split
is chosen here from the parts' labels (`testsplit`). Same parts, same order, same parameters: the same bytes
(`PackedWriter` writes no time stamps), whatever the number of jobs or interruptions that made the parts.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stvit.data.dataset import VOLUME_SHAPE
from stvit.data.importer.geometry import grid_index
from stvit.data.importer.plan import RunPlan
from stvit.data.importer.testsplit import choose_test
from stvit.data.packed import PackedWriter


@dataclass
class Assembled:
    """What the file holds, for the summary."""

    n_voxels: int
    kept: np.ndarray  # (C,) volumes per class
    test: dict[str, Any]  # unit, test groups, volumes per split


def part_labels(paths: Sequence[Path]) -> list[np.ndarray]:
    """The labels of every part (reads only that array of each)."""
    out = []
    for p in paths:
        with np.load(p) as part:
            out.append(part["label"])
    return out


def split_groups(plans: Sequence[RunPlan], labels: Sequence[np.ndarray], num_classes: int,
                 rule, seed: int) -> tuple[np.ndarray, str, list[str]]:
    """(per run: in the test split, unit, test groups): whole subjects, or whole runs of a single subject."""
    subjects = [p.spec.subject for p in plans]
    unit, keys = ("subjects", subjects) if len(set(subjects)) > 1 else ("runs", [p.spec.name for p in plans])
    groups = list(dict.fromkeys(keys))
    counts = np.zeros((len(groups), num_classes), np.int64)
    for key, y in zip(keys, labels):
        counts[groups.index(key)] += np.bincount(y, minlength=num_classes)
    test = choose_test(groups, counts, rule, seed, unit)
    chosen = {g for g, t in zip(groups, test) if t}
    return np.array([k in chosen for k in keys]), unit, sorted(chosen)


def union_inside(paths: Sequence[Path]) -> np.ndarray:
    """(V,) bool over the grid mask's voxels: in-brain data in at least one run."""
    union = None
    for p in paths:
        with np.load(p) as part:
            inside = part["inside"]
        union = inside.copy() if union is None else union | inside
    return union


def assemble(out: Path, plans: Sequence[RunPlan], paths: Sequence[Path], class_names: Sequence[str], dtype: str,
             rule, seed: int, provenance: dict[str, Any]) -> Assembled:
    """Write the packed file at `out` (atomically) from the parts `paths` (one per plan, same order)."""
    labels = part_labels(paths)
    in_test, unit, groups = split_groups(plans, labels, len(class_names), rule, seed)
    union = union_inside(paths)
    mask = np.zeros(int(np.prod(VOLUME_SHAPE)), bool)
    mask[grid_index()[union]] = True
    provenance = {**provenance, "test_split": {"unit": unit, "test": groups, "rule": _rule(rule), "seed": seed}}
    kept, sizes = np.zeros(len(class_names), np.int64), {"train": 0, "test": 0}
    with PackedWriter(out, mask.reshape(VOLUME_SHAPE), dtype=dtype, class_names=class_names,
                      provenance=provenance) as w:
        for plan, path, test in zip(plans, paths, in_test):
            with np.load(path) as part:
                rows, y = part["rows"][:, union], part["label"]
                s = plan.spec
                w.add(rows, y, "test" if test else "train", subject=[s.subject] * len(y),
                      session=[s.session] * len(y), run=[s.run] * len(y), volume=part["volume"],
                      onset=part["onset"], condition=part["condition"])
            kept += np.bincount(y, minlength=len(class_names))
            sizes["test" if test else "train"] += len(y)
    return Assembled(int(union.sum()), kept, {"unit": unit, "groups": groups, **sizes})


def _rule(rule) -> Any:
    kind, value = rule
    return {kind: str(value) if isinstance(value, Path) else value}
