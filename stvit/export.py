"""Export a trained classifier for C++ inference: `torch.export` + AOTInductor, one `.pt2` package.

    python -m stvit.export --checkpoint RUN/checkpoints/best.pt --out model.pt2 [--device cpu|cuda]

Writes three files:
- `model.pt2`: the AOTInductor package (compiled model + weights) that `stvit_infer` (CMakeLists.txt) loads.
  Its metadata carries what the runner checks an input against: the volume shape (T, H, W), the class names.
  The batch dimension is dynamic (any N >= 1).
- `model.pt2.golden.npy`: a few seeded random volumes (N, T, H, W) float32, a golden input for testing.
- `model.pt2.json`: the same metadata for people, and the golden input's logits and probabilities computed by
  the eager PyTorch model, to check a deployment against.

The package applies the input preprocessing the run was trained with (per-volume z-scoring over the non-zero
voxels when the run's data config has `zscore`), then the classifier, in eval mode, through the eager ops
(`kernels="eager"`: plain torch ops, which always export); the fused Triton ops are a training-time optimization.
A package is specific to the device it was compiled for (cpu or cuda), the CPU's instruction set and the torch
version that wrote it: run it with a `stvit_infer` built against the same torch.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from torch import Tensor

from stvit.training import checkpoint as ckpt
from stvit.config import Config
from stvit.cli import check_writable
from stvit.errors import UserError, run_cli
from stvit.model.vit import SpatioTemporalClassifier

FORMAT = "1"  # version of the `stvit.*` metadata keys the runner reads
GOLDEN_N = 3  # volumes in the golden input: more than one, so batching is exercised


def zscore(x: Tensor) -> Tensor:
    """(B, T, H, W) -> the same, each volume z-scored over its non-zero voxels; the background stays 0 and a
    constant volume is only centered. The torch twin of `stvit.data.zscore_volumes` (statistics in float64)."""
    v = x.flatten(1)  # (B, T*H*W)
    inside = v != 0
    n = inside.sum(1, keepdim=True).clamp_min(1)
    mean = v.double().sum(1, keepdim=True) / n
    centered = v - mean.to(v.dtype)
    var = (centered.square() * inside).double().sum(1, keepdim=True) / n
    std = var.sqrt()
    std = torch.where(std == 0, torch.ones_like(std), std)
    return torch.where(inside, centered / std.to(v.dtype), torch.zeros_like(v)).view_as(x)


class Deployed(nn.Module):
    """What the package runs: the input preprocessing the run's data config asked for, then the classifier.
    Volumes (B, T, H, W) -> logits (B, num_classes)."""

    def __init__(self, clf: SpatioTemporalClassifier, zscore: bool):
        super().__init__()
        self.clf = clf
        self.zscore = zscore

    def forward(self, x: Tensor) -> Tensor:
        return self.clf(zscore(x) if self.zscore else x)


def load_classifier(path: Path) -> tuple[Deployed, Config, dict[str, Any]]:
    """The classifier of a fine-tuning checkpoint with its input preprocessing, in eval mode on the CPU, with the
    eager ops."""
    if not path.is_file():
        raise UserError("no such checkpoint file", path)
    try:
        state = ckpt.load(path)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means "not a checkpoint"
        raise UserError(f"not a readable checkpoint ({type(e).__name__}: {_first_line(e)})", path) from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise UserError("not an stvit checkpoint (needs 'model' and 'config')", path)
    if state.get("stage") == "pretrain":
        raise UserError("this is a pre-training checkpoint (the MAE); export a fine-tuned one (checkpoints/best.pt)",
                        path)
    try:
        cfg = Config.from_dict(state["config"])
    except (ValueError, TypeError) as e:
        raise UserError(f"bad config in checkpoint ({e})", path) from None
    mcfg = cfg.model
    mcfg.kernels = "eager"  # plain torch ops: what torch.export traces
    clf = SpatioTemporalClassifier(mcfg)
    try:
        clf.load_state_dict(state["model"])
    except RuntimeError as e:
        raise UserError(f"weights do not match a classifier of its config ({_first_line(e)})", path) from None
    return Deployed(clf, cfg.data.zscore).eval(), cfg, state


def golden_input(volume: tuple[int, int, int], n: int = GOLDEN_N, seed: int = 0) -> torch.Tensor:
    """(n, T, H, W) float32: seeded standard-normal voxels (the scale of z-scored data) inside a one-voxel
    border of exact zeros (the background of real volumes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, *volume)
    x[:, 1:-1, 1:-1, 1:-1] = torch.randn(n, *(max(v - 2, 0) for v in volume), generator=g)
    return x


