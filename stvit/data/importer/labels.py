"""Which volume of a run takes which condition, and why the others are dropped.

Volume i of a run is acquired at t_i = start + i * TR (start: the sidecar's StartTime when it gives one, else 0).
Its BOLD signal answers the stimulus of about `hrf_shift` seconds earlier (the haemodynamic response peaks some
5 s after a stimulus), so it takes condition c when t_i - hrf_shift lies inside one of c's events
[onset, onset + duration). The others are dropped, each with a reason:

    rest              t_i - hrf_shift inside no event (fixation, before the first block, after the last)
    other condition   inside an event of a condition not imported (cues, instructions, a third condition)
    transition        within `trim` seconds of the start or end of its block: the response to the block before
                      or after still mixes in (trim 0 keeps every volume inside a block)
    overlap           inside events of two imported conditions at once
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from stvit.data.dataset import DataError
from stvit.data.importer.events import Events

REASONS = ("rest", "other condition", "transition", "overlap")


@dataclass(frozen=True)
class RunLabels:
    """Per volume of a run: label (T,) int64 class index or -1; reason (T,) str ("" for a kept volume);
    time (T,) float64 acquisition time in s."""

    label: np.ndarray
    reason: np.ndarray
    time: np.ndarray


def check_events_in_run(events: Events, n_frames: int, tr: float, start: float, path: Path) -> None:
    """Refuse an event that starts after the run's last volume (a wrong TR, or the events of another run)."""
    end = start + n_frames * tr
    late = events.onset >= end
    if late.any():
        i = int(np.argmax(events.onset))
        raise DataError(f"event onset {events.onset[i]:g} s ('{events.condition[i]}') is beyond the end of the run "
                        f"({n_frames} volumes x TR {tr:g} s = {end:g} s)", path)


def inside(time: np.ndarray, onsets: np.ndarray, durations: np.ndarray) -> np.ndarray:
    """(T, E) bool: whether each time lies in [onset, onset + duration) of each event."""
    return (time[:, None] >= onsets[None, :]) & (time[:, None] < (onsets + durations)[None, :])


def label_run(events: Events, conditions: Sequence[str], n_frames: int, tr: float, *, start: float = 0.0,
              hrf_shift: float = 5.0, trim: float = 0.0) -> RunLabels:
    """The class of each volume (the index of its condition in `conditions`) or the reason it is dropped."""
    time = start + np.arange(n_frames) * tr
    s = time - hrf_shift
    hits = np.zeros((n_frames, len(conditions)), bool)
    edge = np.zeros(n_frames, bool)
    for k, name in enumerate(conditions):
        onsets, durations = events.of(name)
        within = inside(s, onsets, durations)
        hits[:, k] = within.any(1)
        near = (s[:, None] - onsets < trim) | (onsets + durations - s[:, None] <= trim)
        edge |= (within & near).any(1)
    other = np.isin(events.condition, list(conditions), invert=True)
    in_other = inside(s, events.onset[other], events.duration[other]).any(1)
    label = np.where(hits.sum(1) == 1, hits.argmax(1), -1).astype(np.int64)
    reason = np.full(n_frames, "", dtype=object)
    reason[hits.sum(1) > 1] = "overlap"
    reason[(hits.sum(1) == 1) & edge] = "transition"
    reason[(hits.sum(1) == 0) & in_other] = "other condition"
    reason[(hits.sum(1) == 0) & ~in_other] = "rest"
    label[reason != ""] = -1
    return RunLabels(label, reason.astype(str), time)
