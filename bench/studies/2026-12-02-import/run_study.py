"""A generated 12-subject block-design study through the importer and the trainer, and the cost of an import.

    python bench/studies/2026-12-02-import/run_study.py --work DIR [--steps generate import train truth hcp]

generate  12 subjects x 2 runs x 80 frames (TR 2 s, face/house blocks of 12 s, 8 s rest) as BIDS + fMRIPrep
          derivatives on fMRIPrep's 97 x 115 x 97 grid, int16 with scl_slope (stvit.data.importer.study)
import    python -m stvit.data import (1 job) under /usr/bin/time -v: wall time and peak memory; the same for 2 of
          the 12 subjects (peak memory must not grow with subjects) and for 2 jobs
train     python -m stvit.train --data FILE --preset demo: the model and its same-split baseline
truth     an independent logistic regression from the generator's own ground truth: every generated series at its
          source resolution (every 8th brain voxel), detrended and z-scored per voxel with scipy/numpy, the frames
          labelled by the generator (a condition's response above half its peak), fitted on the import's training
          subjects (C by 3-fold subject-grouped CV among them) and scored on its test subjects
hcp       one HCP-sized subject (2 runs x 176 frames of 91 x 109 x 91, int16, TR 0.72 s, fear/neut blocks of 18 s)
          imported with --jobs 1 and --jobs 2 under /usr/bin/time -v: wall and CPU time, peak memory, file size,
          per 1,000 frames, and the 1,000-subject estimate scaled from them
cpu       the CPU time of an import of 2 of the 12 subjects (1 job): on a shared machine CPU seconds, not wall time,
          say what an idle core would take
Writes results.json beside this script; each step reads what an earlier step left in DIR.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
from stvit.data.importer.study import Design, Signal, make_hcp_release, make_study, truth_accuracy  # noqa: E402

DESIGN = Design(tr=2.0, frames=80, block=12.0, rest=8.0, lead=6.0)
SIGNAL = Signal(effect=2.0, noise=1.5)
HCP_DESIGN = Design(tr=0.72, frames=176, block=18.0, rest=1.0, lead=6.0)
CONDITIONS = ("face", "house")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def load() -> str:
    return open("/proc/loadavg").read().split()[0]


def study(work: Path, write: bool):
    return make_study(work / "study12", subjects=12, runs=2, design=DESIGN, signal=SIGNAL, seed=0, write=write)


def timed(cmd: list[str]) -> dict:
    """Run `cmd` under /usr/bin/time -v: its stdout, wall seconds, peak RSS (MB; the largest process), load."""
    before = load()
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], env=ENV, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr).group(1))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([\d.]+)", r.stderr).group(1)) for k in ("User", "System"))
    return {"stdout": r.stdout, "seconds": round(wall, 1), "cpu_seconds": round(cpu, 1),
            "peak_rss_mb": round(rss / 1024), "load_before": before, "load_after": load()}


def step_generate(work: Path, res: dict) -> None:
    t0 = time.perf_counter()
    study(work, write=True)
    size = sum(p.stat().st_size for p in (work / "study12").rglob("*") if p.is_file())
    res["generate"] = {"seconds": round(time.perf_counter() - t0, 1), "bytes": size, "load": load()}


def import_cmd(src: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "stvit.data", "import", str(src), "--out", str(out), "--quiet", "--force", *extra]


def step_import(work: Path, res: dict) -> None:
    src = work / "study12"
    args = ["--conditions", *CONDITIONS, "--test-subjects", "3"]
    res["import"] = {"command": " ".join(["python -m stvit.data import", "STUDY", "--out", "study12.h5", *args]),
                     "jobs1": timed(import_cmd(src, work / "study12.h5", *args)),
                     "two_subjects": timed(import_cmd(src, work / "two.h5", *args[:-2], "--test-subjects", "1",
                                                      "--subjects", "01", "02")),
                     "jobs2": timed(import_cmd(src, work / "study12-j2.h5", *args, "--jobs", "2"))}
    res["import"]["bytes"] = (work / "study12.h5").stat().st_size
    res["import"]["jobs2_same_bytes"] = (work / "study12.h5").read_bytes() == (work / "study12-j2.h5").read_bytes()


def step_train(work: Path, res: dict) -> None:
    out = work / "run12"
    cmd = [sys.executable, "-m", "stvit.train", "--data", str(work / "study12.h5"), "--preset", "demo", "--out",
           str(out), "--class-names", *CONDITIONS, "--quiet"]
    if (out / "metrics.json").is_file():
        run = {"note": "read from an earlier run"}
    else:
        run = timed(cmd)
    m = json.loads((out / "metrics.json").read_text())
    res["train"] = {"command": "python -m stvit.train --data study12.h5 --preset demo --out run12 --class-names face "
                               "house", "final_line": run.get("stdout", "").strip().splitlines()[-1:],
                    "seconds": run.get("seconds"), "model": m["test"]["accuracy"], "model_auc": m["test"]["roc_auc"],
                    "baseline": m["baseline"]["accuracy"], "baseline_auc": m["baseline"]["roc_auc"],
                    "n_test": m["test"]["n"], "best_epoch": m["best_epoch"], "warnings": m.get("warnings", [])}


def step_truth(work: Path, res: dict) -> None:
    from stvit.data.packed import PackedFile

    with PackedFile(work / "study12.h5") as p:
        test_subjects = p.provenance["test_split"]["test"]
    res["truth"] = {**truth_accuracy(study(work, write=False), test_subjects), "test_subjects": test_subjects}


def step_hcp(work: Path, res: dict) -> None:
    """One HCP-sized subject imported with 1 job and with 2 jobs; per 1,000 frames and the 1,000-subject estimate."""
    src = work / "hcp1"
    if not src.exists():
        make_hcp_release(src, subjects=1, design=HCP_DESIGN, signal=SIGNAL)
    size = sum(p.stat().st_size for p in src.rglob("*.nii.gz"))
    from stvit.data.packed import PackedFile

    frames = 2 * HCP_DESIGN.frames
    out = {"frames": frames, "grid": "91 x 109 x 91 (MNI152NLin6Asym, 2 mm), int16 with scl_slope",
           "source_bytes": size}
    for jobs in (1, 2):
        r = timed(import_cmd(src, work / f"hcp1-j{jobs}.h5", "--test-subjects", "1", "--jobs", str(jobs)))
        with PackedFile(work / f"hcp1-j{jobs}.h5") as p:
            kept, voxels = p.n, p.voxels.shape[1]
        nbytes = (work / f"hcp1-j{jobs}.h5").stat().st_size
        per = 1000 / frames
        out[f"jobs{jobs}"] = {**r, "kept": kept, "voxels": voxels, "bytes": nbytes,
                              "per_1000_frames": {"seconds": round(r["seconds"] * per, 1),
                                                  "cpu_seconds": round(r["cpu_seconds"] * per, 1),
                                                  "bytes": round(nbytes * per)}}
    j1, j2 = out["jobs1"], out["jobs2"]
    out["same_bytes"] = (work / "hcp1-j1.h5").read_bytes() == (work / "hcp1-j2.h5").read_bytes()
    n = 1000  # subjects of the HCP-sized study: 1,000 x 2 runs x 176 frames
    out["estimate_1000_subjects"] = {
        "frames": n * frames,
        "hours_jobs1_wall": round(n * j1["seconds"] / 3600, 1),
        "hours_jobs2_wall": round(n * j2["seconds"] / 3600, 1),
        "hours_one_idle_core_from_cpu_time": round(n * j1["cpu_seconds"] / 3600, 1),
        "gb_file": round(n * j1["bytes"] / 1e9, 1),
        "gb_source": round(n * size / 1e9, 1),
        "peak_rss_mb": max(j1["peak_rss_mb"], j2["peak_rss_mb"]),
    }
    res["hcp"] = out


def step_cpu(work: Path, res: dict) -> None:
    """CPU time of an import (1 job: CPU seconds ~ the wall time of an idle core, whatever the machine's load)."""
    r = timed(import_cmd(work / "study12", work / "two-cpu.h5", "--conditions", *CONDITIONS, "--test-subjects", "1",
                         "--subjects", "01", "02"))
    res["cpu"] = {**r, "frames": 4 * DESIGN.frames, "bytes": (work / "two-cpu.h5").stat().st_size}


STEPS = {"generate": step_generate, "import": step_import, "train": step_train, "truth": step_truth,
         "hcp": step_hcp, "cpu": step_cpu}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--steps", nargs="+", choices=list(STEPS), default=list(STEPS))
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    path = HERE / "results.json"
    for name in args.steps:
        print(f"{name} ...", flush=True)
        res = json.loads(path.read_text()) if path.is_file() else {}
        STEPS[name](args.work, res)
        latest = json.loads(path.read_text()) if path.is_file() else {}  # another step may have written meanwhile
        latest[name] = res[name]
        path.write_text(json.dumps(latest, indent=1) + "\n")
        print(json.dumps(res[name], indent=1)[:2000], flush=True)


if __name__ == "__main__":
    main()
