"""NIfTI data sets: a folder of volumes and a CSV that says what each is; reader and writer.

The CSV (`labels.csv`, or the one CSV in the folder, or the CSV itself given as the path) has the columns
`file,label,subject,split` (split `train` or `test`, file relative to the CSV; `subject` optional). Each volume is a
53x63x46 (or 53x63x46x1) `.nii` / `.nii.gz`, its voxel axes taken as stored. Needs nibabel
(`pip install "stvit[nifti]"`).

The table is checked like any data file: a row with more (or fewer) values than the header, a file outside the
CSV's folder (an absolute path, or `..`), a file listed twice (in one split, or in both: a volume scored on what it
was trained on), or a subject cell left empty while others are filled are refused with the line; an empty subject
column is no subject column; other columns are ignored with a warning. A label is a class index or, with class
names (`--class-names face shape`), a class name.
"""
from __future__ import annotations

import csv
import math
import os
import warnings
from pathlib import Path

import numpy as np

from stvit.data.dataset import SPLITS, DataError, HCPData, as_labels, grid_affine

CSV_COLUMNS = ("file", "label", "subject", "split")


def _find_csv(path: Path) -> Path:
    if path.is_file():
        return path
    if (path / "labels.csv").is_file():
        return path / "labels.csv"
    found = sorted(path.glob("*.csv"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError("no CSV of volumes in this folder (expected labels.csv with columns "
                        f"{','.join(CSV_COLUMNS)})", path)
    raise DataError(f"{len(found)} CSV files in this folder; name the one to use (or call it labels.csv)", path)


def read_csv(path: Path) -> tuple[Path, list[dict]]:
    csv_path = _find_csv(path)
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = [c.strip().lower() for c in (reader.fieldnames or [])]
            missing = [c for c in CSV_COLUMNS if c not in fields and c != "subject"]
            if missing:
                raise DataError(f"CSV lacks the column(s) {', '.join(missing)} (expected header "
                                f"{','.join(CSV_COLUMNS)})", csv_path)
            extra = [c for c in fields if c not in CSV_COLUMNS]
            if extra:
                warnings.warn(f"{csv_path}: column(s) {', '.join(extra)} ignored (read: {','.join(CSV_COLUMNS)})",
                              stacklevel=2)
            rows = []
            for line, raw in enumerate(reader, start=2):
                if None in raw or None in raw.values():
                    n = len(fields) + len(raw.get(None, [])) - sum(v is None for v in raw.values())
                    raise DataError(f"line {line}: {n} values for the {len(fields)} columns of the header", csv_path)
                row = {k.strip().lower(): v.strip() for k, v in raw.items()}
                split = row["split"].lower()
                if split not in SPLITS:
                    raise DataError(f"line {line}: split '{row['split']}' is not train or test", csv_path)
                rows.append(dict(row, split=split, line=line))
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read the CSV ({err})", csv_path) from None
    check_rows(rows, csv_path)
    return csv_path, rows


def check_rows(rows: list[dict], csv_path: Path) -> None:
    """Each file inside the CSV's folder and listed once (never in two splits); subjects on every row or none (an
    empty column is dropped: no subject ids)."""
    seen: dict[str, dict] = {}
    for r in rows:
        file, line = r["file"], r["line"]
        if not file:
            raise DataError(f"line {line}: no file named", csv_path)
        norm = os.path.normpath(file)
        if os.path.isabs(file) or norm == ".." or norm.startswith(".." + os.sep):
            raise DataError(f"line {line}: file '{file}' is outside the CSV's folder; volumes must sit in it or "
                            "below it, named relative to it", csv_path)
        if norm in seen:
            first = seen[norm]
            if first["split"] != r["split"]:
                raise DataError(f"line {line}: file '{file}' is in the {first['split']} split (line {first['line']}) "
                                f"and the {r['split']} split: it would be scored on what it was trained on (a leak)",
                                csv_path)
            raise DataError(f"line {line}: file '{file}' is listed twice (lines {first['line']} and {line})",
                            csv_path)
        seen[norm] = r
    if rows and "subject" in rows[0]:
        empty = [r["line"] for r in rows if not r["subject"]]
        if len(empty) == len(rows):
            for r in rows:
                del r["subject"]  # an empty column: no subject ids
        elif empty:
            raise DataError(f"line {empty[0]}: empty subject, while other rows name theirs; give every row its "
                            "subject (or leave the column empty on every row: no subject ids)", csv_path)


def _label(value: str, line: int, class_names, csv_path: Path) -> int:
    """A CSV label: a class index (0, 1, "1.0"), or a class name when `class_names` is given."""
    if class_names and value in class_names:
        return list(class_names).index(value)
    try:
        v = float(value)
    except ValueError:
        v = math.nan
    if not math.isfinite(v) or v != int(v):
        names = f" or a class name ({', '.join(class_names)})" if class_names else ""
        raise DataError(f"line {line}: label '{value}' is not a class index{names}", csv_path)
    return int(v)


def read(path: Path, volume_shape, num_classes: int, dtype, class_names=None) -> dict:
    csv_path, rows = read_csv(path)
    try:
        import nibabel
    except ImportError:
        raise DataError("reading NIfTI volumes needs nibabel: pip install 'stvit[nifti]' (or nibabel)",
                        csv_path) from None
    has_subject = all("subject" in r for r in rows)
    out = {}
    for split in SPLITS:
        sel = [r for r in rows if r["split"] == split]
        if not sel:
            raise DataError(f"no volumes for split '{split}' (empty split)", csv_path)
        labels = [_label(r["label"], r["line"], class_names, csv_path) for r in sel]
        y = as_labels(np.array(labels), f"labels of split '{split}'", num_classes, csv_path)
        ids = np.array([r["subject"] for r in sel], dtype=str) if has_subject else None
        X = np.empty((len(sel),) + volume_shape, dtype)
        for i, r in enumerate(sel):
            X[i] = _nifti_volume(nibabel, csv_path.parent / r["file"], r["line"], csv_path, volume_shape)
        out[split] = (X, y, ids)
    return out


def _nifti_volume(nibabel, file: Path, line: int, csv_path: Path, volume_shape) -> np.ndarray:
    if not file.is_file():
        raise DataError(f"no such file (line {line} of {csv_path.name})", file)
    try:
        data = nibabel.load(file).get_fdata(dtype=np.float32, caching="unchanged")
    except Exception as err:  # nibabel, gzip, zlib and OS errors alike: the file is not a readable volume
        raise DataError(f"cannot read this NIfTI volume ({type(err).__name__}: {err})", file) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.shape != volume_shape:
        raise DataError(f"volume is {'x'.join(map(str, data.shape))}, expected {'x'.join(map(str, volume_shape))}",
                        file)
    return data


def write(folder, data: HCPData, dtype: np.dtype = np.float32) -> Path:
    """`data` as a NIfTI folder: one `<split>_<i>.nii.gz` per volume (the grid's MNI affine, `grid_affine`) and
    `labels.csv` (replaced if there is one). Returns the CSV."""
    import nibabel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for split in SPLITS:
        X, y, ids = data.split(split)
        for i in range(len(y)):
            name = f"{split}_{i:05d}.nii.gz"
            nibabel.save(nibabel.Nifti1Image(np.asarray(X[i], dtype=dtype), grid_affine()), folder / name)
            rows.append((name, int(y[i]), "" if ids is None else str(ids[i]), split))
    path = folder / "labels.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        out.writerows(rows)
    return path
