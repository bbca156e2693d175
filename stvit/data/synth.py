"""A synthetic HCP-like data set in the real layout, and the built-in (cached) copy of it.

Each volume (53, 63, 46) on the SPM 3 mm grid is
    anatomy template + subject baseline + gain_s * a_v * pattern_{s, class} + smooth noise + white noise,
shifted by up to one voxel per axis (jitter), cut to a brain-shaped support (exactly 0 outside, about 60k
voxels) and z-scored over the brain. The two condition patterns are Gaussian blobs at plausible places
(class 0 "face": fusiform and occipital face areas, amygdala; class 1 "shape": dorsal occipital and
intraparietal cortex; both classes: early visual cortex), displaced per subject. The per-volume amplitude a_v
varies (some volumes carry almost no signal). Subjects hold 16 volumes (8 per class); train and test subjects
are disjoint. `SIGNAL` is calibrated so that a linear classifier on the raw voxels is clearly above chance but
far from perfect (tests/e2e/test_data_synth.py pins the band).

Speed: the smooth noise comes from a bank of periodic smooth fields (drawn from the seed) read at random
offsets, and every volume is computed on the in-brain voxels only, by gathers. Everything is a function of
`(n_train, n_test, seed, GENERATOR_VERSION)`; each subject draws from its own seeded generator.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stvit.data.dataset import ORIGIN_MM, VOLUME_SHAPE, DataError, HCPData
from stvit.errors import WriteError

GENERATOR_VERSION = 1
VOLUMES_PER_SUBJECT = 16  # 8 per class

# one hemisphere's blob: (x, y, z) MNI mm (mirrored in x when x != 0), weight, sigma in voxels
FACE = [((40, -54, -20), 1.0, 2.0), ((40, -80, -8), 0.7, 2.0), ((22, -6, -18), 0.5, 1.5)]
SHAPE = [((26, -86, 22), 1.0, 2.2), ((28, -60, 48), 0.8, 2.0)]
SHARED = [((0, -92, 4), 1.0, 3.0)]  # early visual cortex: both conditions, not discriminative

TEMPLATE = 1.0  # std inside the brain (before z-scoring) of each component
BASELINE = 0.6
NOISE = 0.9
WHITE = 0.5
SIGNAL = 2.0  # class pattern amplitude: the calibration knob
SUBJECT_OFFSET_VOX = 1.0  # per-subject displacement of the blobs (std, voxels)

PAD = 1  # jitter: up to one voxel per axis
PADDED = tuple(s + 2 * PAD for s in VOLUME_SHAPE)
BANK_SHAPE = (64, 72, 56)  # noise fields, read at random offsets
BANK_SMOOTH, BANK_COARSE = 32, 8  # fields in the noise bank (sigma 1.5) and the baseline bank (sigma 3)


def mm_to_voxel(xyz) -> np.ndarray:
    return (np.asarray(xyz, dtype=np.float64) - ORIGIN_MM) / 3.0


def _smooth(x: np.ndarray, sigma: float, mode: str = "constant") -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, (0,) * (x.ndim - 3) + (sigma,) * 3, truncate=3.0, mode=mode)


@functools.lru_cache(maxsize=1)
def brain_support() -> np.ndarray:
    """A brain-shaped boolean support on the 53x63x46 grid (about 60k voxels): a smoothly deformed
    ellipsoid, cut under the frontal lobe and in front of the cerebellum. The same for every seed."""
    i, j, k = np.meshgrid(*(np.arange(s, dtype=np.float64) for s in VOLUME_SHAPE), indexing="ij")
    c, r = (25.8, 30.5, 21.5), (23.5, 30.0, 22.0)
    u, v, w = (i - c[0]) / r[0], (j - c[1]) / r[1], (k - c[2]) / r[2]
    bumps = _smooth(np.random.default_rng(12345).standard_normal(VOLUME_SHAPE), 5.0)
    inside = np.sqrt(u * u + v * v + w * w) < 1.0 + bumps * (0.06 / bumps.std())
    inside &= ~((w < -0.35) & (v > 0.3))  # orbits, nasal cavity
    inside &= ~((w < -0.55) & (np.abs(u) < 0.25) & (v > -0.2))  # brain stem notch
    inside.flags.writeable = False  # cached: shared by every caller
    return inside


@functools.lru_cache(maxsize=1)
def _geometry() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat indices of the brain voxels in the grid, in the padded grid, and in a bank field."""
    ijk = np.argwhere(brain_support())
    grid = np.ravel_multi_index(ijk.T, VOLUME_SHAPE)
    padded = np.ravel_multi_index((ijk + PAD).T, PADDED)
    bank = np.ravel_multi_index(ijk.T, BANK_SHAPE)
    return grid, padded, bank


