"""A split streamed from its packed file: DataLoader workers read the rows of each batch, the device unpacks them.

The batch order is the split's (`batches.Split`: the same order, flips and shards as a resident split for the same
seed and epoch); the loader is only told which rows to read, one request per batch (this rank's shard of it,
so under torchrun a rank reads its own rows and no others). A worker reads a request's rows with the file's
`RowReader` (sorted, adjacent rows in one read, no memory map), returns them packed (b, V) in the stored dtype,
pinned on CUDA; the main process copies them to the device (non-blocking) and unpacks them there (`Unpacker`).
Host memory is a few batches of packed rows per worker (`prefetch`), whatever the size of the data set.

One DataLoader per split, its workers kept between epochs (`persistent_workers`); each epoch hands it that epoch's
requests. `workers=0` reads in the main process.
"""
from __future__ import annotations

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
    """The requests of the epoch being read, in order (set before each pass)."""

    def __init__(self):
        self.requests: list[np.ndarray] = []

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(self.requests)

    def __len__(self) -> int:
        return len(self.requests)


class StreamSplit(Split):
    """The rows of a packed file (`PackedVolumes`; `index` picks some) read batch by batch from the file, labels
    (N,) int64 on `device`; each batch unpacked to dense volumes in `dtype` on the device.

    workers: DataLoader worker processes (0: read in this process); prefetch: requests each worker reads ahead."""

    def __init__(self, volumes, y, device, dtype: torch.dtype = torch.float32, index: np.ndarray | None = None, *,
                 workers: int = 2, prefetch: int = 4):
        self.device = torch.device(device)
        self.dtype = dtype
        self.y = _labels(y, len(volumes), index, self.device)
        self.source = volumes.source
        self.file_rows = volumes.rows if index is None else volumes.rows[np.asarray(index)]
        self.unpack = Unpacker(self.source, self.device, dtype)
        self.workers, self.prefetch = workers, prefetch
        self._requests = _Requests()
        self._loader: DataLoader | None = None

    @property
    def row_bytes(self) -> int:
        return self.source.width * self.source.dtype.itemsize

    def loader(self) -> DataLoader:
        if self._loader is None:
            cuda = self.device.type == "cuda"
            more = dict(prefetch_factor=self.prefetch, persistent_workers=True) if self.workers else {}
            # its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, which
            # would shift every later dropout draw and make a streamed run differ from a resident one
            self._loader = DataLoader(_Rows(self.source.reader), batch_size=None, sampler=self._requests,
                                      num_workers=self.workers, pin_memory=cuda, generator=torch.Generator(),
                                      **more)
        return self._loader

    def read(self, requests: list[np.ndarray]) -> Iterator[torch.Tensor]:
        """The packed rows of each request (file rows), in order, on the device."""
        self._requests.requests = requests
        cuda = self.device.type == "cuda"
        for rows in self.loader():
            yield rows.to(self.device, non_blocking=cuda)

    def _volumes(self, order, order_dev, bounds):
        requests = [self.file_rows[order[a:b].numpy()] for a, b in bounds]
        for rows in self.read(requests):
            yield self.unpack(rows)
