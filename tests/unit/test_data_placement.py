"""Where the data lives (`stvit.data.placement`) and the batches of each placement: dense volumes, packed rows on
the device and rows streamed from the file give the same batches for the same seed and epoch, bit for bit; a
streamed rank reads its own rows and no others; float16 storage changes the input by its rounding only."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stvit.data import HCPData, load_dataset, make_synthetic, open_dataset
from stvit.data import placement as P
from stvit.data.batches import DeviceSplit, PackedSplit
from stvit.data.packed import RowReader, write_packed
from stvit.data.stream import StreamSplit

CPU = torch.device("cpu")
SHAPE = (5, 6, 4)


def small_set(n_train=43, n_test=9, seed=0) -> HCPData:
    rng = np.random.default_rng(seed)
    support = rng.random(SHAPE) < 0.6

    def make(n, first):
        X = rng.standard_normal((n, *SHAPE)).astype(np.float32) * support
        return X, np.arange(n) % 2, np.array([f"s{first + i // 3}" for i in range(n)])

    return HCPData(*make(n_train, 0), *make(n_test, 100), source="small")


@pytest.fixture(scope="module")
def packed32(tmp_path_factory):
    """(dense HCPData read back, the packed file opened lazily) of a float32 packed file."""
    path = write_packed(tmp_path_factory.mktemp("placement") / "p32.h5", small_set(), dtype="float32", block=5)
    return load_dataset(path, volume_shape=SHAPE), open_dataset(path, volume_shape=SHAPE)


def batches_of(split, **kw):
    return [tuple(t.clone() for t in b) for b in split.batches(**kw)]


def assert_same(a, b):
    assert len(a) == len(b)
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert xa.dtype == xb.dtype and torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)


def test_choose_placement_is_a_budget_rule():
    assert P.choose_placement(500, 1000, 0.5) == "device"
    assert P.choose_placement(501, 1000, 0.5) == "stream"
    assert P.choose_placement(10**12, 1000, 0.5, "device") == "device"
    assert P.choose_placement(1, 1000, 0.5, "stream") == "stream"
    with pytest.raises(ValueError, match="placement must be one of"):
        P.choose_placement(1, 1000, 0.5, "disk")


def test_free_host_memory_is_memavailable():
    free, how = P.free_memory(CPU)
    with open("/proc/meminfo") as f:
        available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    assert how == "MemAvailable (/proc/meminfo)" and abs(free - available) < 0.2 * available


@pytest.mark.parametrize("workers", [0, 2])
def test_every_placement_gives_the_same_batches(packed32, workers):
    dense, lazy = packed32
    tr = np.arange(0, 43, 2)[::-1].copy()  # positions in any order: the split keeps them as given
    splits = [DeviceSplit(dense.X_train, dense.y_train, CPU, index=tr),
              PackedSplit(lazy.X_train, lazy.y_train, CPU, index=tr),
              StreamSplit(lazy.X_train, lazy.y_train, CPU, index=tr, workers=workers, prefetch=2)]
    for epoch in (0, 1, 0):  # a streamed split is read again for an epoch it has read before
        runs = [batches_of(s, batch_size=4, epoch=epoch, seed=3, shuffle=True, drop_last=True, flip_fraction=0.3,
                           flip_axis=0) for s in splits]
        assert any(not torch.equal(x, x.flip(1)) for x, _, _ in runs[0])
        for run in runs[1:]:
            assert_same(runs[0], run)
    evals = [batches_of(s, batch_size=5) for s in splits]
    assert [len(x) for x, _, _ in evals[0]] == [5, 5, 5, 5, 2]
    for run in evals[1:]:
        assert_same(evals[0], run)
    for rank in (0, 1):
        shards = [batches_of(s, batch_size=4, epoch=2, seed=1, shuffle=True, drop_last=True, flip_fraction=0.5,
                             rank=rank, world_size=2) for s in splits]
        for run in shards[1:]:
            assert_same(shards[0], run)
    whole = batches_of(splits[2], batch_size=4, epoch=2, seed=1, shuffle=True, drop_last=True, flip_fraction=0.5)
    halves = [batches_of(splits[2], batch_size=4, epoch=2, seed=1, shuffle=True, drop_last=True, flip_fraction=0.5,
                         rank=r, world_size=2) for r in (0, 1)]
    for w, h0, h1 in zip(whole, *halves):
        assert torch.equal(w[0], torch.cat([h0[0], h1[0]])) and torch.equal(w[2], torch.cat([h0[2], h1[2]]))


def test_a_streamed_rank_reads_only_its_rows(packed32, monkeypatch):
    _, lazy = packed32
    real, seen = RowReader._read_sorted, []

    def recording(self, rows, out):
        seen.append(np.asarray(rows).copy())
        return real(self, rows, out)

    monkeypatch.setattr(RowReader, "_read_sorted", recording)  # workers=0: the reads happen in this process
    read = {}
    for rank in (0, 1):
        seen.clear()
        split = StreamSplit(lazy.X_train, lazy.y_train, CPU, workers=0)
        idx = torch.cat([i for _, _, i in split.epoch_batches(6, epoch=0, seed=5, rank=rank, world_size=2)])
        read[rank] = np.concatenate(seen)
        np.testing.assert_array_equal(np.sort(read[rank]), np.sort(lazy.X_train.rows[idx.numpy()]))
        assert [len(s) for s in seen] == [3] * 7  # one read per batch shard: 7 batches of 6, 3 rows each
    assert not set(read[0].tolist()) & set(read[1].tolist())


def test_streaming_leaves_the_global_rng_alone(packed32):
    _, lazy = packed32
    split = StreamSplit(lazy.X_train, lazy.y_train, CPU, workers=1, prefetch=2)
    before = torch.get_rng_state()
    list(split.epoch_batches(4, epoch=0, seed=0, flip_fraction=0.1))
    assert torch.equal(before, torch.get_rng_state())  # dropout draws after it are those of a resident run


def test_place_decides_by_the_budget_and_records_it(packed32, monkeypatch):
    dense, lazy = packed32
    index = {"train": np.arange(30), "val": np.arange(30, 43)}
    width = lazy.X_train.source.width
    train_val, test = 43 * width * 4, 9 * width * 4

    def placed(free, **kw):
        monkeypatch.setattr(P, "free_memory", lambda device: (free, "a test"))
        return P.place(lazy, index, CPU, torch.float32, **kw)

    p = placed(10 * (train_val + test))
    assert (p.record["placement"], p.record["test"]) == ("device", "device")
    assert isinstance(p.train, PackedSplit) and isinstance(p.make_test(), PackedSplit)
    assert p.record["bytes"] == train_val and p.record["test_bytes"] == test
    assert p.record["budget_bytes"] == int(0.6 * 10 * (train_val + test)) and p.record["stored_dtype"] == "float32"
    p = placed(int((train_val + test // 2) / 0.6))  # train and validation fit, the test split no longer does
    assert (p.record["placement"], p.record["test"]) == ("device", "stream")
    assert isinstance(p.make_test(), StreamSplit)
    p = placed(int(train_val / 0.6) - 10)
    assert (p.record["placement"], p.record["test"]) == ("stream", "stream") and p.record["workers"] == 2
    assert isinstance(p.train, StreamSplit) and "exceed" in p.record["why"] and "over" in P.placement_line(p.record)
    p = placed(1, placement="device")
    assert p.record["placement"] == "device" and p.record["why"].startswith("asked")
    p = placed(10**12, placement="stream", memory_share=0.25, workers=1, prefetch=3)
    assert isinstance(p.val, StreamSplit) and p.val.workers == 1 and p.record["memory_share"] == 0.25
    p = placed(10**12)
    assert P.place(dense, index, CPU, torch.float32).record["placement"] == "dense"


def test_float32_rows_kept_narrower_when_training_in_half_precision(packed32):
    _, lazy = packed32
    split = PackedSplit(lazy.X_train, lazy.y_train, CPU, torch.bfloat16)
    assert split.rows.dtype == torch.bfloat16 and split.nbytes == len(split) * lazy.X_train.source.width * 2
    x, _, _ = next(split.eval_batches(4))
    dense = torch.from_numpy(np.asarray(lazy.X_train[np.arange(4)])).to(torch.bfloat16)
    assert x.dtype == torch.bfloat16 and torch.equal(x, dense)


def test_float16_storage_changes_the_input_by_its_rounding_only(tmp_path):
    data = make_synthetic(16, 16, 0)  # the real grid and values
    inputs = {}
    for dtype in ("float32", "float16"):
        lazy = open_dataset(write_packed(tmp_path / f"{dtype}.h5", data, dtype=dtype))
        split = PackedSplit(lazy.X_train, lazy.y_train, CPU)
        inputs[dtype] = torch.cat([x for x, _, _ in split.epoch_batches(4, epoch=0, seed=0, flip_fraction=0.25)])
    x32, x16 = inputs["float32"], inputs["float16"]
    assert x16.dtype == x32.dtype == torch.float32
    assert torch.equal(x16, x32.half().float())  # exactly float16's round-to-nearest of the float32 input
    err = (x16 - x32).abs()
    assert (err <= 2.0 ** -11 * x32.abs() + 2.0 ** -25).all()  # half an ulp: relative 2^-11, subnormals 2^-25
    assert (x16[x32 == 0] == 0).all() and err.max() > 0  # background stays 0 (|v| < 2^-25 rounds to 0 too)


def test_two_splits_of_a_file_read_at_once_each_get_their_batches(packed32):
    dense, lazy = packed32
    a_rows, b_rows = np.arange(0, 20), np.arange(20, 43)
    streams = [StreamSplit(lazy.X_train, lazy.y_train, CPU, index=r, workers=1, prefetch=2) for r in (a_rows, b_rows)]
    denses = [DeviceSplit(dense.X_train, dense.y_train, CPU, index=r) for r in (a_rows, b_rows)]
    together = list(zip(*(s.eval_batches(4) for s in streams)))  # the second pass starts while the first is open
    assert len(together) == 5
    for k, split in enumerate(denses):
        assert_same([b[k] for b in together], batches_of(split, batch_size=4)[:5])


def test_free_host_memory_is_capped_by_the_cgroup(monkeypatch):
    monkeypatch.setattr(P, "cgroup_room", lambda: 123 << 20)
    assert P.free_memory(CPU) == (123 << 20, "memory cgroup limit minus its anonymous memory")
    monkeypatch.setattr(P, "cgroup_room", lambda: None)
    assert P.free_memory(CPU)[1] == "MemAvailable (/proc/meminfo)"


@pytest.mark.parametrize("placement", ["auto", "device", "stream"])
def test_data_without_a_test_split_is_placed_and_says_so(packed32, placement):
    """A search's fold or an estimator's fit has no test split: train and validation are placed as usual, the
    record says `test: none`, and asking for the test split is an error that names it."""
    import dataclasses

    from stvit.data.__main__ import summary

    dense, lazy = packed32
    index = {"train": np.arange(30), "val": np.arange(30, 43)}
    for data in (lazy, dense):
        if data is dense and placement != "auto":
            continue
        no_test = dataclasses.replace(data, X_test=None, y_test=None, ids_test=None)
        p = P.place(no_test, index, CPU, torch.float32, placement=placement)
        with_test = P.place(data, index, CPU, torch.float32, placement=placement)
        assert p.record["test"] == "none" and p.record["test_bytes"] == 0
        assert p.record["placement"] == with_test.record["placement"] and p.record["bytes"] == with_test.record["bytes"]
        assert_same(batches_of(p.train, batch_size=8, epoch=1, seed=3, shuffle=True), batches_of(with_test.train, batch_size=8, shuffle=True,
                                                                                  epoch=1, seed=3))
        with pytest.raises(ValueError, match="no test split"):
            p.make_test()
        assert P.features_fit(no_test, index)[0]
        lines = summary(no_test)
        assert lines[1].split() == ["test:", "none"] and "in-brain voxels" in lines[-1]
