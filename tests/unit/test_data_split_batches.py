"""The validation split (grouped by subject, stratified, deterministic) and device-resident batches with flips."""
import warnings

import numpy as np
import pytest
import torch

from stvit.data import DeviceSplit, load_split, save_split, split_train_val

SHAPE = (5, 7, 4)


def subjects(n_subjects=40, per_class=8, seed=0):
    """ids and labels like the course data: each subject has `per_class` volumes of each class, shuffled."""
    ids = np.repeat([f"{100000 + 7 * s}" for s in range(n_subjects)], 2 * per_class)
    y = np.tile(np.repeat([0, 1], per_class), n_subjects)
    order = np.random.default_rng(seed).permutation(len(y))
    return ids[order], y[order]


@pytest.mark.parametrize("fraction", [0.1, 0.2, 0.35])
def test_split_is_grouped_stratified_and_sized(fraction):
    ids, y = subjects()
    tr, va = split_train_val(ids, y, fraction, seed=0)
    assert tr.dtype == va.dtype == np.int64 and (np.diff(tr) > 0).all() and (np.diff(va) > 0).all()
    assert len(np.intersect1d(tr, va)) == 0 and len(tr) + len(va) == len(y)
    assert not set(ids[tr]) & set(ids[va])  # no subject on both sides
    assert abs(len(va) - fraction * len(y)) <= 16  # within one subject of the target
    counts = np.bincount(y[va], minlength=2)
    assert counts[0] == counts[1]  # these subjects are balanced, so validation is too


def test_split_stratifies_with_unbalanced_subjects():
    rng = np.random.default_rng(1)
    ids = np.repeat(np.arange(60).astype(str), 10)
    y = np.concatenate([rng.permutation([0] * k + [1] * (10 - k)) for k in rng.integers(1, 10, 60)])
    tr, va = split_train_val(ids, y, 0.2, seed=3)
    assert not set(ids[tr]) & set(ids[va])
    share_all, share_val = y.mean(), y[va].mean()
    assert abs(share_val - share_all) < 0.03, (share_all, share_val)
    assert abs(len(va) / len(y) - 0.2) < 0.03


def test_split_same_seed_same_split_other_seed_other_split():
    ids, y = subjects()
    a = split_train_val(ids, y, 0.1, seed=5)
    b = split_train_val(ids.copy(), y.copy(), 0.1, seed=5)
    c = split_train_val(ids, y, 0.1, seed=6)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    assert not np.array_equal(a[1], c[1])


def test_split_without_ids_warns_and_stratifies():
    _, y = subjects()
    with pytest.warns(UserWarning, match="no subject ids"):
        tr, va = split_train_val(None, y, 0.1, seed=0)
    assert len(va) == 64 and np.bincount(y[va]).tolist() == [32, 32]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert np.array_equal(split_train_val(None, y, 0.1, seed=0)[1], va)


def test_split_edge_cases():
    ids, y = subjects(n_subjects=2)
    tr, va = split_train_val(ids, y, 0.1, seed=0)  # one subject is more than twice the target: still one goes
    assert len(set(ids[va])) == 1 and len(set(ids[tr])) == 1
    assert len(split_train_val(ids, y, 0.0, seed=0)[1]) == 0
    with pytest.warns(UserWarning, match="single subject"):
        split_train_val(np.array(["s"] * 10), np.arange(10) % 2, 0.2, seed=0)
    with pytest.raises(ValueError):
        split_train_val(ids, y, 1.0, seed=0)


def test_split_is_written_and_read_back(tmp_path):
    ids, y = subjects()
    tr, va = split_train_val(ids, y, 0.1, seed=0)
    path = save_split(tmp_path, tr, va, ids=ids, seed=0, fraction=0.1)
    assert path == tmp_path / "split.json"
    tr2, va2 = load_split(tmp_path)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)


# --- batches ------------------------------------------------------------------------------------------


def volumes(n=23):
    X = np.random.default_rng(0).standard_normal((n,) + SHAPE).astype(np.float32)
    return X, np.arange(n) % 2


def collect(split, **kw):
    xs, ys, idxs = zip(*split.batches(**kw))
    return torch.cat(xs), torch.cat(ys), torch.cat(idxs)


def test_batches_cover_the_split_once_in_order_without_shuffle():
    X, y = volumes()
    split = DeviceSplit(X, y, "cpu")
    batches = list(split.batches(5))
    assert [len(b[2]) for b in batches] == [5, 5, 5, 5, 3] == [len(b[0]) for b in batches]
    x, yy, idx = collect(split, batch_size=5)
    assert idx.tolist() == list(range(23)) and yy.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(X)) and torch.equal(yy, torch.from_numpy(y))
    assert [len(b[2]) for b in split.batches(5, drop_last=True)] == [5] * 4
    assert split.num_batches(5) == 5 and split.num_batches(5, drop_last=True) == 4


def test_cpu_float32_is_shared_not_copied():
    X, y = volumes()
    assert DeviceSplit(X, y, "cpu").X.data_ptr() == X.ctypes.data


