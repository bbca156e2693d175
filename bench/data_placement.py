"""Data at scale, side by side in one run on one file: file sizes, disk vs loader bandwidth, training throughput and
peak memory of the three placements (dense as today, packed rows resident, packed rows streamed).

    python bench/data_placement.py [--n-train 3200 --n-test 800] [--steps 30] [--repeats 2] [--work DIR]
                                   [--precision-runs] [--out bench/results/<date>-<device>-data-placement]

1. The built-in synthetic set (default: the course file's 3,200 + 800 volumes) written three ways: dense float32
   (MAT v5, as the built-in cache), packed float32, packed float16 (`synth --format packed`).
2. The disk's sequential read bandwidth: the dense file read with O_DIRECT (no page cache) in 8 MiB reads.
3. The streaming loader (`stvit.data.stream`, its default 2 workers, prefetch 4) over one epoch of the packed
   float16 training split in batches of 8: cold (the file's pages dropped from the page cache with
   posix_fadvise(DONTNEED) first, so it reads the disk) and warm (the pages cached); volumes/s and MB/s of rows.
4. Training samples/s of one stage (fine-tuning, preset demo on a CPU, paper on CUDA) set up as training sets it
   up (`stages.setup_stage` + `engine.train_one_epoch`) over batches of each placement, each placement in a
   process of its own (peak memory of its own), the placements taking turns `--repeats` times; the peak summed
   proportional set size (PSS) of the process and its workers, and the peak CUDA memory on a GPU. The unpack's
   share of a step: the median time to unpack one batch over the step's median time.
5. With --precision-runs: `python -m stvit.train` (preset demo, seed 0) on the demo's 1,920 + 320 volumes (or
   --precision-volumes, --precision-epochs) as packed float32 and packed float16, side by side.

Writes README.md (the tables, with the device, the command and the load average) and results.json to --out.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import mmap
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = ("dense", "device", "stream")


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def drop_cache(path: Path) -> None:
    """Drop `path`'s pages from the page cache (this file only; nothing else is touched)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sequential_read_bandwidth(path: Path, direct: bool, block: int = 8 << 20) -> dict:
    """Sequential read of `path` in `block` reads: with O_DIRECT (the page cache bypassed), or buffered after its
    pages were dropped from the cache (what `cat` gets, readahead included): bytes/s."""
    buf = mmap.mmap(-1, block)  # page-aligned, as O_DIRECT needs
    if not direct:
        drop_cache(path)
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
    total, t0 = 0, time.perf_counter()
    try:
        while True:
            n = os.readv(fd, [buf])
            total += n
            if n < block:
                break
    finally:
        os.close(fd)
    seconds = time.perf_counter() - t0
    return {"bytes": total, "seconds": seconds, "bytes_per_s": total / seconds}


def make_files(work: Path, n_train: int, n_test: int) -> dict[str, Path]:
    from stvit.data import write_synthetic

    files = {"dense float32 (MAT v5)": work / f"synth-{n_train}-{n_test}.mat",
             "packed float32": work / f"synth-{n_train}-{n_test}-f32.h5",
             "packed float16": work / f"synth-{n_train}-{n_test}-f16.h5"}
    for (name, path), (fmt, dtype) in zip(files.items(), (("mat", np.float32), ("packed", np.float32),
                                                         ("packed", np.float16))):
        if not path.exists():
            t0 = time.perf_counter()
            write_synthetic(path, n_train, n_test, 0, fmt=fmt, dtype=dtype)
            print(f"wrote {path} ({name}) in {time.perf_counter() - t0:.0f} s", flush=True)
    return files


def loader_throughput(path: Path, batch: int, cold: bool, workers: int = 2) -> dict:
    """One epoch of the packed training split through the streaming loader (its workers started first): the packed
    rows delivered, and the same epoch unpacked into batches."""
    import torch

    from stvit.data import open_dataset
    from stvit.data.stream import StreamSplit

    data = open_dataset(path)
    split = StreamSplit(data.X_train, data.y_train, torch.device("cpu"), workers=workers)
    order, _ = split.epoch_plan(0, 0, shuffle=True)
    requests = [split.file_rows[order[s:s + batch].numpy()] for s in range(0, len(split) - batch + 1, batch)]
    list(split.read(requests[:workers]))  # start the workers: not part of the timing
    out = {"workers": workers}
    for what in ("rows", "batches"):
        if cold:
            drop_cache(path)
        t0 = time.perf_counter()
        if what == "rows":
            n = sum(len(rows) for rows in split.read(requests))
        else:
            n = sum(len(x) for x, _, _ in split.epoch_batches(batch, epoch=0, seed=0, flip_fraction=0.1))
        seconds = time.perf_counter() - t0
        out[what] = {"volumes": n, "seconds": seconds, "volumes_per_s": n / seconds,
                     "bytes_per_s": n * split.row_bytes / seconds}
    return out