def metadata(cfg: Config, epoch: Any) -> dict[str, str]:
    """String key/values stored in the package; `stvit_infer` reads them with `get_metadata()`."""
    names = list(cfg.data.class_names)
    if len(names) != cfg.model.num_classes:
        names = [f"class{i}" for i in range(cfg.model.num_classes)]
    meta = {
        "stvit.format": FORMAT,
        "stvit.volume": ",".join(str(v) for v in cfg.model.volume),  # T,H,W
        "stvit.num_classes": str(cfg.model.num_classes),
        "stvit.ops": "eager",
        "stvit.preprocess": "zscore" if cfg.data.zscore else "none",  # done inside the package
        "stvit.epoch": str(epoch),
    }
    meta.update({f"stvit.class.{i}": name for i, name in enumerate(names)})
    return meta


def export(model: Deployed, meta: dict[str, str], out: Path, device: torch.device) -> float:
    """torch.export with a dynamic batch, AOTInductor compile and package to `out`; returns the seconds taken."""
    import torch._inductor  # noqa: F401 - the AOTInductor entry points (imported here: it is slow to import)

    t0 = time.perf_counter()
    model = model.to(device)
    example = golden_input(model.clf.cfg.volume, n=2).to(device)
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        ep = torch.export.export(model, (example,), dynamic_shapes=({0: batch},), strict=False)
    # Compile to a temporary name beside `out`, then move it into place: a failed export leaves `out` untouched.
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".pt2", dir=out.parent)
    os.close(fd)
    try:
        torch._inductor.aoti_compile_and_package(ep, package_path=tmp,
                                                 inductor_configs={"aot_inductor.metadata": meta})
        ckpt.usual_mode(tmp)  # mkstemp made it private
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return time.perf_counter() - t0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stvit.export",
                                 description="Export a trained classifier to an AOTInductor package for stvit_infer.")
    ap.add_argument("--checkpoint", required=True, type=Path, metavar="FILE",
                    help="a fine-tuning checkpoint: RUN/checkpoints/best.pt (or last.pt of a fine-tuning run)")
    ap.add_argument("--out", required=True, type=Path, metavar="FILE",
                    help="the package to write, e.g. model.pt2; beside it FILE.golden.npy and FILE.json")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="the device the package will run on (it is compiled for it); default: cpu")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    out: Path = args.out
    check_writable(out, "file")
    model, cfg, state = load_classifier(args.checkpoint)
    out.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    meta = metadata(cfg, state.get("epoch", "?"))

    x = golden_input(cfg.model.volume)
    with torch.no_grad():
        logits = model(x).double()  # the eager model on the CPU: the reference
    probs = logits.softmax(-1)

    with warnings.catch_warnings():
        # torch's own pytree deprecation notice, raised inside export and packaging: noise to this command's user.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        secs = export(model, meta, out, device)
        # Load the package back and run the golden input through it: the export is checked before anyone ships it.
        pkg = torch._inductor.aoti_load_package(str(out))
        with torch.no_grad():
            got = pkg(x.to(device)).double().cpu().softmax(-1)
    diff = float((got - probs).abs().max())

    golden = out.with_name(out.name + ".golden.npy")
    np.save(golden, x.numpy())
    sidecar = {
        "package": out.name,
        "checkpoint": str(args.checkpoint),
        "epoch": state.get("epoch"),
        "device": args.device,
        "torch": torch.__version__,
        "ops": "eager",
        "preprocess": meta["stvit.preprocess"],
        "input": {"shape": ["N", *cfg.model.volume], "dtype": "float32", "batch": "dynamic (N >= 1)"},
        "class_names": [meta[f"stvit.class.{i}"] for i in range(cfg.model.num_classes)],
        "metadata": meta,
        "golden": {"input": golden.name, "logits": logits.tolist(), "probabilities": probs.tolist(),
                   "package_max_abs_diff": diff},
    }
    sidecar_path = out.with_name(out.name + ".json")
    sidecar_path.write_text(json.dumps(sidecar, indent=2) + "\n")

    print(f"exported {out} ({args.device}, eager ops, dynamic batch) in {secs:.1f} s")
    print(f"golden input {golden}; reference logits and probabilities in {sidecar_path}")
    print(f"package vs eager on the golden input: max |dp| = {diff:.2e}")
    if diff > 1e-4:
        print(f"warning: the package differs from the eager model by {diff:.2e} in probability", file=sys.stderr)
    return 0


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
