"""Maps in brain space: NIfTI images on the model grid, nilearn figures over the MNI152 template bundled with
nilearn (nothing is downloaded), and the peaks table.

Space: maps keep the input's voxel order (53 x 63 x 46) with the affine of SPM's 3 mm bounding box
[-78 -112 -50; 78 76 85] (`stvit.data.grid_affine`), which assumes that the index of axis 0 grows from left to
right (RAS+). Data stored the other way round along x would show left and right swapped: an affine of the data's
own grid can be given instead (`python -m stvit.explain --affine-from FILE.nii`).
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor
from tqdm.auto import tqdm

from stvit.maps.attribution import Explained

FIGURE_TOP = 0.02  # figures show the top 2% of in-brain voxels (by absolute value)
PEAK_TOP = 0.01  # peaks.csv: clusters of the top 1%
PEAKS_PER_MAP = 5  # largest peaks per map and sign


def support(X: Tensor) -> np.ndarray:
    """(T, H, W) bool: voxels non-zero in some volume of X (the brain of z-scored data with a zero background)."""
    return (X != 0).any(0).cpu().numpy()


def top_threshold(values: np.ndarray, inside: np.ndarray, top: float) -> float:
    """The |value| above which lie the top `top` share of the voxels `inside`."""
    a = np.abs(values[inside])
    return float(np.quantile(a, 1.0 - top)) if a.size else 0.0


def nifti(values: np.ndarray, affine: np.ndarray):
    import nibabel as nib

    img = nib.Nifti1Image(values.astype(np.float32), affine)
    img.set_sform(affine, code="mni")
    img.set_qform(affine, code="mni")
    img.header.set_xyzt_units("mm")
    return img


PEAK_FIELDS = ("map", "sign", "peak", "x_mm", "y_mm", "z_mm", "i", "j", "k", "cluster_voxels", "threshold")


def peaks(name: str, values: np.ndarray, inside: np.ndarray, affine: np.ndarray) -> list[dict[str, Any]]:
    """The largest clusters (26-connected) of the top 1% of in-brain voxels by |value|, per sign: the peak value,
    its voxel and MNI coordinates (mm), the cluster's size in voxels (rows of peaks.csv)."""
    from scipy import ndimage

    thr = top_threshold(values, inside, PEAK_TOP)
    rows = []
    for sign in (1, -1):
        signed = sign * values
        mask = inside & (signed >= thr) & (signed > 0)
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        clusters = np.arange(1, n + 1)
        at = ndimage.maximum_position(signed, labels, clusters)  # the peak voxel of each cluster
        sizes = ndimage.sum_labels(mask, labels, clusters)
        for c in sorted(range(n), key=lambda c: -signed[at[c]])[:PEAKS_PER_MAP]:
            ijk = tuple(int(i) for i in at[c])
            x, y, z = (float(v) for v in (affine @ np.array([*ijk, 1.0]))[:3])
            rows.append(dict(zip(PEAK_FIELDS, (name, "+" if sign > 0 else "-", f"{values[ijk]:.6g}", round(x, 1),
                                               round(y, 1), round(z, 1), *ijk, int(sizes[c]), f"{thr:.6g}"))))
    return rows


def figures(name: str, img, values: np.ndarray, inside: np.ndarray, template) -> dict[str, bytes]:
    """PNG bytes of a stat map in three planes (cut at the map's peak) over the MNI152 template and of a glass
    brain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    thr = top_threshold(values, inside, FIGURE_TOP)
    signed = bool((values < 0).any())
    out = {}
    for kind, draw in (("stat", plotting.plot_stat_map), ("glass", plotting.plot_glass_brain)):
        fig = plt.figure(figsize=(9, 3.2))
        kw = dict(threshold=thr, colorbar=True, figure=fig, title=name, cmap="cold_hot" if signed else "hot")
        if kind == "stat":
            peak = np.unravel_index(np.argmax(np.abs(values) * inside), values.shape)
            kw.update(bg_img=template, display_mode="ortho", cut_coords=tuple((img.affine @ [*peak, 1.0])[:3]),
                      draw_cross=False, symmetric_cbar=signed)
        else:
            kw.update(plot_abs=not signed, symmetric_cbar=signed)
        display = draw(img, **kw)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
        display.close()
        plt.close(fig)
        out[f"{name}_{kind}.png"] = buf.getvalue()
    return out


def render(explained: Explained, inside: np.ndarray, affine: np.ndarray, quiet: bool) -> dict[str, bytes]:
    """Every output file but maps.json, by name: NIfTI images, figures, peaks.csv."""
    from nilearn.datasets import load_mni152_template  # ships with nilearn: read from the package, not fetched

    template = load_mni152_template()
    files, rows = {}, []
    for name, values in tqdm(explained.maps.items(), desc="figures", disable=quiet, dynamic_ncols=True):
        img = nifti(values, affine)
        files[f"{name}.nii.gz"] = gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)
        files.update(figures(name, img, values, inside, template))
        rows += peaks(name, values, inside, affine)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=PEAK_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files["peaks.csv"] = text.getvalue().encode()
    return files


def read_maps(folder: Path | str) -> dict[str, np.ndarray]:
    """The maps of an output folder, by name (the NIfTI files maps.json lists), as (T, H, W) float32."""
    import nibabel as nib

    folder = Path(folder)
    names = json.loads((folder / "maps.json").read_text())["maps"]
    return {n: np.asarray(nib.load(folder / f"{n}.nii.gz").dataobj, dtype=np.float32) for n in names}
