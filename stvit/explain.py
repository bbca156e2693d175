"""`python -m stvit.explain RUN_DIR`: where in the brain a trained classifier looks, as maps on the MNI grid.

Two methods, each averaged over the explained volumes:
- Integrated Gradients (Captum; Sundararajan et al. 2017) from the all-zero volume, which is the background of a
  z-scored volume, toward every class. Completeness: the attributions of a volume sum to logit(x) - logit(0) up to
  the integration error, which Captum returns as the convergence delta (written to maps.json).
- Attention rollout (Abnar & Zuidema 2020) of the spatial encoder: per slice, the CLS token's share of each patch
  through every block, with the identity added to each block's head-averaged attention (the residual stream) and
  the rows renormalized; weighted by the share of each slice in the output, which is the rollout of the second
  ("temporal") encoder read from its mean-pooled output (the head averages the slice positions, so each position
  counts 1/T: the slice weights are the mean of the rollout's rows); spread evenly over each patch's pixels. A map
  of a volume sums to 1. `F.scaled_dot_product_attention` does not return its weights: forward hooks on the
  attention modules recompute softmax(q k^T / sqrt(d)) from their own qkv projection (`Attention.weights`); the
  forward is unchanged.

Per method: `<method>_abs_mean` (the mean of the absolute map; IG toward the predicted class) and
`<method>_class<k>` (the signed mean over the explained volumes of class k; IG toward class k: where the model
finds evidence for class k in volumes of class k). Written to DIR (default RUN_DIR/maps): one NIfTI per map, a stat
map in three planes and a glass brain per map (nilearn, over its bundled MNI152 template: nothing is downloaded),
peaks.csv (the largest clusters of each map's top 1% of in-brain voxels, with MNI coordinates) and maps.json (what
was computed, on which volumes, with which checkpoint, the convergence deltas, the versions).

Space: maps keep the input's voxel order (53 x 63 x 46) with the affine of SPM's 3 mm bounding box
[-78 -112 -50; 78 76 85] (`stvit.data.grid_affine`), which assumes that the index of axis 0 grows from left to
right (RAS+, as the course file reads through scipy). Data stored the other way round along x would show left
and right swapped: `--affine-from FILE.nii` takes the affine of an image of the data's own grid instead.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import gzip
import io
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from stvit import __version__, cli
from stvit.training import steps
from stvit.training.checkpoint import atomic_write_bytes
from stvit.config import Config
from stvit.data import HCPData, grid_affine, load_split
from stvit.data.batches import DeviceSplit
from stvit.errors import UserError, run_cli
from stvit.model.vit import SpatioTemporalClassifier
from stvit.model.precision import Precision
from stvit.training.rundir import RunDir

METHODS = ("ig", "attention")
INSTALL = "pip install 'stvit[maps]'"
FIGURE_TOP = 0.02  # figures show the top 2% of in-brain voxels (by absolute value)
PEAK_TOP = 0.01  # peaks.csv: clusters of the top 1%
PEAKS_PER_MAP = 5  # largest peaks per map and sign
COMPLETENESS = 0.05  # IG: |convergence delta| above this share of the logit gap (at least of the mean gap) is noted


# --- attention rollout -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def recorded_attention(blocks):
    """Forward hooks on the attention of `blocks`: yields a list that receives each block's head-averaged weights
    (B, N, N) as the forward runs; the hooks are removed on exit."""
    weights: list[Tensor] = []
    hooks = [blk.attn.register_forward_hook(lambda m, args, out: weights.append(m.weights(args[0]).mean(1)))
             for blk in blocks]
    try:
        yield weights
    finally:
        for h in hooks:
            h.remove()


def rollout(weights: list[Tensor]) -> Tensor:
    """Attention rollout: (B, N, N) per block, first block first -> (B, N, N), row i = how much output token i draws
    on each input token. Each block's A + I (the residual path) is renormalized row-wise before the product."""
    eye = torch.eye(weights[0].shape[-1], device=weights[0].device)
    out = eye.expand_as(weights[0])
    for a in weights:
        a = a + eye
        out = (a / a.sum(-1, keepdim=True)) @ out
    return out


