"""Where a run's data lives while it trains: resident on the device, or streamed from the file.

    place(data, index, device, dtype, placement="auto", memory_share=0.6) -> Placed(train, val, make_test, record)

- A file read whole (MAT, npz, HDF5, NIfTI: `load_dataset`) is resident as dense volumes (`DeviceSplit`), as it
  always was: placement "dense".
- A packed file (`open_dataset` -> `PackedVolumes`) is resident as packed rows (`PackedSplit`, placement "device")
  when the training and validation rows fit the budget, `memory_share` of the free memory of the device (CUDA:
  `torch.cuda.mem_get_info`; CPU: the host's `MemAvailable` in /proc/meminfo, shared by the processes of the
  node under torchrun), else streamed from the file (`StreamSplit`, placement "stream"). `placement` "device" or
  "stream" forces the choice. The test split, read once at the end, is resident when it fits what the budget
  leaves, else streamed. Data without a test split (a search's fold, an estimator's fit) is placed all the same:
  the record's `test` is "none" and asking for the test split raises ValueError.

The default share, 0.6, leaves the rest of the device to the model, its activations and the allocator's slack:
80 GB of free GPU memory gives a 48 GB budget. The choice changes where the rows are read from, never the
batches: every placement gives the same batches for the same seed and epoch (`batches.Split`).

`record` (the first log record of each stage, `data_placement`, and metrics.json) says the choice, why, the budget
and the bytes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from stvit.config import PLACEMENTS
from stvit.data.batches import DeviceSplit, PackedSplit, Split, resident_dtype
from stvit.data.packed import PackedVolumes

DEFAULT_SHARE = 0.6  # of the free device memory (host MemAvailable on a CPU) the resident rows may take
DEFAULT_WORKERS = 2  # streaming loader: worker processes
DEFAULT_PREFETCH = 4  # streaming loader: batches each worker reads ahead


def free_memory(device: torch.device) -> tuple[int, str]:
    """(bytes free on `device`, how it was measured): CUDA `mem_get_info`; CPU `MemAvailable` (/proc/meminfo; else
    `sysconf` free pages), or less when this process's memory cgroup (v1 or v2, or an ancestor) leaves less room
    (`cgroup_room`: a container's limit, which MemAvailable does not show)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]), "torch.cuda.mem_get_info free"
    free, how = None, "MemAvailable (/proc/meminfo)"
    try:
        with open("/proc/meminfo") as f:
            free = next((int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")), None)
    except OSError:
        pass
    if free is None:
        free, how = int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "sysconf free pages"
    room = cgroup_room()
    if room is not None and room < free:
        return max(room, 0), "memory cgroup limit minus its anonymous memory"
    return free, how


NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a number near 2^63


def cgroup_room() -> int | None:
    """Bytes the memory cgroups of this process leave it: the smallest `limit - anonymous memory in use` over its
    cgroup and their ancestors (page cache is reclaimable, so it does not count); None when none has a limit."""
    rooms = []
    try:
        lines = open("/proc/self/cgroup").read().splitlines()
    except OSError:
        return None
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and controllers == "":  # v2
            places = [("/sys/fs/cgroup", "memory.max", "anon"), ("/sys/fs/cgroup/unified", "memory.max", "anon")]
        elif "memory" in controllers.split(","):
            places = [("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "total_rss")]
        else:
            continue
        for base, limit_file, anon_key in places:
            group = Path(base + path)
            while len(group.parts) >= len(Path(base).parts):
                try:
                    text = (group / limit_file).read_text().strip()
                    limit = None if text == "max" else int(text)
                    if limit is not None and limit < NO_LIMIT:
                        stat = dict(l.split() for l in (group / "memory.stat").read_text().splitlines())
                        rooms.append(limit - int(stat.get(anon_key, 0)))
                except (OSError, ValueError):
                    pass
                group = group.parent
    return min(rooms) if rooms else None


def features_fit(data, index: dict[str, np.ndarray], share: float = DEFAULT_SHARE) -> tuple[bool, int, int]:
    """Whether the in-brain voxels of every volume of `data` (train, validation, test) fit `share` of the host's
    free memory as float32 features (what the linear baseline holds): (fits, bytes needed, budget). A file read
    whole always fits (its volumes are in memory already)."""
    X = data.X_train
    if not isinstance(X, PackedVolumes):
        return True, 0, 0
    n_test = 0 if data.X_test is None else len(data.X_test)
    need = (len(index["train"]) + len(index["val"]) + n_test) * X.source.width * 4
    budget = int(share * free_memory(torch.device("cpu"))[0])
    return need <= budget, need, budget


def choose_placement(nbytes: int, free: int, share: float = DEFAULT_SHARE, requested: str = "auto") -> str:
    """"device" when `nbytes` fit `share * free` (or when asked), else "stream" (or when asked)."""
    if requested not in PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {requested!r}")
    if requested != "auto":
        return requested
    return "device" if nbytes <= share * free else "stream"


def placement_line(record: dict[str, Any]) -> str:
    """The record in a few words, for the run's first line."""
    def gb(b: int) -> str:
        return f"{b / 1e9:.2f} GB"

    mode = record["placement"]
    if mode == "dense":
        return f"data resident as dense volumes ({gb(record['bytes'])})"
    rows = f"packed {record['stored_dtype']} rows, {gb(record['bytes'])}"
    budget = f"a {gb(record['budget_bytes'])} budget ({record['memory_share']:g} of free memory)"
    if mode == "device":
        return f"data resident on the device ({rows}, within {budget})"
    over = "over" if record["bytes"] > record["budget_bytes"] else "asked for; within"
    return f"data streamed from the file ({rows}, {over} {budget}; {record['workers']} workers)"


@dataclass
class Placed:
    """A run's splits where `place` put them, and the record of why."""

    train: Split
    val: Split
    make_test: Callable[[], Split]
    record: dict[str, Any]


def place(data, index: dict[str, np.ndarray], device: torch.device, dtype: torch.dtype, *, placement: str = "auto",
          memory_share: float = DEFAULT_SHARE, workers: int = DEFAULT_WORKERS,
          prefetch: int = DEFAULT_PREFETCH) -> Placed:
    """The train and validation splits (`index`: positions in the file's training split) and the test split (made
    on first use; None in `data` when a run has none, a search's fold) of `data` on `device`, training dtype
    `dtype`, placed as the module says."""
    device = torch.device(device)
    free, measured = free_memory(device)
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1
    budget = int(memory_share * free / max(processes, 1))
    record: dict[str, Any] = {"requested": placement, "budget_bytes": budget, "free_bytes": free,
                              "memory_share": memory_share, "measured": measured}
    if processes > 1:
        record["processes_sharing_memory"] = processes
    Xtr, Xte = data.X_train, data.X_test
    n_test = 0 if Xte is None else len(Xte)
    if Xte is None:
        def no_test():
            raise ValueError(f"{data.source}: this data set has no test split (a search's fold, an estimator's fit)")
    if not isinstance(Xtr, PackedVolumes):
        item = torch.empty((), dtype=dtype).element_size()
        per = int(np.prod(Xtr.shape[1:])) * item
        record.update(placement="dense", test="dense", why="not a packed file: read whole, resident as dense volumes",
                      bytes=(len(index["train"]) + len(index["val"])) * per, test_bytes=n_test * per,
                      stored_dtype=str(Xtr.dtype), resident_dtype=str(dtype).replace("torch.", ""))
        if Xte is None:
            record["test"] = "none"
        return Placed(DeviceSplit(Xtr, data.y_train, device, dtype, index=index["train"]),
                      DeviceSplit(Xtr, data.y_train, device, dtype, index=index["val"]),
                      no_test if Xte is None else lambda: DeviceSplit(Xte, data.y_test, device, dtype), record)
    from stvit.data.stream import StreamSplit

    source = Xtr.source
    resident = resident_dtype(source.dtype, dtype)
    per = source.width * resident.itemsize
    nbytes = (len(index["train"]) + len(index["val"])) * per
    test_bytes = n_test * per
    mode = choose_placement(nbytes, free / max(processes, 1), memory_share, placement)
    test_mode = mode if placement != "auto" or mode == "stream" else \
        choose_placement(nbytes + test_bytes, free / max(processes, 1), memory_share)
    if Xte is None:
        test_mode = "none"
    why = {"auto": f"the training and validation rows {'fit' if mode == 'device' else 'exceed'} the budget",
           "device": "asked (data.placement device)", "stream": "asked (data.placement stream)"}[placement]
    record.update(placement=mode, test=test_mode, why=why, bytes=nbytes, test_bytes=test_bytes,
                  stored_dtype=str(source.dtype),
                  resident_dtype=str(resident).replace("torch.", "") if mode == "device" else None,
                  in_brain_voxels=source.width)
    if "stream" in (mode, test_mode):
        record.update(workers=workers, prefetch=prefetch)

    def make(mode: str, volumes, y, rows):
        if mode == "device":
            return PackedSplit(volumes, y, device, dtype, index=rows)
        return StreamSplit(volumes, y, device, dtype, index=rows, workers=workers, prefetch=prefetch)

    return Placed(make(mode, Xtr, data.y_train, index["train"]), make(mode, Xtr, data.y_train, index["val"]),
                  no_test if Xte is None else lambda: make(test_mode, Xte, data.y_test, None), record)