def test_shuffle_depends_only_on_seed_and_epoch():
    X, y = volumes()
    split = DeviceSplit(X, y, "cpu")
    order = lambda **kw: collect(split, batch_size=4, shuffle=True, **kw)[2].tolist()  # noqa: E731
    torch.manual_seed(123)  # the global RNG plays no part
    a = order(seed=1, epoch=3)
    torch.manual_seed(456)
    assert order(seed=1, epoch=3) == a
    assert sorted(a) == list(range(23))
    assert order(seed=1, epoch=4) != a and order(seed=2, epoch=3) != a


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_flips_fraction_axis_and_determinism(axis):
    X, y = volumes(40)
    split = DeviceSplit(X, y, "cpu")
    seen = []
    for epoch in range(3):
        x, yy, idx = collect(split, batch_size=8, shuffle=True, epoch=epoch, seed=9,
                             flip_fraction=0.1, flip_axis=axis)
        flipped = []
        for xi, i in zip(x, idx.tolist()):
            if torch.equal(xi, torch.from_numpy(X[i])):
                continue
            assert torch.equal(xi, torch.from_numpy(np.flip(X[i], axis).copy())), "not a flip along the axis"
            flipped.append(i)
        assert len(flipped) == round(0.1 * 40) == 4
        assert sorted(flipped) == torch.nonzero(split.epoch_plan(epoch, 9, True, 0.1)[1]).flatten().tolist()
        seen.append(sorted(flipped))
    assert seen[0] != seen[1] or seen[1] != seen[2]  # a fresh random subset each epoch
    again = collect(split, batch_size=8, shuffle=True, epoch=1, seed=9, flip_fraction=0.1, flip_axis=axis)[0]
    assert torch.equal(again, collect(split, batch_size=8, shuffle=True, epoch=1, seed=9, flip_fraction=0.1,
                                      flip_axis=axis)[0])
    assert torch.equal(split.X, torch.from_numpy(X))  # the stored volumes never change


def test_flip_set_does_not_depend_on_shuffle_or_batch_size():
    X, y = volumes(30)
    split = DeviceSplit(X, y, "cpu")
    plans = [split.epoch_plan(2, 0, shuffle, 0.2)[1] for shuffle in (False, True)]
    assert torch.equal(*plans) and int(plans[0].sum()) == 6
    a = collect(split, batch_size=3, epoch=2, flip_fraction=0.2)
    b = collect(split, batch_size=7, epoch=2, flip_fraction=0.2)
    assert torch.equal(a[0], b[0])


@pytest.mark.parametrize("world_size,batch_size,drop_last", [(2, 8, False), (4, 8, False), (3, 6, True), (2, 4, False)])
def test_ranks_get_disjoint_shards_covering_everything(world_size, batch_size, drop_last):
    X, y = volumes(23)
    split = DeviceSplit(X, y, "cpu")
    per_rank = [list(split.batches(batch_size, shuffle=True, seed=4, epoch=1, drop_last=drop_last,
                                   rank=r, world_size=world_size)) for r in range(world_size)]
    assert len({len(b) for b in per_rank}) == 1  # the same number of steps on every rank
    whole = collect(split, batch_size=batch_size, shuffle=True, seed=4, epoch=1, drop_last=drop_last)[2].tolist()
    for step in range(len(per_rank[0])):
        shards = [per_rank[r][step][2].tolist() for r in range(world_size)]
        if step < len(per_rank[0]) - 1 or drop_last or len(whole) % batch_size == 0:
            assert all(len(s) == batch_size // world_size for s in shards)
        assert sum(shards, []) == whole[step * batch_size:(step + 1) * batch_size]  # contiguous, in rank order
    assert sorted(sum((b[2].tolist() for r in per_rank for b in r), [])) == sorted(whole)
    if not drop_last:
        assert sorted(whole) == list(range(23))


def test_bad_batch_arguments():
    X, y = volumes(8)
    split = DeviceSplit(X, y, "cpu")
    for kw in (dict(batch_size=6, world_size=4), dict(batch_size=0), dict(batch_size=4, rank=2, world_size=2),
               dict(batch_size=4, flip_axis=3), dict(batch_size=4, flip_fraction=1.5)):
        with pytest.raises(ValueError):
            next(split.batches(**kw))


def test_dtype_and_index_selection():
    X, y = volumes(12)
    rows = np.array([3, 0, 7, 11])
    split = DeviceSplit(X, y, "cpu", dtype=torch.bfloat16, index=rows)
    assert len(split) == 4 and split.X.dtype == torch.bfloat16
    x, yy, idx = collect(split, batch_size=3)
    assert x.dtype == torch.bfloat16 and idx.tolist() == [0, 1, 2, 3]
    assert torch.equal(x, torch.from_numpy(X[rows]).to(torch.bfloat16)) and yy.tolist() == y[rows].tolist()
    t = DeviceSplit(torch.from_numpy(X), torch.from_numpy(y), "cpu", index=rows)
    assert torch.equal(t.X, torch.from_numpy(X[rows]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_split_lives_on_the_device():
    X, y = volumes(20)
    split = DeviceSplit(X, y, "cuda", dtype=torch.bfloat16)
    assert split.X.is_cuda and split.y.is_cuda
    cpu = DeviceSplit(X, y, "cpu", dtype=torch.bfloat16)
    kw = dict(batch_size=8, shuffle=True, epoch=2, seed=1, flip_fraction=0.3, flip_axis=1)
    for (xg, yg, ig), (xc, yc, ic) in zip(split.batches(**kw), cpu.batches(**kw)):
        assert xg.is_cuda and yg.is_cuda and ig.is_cuda
        assert torch.equal(xg.cpu(), xc) and torch.equal(ig.cpu(), ic) and torch.equal(yg.cpu(), yc)