def spread(patch_values: Tensor, patch: tuple[int, int], shape: tuple[int, int]) -> Tensor:
    """(..., gh, gw) per-patch values -> (..., H, W), each patch's value shared evenly by its pixels (pixels past
    the last whole patch, which the model never sees, get 0)."""
    ph, pw = patch
    pixels = patch_values.repeat_interleave(ph, -2).repeat_interleave(pw, -1) / (ph * pw)
    out = pixels.new_zeros(*pixels.shape[:-2], *shape)
    out[..., :pixels.shape[-2], :pixels.shape[-1]] = pixels
    return out


def attention_maps(model: SpatioTemporalClassifier, fn: Callable[[Tensor], Tensor],
                   x: Tensor) -> tuple[Tensor, Tensor]:
    """Volumes (B, T, H, W) -> (logits (B, C), attention rollout maps (B, T, H, W) fp32, each summing to 1)."""
    B, T, H, W = x.shape
    cfg = model.cfg
    with recorded_attention(model.spatial.blocks) as spatial, recorded_attention(model.temporal.blocks) as temporal, \
            torch.no_grad():
        logits = fn(x)
    cls = rollout(spatial)[:, 0, 1:]  # (B*T, P): CLS -> patches
    cls = cls / cls.sum(-1, keepdim=True)
    slices = rollout(temporal).mean(1)  # (B, T): the head reads the mean over slice positions
    weights = slices[:, :, None] * cls.view(B, T, -1)  # (B, T, P)
    return logits, spread(weights.view(B, T, *cfg.grid), cfg.patch, (H, W))


# --- Integrated Gradients ----------------------------------------------------------------------------------------


def integrated_gradients(fn: Callable[[Tensor], Tensor], x: Tensor, target: int, steps: int,
                         internal_batch_size: int) -> tuple[Tensor, Tensor]:
    """Volumes (B, T, H, W) fp32 -> (attributions (B, T, H, W) toward class `target` from the zero volume,
    convergence delta (B,) = sum of attributions - (logit(x) - logit(0)))."""
    from captum.attr import IntegratedGradients

    attr, delta = IntegratedGradients(fn).attribute(x, baselines=torch.zeros_like(x), target=target, n_steps=steps,
                                                    internal_batch_size=internal_batch_size,
                                                    return_convergence_delta=True)
    return attr.float(), delta.float()


# --- the maps of a set of volumes --------------------------------------------------------------------------------


@dataclass
class Explained:
    """Maps averaged over explained volumes, and what they came from."""

    maps: dict[str, np.ndarray]  # name -> (T, H, W) float32
    labels: np.ndarray  # (n,) int
    predictions: np.ndarray  # (n,) int
    deltas: np.ndarray | None  # (n, C) IG convergence delta toward each class
    gaps: np.ndarray | None  # (n, C) logit(x) - logit(0): what the attributions sum to


class _Means:
    """Running sums of maps on the CPU in float64: the mean of the absolute map, and per class the signed mean."""

    def __init__(self, name: str, num_classes: int):
        self.name, self.C = name, num_classes
        self.abs, self.n = 0.0, 0
        self.cls, self.count = [0.0] * num_classes, [0] * num_classes

    def add_abs(self, maps: Tensor) -> None:
        self.abs = self.abs + maps.abs().double().sum(0).cpu()
        self.n += maps.shape[0]

    def add_class(self, k: int, maps: Tensor, y: Tensor) -> None:
        """The maps of the volumes of class k (labels `y`) into the signed mean of class k."""
        self.cls[k] = self.cls[k] + maps[y == k].double().sum(0).cpu()
        self.count[k] += int((y == k).sum())

    def result(self) -> dict[str, np.ndarray]:
        out = {f"{self.name}_abs_mean": (self.abs / self.n).float().numpy()} if self.n else {}
        out.update({f"{self.name}_class{k}": (self.cls[k] / self.count[k]).float().numpy()
                    for k in range(self.C) if self.count[k]})
        return out


