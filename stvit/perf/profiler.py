"""Throughput of N training steps of one stage, with the GPU's own view of them (`python -m stvit.profile`).

Runs `--steps` optimizer steps of a preset's pretrain or finetune stage, set up exactly as training sets it up
(`stvit.training.stages.setup_stage`: the same model, optimizer, compiled graph and masking noise), through the training
loop (`stvit.training.engine.train_one_epoch`, in windows of `--window` steps, each ending in a sync), samples NVML
(`stvit.nvml`) in a background thread (GPU utilization, memory used, power, SM clock), then profiles a few more
steps with `torch.profiler` for the top-kernel table. Writes `report.md`, `report.json` and, when matplotlib is
installed, `throughput.png` (samples/s and utilization over time) to `--out`. Without NVML (a CPU, or no
nvidia-ml-py) it still reports the throughput and says that NVML was not available.

The ways of running a step (`VARIANTS`), shared with `bench/test_train_step.py` and `bench/gpu_check.sh`:
- `baseline`: what the seed's notebook does: eager ops, no compile, autocast per the precision policy, float32
  volumes from host memory through a `DataLoader` (2 workers, pinned on CUDA) copied to the device every step,
  and torch's default AdamW;
- `eager+compile`: the reference ops with the whole step compiled, the split resident on the device;
- `fused+compile`: the Triton kernels with the whole step compiled, the split resident on the device
  (the project's fast path).
Achieved TFLOP/s use the analytic count of `stvit.flops`.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from stvit.config import Config
from stvit.data.augment import flip_fraction
from stvit.model.precision import Precision
from stvit.perf.flops import train_flops_per_sample
from stvit.perf.nvml import NvmlSampler
from stvit.perf.report import fmt, markdown_table
from stvit.training import engine
from stvit.training.stages import STAGES, setup_stage


@dataclass(frozen=True)
class Variant:
    kernels: str  # "eager" or "fused"
    compile: bool
    loader: str  # "host": DataLoader from host memory, copied each step; "device": DeviceSplit
    fused_adamw: bool  # the fused AdamW on CUDA (`engine.make_optimizer`) or torch's default


VARIANTS = {
    "baseline": Variant("eager", False, "host", False),
    "eager+compile": Variant("eager", True, "device", True),
    "fused+compile": Variant("fused", True, "device", True),
}


def variant_name(variant: Variant) -> str:
    """The name of a variant in `VARIANTS`, or a description of a custom one."""
    return next((k for k, v in VARIANTS.items() if v == variant),
                f"{variant.kernels} ops, {'compiled' if variant.compile else 'no compile'}, {variant.loader} data")


# --- data ----------------------------------------------------------------------------------------------------

def host_batches(X: np.ndarray, y: np.ndarray, batch_size: int, device: torch.device, seed: int = 0,
                 num_workers: int = 2) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless (x, y, idx) on `device` the seed's way: a shuffling DataLoader over float32 host volumes."""
    from torch.utils.data import DataLoader, TensorDataset

    ds = TensorDataset(torch.from_numpy(np.ascontiguousarray(X, np.float32)), torch.as_tensor(y).long(),
                       torch.arange(len(y)))
    cuda = device.type == "cuda"
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=num_workers,
                        pin_memory=cuda, persistent_workers=num_workers > 0,
                        generator=torch.Generator().manual_seed(seed))
    while True:
        for x, yb, idx in loader:
            yield x.to(device, non_blocking=cuda), yb.to(device, non_blocking=cuda), idx.to(device)


