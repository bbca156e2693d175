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

It never overwrites a file it did not write: an existing `--out` (or sidecar) is refused; `--force` replaces an
earlier package of this command (an AOTInductor archive and its sidecars), never anything else, and never the
checkpoint it reads.
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
from stvit.errors import UserError, WriteError, run_cli
from stvit.model.export import Deployed, export, golden_input, metadata
from stvit.training.checkpoint import atomic_write_bytes, usual_mode
from stvit.training.rundir import json_text, load_model, writing


def build_parser(argv=None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stvit.export",
                                 description="Export a trained classifier to an AOTInductor package for stvit_infer.")
    ap.add_argument("--checkpoint", required=True, type=Path, metavar="FILE",
                    help="a fine-tuning checkpoint: RUN/checkpoints/best.pt (or last.pt of a fine-tuning run)")
    ap.add_argument("--out", required=True, type=Path, metavar="FILE",
                    help="the package to write, e.g. model.pt2; beside it FILE.golden.npy and FILE.json")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="the device the package will run on (it is compiled for it); default: cpu")
    ap.add_argument("--force", action="store_true",
                    help="replace an earlier package at --out (and its sidecars); never the checkpoint, never a file "
                         "that is not such a package; default: refuse an existing --out")
    return ap


def outputs(out: Path) -> dict[str, Path]:
    """The files an export writes: the package and its two sidecars."""
    return {"package": out, "golden": out.with_name(out.name + ".golden.npy"),
            "sidecar": out.with_name(out.name + ".json")}


def is_earlier_output(kind: str, path: Path) -> bool:
    """`path` is what this command writes as `kind`: an AOTInductor archive, a .npy array, a sidecar JSON."""
    import zipfile

    try:
        if kind == "package":
            with zipfile.ZipFile(path) as z:
                return any("/data/aotinductor/" in name for name in z.namelist())
        if kind == "golden":
            with open(path, "rb") as f:
                return f.read(6) == b"\x93NUMPY"
        return "package" in json.loads(path.read_text())
    except (OSError, ValueError, zipfile.BadZipFile, TypeError):
        return False


def check_outputs(out: Path, checkpoint: Path, force: bool) -> None:
    """Nothing an export would write exists (or, with `force`, only an earlier export's files), and none of it is
    the checkpoint: a UserError naming the file otherwise, before anything is read or written."""
    for kind, path in outputs(out).items():
        if not os.path.lexists(path):
            continue
        if checkpoint.exists() and os.path.samefile(path, checkpoint):
            raise UserError(f"is the checkpoint this export reads; choose another --out (--force never replaces "
                            "it)", path)
        if not force:
            raise UserError("exists; choose another --out, or pass --force to replace an earlier package", path)
        if not is_earlier_output(kind, path):
            raise UserError(f"exists and is not an earlier export's {kind}; --force replaces only those (choose "
                            "another --out)", path)


def package(model: Deployed, meta: dict[str, str], out: Path, device: torch.device, replace: bool = False) -> float:
    """`export` into a temporary name beside `out`, then moved into place: a failed export leaves `out` untouched.
    `replace`: over an earlier package (checked by the caller); otherwise a file that appeared at `out` meanwhile
    is left as it is and refused."""
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".pt2", dir=out.parent)
    os.close(fd)
    try:
        secs = export(model, meta, Path(tmp), device)
        usual_mode(tmp)  # mkstemp made it private
        if replace:
            os.replace(tmp, out)
        else:
            try:
                os.link(tmp, out)  # never over a file that exists
            except FileExistsError:
                raise UserError("was written by another process during the export; nothing was replaced", out) \
                    from None
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
    check_outputs(out, args.checkpoint, args.force)
    trained = load_model(args.checkpoint, stage="finetune")  # the eager ops: plain torch, what torch.export traces
    cfg, state = trained.cfg, trained.state
    model = Deployed(trained.model, cfg.data.zscore).eval()
    with writing(out.parent):
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
        try:
            secs = package(model, meta, out, device, replace=args.force)
        except OSError as err:  # a full disk while compiling or packaging: the temporary package is removed
            e = WriteError(out, err)
            e.hint = f"nothing was written; {args.checkpoint} is intact; make room and run the same command again"
            raise e from None
        # Load the package back and run the golden input through it: the export is checked before anyone ships it.
        pkg = torch._inductor.aoti_load_package(str(out))
        with torch.no_grad():
            got = pkg(x.to(device)).double().cpu().softmax(-1)
    diff = float((got - probs).abs().max())

    golden, sidecar_path = outputs(out)["golden"], outputs(out)["sidecar"]

    def write_sidecar(path: Path, write) -> None:
        try:
            atomic_write_bytes(path, write)
        except OSError as err:
            e = WriteError(path, err)
            e.hint = f"the package {out} is complete; make room and export again with --force"
            raise e from None

    write_sidecar(golden, lambda f: np.save(f, x.numpy()))
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
    write_sidecar(sidecar_path, lambda f: f.write(json_text(sidecar).encode()))

    print(f"exported {out} ({args.device}, eager ops, dynamic batch) in {secs:.1f} s")
    print(f"golden input {golden}; reference logits and probabilities in {sidecar_path}")
    print(f"package vs eager on the golden input: max |dp| = {diff:.2e}")
    if diff > 1e-4:
        print(f"warning: the package differs from the eager model by {diff:.2e} in probability", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