def explain(model: SpatioTemporalClassifier, precision: Precision, split: DeviceSplit, *, methods=METHODS,
            steps: int = 32, batch_size: int = 16, quiet: bool = True) -> Explained:
    """The maps of every volume of `split` (on the model's device), `batch_size` volumes per forward pass."""
    model.eval()
    fn = steps_build(model, precision)
    C = model.cfg.num_classes
    ig, att = _Means("ig", C), _Means("attention", C)
    labels, preds, deltas, gaps = [], [], [], []
    per_batch = C * ("ig" in methods) + ("attention" in methods)
    bar = tqdm(total=split.num_batches(batch_size) * per_batch, desc="explain", disable=quiet, dynamic_ncols=True)
    for x, y, _ in split.eval_batches(batch_size):
        x = x.float()  # IG interpolates in fp32; autocast runs the model in the run's precision
        if "attention" in methods:
            logits, maps = attention_maps(model, fn, x)
            att.add_abs(maps)
            for k in range(C):
                att.add_class(k, maps, y)
            bar.update(1)
        else:
            with torch.no_grad():
                logits = fn(x)
        pred = logits.argmax(1)
        labels.append(y.cpu())
        preds.append(pred.cpu())
        if "ig" in methods:
            with torch.no_grad():
                gaps.append((logits - fn(torch.zeros_like(x))).cpu())
            deltas.append(_ig_batch(fn, x, y, pred, ig, steps, batch_size, bar))
    bar.close()
    cat = lambda parts: torch.cat(parts).numpy() if parts else None  # noqa: E731
    return Explained({**ig.result(), **att.result()}, cat(labels), cat(preds), cat(deltas), cat(gaps))


def _ig_batch(fn, x: Tensor, y: Tensor, pred: Tensor, means: _Means, steps: int, batch_size: int, bar) -> Tensor:
    """IG of a batch toward each class into `means` (toward the predicted class for the absolute mean);
    the convergence deltas (B, C)."""
    attr_pred, deltas = torch.zeros_like(x), []
    for k in range(means.C):
        attr, delta = integrated_gradients(fn, x, k, steps, batch_size)
        attr_pred[pred == k] = attr[pred == k]
        means.add_class(k, attr, y)
        deltas.append(delta.cpu())
        bar.update(1)
    means.add_abs(attr_pred)
    return torch.stack(deltas, 1)


def incomplete(deltas: np.ndarray, gaps: np.ndarray) -> np.ndarray:
    """(n, C) bool: attributions whose sum misses logit(x) - logit(0) by more than COMPLETENESS of that gap, or of
    the mean gap where a gap is small (the integration error does not shrink with the gap): too few --steps."""
    gaps = np.abs(gaps)
    return np.abs(deltas) > COMPLETENESS * np.maximum(gaps, gaps.mean())


def steps_build(model: SpatioTemporalClassifier, precision: Precision) -> Callable[[Tensor], Tensor]:
    """The evaluation forward (autocast and the SDPA policy inside), eager: logits (B, C) fp32."""
    return steps.build(steps.classifier_logits, model, precision, compile=False, name="explain")


def pick_volumes(n_total: int, n: int) -> np.ndarray:
    """`n` positions spread evenly over a split of `n_total` (all of them when n >= n_total): in a split ordered by
    subject or by class, the classes and subjects come in their proportions."""
    if n >= n_total:
        return np.arange(n_total)
    return np.unique(np.linspace(0, n_total - 1, n).round().astype(np.int64))


# --- brain-space outputs -----------------------------------------------------------------------------------------


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