def device_batches(split, batch_size: int, seed: int, flip_fraction: float = 0.1,
                   flip_axis: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless (x, y, idx) from a `DeviceSplit`, epoch after epoch, as the training run draws them."""
    for epoch in itertools.count():
        yield from split.epoch_batches(batch_size, epoch=epoch, seed=seed, flip_fraction=flip_fraction,
                                       flip_axis=flip_axis)


# --- one stage, ready to step --------------------------------------------------------------------------------

class StepRunner:
    """Steps of one stage, set up by `stages.setup_stage` as training sets it up, in one of the `VARIANTS`
    (ops, compile, data path, AdamW), over a batch stream.

    `run(n)` makes n optimizer steps through `engine.train_one_epoch` (each call one "epoch" of the stage's masking
    noise) and returns its `EpochStats` (synchronized on CUDA). The first call compiles when the variant compiles.
    """

    def __init__(self, cfg: Config, stage: str, variant: Variant, X: np.ndarray, y: np.ndarray,
                 device: torch.device, precision: Precision | None = None, num_workers: int = 2):
        from stvit import data as D

        if stage not in STAGES:
            raise ValueError(f"unknown stage '{stage}' (choose from {', '.join(STAGES)})")
        cfg = cfg.override({"model": {"kernels": variant.kernels}})
        self.cfg, self.stage, self.variant, self.device = cfg, stage, variant, device
        self.variant_name = variant_name(variant)
        self.batch_size = cfg.train.batch_size
        self.setup = setup_stage(stage, cfg, device, precision=precision, compile=variant.compile,
                                 fused_adamw=variant.fused_adamw)
        self.precision, self.model = self.setup.precision, self.setup.model
        if variant.loader == "host":
            self.batches = host_batches(X, y, self.batch_size, device, cfg.train.seed, num_workers)
        elif variant.loader == "device":
            split = D.DeviceSplit(X, y, device, self.precision.storage_dtype)
            self.batches = device_batches(split, self.batch_size, self.setup.seed, flip_fraction(cfg),
                                          cfg.data.flip_axis)
        else:
            raise ValueError(f"unknown loader '{variant.loader}' (choose from host, device)")
        self.flops_per_sample = train_flops_per_sample(cfg.model, stage)
        self.tokens_per_sample = cfg.model.volume[0] * cfg.model.num_patches
        self.epoch = 0

    @property
    def compile_seconds(self) -> float | None:
        return self.setup.compile_seconds

    def run(self, n: int) -> engine.EpochStats:
        s = self.setup
        s.begin_epoch(self.epoch)
        stats = engine.train_one_epoch(s.step, s.model, s.optimizer, s.scaler, itertools.islice(self.batches, n), n,
                                       s.optim, self.epoch, quiet=True, log_every=max(n, 1))
        self.epoch += 1
        return stats

    def close(self) -> None:
        self.batches.close()  # ends a DataLoader's workers


# --- the report ----------------------------------------------------------------------------------------------

def step_metrics(runner: StepRunner, samples: int, seconds: float) -> dict[str, float]:
    sps = samples / max(seconds, 1e-9)
    return {"samples_per_s": sps, "tokens_per_s": sps * runner.tokens_per_sample,
            "tflops": sps * runner.flops_per_sample / 1e12}


def top_kernels(runner: StepRunner, n_steps: int, rows: int = 15) -> tuple[list[dict], str]:
    """torch.profiler over `n_steps` steps: the `rows` events with the most self time on the device
    (self CPU time on a CPU), as rows and as the profiler's own table."""
    from torch.profiler import ProfilerActivity, profile

    cuda = runner.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        runner.run(n_steps)
    events = prof.key_averages()

    def dev_time(e) -> float:
        for attr in ("self_device_time_total", "self_cuda_time_total"):
            v = getattr(e, attr, None)
            if v is not None:
                return float(v)
        return 0.0

    key = dev_time if cuda else (lambda e: float(e.self_cpu_time_total))
    total = sum(key(e) for e in events) or 1.0
    out = [{"name": e.key, "calls": int(e.count), "self_us": key(e), "share": key(e) / total,
            "self_us_per_step": key(e) / max(n_steps, 1)}
           for e in sorted(events, key=key, reverse=True)[:rows]]
    sort = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    try:
        table = events.table(sort_by=sort, row_limit=rows, max_name_column_width=60)
    except Exception:  # the sort key's name changed across releases
        table = events.table(sort_by="self_device_time_total" if cuda else sort, row_limit=rows)
    return out, table


def profile_stage(runner: StepRunner, steps_: int, warmup: int, window: int, profile_steps: int,
                  interval: float = 0.1) -> dict[str, Any]:
    """Warm up (compile), then `steps_` timed steps in windows under the NVML sampler, then the profiler."""
    dev = runner.device
    t_w = time.perf_counter()
    if warmup:
        runner.run(warmup)
    warmup_s = time.perf_counter() - t_w
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    sampler = NvmlSampler(dev, interval)
    t0 = time.perf_counter()
    sampler.start(t0)
    series, done, total_s = [], 0, 0.0
    try:
        while done < steps_:
            n = min(window, steps_ - done)
            stats = runner.run(n)
            done += n
            total_s += stats.seconds
            series.append({"t": time.perf_counter() - t0, "steps": n, "seconds": stats.seconds,
                           "samples_per_s": stats.samples_per_s, "loss": stats.loss})
    finally:
        sampler.stop()
    peak = torch.cuda.max_memory_allocated(dev) / 1e9 if dev.type == "cuda" else None
    kernels_, table = top_kernels(runner, profile_steps) if profile_steps else ([], "")
    samples = done * runner.batch_size
    return {
        "steps": done, "batch_size": runner.batch_size, "samples": samples, "seconds": total_s,
        **step_metrics(runner, samples, total_s),
        "flops_per_sample": runner.flops_per_sample, "tokens_per_sample": runner.tokens_per_sample,
        "warmup_steps": warmup, "warmup_seconds": warmup_s, "compile_seconds": runner.compile_seconds,
        "peak_memory_gb": peak, "series": series,
        "nvml": {"available": sampler.available, "reason": sampler.reason, "summary": sampler.summary(),
                 "samples": sampler.samples},
        "top_kernels": kernels_, "profiler_table": table, "profile_steps": profile_steps,
    }


def write_report(out: Path, result: dict[str, Any]) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(result, indent=2, default=str))
    written = [out / "report.json"]
    png = out / "throughput.png"
    if plot(result, png):
        written.append(png)
    (out / "report.md").write_text(markdown(result, png if png in written else None))
    return [out / "report.md"] + written