def _blob(center_vox, sigma: float) -> np.ndarray:
    """A separable Gaussian bump on the padded grid, peak 1; `center_vox` in unpadded voxels."""
    g = [np.exp(-0.5 * ((np.arange(s) - PAD - c) / sigma) ** 2) for s, c in zip(PADDED, center_vox)]
    return g[0][:, None, None] * g[1][None, :, None] * g[2][None, None, :]


def _blobs(regions):
    """(centre in voxels, weight, sigma) of every blob of `regions`, mirrored in x where x != 0, in drawing order."""
    for xyz, weight, sigma in regions:
        for sx in ((1, -1) if xyz[0] else (1,)):
            yield mm_to_voxel((sx * xyz[0], xyz[1], xyz[2])), weight, sigma


def _pattern(regions, rng: np.random.Generator) -> np.ndarray:
    out = np.zeros(PADDED)
    for c, weight, sigma in _blobs(regions):
        out += weight * _blob(c + rng.normal(0, SUBJECT_OFFSET_VOX, 3), sigma)
    return out


@functools.lru_cache(maxsize=1)
def _template() -> np.ndarray:
    """A fixed 'anatomy' on the padded grid, shared by every volume (unit std in the brain)."""
    t = _smooth(np.random.default_rng(54321).standard_normal(PADDED), 1.5)
    return (t / t.reshape(-1)[_geometry()[1]].std()).astype(np.float32)


def _bank(seed: int, count: int, sigma: float, stream: int) -> np.ndarray:
    """`count` periodic smooth fields (flat, unit std) from the seed."""
    rng = np.random.default_rng([seed, GENERATOR_VERSION, stream])
    fields = _smooth(rng.standard_normal((count,) + BANK_SHAPE, dtype=np.float32), sigma, mode="wrap")
    fields /= fields.std(axis=(1, 2, 3), keepdims=True)
    return fields.reshape(count, -1)


