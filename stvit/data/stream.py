"""A split streamed from its packed file: DataLoader workers read the rows of each batch, the device unpacks them.

The batch order is the split's (`batches.Split`: the same order, flips and shards as a resident split for the same
seed and epoch); the loader is only told which rows to read, one request per batch (this rank's shard of it,
so under torchrun a rank reads its own rows and no others). A worker reads a request's rows with the file's
`RowReader` (sorted, adjacent rows in one read, no memory map), returns them packed (b, V) in the stored dtype,
pinned on CUDA; the main process copies them to the device (non-blocking) and unpacks them there (`Unpacker`).
Host memory is a few batches of packed rows per worker (`prefetch`), whatever the size of the data set.

One DataLoader per file, shared by its splits (train, validation and test are read one after another), its workers
kept between passes (`persistent_workers`): each pass hands it that pass's requests. `workers=0` reads in the main
process.
"""
from __future__ import annotations

import weakref
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stvit.data.batches import Split, Unpacker, _labels


class _Rows(Dataset):
    """A request (file rows of one batch shard) -> its packed rows (b, V), a tensor in the stored dtype."""

    def __init__(self, reader):
        self.reader = reader

    def __getitem__(self, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.reader.read(rows))


class _Requests(Sampler):
    """The requests of the epoch being read, in order (set before each pass). The DataLoader draws a request when it
    hands it to a worker, `workers x prefetch` requests ahead of the batch being trained on: the rows of each are
    announced to the kernel then (`RowReader.hint`), so that the disk reads the next batches while the workers wait
    on the current ones."""

    def __init__(self, reader):
        self.reader = reader
        self.requests: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        for rows in self.requests:
            self.reader.hint(rows)
            yield rows

    def __len__(self) -> int:
        return len(self.requests)


class _Loader:
    """A persistent DataLoader over one file's rows and the requests it is reading; one pass at a time."""

    def __init__(self, reader, workers: int, prefetch: int, pin: bool, persistent: bool = True):
        self.requests = _Requests(reader)
        self.busy = False
        more = dict(prefetch_factor=prefetch, persistent_workers=persistent) if workers else {}
        # its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, which would
        # shift every later dropout draw and make a streamed run differ from a resident one
        self.loader = DataLoader(_Rows(reader), batch_size=None, sampler=self.requests, num_workers=workers,
                                 pin_memory=pin, generator=torch.Generator(), **more)

    def read(self, requests: list[np.ndarray]) -> Iterator[torch.Tensor]:
        self.requests.requests = requests
        self.busy = True
        try:
            yield from self.loader
        finally:
            self.busy = False


# the loaders of each file, shared by its splits (train, validation, test are read one after the other): one set of
# worker processes per file and loader setting, not one per split
_LOADERS: "weakref.WeakKeyDictionary[object, dict[tuple, _Loader]]" = weakref.WeakKeyDictionary()


def shared_loader(source, workers: int, prefetch: int, pin: bool) -> _Loader:
    """The persistent loader of `source` (a `PackedSource`) for this setting, made on first use."""
    loaders = _LOADERS.setdefault(source, {})
    key = (workers, prefetch, pin)
    if key not in loaders:
        loaders[key] = _Loader(source.reader, workers, prefetch, pin)
    return loaders[key]


class StreamSplit(Split):
    """The rows of a packed file (`PackedVolumes`; `index` picks some) read batch by batch from the file, labels
    (N,) int64 on `device`; each batch unpacked to dense volumes in `dtype` on the device.

    workers: DataLoader worker processes (0: read in this process); prefetch: requests each worker reads ahead.
    The splits of one file share one loader and its workers (`shared_loader`); a split read while another is being
    read gets a loader of its own for that pass."""

    def __init__(self, volumes, y, device, dtype: torch.dtype = torch.float32, index: np.ndarray | None = None, *,
                 workers: int = 2, prefetch: int = 4):
        self.device = torch.device(device)
        self.dtype = dtype
        self.y = _labels(y, len(volumes), index, self.device)
        self.source = volumes.source
        self.file_rows = volumes.rows if index is None else volumes.rows[np.asarray(index)]
        self.unpack = Unpacker(self.source, self.device, dtype)
        self.workers, self.prefetch = workers, prefetch

    @property
    def row_bytes(self) -> int:
        """Bytes of one stored row."""
        return self.source.width * self.source.dtype.itemsize

    def read(self, requests: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """The packed rows of each request (file rows), in order, on the device."""
        cuda = self.device.type == "cuda"
        loader = shared_loader(self.source, self.workers, self.prefetch, cuda)
        if loader.busy:  # two splits of a file read at once: this pass gets its own workers
            loader = _Loader(self.source.reader, self.workers, self.prefetch, cuda, persistent=False)
        for rows in loader.read(requests):
            yield rows.to(self.device, non_blocking=cuda)

    def _volumes(self, order, order_dev, bounds):
        requests = [self.file_rows[order[a:b].numpy()] for a, b in bounds]
        for rows in self.read(requests):
            yield self.unpack(rows)
