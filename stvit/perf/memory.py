"""Memory of a running process and its children, as Linux reports it (/proc): what the data-placement benchmark and
the memory-cap test measure."""
from __future__ import annotations

from pathlib import Path


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a training run and its DataLoader workers); [] of a child that ended meanwhile."""
    out = [pid]
    try:
        for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            out += process_tree(int(child))
    except OSError:
        pass
    return out


def pss(pid: int) -> int:
    """Proportional set size in bytes: private pages plus a share of the pages shared with other processes (so a
    sum over processes counts each page once); 0 once the process has ended."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_pss(pid: int) -> int:
    """The summed PSS of `pid` and its descendants."""
    return sum(pss(p) for p in process_tree(pid))