def _offsets(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random flat offsets of a grid-sized window inside a bank field."""
    o = [rng.integers(0, b - s + 1, n) for b, s in zip(BANK_SHAPE, VOLUME_SHAPE)]
    return np.ravel_multi_index(o, BANK_SHAPE)


@functools.lru_cache(maxsize=1)
def _shifted() -> tuple[np.ndarray, np.ndarray]:
    """For each of the 27 jitters (np.roll's sense: content moves by +d): the padded-grid indices the brain
    voxels read from (27, n_brain), and the template read there (27, n_brain) float32."""
    _, padded, _ = _geometry()
    strides = np.array([PADDED[1] * PADDED[2], PADDED[2], 1])
    at = np.stack([padded - strides @ np.array(d) for d in np.ndindex(3, 3, 3)]) + strides.sum() * PAD
    return at, _template().reshape(-1)[at] * np.float32(TEMPLATE)


def _subject(seed: int, index: int, labels: np.ndarray, smooth: np.ndarray, coarse: np.ndarray) -> np.ndarray:
    """The brain voxels (len(labels), n_brain) float32 of subject `index`."""
    _, _, bank = _geometry()
    at, template = _shifted()
    rng = np.random.default_rng([seed, GENERATOR_VERSION, index])
    shared = _pattern(SHARED, rng)
    patterns = [(_pattern(c, rng) + shared).reshape(-1).astype(np.float32) for c in (FACE, SHAPE)]
    baseline = coarse[rng.integers(len(coarse)), _offsets(rng, 1)[0]:][bank] * np.float32(BASELINE)
    gain = rng.uniform(0.6, 1.4)
    n = len(labels)
    amplitude = (np.clip(rng.normal(1.0, 0.6, n), 0.0, None) * gain * SIGNAL).astype(np.float32)
    jitter = rng.integers(0, 27, n)  # index into np.ndindex(3, 3, 3): shifts -1..1 per axis
    pick, offset = rng.integers(len(smooth), size=(n, 2)), _offsets(rng, 2 * n).reshape(n, 2)
    mix = rng.standard_normal((n, 2))
    mix = (mix / np.linalg.norm(mix, axis=1, keepdims=True) * NOISE).astype(np.float32)
    out = np.empty((n, len(bank)), np.float32)
    for v in range(n):
        x = out[v]
        np.multiply(patterns[labels[v]][at[jitter[v]]], amplitude[v], out=x)
        x += template[jitter[v]]
        x += baseline
        x += mix[v, 0] * smooth[pick[v, 0], offset[v, 0]:][bank]
        x += mix[v, 1] * smooth[pick[v, 1], offset[v, 1]:][bank]
        x += np.float32(WHITE) * rng.standard_normal(len(x), dtype=np.float32)
        x -= x.mean()
        x /= np.sqrt(np.dot(x, x) / len(x))
    return out


@dataclass(frozen=True)
class PlantedPatterns:
    """The ground truth the generator plants, for checking brain maps against it (`planted_patterns`)."""

    classes: np.ndarray  # (2, 53, 63, 46) float32: expected pattern of class 0 ("face") and 1 ("shape"), SHARED in both
    regions: dict[str, np.ndarray]  # "face", "shape", "shared" -> (53, 63, 46) bool: where each group's blobs sit
    brain: np.ndarray  # (53, 63, 46) bool: the support (`brain_support`)

    @property
    def difference(self) -> np.ndarray:
        """Class 0 minus class 1: FACE minus SHAPE (SHARED cancels); what a class-difference map should show."""
        return self.classes[0] - self.classes[1]

    @property
    def discriminative(self) -> np.ndarray:
        """The voxels of the FACE and SHAPE regions, minus SHARED (which both classes carry)."""
        return (self.regions["face"] | self.regions["shape"]) & ~self.regions["shared"]


REGION_LEVEL = float(np.exp(-2.0))  # a blob's region: where its expected bump is above this share of its peak (2 sigma)


def _expected_blob(center_vox, sigma: float) -> np.ndarray:
    """E over subjects and jitters of a unit blob, on the brain voxels (n_brain,). A subject's displacement
    N(0, SUBJECT_OFFSET_VOX) per axis turns a Gaussian of `sigma` into one of sqrt(sigma^2 + offset^2) with peak
    (sigma / that)^3; the 27 jitters are averaged the way the generator reads them (`_shifted`)."""
    wide = np.hypot(sigma, SUBJECT_OFFSET_VOX)
    padded = _blob(center_vox, wide) * (sigma / wide) ** 3
    return padded.reshape(-1)[_shifted()[0]].mean(0)


def planted_patterns() -> PlantedPatterns:
    """The class patterns the generator plants, as expected over subjects (the same for every seed: the seed draws
    only each subject's displacement) in units of the blob weights, before the per-volume amplitude and z-scoring
    (which scale both classes alike); and the region of each group of blobs. Generated volumes do not change."""
    grid = _geometry()[0]

    def on_grid(values: np.ndarray, dtype) -> np.ndarray:
        out = np.zeros(int(np.prod(VOLUME_SHAPE)), dtype)
        out[grid] = values
        return out.reshape(VOLUME_SHAPE)

    expected, regions = {}, {}
    for name, group in (("face", FACE), ("shape", SHAPE), ("shared", SHARED)):
        blobs = [(weight, _expected_blob(c, sigma)) for c, weight, sigma in _blobs(group)]
        expected[name] = sum(w * b for w, b in blobs)
        regions[name] = on_grid(np.any([b >= REGION_LEVEL * b.max() for _, b in blobs], axis=0), bool)
    classes = np.stack([on_grid(expected[c] + expected["shared"], np.float32) for c in ("face", "shape")])
    return PlantedPatterns(classes, regions, brain_support())


def _subject_ids(seed: int, count: int) -> np.ndarray:
    """Distinct 6-digit ids, HCP style."""
    rng = np.random.default_rng([seed, GENERATOR_VERSION, 1 << 30])
    return np.array([str(v) for v in rng.choice(np.arange(100000, 1000000), count, replace=False)])


def _labels(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per volume: (subject index within the split, label); 8 of each class per subject, class-blocked."""
    subject = np.arange(n) // VOLUMES_PER_SUBJECT
    pos = np.arange(n) % VOLUMES_PER_SUBJECT
    return subject, (pos >= VOLUMES_PER_SUBJECT // 2).astype(np.int64)


def _subject_blocks(n_train: int, n_test: int, seed: int):
    """The set subject by subject, in file order (train, then test): (split, labels (k,), ids (k,), brain voxels
    (k, n_brain) float32 in the order of `brain_support`'s voxels). One subject in memory at a time."""
    if n_train < 1 or n_test < 1:
        raise ValueError("n_train and n_test must be >= 1")
    smooth = _bank(seed, BANK_SMOOTH, 1.5, stream=1 << 31)
    coarse = _bank(seed, BANK_COARSE, 3.0, stream=(1 << 31) + 1)
    n_sub_tr = -(-n_train // VOLUMES_PER_SUBJECT)
    ids = _subject_ids(seed, n_sub_tr + -(-n_test // VOLUMES_PER_SUBJECT))
    for split, n, first in (("train", n_train, 0), ("test", n_test, n_sub_tr)):
        _, y = _labels(n)
        for s in range(-(-n // VOLUMES_PER_SUBJECT)):  # subject s holds rows 16 s .. 16 s + 15 (`_labels`)
            rows = slice(s * VOLUMES_PER_SUBJECT, min((s + 1) * VOLUMES_PER_SUBJECT, n))
            labels = y[rows]
            brain = _subject(seed, first + s, labels, smooth, coarse)
            yield split, labels, np.repeat(ids[first + s], len(labels)), brain


def make_synthetic(n_train: int, n_test: int, seed: int) -> HCPData:
    """The synthetic set in memory: float32 volumes, int64 labels, str subject ids (subject-disjoint splits)."""
    grid = _geometry()[0]
    out = {split: (np.zeros((max(n, 1),) + VOLUME_SHAPE, np.float32), [], [])
           for split, n in (("train", n_train), ("test", n_test))}
    at = {"train": 0, "test": 0}
    for split, labels, ids, brain in _subject_blocks(n_train, n_test, seed):
        X, ys, idss = out[split]
        flat = X.reshape(len(X), -1)
        for r, values in zip(range(at[split], at[split] + len(labels)), brain):
            flat[r, grid] = values
        at[split] += len(labels)
        ys.append(labels)
        idss.append(ids)
    (Xtr, ytr, itr), (Xte, yte, ite) = ((X, np.concatenate(ys), np.concatenate(idss)) for X, ys, idss in out.values())
    return HCPData(Xtr, ytr, itr, Xte, yte, ite, source="synthetic")


SUBJECTS_PER_WRITE = 4  # subjects (64 volumes, 15 MB of float32) per append to a packed file


def write_synthetic_packed(path, n_train: int, n_test: int, seed: int, *, dtype: str = "float16",
                           replace: bool = True) -> Path:
    """Generate the synthetic set straight into a packed file (`stvit.data.packed`), a few subjects at a time:
    any size, never the whole set in memory; the same volumes as `make_synthetic` (float32), or their float16
    rounding. Atomic (the writer's temporary file until the end; `replace=False`: never over an existing file)."""
    from stvit.data.packed import PackedWriter

    provenance = {"source": "stvit synthetic HCP-like set", "generator_version": GENERATOR_VERSION,
                  "n_train": n_train, "n_test": n_test, "seed": seed}
    with PackedWriter(path, brain_support(), dtype=dtype, class_names=("face", "shape"), provenance=provenance,
                      replace=replace) as w:
        pending: list = []

        def flush() -> None:
            if pending:
                split, labels, ids, brain = (np.concatenate(parts) for parts in zip(*pending))
                w.add(brain, labels, split, subject=ids)
                pending.clear()

        for split, labels, ids, brain in _subject_blocks(n_train, n_test, seed):
            pending.append((np.repeat(split, len(labels)), labels, ids, brain))
            if len(pending) == SUBJECTS_PER_WRITE:
                flush()
        flush()
    return Path(path)


def write_synthetic(path, n_train: int, n_test: int, seed: int, *, fmt: str | None = None,
                    dtype=np.float64, replace: bool = True) -> None:
    """Generate the synthetic set and write it in the real layout (`files.write_dataset`: X (N, 53, 63, 46)
    `dtype`, y (N, 1) double, ids as a char matrix), atomically (`replace=False`: never over an existing file);
    `fmt` "packed": in-brain float16 rows when `dtype` is float16, else float32 (`write_synthetic_packed`, any
    size)."""
    from stvit.data.files import write_dataset

    if fmt == "packed":  # straight into the file, a few subjects at a time
        write_synthetic_packed(path, n_train, n_test, seed, dtype="float16" if np.dtype(dtype) == np.float16
                               else "float32", replace=replace)
        return
    write_dataset(path, make_synthetic(n_train, n_test, seed), fmt=fmt, dtype=dtype, replace=replace)


# --- the built-in set ---------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """$STVIT_CACHE, else ~/.cache/stvit."""
    return Path(os.environ.get("STVIT_CACHE") or Path.home() / ".cache" / "stvit")


def builtin_dataset_path(n_train: int, n_test: int, seed: int, cache_dir: str | os.PathLike | None = None) -> Path:
    """The built-in synthetic set as a packed file of float32 in-brain voxels (`stvit.data.packed`: the same
    volumes as `make_synthetic`, exactly, in about 40% of a dense float32 file's bytes), generated once into the
    cache (`cache_dir`, else $STVIT_CACHE, else ~/.cache/stvit; atomically) and keyed by (n_train, n_test, seed,
    generator version). float32, not float16: training on it gives what training on the dense volumes gave."""
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"synth-v{GENERATOR_VERSION}-train{n_train}-test{n_test}-seed{seed}-packed32.h5"
    how = "set STVIT_CACHE to a folder you can write, or train on a file with --data"
    try:
        if path.is_file():
            return path
    except OSError as err:  # a name the system refuses (a component over 255 bytes)
        raise DataError(f"cannot use this cache folder ({err.strerror}); {how}", folder) from None
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the cache folder ({err.strerror}); {how}", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
        raise DataError(f"cannot write the built-in data set into this cache folder "
                        f"({'read-only file system' if read_only else 'permission denied'}); {how}", folder)
    try:
        write_synthetic_packed(path, n_train, n_test, seed, dtype="float32")  # the same bytes if two runs race
    except OSError as err:  # a full disk: the write is atomic, nothing is left in the cache
        e = WriteError(path, err)
        e.hint = f"nothing was written to the cache; make room (or {how}) and run the command again"
        raise e from None
    return path