# --- checks against a known truth --------------------------------------------------------------------------------


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray, rank: bool = False) -> float:
    """Pearson (or with `rank`, Spearman) correlation of two maps over the voxels of `mask`."""
    from scipy import stats

    return float((stats.spearmanr if rank else stats.pearsonr)(a[mask], b[mask])[0])


def enrichment(values: np.ndarray, region: np.ndarray, inside: np.ndarray, top: float = PEAK_TOP) -> float:
    """The share of the top `top` voxels of |values| (among `inside`) that fall in `region`, over the share that
    chance would put there (the region's share of `inside`): 1 = chance."""
    chosen = np.abs(values[inside]) >= top_threshold(values, inside, top)
    return float(region[inside][chosen].mean() / region[inside].mean())


def class_difference(maps: dict[str, np.ndarray]) -> np.ndarray:
    """IG evidence for class 0 in class-0 volumes minus evidence for class 1 in class-1 volumes: positive where the
    model reads class 0, negative where it reads class 1."""
    return maps["ig_class0"] - maps["ig_class1"]


def planted_agreement(maps: dict[str, np.ndarray], planted) -> dict[str, float]:
    """How the maps of a model trained on the synthetic set match what its generator planted
    (`stvit.data.synth.planted_patterns`): correlation of the class-difference map with the planted difference
    over the brain (Spearman also over the planted regions alone, where that difference is more than a Gaussian
    tail), and the enrichment of each map's top 1% voxels in the discriminative regions."""
    brain, truth = planted.brain, planted.difference
    regions = planted.regions["face"] | planted.regions["shape"]
    out = {}
    if "ig_class0" in maps and "ig_class1" in maps:
        diff = class_difference(maps)
        out.update(pearson=correlation(diff, truth, brain), spearman=correlation(diff, truth, brain, rank=True),
                   spearman_regions=correlation(diff, truth, regions, rank=True),
                   enrichment_difference=enrichment(diff, planted.discriminative, brain))
    for name in ("ig_abs_mean", "attention_abs_mean"):
        if name in maps:
            out[f"enrichment_{name}"] = enrichment(maps[name], planted.discriminative, brain)
    return out


# --- the command -------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stvit.explain", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of python -m stvit.train")
    ap.add_argument("--checkpoint", choices=("best", "last"), default="best")
    ap.add_argument("--split", choices=("test", "val"), default="test")
    ap.add_argument("--n", type=int, default=64, help="volumes to explain, spread evenly over the split")
    ap.add_argument("--method", choices=(*METHODS, "all"), default="all")
    ap.add_argument("--steps", type=int, default=32, help="Integrated Gradients integration steps")
    ap.add_argument("--batch-size", type=int, help="volumes per forward pass (default: the run's eval batch size)")
    ap.add_argument("--out", help="output folder (default: RUN_DIR/maps); must be new or empty")
    ap.add_argument("--affine-from", metavar="FILE.nii", help="take the voxel-to-world affine of this image")
    ap.add_argument("--device", choices=cli.DEVICES)
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    return ap


def require_packages(methods) -> None:
    """The optional packages the maps need, or a UserError saying what to install."""
    needed = ["nibabel", "nilearn"] + (["captum"] if "ig" in methods else [])
    missing = []
    for name in needed:
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"brain maps need {', '.join(missing)}: {INSTALL}")


