"""`python -m stvit.export`: a trained classifier as one AOTInductor package (`.pt2`) for C++ inference.

    python -m stvit.export --checkpoint RUN/checkpoints/best.pt --out model.pt2 [--device cpu|cuda]

Writes three files:
- `model.pt2`: the AOTInductor package (compiled model + weights) that `stvit_infer` (CMakeLists.txt) loads. Its
  metadata carries what the runner checks an input against: the volume shape (T, H, W), the class names. The batch
  dimension is dynamic (any N >= 1). What it runs: `stvit.model.export` (the run's preprocessing, then the
  classifier with the eager ops).
- `model.pt2.golden.npy`: a few seeded random volumes (N, T, H, W) float32, a golden input for testing.
- `model.pt2.json`: the same metadata for people, and the golden input's logits and probabilities computed by the
  eager PyTorch model, to check a deployment against. See docs/deployment.md.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from stvit.cli import check_writable
from stvit.errors import UserError, run_cli
from stvit.model.export import Deployed, export, golden_input, metadata
from stvit.training.checkpoint import usual_mode
from stvit.training.rundir import load_model


def build_parser(argv=None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stvit.export",
                                 description="Export a trained classifier to an AOTInductor package for stvit_infer.")
    ap.add_argument("--checkpoint", required=True, type=Path, metavar="FILE",
                    help="a fine-tuning checkpoint: RUN/checkpoints/best.pt (or last.pt of a fine-tuning run)")
    ap.add_argument("--out", required=True, type=Path, metavar="FILE",
                    help="the package to write, e.g. model.pt2; beside it FILE.golden.npy and FILE.json")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="the device the package will run on (it is compiled for it); default: cpu")
    return ap


def package(model: Deployed, meta: dict[str, str], out: Path, device: torch.device) -> float:
    """`export` into a temporary name beside `out`, then moved into place: a failed export leaves `out` untouched."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".pt2", dir=out.parent)
    os.close(fd)
    try:
        secs = export(model, meta, Path(tmp), device)
        usual_mode(tmp)  # mkstemp made it private
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return secs


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    out: Path = args.out
    check_writable(out, "file")
    trained = load_model(args.checkpoint, stage="finetune")  # the eager ops: plain torch, what torch.export traces
    cfg, state = trained.cfg, trained.state
    model = Deployed(trained.model, cfg.data.zscore).eval()
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
        secs = package(model, meta, out, device)
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


if __name__ == "__main__":
    sys.exit(run_cli(main))