def markdown(r: dict[str, Any], png: Path | None) -> str:
    env, run = r["env"], r["run"]
    lines = [f"# Profile: {run['preset']} preset, {run['stage']} stage, {run['variant']}", "",
             f"- date: {env['date']}", f"- device: {env['device']}",
             f"- software: torch {env['torch']}, triton {env['triton']}, python {env['python']}"
             + (f", CUDA {env['cuda']}, sm {env['capability']}" if env.get("cuda") else ""),
             f"- command: `{r['command']}`",
             f"- kernels {run['kernels']}, compile {run['compile']}, loader {run['loader']}, "
             f"precision {run['precision']}, batch {r['batch_size']} volumes", "",
             "## Throughput", "",
             *markdown_table(["steps", "samples/s", "tokens/s", "TFLOP/s", "peak memory GB", "compile s", "warm-up s"],
                             [[r["steps"], f"{r['samples_per_s']:.2f}", f"{r['tokens_per_s']:.4g}", f"{r['tflops']:.3f}",
                               fmt(r["peak_memory_gb"]), fmt(r["compile_seconds"], ".1f"),
                               f"{r['warmup_seconds']:.1f}"]], [True] * 7), "",
             f"FLOPs per training sample (analytic, `stvit.flops`): {r['flops_per_sample'] / 1e9:.2f} GFLOP; "
             f"tokens per sample: {r['tokens_per_sample']} patch tokens.", "", "## GPU (NVML)", ""]
    nv = r["nvml"]
    if not nv["available"]:
        lines.append(f"NVML not available: {nv['reason']}. Only the host-side throughput above was measured.")
    else:
        s = nv["summary"]
        lines += ["| quantity | mean | max |", "|---|---:|---:|"]
        for key, label in (("gpu_util", "GPU utilization %"), ("mem_util", "memory-controller utilization %"),
                           ("mem_used_gb", "memory used GB"), ("power_w", "power W"), ("sm_clock_mhz", "SM clock MHz")):
            if f"{key}_mean" in s:
                lines.append(f"| {label} | {s[key + '_mean']:.1f} | {s[key + '_max']:.1f} |")
        lines.append(f"\n{s['samples']} samples every {r['nvml_interval_s']} s.")
    if png is not None:
        lines += ["", f"![throughput and utilization]({png.name})"]
    if r["top_kernels"]:
        where = "device" if env.get("cuda") else "CPU"
        lines += ["", f"## Top kernels ({r['profile_steps']} profiled steps, self {where} time)", "",
                  "| kernel | calls | self ms/step | share |", "|---|---:|---:|---:|"]
        for k in r["top_kernels"]:
            name = k["name"].replace("|", "/")
            name = name if len(name) <= 80 else name[:77] + "..."
            lines.append(f"| `{name}` | {k['calls']} | {k['self_us_per_step'] / 1e3:.3f} | {k['share']:.1%} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> bool:
    """Throughput per window and NVML utilization over time; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot([s["t"] for s in r["series"]], [s["samples_per_s"] for s in r["series"]], "o-", label="samples/s")
    ax.set_xlabel("seconds")
    ax.set_ylabel("samples/s")
    nv = r["nvml"]["samples"]
    if nv:
        ax2 = ax.twinx()
        ax2.plot([s["t"] for s in nv], [s["gpu_util"] for s in nv], color="tab:orange", alpha=0.7,
                 label="GPU util %")
        ax2.set_ylabel("GPU utilization %")
        ax2.set_ylim(0, 105)
    ax.set_title(f"{r['run']['preset']} {r['run']['stage']} ({r['run']['variant']}) on {r['env']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- full epochs (bench/gpu_check.sh) ------------------------------------------------------------------------

def time_epochs(cfg: Config, X: np.ndarray, y: np.ndarray, device: torch.device, variants=("baseline",
                "fused+compile"), stages=STAGES, warmup: int = 3, interval: float = 0.2) -> list[dict[str, Any]]:
    """One timed epoch (len(X) // batch steps) per stage and variant (names in `VARIANTS` or `Variant`s),
    after `warmup` untimed steps (they compile), with NVML sampled during the epoch."""
    rows = []
    steps_ = len(X) // cfg.train.batch_size
    for stage in stages:
        for v in variants:
            variant = VARIANTS[v] if isinstance(v, str) else v
            name = variant_name(variant)
            runner = StepRunner(cfg, stage, variant, X, y, device)
            try:
                r = profile_stage(runner, steps_, warmup, window=max(steps_, 1), profile_steps=0, interval=interval)
                rows.append({"stage": stage, "variant": name, "steps": r["steps"], "samples": r["samples"],
                             "epoch_seconds": r["seconds"], **step_metrics(runner, r["samples"], r["seconds"]),
                             "warmup_seconds": r["warmup_seconds"], "compile_seconds": r["compile_seconds"],
                             "loss": r["series"][-1]["loss"] if r["series"] else None,
                             "peak_memory_gb": r["peak_memory_gb"], "nvml": r["nvml"]["summary"]})
            finally:
                runner.close()
                del runner
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows
