"""Are the brain maps right? Models trained on the synthetic set against what its generator planted, and the
sanity checks of Adebayo et al. (2018), in one command:

    python bench/studies/2026-11-29-cpu-maps/explain_validation.py --out DIR [--config FILE.json] [--seeds 0 1 ...]
        [--n N] [--steps S] [--no-controls]

For each seed: `python -m stvit.train --seed S` on the built-in synthetic set (preset demo unless --config says
otherwise), then `python -m stvit.explain` on its test split (DIR/seed<S>/maps), and the agreement of its maps
with the planted patterns (`stvit.explain.planted_agreement`). For the first seed, the controls: the same recipe
trained on the same volumes with the training labels shuffled, and a re-initialized model, explained on the same
volumes; the rank correlations of their maps with the trained model's. Everything goes to DIR/validation.json.
`tests/e2e/explain_validation.json` is the recipe of the test's validation model (its thresholds come from here).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from stvit.maps import attribution as A
from stvit.maps import render as R
from stvit.maps import validation as V
from stvit.maps.job import explain_run, plan_maps
from stvit.training import api
from stvit.training.api import load_data
from stvit.training.rundir import load_model
from stvit.config import Config
from stvit.data import load_dataset, write_dataset
from stvit.data.batches import DeviceSplit
from stvit.data.synth import planted_patterns
from stvit.model.vit import SpatioTemporalClassifier
from stvit.model.precision import Precision


def train_run(out: Path, common: dict, seed: int, data: str | None = None) -> Config:
    """A run of the run API (as `python -m stvit.train` makes it) into OUT; the run's config."""
    values = {"train.device": "cpu", "train.seed": seed, **({"data.path": data} if data else {})}
    api.run(api.plan(api.Request(values=values, out=out, quiet=True, **common)))
    return Config.from_dict(json.loads((out / "config.json").read_text()))


def shuffled_copy(source: Path, out: Path, seed: int) -> Path:
    """The data file with its training labels permuted (test labels kept), as an npz."""
    data = load_dataset(source)
    data.y_train = np.random.default_rng(seed).permutation(data.y_train)
    write_dataset(out, data, fmt="npz", dtype=np.float32)
    return out


def explain_model(model: SpatioTemporalClassifier, cfg: Config, data, index: np.ndarray, steps: int) -> A.Explained:
    """IG maps of `model` on the test volumes at `index`, as the command computes them."""
    split = DeviceSplit(data.X_test, data.y_test, torch.device("cpu"), index=index)
    return A.explain(model, Precision.resolve(cfg.train.precision, torch.device("cpu")), split, methods=("ig",),
                     steps=steps, batch_size=cfg.train.eval_batch_size)


def best_model(run: Path) -> SpatioTemporalClassifier:
    return load_model(run / "checkpoints" / "best.pt", stage="finetune").model


def trained_seed(out: Path, common: dict, explain: dict, seed: int) -> dict:
    """Train and explain one seed; its test metrics, IG completeness and agreement with the planted patterns."""
    t0 = time.perf_counter()
    train_run(out, common, seed)
    t_train = time.perf_counter() - t0
    explain_run(plan_maps(out, device="cpu", **explain), quiet=True)
    record = json.loads((out / "maps" / "maps.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())["test"]
    ig = record["integrated_gradients"]
    return {"seed": seed, "test_accuracy": metrics["accuracy"], "test_roc_auc": metrics["roc_auc"],
            "explained_volumes": len(record["volumes"]), "ig_steps": ig["steps"],
            "max_abs_delta": ig["max_abs_delta"], "mean_abs_delta": ig["mean_abs_delta"],
            "mean_abs_logit_gap": ig["mean_abs_logit_gap"],
            "agreement": V.planted_agreement(R.read_maps(out / "maps"), planted_patterns()),
            "seconds": {"training": round(t_train, 1), "explain": record["seconds"]}}


def controls(out: Path, first: Path, common: dict, seed: int) -> dict:
    """The shuffled-label and re-initialized models of the first seed's recipe, on its explained volumes."""
    cfg = Config.from_dict(json.loads((first / "config.json").read_text()))
    record = json.loads((first / "maps" / "maps.json").read_text())
    data = load_data(cfg)
    t0 = time.perf_counter()
    shuffled = shuffled_copy(Path(data.source), out / "shuffled.npz", seed)
    train_run(out / "shuffled", common, seed, data=str(shuffled))
    torch.manual_seed(seed + 1)
    index, steps = np.asarray(record["volumes"]), record["integrated_gradients"]["steps"]
    models = {"shuffled_labels": best_model(out / "shuffled"), "reinitialized": SpatioTemporalClassifier(cfg.model)}
    trained, planted = R.read_maps(first / "maps"), planted_patterns()
    result = {}
    for name, model in models.items():
        maps = explain_model(model, cfg, data, index, steps).maps
        result[name] = {
            "spearman_class_difference": V.correlation(V.class_difference(maps), V.class_difference(trained),
                                                       planted.brain, rank=True),
            "spearman_ig_abs_mean": V.correlation(maps["ig_abs_mean"], trained["ig_abs_mean"], planted.brain,
                                                  rank=True),
            "agreement": V.planted_agreement(maps, planted)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--config", help="a config JSON for the runs (default: preset demo)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds")
    ap.add_argument("--n", type=int, default=64, help="test volumes explained")
    ap.add_argument("--steps", type=int, default=32, help="IG steps")
    ap.add_argument("--controls", action=argparse.BooleanOptionalAction, default=True,
                    help="train and explain the shuffled-label and re-initialized controls of the first seed")
    a = ap.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    common = {"preset": "paper", "config_file": a.config} if a.config else {"preset": "demo"}
    explain = {"n": a.n, "steps": a.steps}
    t0, load = time.perf_counter(), list(os.getloadavg())
    seeds = [trained_seed(a.out / f"seed{s}", common, explain, s) for s in a.seeds]
    result = {
        "command": f"python bench/studies/2026-11-29-cpu-maps/explain_validation.py --out {a.out}"
                   + (f" --config {a.config}" if a.config else "")
                   + f" --seeds {' '.join(map(str, a.seeds))} --n {a.n} --steps {a.steps}"
                   + ("" if a.controls else " --no-controls"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "load_average_at_start": load,
        "seeds": seeds,
        "controls": controls(a.out, a.out / f"seed{a.seeds[0]}", common, a.seeds[0]) if a.controls else None,
        "load_average_at_end": list(os.getloadavg()),
        "seconds": round(time.perf_counter() - t0, 1),
    }
    (a.out / "validation.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