# --- one placement, in a process of its own -------------------------------------------------------------------

def worker(args) -> None:
    """Train `args.steps` steps in one placement; print one JSON line."""
    import torch

    from stvit import cli
    from stvit.config import preset
    from stvit.data import load_dataset, open_dataset, split_train_val
    from stvit.data.placement import place
    from stvit.training import engine
    from stvit.training.stages import setup_stage

    device = cli.resolve_device(None)
    cfg = preset("paper" if device.type == "cuda" else "demo").override({"train": {"device": device.type}})
    t0 = time.perf_counter()
    data = load_dataset(args.file) if args.mode == "dense" else open_dataset(args.file)
    index = dict(zip(("train", "val"), split_train_val(data.ids_train, data.y_train, 0.1, 0)))
    setup = setup_stage("finetune", cfg, device)
    placed = place(data, index, device, setup.precision.storage_dtype,
                   placement={"dense": "auto", "device": "device", "stream": "stream"}[args.mode])
    split = placed.train
    startup = time.perf_counter() - t0
    B = cfg.train.batch_size

    def steps(n: int, epoch: int) -> engine.EpochStats:
        setup.begin_epoch(epoch)
        batches = split.epoch_batches(B, epoch=epoch, seed=setup.seed, flip_fraction=0.1)
        return engine.train_one_epoch(setup.step, setup.model, setup.optimizer, setup.scaler, batches, n, setup.optim,
                                      epoch, quiet=True, log_every=max(n, 1))

    steps(3, 0)  # warm-up: allocator, first reads
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    stats = steps(args.steps, 1)
    unpack_ms = None
    if args.mode != "dense":  # the unpack of one batch, alone
        rows = split.rows[:B] if args.mode == "device" else torch.zeros(B, split.source.width, device=device)
        times = []
        for _ in range(20):
            t = time.perf_counter()
            split.unpack(rows)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t)
        unpack_ms = float(np.median(times)) * 1e3
    print(json.dumps({"mode": args.mode, "placement": placed.record["placement"], "samples_per_s": stats.samples_per_s,
                      "step_ms": stats.seconds / args.steps * 1e3, "unpack_ms": unpack_ms, "startup_s": startup,
                      "preset": cfg.preset, "batch": B, "resident_bytes": placed.record["bytes"],
                      "peak_cuda_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}),
          flush=True)


def run_mode(mode: str, file: Path, steps: int) -> dict:
    from stvit.perf.memory import tree_pss

    cmd = [sys.executable, __file__, "--worker", mode, "--file", str(file), "--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss(proc.pid))
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"{mode} worker failed:\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_pss_bytes"] = peak
    return result


def precision_runs(work: Path, n_train: int = 1920, n_test: int = 320, epochs: list[int] | None = None) -> dict:
    """The demo preset on the built-in set (default: the demo's 1,920 + 320 volumes) as packed float32 and
    float16, seed 0, side by side; `epochs` (pre-training, fine-tuning): fewer than the preset's, for a busy CPU."""
    from stvit.data.synth import write_synthetic_packed

    out = {}
    for dtype in ("float32", "float16"):
        data = work / f"demo-{n_train}-{n_test}-{dtype}.h5"
        if not data.exists():
            write_synthetic_packed(data, n_train, n_test, 0, dtype=dtype)
        tag = "" if epochs is None else f"-e{epochs[0]}-{epochs[1]}"
        run = work / f"run-demo-{n_train}-{n_test}{tag}-{dtype}"
        if not (run / "metrics.json").exists():
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "stvit.train", "--data", str(data), "--preset", "demo", "--seed", "0",
                   "--out", str(run), "--quiet"]
            if epochs is not None:
                cmd += ["--pretrain-epochs", str(epochs[0]), "--ft-epochs", str(epochs[1])]
            subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
            print(f"demo run on {dtype} rows: {time.perf_counter() - t0:.0f} s", flush=True)
            (run / "wall_s").write_text(f"{time.perf_counter() - t0:.1f}")
        metrics = json.loads((run / "metrics.json").read_text())
        log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
        out[dtype] = {"test_accuracy": metrics["test"]["accuracy"], "test_roc_auc": metrics["test"]["roc_auc"],
                      "val_accuracy": metrics["val"]["accuracy"], "best_epoch": metrics["best_epoch"],
                      "final_pretrain_loss": [r["loss"] for r in log if r["stage"] == "pretrain"][-1],
                      "final_train_loss": [r["train_loss"] for r in log if r["stage"] == "finetune"][-1],
                      "baseline_accuracy": metrics.get("baseline", {}).get("accuracy"),
                      "wall_s": float((run / "wall_s").read_text()) if (run / "wall_s").exists() else None,
                      "predictions": str(run / "predictions.npz")}
    p32, p16 = (np.load(out[d].pop("predictions"))["test_probs"] for d in ("float32", "float16"))
    out["setup"] = {"n_train": n_train, "n_test": n_test, "epochs": epochs}
    out["agreement"] = {"same_test_predictions": float((p32.argmax(1) == p16.argmax(1)).mean()),
                        "max_abs_prob_difference": float(np.abs(p32 - p16).max())}
    return out


# --- the report ----------------------------------------------------------------------------------------------

def gb(b: float) -> str:
    return f"{b / 1e9:.2f} GB"


def report(res: dict) -> str:
    from stvit.perf.report import markdown_table

    env, sizes = res["env"], res["files"]
    dense = sizes["dense float32 (MAT v5)"]
    lines = [f"# Data at scale: packed storage, resident vs streamed ({env['device']})", "",
             f"- Date: {env['date']}; commit {res['commit']}",
             f"- Device: {env['device']}, {env.get('threads', '?')} threads; {res['cpus']} CPU cores; load average "
             f"(1, 5, 15 min) at start {res['load_start']}, at end {res['load_end']}",
             f"- Software: python {env['python']}, torch {env['torch']}",
             f"- Command: `{res['command']}`",
             f"- Data: the built-in synthetic set, {res['n_train']:,} + {res['n_test']:,} volumes of 53 x 63 x 46 "
             f"({res['in_brain_voxels']:,} in-brain voxels each), seed 0", "",
             "## Files", ""]
    lines += markdown_table(["file", "bytes", "vs dense float32"],
                            [[k, gb(v), f"{v / dense:.3f}"] for k, v in sizes.items()], [False, True, True])
    d, b, lt = res["disk"], res["disk_buffered"], res["loader"]
    lines += ["", "## Disk and loader", "",
              f"Disk sequential read of the {gb(d['bytes'])} dense file in 8 MiB reads: **{d['bytes_per_s'] / 1e6:.0f} "
              f"MB/s** with O_DIRECT (no page cache), {b['bytes_per_s'] / 1e6:.0f} MB/s buffered after its pages were "
              "dropped (what a plain sequential reader gets here).", ""]
    rows = []
    for key in lt:
        state, r0 = key.split("-")[0], lt[key]
        for what in ("rows", "batches"):
            r = r0[what]
            rows.append([state, r0["workers"], {"rows": "packed rows (loader)", "batches": "unpacked batches"}[what],
                         r["volumes"], f"{r['volumes_per_s']:.0f}", f"{r['bytes_per_s'] / 1e6:.0f}",
                         f"{r['bytes_per_s'] / d['bytes_per_s']:.2f}"])
    lines += markdown_table(["page cache", "workers", "delivered", "volumes", "volumes/s", "MB/s of rows",
                             "vs O_DIRECT"], rows, [False, True, False, True, True, True, True])
    lines += ["", "Cold: the file's pages dropped with posix_fadvise(DONTNEED) before the pass (only this file; "
              "nothing else is evicted). The loader reads the rows of each batch of 8 (an epoch's random order), "
              "sorted, one pread per row (120 KB), the rows of the batches it will hand out next announced to the "
              "kernel ahead (WILLNEED); workers started before the timing.", "",
              "## Training throughput and memory", ""]
    t = res["train"]
    base = t["device"]["samples_per_s"]
    rows = []
    for mode in MODES:
        r = t[mode]
        share = f"{100 * r['unpack_ms'] / r['step_ms']:.3f}%" if r["unpack_ms"] is not None else "-"
        rows.append([mode, f"{r['samples_per_s']:.2f}", f"{r['samples_per_s'] / base:.3f}", f"{r['step_ms']:.0f}",
                     share, gb(r["resident_bytes"]) if mode != "stream" else "0 (file)",
                     f"{r['peak_pss_bytes'] / 1e9:.2f} GB",
                     "n/a (CPU)" if r["peak_cuda_bytes"] is None else gb(r["peak_cuda_bytes"]),
                     f"{r['startup_s']:.1f}"])
    lines += markdown_table(["placement", "samples/s", "vs resident", "step ms", "unpack share", "resident data",
                             "peak host (PSS)", "peak device", "startup s"], rows,
                            [False] + [True] * 8)
    lines += ["", f"Median over {res['repeats']} turns of {res['steps']} fine-tuning steps of {t['device']['batch']} "
              f"volumes (preset {t['device']['preset']}), the placements taking turns, each in a process of its own "
              "(peak host memory: the summed PSS of the process and its loader workers, sampled every 50 ms). dense = "
              "today's path (the MAT file read whole into float32 volumes); device = packed float16 rows resident, "
              "unpacked per batch; stream = packed float16 rows read per batch from the file (2 workers). Unpack "
              "share = the median time to unpack one batch alone over the median step time.", ""]
    if "precision" in res:
        p = res["precision"]
        su = p["setup"]
        ep = "" if su["epochs"] is None else f" --pretrain-epochs {su['epochs'][0]} --ft-epochs {su['epochs'][1]}"
        reduced = "" if su["epochs"] is None and (su["n_train"], su["n_test"]) == (1920, 320) else \
            " (reduced from the demo's 1,920 + 320 volumes and 1 + 6 epochs so that both runs fit the time a shared " \
            "CPU gave them)"
        lines += ["## float32 vs float16 storage: the same run", "",
                  f"`python -m stvit.train --preset demo --seed 0{ep}` on the built-in set ({su['n_train']:,} + "
                  f"{su['n_test']:,} volumes){reduced}, packed as float32 and as float16 (the same split, batches "
                  "and seed; float32 rows give the dense run's batches bit for bit).", ""]
        rows = [[k, f"{p[k]['final_pretrain_loss']:.4f}", f"{p[k]['final_train_loss']:.4f}",
                 f"{p[k]['val_accuracy']:.3f}", f"{p[k]['test_accuracy']:.3f}", f"{p[k]['test_roc_auc']:.3f}",
                 p[k]["best_epoch"], "n/a" if p[k]["baseline_accuracy"] is None else f"{p[k]['baseline_accuracy']:.3f}",
                 "-" if p[k].get("wall_s") is None else f"{p[k]['wall_s']:.0f}"]
                for k in ("float32", "float16")]
        lines += markdown_table(["rows", "last pre-training loss", "last train loss", "val acc", "test acc",
                                 "test ROC-AUC", "best epoch", "baseline acc", "wall s"], rows, [False] + [True] * 8)
        a = p["agreement"]
        lines += ["", f"Test predictions: the same class for {100 * a['same_test_predictions']:.1f}% of the test "
                  f"volumes; largest difference of a class probability {a['max_abs_prob_difference']:.4f}.", ""]
    h = res["hcp"]
    lines += ["## What 300,000 volumes (HCP emotion task) would take, from these measurements", "",
              f"- Disk: {h['bytes_per_volume_f16']:,} bytes per packed float16 volume (this file) x 300,000 = "
              f"**{gb(h['disk_f16'])}** (dense float32: {gb(h['disk_dense'])}).",
              f"- Host memory, streamed: the streamed run's peak {gb(h['stream_peak'])} does not depend on the number "
              f"of volumes but for the per-volume labels, split, ids and row offsets ({h['meta_bytes_per_volume']} "
              f"bytes each: {h['meta_total'] / 1e6:.0f} MB).",
              f"- One 80 GB GPU, resident: the rows take {gb(h['disk_f16'] * 0.9)} for a 90% train + validation share "
              f"(float16; {gb(h['disk_f16'])} with the test split), within the default budget of 0.6 x ~79 GB free = "
              f"{gb(0.6 * 79e9)}: placement auto keeps them on the device.",
              f"- Streamed from a disk like this one, an epoch reads {gb(h['disk_f16'])} at the cold loader's "
              f"{h['cold_loader_bps'] / 1e6:.0f} MB/s: **{h['stream_epoch_s'] / 60:.0f} min** of reading per "
              "epoch (a floor for a GPU step faster than that).", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=3200)
    ap.add_argument("--n-test", type=int, default=800)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path("/tmp/stvit-data-placement"))
    ap.add_argument("--out", type=Path)
    ap.add_argument("--precision-runs", action="store_true")
    ap.add_argument("--precision-volumes", type=int, nargs=2, default=[1920, 320], metavar=("TRAIN", "TEST"))
    ap.add_argument("--precision-epochs", type=int, nargs=2, metavar=("PRETRAIN", "FINETUNE"),
                    help="default: the demo preset's")
    ap.add_argument("--worker", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.mode = args.worker
        worker(args)
        return
    import torch

    from stvit.perf.report import environment
    from stvit.data.packed import PackedFile

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    env = environment(device, command="python bench/data_placement.py " + " ".join(sys.argv[1:]))
    tag = "cpu" if device.type == "cpu" else "gpu"
    out = args.out or ROOT / "bench" / "results" / f"{dt.date.today():%Y-%m-%d}-{tag}-data-placement"
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    res = {"env": env, "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                text=True, cwd=ROOT).stdout.strip(),
           "command": env["command"], "cpus": os.cpu_count(), "load_start": load(), "n_train": args.n_train,
           "n_test": args.n_test, "steps": args.steps, "repeats": args.repeats}
    files = make_files(args.work, args.n_train, args.n_test)
    res["files"] = {k: p.stat().st_size for k, p in files.items()}
    f16 = files["packed float16"]
    with PackedFile(f16) as p:
        res["in_brain_voxels"] = len(p.index)
    res["disk"] = sequential_read_bandwidth(files["dense float32 (MAT v5)"], direct=True)
    res["disk_buffered"] = sequential_read_bandwidth(files["dense float32 (MAT v5)"], direct=False)
    print(f"disk: {res['disk']['bytes_per_s'] / 1e6:.0f} MB/s (O_DIRECT), "
          f"{res['disk_buffered']['bytes_per_s'] / 1e6:.0f} MB/s (buffered)", flush=True)
    res["loader"] = {"cold-2": loader_throughput(f16, 8, cold=True), "cold-4": loader_throughput(f16, 8, True, 4),
                     "warm-2": loader_throughput(f16, 8, cold=False)}
    print(f"loader: {json.dumps(res['loader'])}", flush=True)
    turns = {m: [] for m in MODES}
    for r in range(args.repeats):
        for mode in MODES:
            res_mode = run_mode(mode, files["dense float32 (MAT v5)"] if mode == "dense" else f16, args.steps)
            turns[mode].append(res_mode)
            print(f"turn {r + 1} {mode}: {res_mode['samples_per_s']:.2f} samples/s, peak PSS "
                  f"{res_mode['peak_pss_bytes'] / 1e9:.2f} GB (load {load()})", flush=True)
    res["train_turns"] = turns
    res["train"] = {}
    for mode, runs in turns.items():
        med = dict(runs[0])
        for k in ("samples_per_s", "step_ms", "unpack_ms", "startup_s", "peak_pss_bytes"):
            vals = [r[k] for r in runs if r[k] is not None]
            med[k] = float(np.median(vals)) if vals else None
        res["train"][mode] = med
    if args.precision_runs:
        res["precision"] = precision_runs(args.work, *args.precision_volumes, epochs=args.precision_epochs)
    n = args.n_train + args.n_test
    per = res["files"]["packed float16"] / n
    meta = 8 + 1 + 24 + 8  # label int64, split uint8, subject id <U6, row offset int64
    res["hcp"] = {"bytes_per_volume_f16": int(per), "disk_f16": 300_000 * per,
                  "disk_dense": 300_000 * res["files"]["dense float32 (MAT v5)"] / n,
                  "stream_peak": res["train"]["stream"]["peak_pss_bytes"], "meta_bytes_per_volume": meta,
                  "meta_total": 300_000 * meta, "cold_loader_bps": res["loader"]["cold-2"]["rows"]["bytes_per_s"],
                  "stream_epoch_s": 300_000 * per / res["loader"]["cold-2"]["rows"]["bytes_per_s"]}
    res["load_end"] = load()
    (out / "results.json").write_text(json.dumps(res, indent=2))
    (out / "README.md").write_text(report(res))
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