def check_out(out: Path) -> None:
    """An output folder that is new or empty (nothing already written is replaced)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("exists and is not an empty folder; choose another --out", out)


def read_affine(path: str, shape: tuple[int, ...]) -> np.ndarray:
    import nibabel as nib

    try:
        img = nib.load(path)
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except Exception as e:  # noqa: BLE001 - anything nibabel cannot read
        raise UserError(f"not a NIfTI image nibabel can read ({type(e).__name__})", path) from None
    if tuple(img.shape[:3]) != tuple(shape):
        raise UserError(f"the image grid is {'x'.join(map(str, img.shape[:3]))}, the model's volumes are "
                        f"{'x'.join(map(str, shape))}", path)
    return np.asarray(img.affine, dtype=np.float64)


@dataclass
class Plan:
    """Everything `main` will use, read and checked before anything is written."""

    run: RunDir
    cfg: Config
    state: dict[str, Any]
    checkpoint: str
    data: HCPData
    split: str
    positions: np.ndarray | None  # the validation split's positions in the file's training split (None: test)
    index: np.ndarray  # positions in the split of the explained volumes
    methods: tuple[str, ...]
    steps: int
    batch_size: int
    out: Path
    affine: np.ndarray
    affine_source: str
    device: torch.device


def plan(args: argparse.Namespace, data: HCPData | None = None) -> Plan:
    """Every check of the arguments, the run and its data (`data`: the run's data when the caller has it)."""
    for flag, v in (("--n", args.n), ("--steps", args.steps), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    methods = METHODS if args.method == "all" else (args.method,)
    require_packages(methods)
    run = RunDir(args.run_dir, main=True, echo=False)
    if not run.path.is_dir() or not (run.path / "config.json").is_file():
        raise UserError("not a run directory (no config.json)", run.path)
    name = f"{args.checkpoint}.pt"
    state = run.load(name)
    if state.get("stage") != "finetune":
        raise UserError(f"holds the {state.get('stage')} stage's model, not the classifier: explain needs a "
                        "fine-tuned checkpoint", run.checkpoint(name))
    try:
        cfg = Config.from_dict(state["config"])
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(f"no usable config in the checkpoint ({e})", run.checkpoint(name)) from None
    out = Path(args.out) if args.out else run.path / "maps"
    check_out(out)
    affine, source = (read_affine(args.affine_from, cfg.model.volume), str(args.affine_from)) if args.affine_from \
        else (grid_affine(), "SPM 3 mm grid [-78 -112 -50; 78 76 85], axis 0 left to right")
    if not args.affine_from and tuple(cfg.model.volume) != (53, 63, 46):
        run.note(f"note: volumes of {'x'.join(map(str, cfg.model.volume))} are not the 53x63x46 grid; the maps "
                 "take its affine anyway (use --affine-from for the right one)")
    device = cli.resolve_device(args.device)
    positions = validation_positions(run) if args.split == "val" else None
    if data is None:
        from stvit.train import load_data  # the run's data, read as training read it

        data = load_data(cfg)
    n_split = len(data.y_test) if positions is None else len(positions)
    if positions is not None and len(positions) and positions.max() >= len(data.y_train):
        raise UserError(f"the training split holds {len(data.y_train)} volumes, fewer than split.json says",
                        data.source)
    return Plan(run, cfg, state, args.checkpoint, data, args.split, positions, pick_volumes(n_split, args.n),
                methods, args.steps, args.batch_size or cfg.train.eval_batch_size, out, affine, source, device)


def validation_positions(run: RunDir) -> np.ndarray:
    """Positions in the file's training split of the run's validation volumes."""
    if not (run.path / "split.json").is_file():
        raise UserError("no split.json: cannot tell the validation volumes", run.path)
    return load_split(run.path)[1]


def load_volumes(p: Plan, dtype: torch.dtype) -> DeviceSplit:
    """The explained volumes of the run's data on the device."""
    if p.positions is None:
        return DeviceSplit(p.data.X_test, p.data.y_test, p.device, dtype, index=p.index)
    return DeviceSplit(p.data.X_train, p.data.y_train, p.device, dtype, index=p.positions[p.index])


def explain_run(p: Plan, quiet: bool = False) -> Path:
    """Compute the maps a plan asks for and write them into `p.out`; returns maps.json's path."""
    t0 = time.perf_counter()
    precision = Precision.resolve(p.cfg.train.precision, p.device)
    model = SpatioTemporalClassifier(p.cfg.model).to(p.device)
    model.load_state_dict(p.state["model"])
    volumes = load_volumes(p, precision.storage_dtype)
    explained = explain(model, precision, volumes, methods=p.methods, steps=p.steps, batch_size=p.batch_size,
                        quiet=quiet)
    inside = support(volumes.X)
    for name in list(explained.maps):
        if name.startswith("attention"):  # spread over patches, which reach past the brain
            explained.maps[name] = np.where(inside, explained.maps[name], 0).astype(np.float32)
    files = render(explained, inside, p.affine, quiet)
    record = describe(p, explained, precision, files, time.perf_counter() - t0)
    p.out.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        atomic_write_bytes(p.out / name, lambda f, data=data: f.write(data))
    RunDir(p.out, main=True).write_json("maps.json", record)
    return p.out / "maps.json"


def describe(p: Plan, e: Explained, precision: Precision, files: dict[str, bytes], seconds: float) -> dict[str, Any]:
    """maps.json: what was computed, on which volumes, with which checkpoint; IG's completeness; versions."""
    import captum
    import nibabel
    import nilearn

    record: dict[str, Any] = {
        "run": str(p.run.path), "checkpoint": f"checkpoints/{p.checkpoint}.pt", "checkpoint_epoch": p.state["epoch"],
        "split": p.split, "volumes": p.index.tolist(), "labels": e.labels.tolist(),
        "predictions": e.predictions.tolist(), "class_names": list(p.cfg.data.class_names),
        "methods": list(p.methods), "maps": sorted(e.maps), "files": sorted([*files, "maps.json"]),
        "device": str(p.device), "precision": precision.name, "batch_size": p.batch_size,
        "affine": p.affine.tolist(), "affine_source": p.affine_source, "seconds": round(seconds, 1),
        "versions": {"stvit": __version__, "torch": torch.__version__, "captum": captum.__version__,
                     "nibabel": nibabel.__version__, "nilearn": nilearn.__version__, "numpy": np.__version__},
    }
    if e.deltas is not None:
        record["integrated_gradients"] = {
            "baseline": "zeros", "steps": p.steps, "method": "gausslegendre", "targets": "each class",
            "abs_mean_target": "predicted class", "class_map_target": "class k, over volumes of class k",
            "convergence_delta": e.deltas.tolist(), "logit_gap": e.gaps.tolist(),  # (volume, class)
            "max_abs_delta": float(np.abs(e.deltas).max()), "mean_abs_delta": float(np.abs(e.deltas).mean()),
            "mean_abs_logit_gap": float(np.abs(e.gaps).mean()),
            "incomplete": int(incomplete(e.deltas, e.gaps).sum()),  # attributions off by > 5% of the logit gap
        }
    if "attention" in p.methods:
        record["attention"] = {"rollout": "spatial CLS -> patches (A + I, rows renormalized) x temporal rollout "
                                          "rows averaged (the head mean-pools the slices); spread over patch pixels"}
    return record


def main(argv: list[str] | None = None, data: HCPData | None = None) -> int:
    """The command; `data`: the run's data, already loaded (`python -m stvit.train --explain`)."""
    args = build_parser().parse_args(argv)
    p = plan(args, data)
    quiet = args.quiet or not sys.stderr.isatty()
    path = explain_run(p, quiet=quiet)
    record = json.loads(path.read_text())
    ig = record.get("integrated_gradients")
    done = f"; IG max |convergence delta| {ig['max_abs_delta']:.3g}" if ig else ""
    print(f"explained {len(p.index)} {p.split} volumes with {'+'.join(p.methods)} in {record['seconds']:.0f} s"
          f"{done}; {p.out}")
    if ig and ig["incomplete"]:
        print(f"note: {ig['incomplete']} of {np.size(ig['convergence_delta'])} IG attributions miss completeness by "
              f"more than {COMPLETENESS:.0%} of the logit gap: raise --steps (now {p.steps})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
