"""`python -m stvit.profile`: throughput of N training steps of one stage, with the GPU's own view of them.

Runs `--steps` optimizer steps of a preset's pretrain or finetune stage, set up exactly as training sets it up
(`stvit.training.stages.setup_stage`), through the training loop, samples NVML in a background thread (GPU
utilization, memory, power, SM clock), then profiles a few more steps with `torch.profiler` for the top-kernel
table (`stvit.perf.profiler`). Writes `report.md`, `report.json` and `throughput.png` to `--out`. Without NVML (a
CPU, or no nvidia-ml-py) it still reports the throughput and says that NVML was not available.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
from pathlib import Path

import torch

from stvit import cli
from stvit.config import KERNELS
from stvit.errors import UserError, run_cli
from stvit.perf.profiler import VARIANTS, StepRunner, Variant, profile_stage, variant_name, write_report
from stvit.perf.report import environment
from stvit.training import api
from stvit.training.stages import STAGES

# the run flags profile takes, and the config keys they may set (--kernels and --compile set the variant's parts)
RUN_FLAGS = ("--preset", "--config", "--device", "--batch-size", "--precision")
CONFIG_KEYS = ("train.device", "train.batch_size", "train.precision")


def build_parser(argv: list[str] | None = None):
    ap = cli.command_parser("python -m stvit.profile", __doc__)
    groups = cli.add_run_flags(ap, argv, only=RUN_FLAGS)
    run = cli.group(ap, groups, "run")
    run.add_argument("--stage", choices=tuple(STAGES), default="pretrain", help="which stage's step; default: pretrain")
    run.add_argument("--steps", type=int, metavar="N", help="timed steps; default: 60 on CUDA, 4 on a CPU")
    run.add_argument("--warmup", type=int, default=3, metavar="N", help="untimed steps first (they compile); "
                                                                        "default: 3")
    run.add_argument("--window", type=int, metavar="N", help="steps per throughput sample; default: 10 on CUDA, "
                                                             "1 on a CPU")
    run.add_argument("--profile-steps", type=int, metavar="N", help="steps under torch.profiler for the top-kernel "
                                                                    "table, 0 for none; default: 5 on CUDA, 1 on a CPU")
    run.add_argument("--n-train", type=int, metavar="N", help="synthetic volumes the batches are drawn from; default: "
                                                              "64 on CUDA, 8 on a CPU")
    run.add_argument("--interval", type=float, default=0.1, metavar="S", help="NVML sampling interval in seconds; "
                                                                              "default: 0.1")
    run.add_argument("--out", metavar="DIR", help="report folder; default: runs/profile-<preset>-<stage>-<time>")
    k = cli.group(ap, groups, "kernels")
    k.add_argument("--variant", choices=tuple(VARIANTS), default="fused+compile", help=(
        "how the step runs: baseline (the seed's way: eager, no compile, a host DataLoader, torch's AdamW), "
        "eager+compile, fused+compile (the engine's fast path); --kernels/--compile/--loader override its parts; "
        "default: fused+compile"))
    k.add_argument("--kernels", choices=KERNELS, help="the patch/mask ops: auto (the Triton kernels after a "
                                                      "self-check on a GPU), fused, or eager (the reference); "
                                                      "default: the variant's")
    k.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the step; default: the variant's")
    k.add_argument("--loader", choices=("device", "host"), help="the split resident on the device, or a host "
                                                                "DataLoader copying each batch; default: the variant's")
    return ap


def positive(name: str, v: int | None, minimum: int = 1) -> None:
    if v is not None and v < minimum:
        raise UserError(f"{name} must be >= {minimum}, got {v}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device = cli.resolve_device(args.device)
    cuda = device.type == "cuda"
    for name, v, lo in (("--steps", args.steps, 1), ("--warmup", args.warmup, 0), ("--window", args.window, 1),
                        ("--profile-steps", args.profile_steps, 0), ("--batch-size", args.batch_size, 1),
                        ("--n-train", args.n_train, 1)):
        positive(name, v, lo)
    if args.interval <= 0:
        raise UserError(f"--interval must be > 0, got {args.interval}")
    request = api.Request.from_flags(args)
    request.values = {k: v for k, v in request.values.items() if k in CONFIG_KEYS}
    request.values["train.device"] = device.type
    cfg = api.resolve_config(request)
    base = VARIANTS[args.variant]
    variant = Variant(args.kernels or base.kernels, base.compile if args.compile is None else args.compile,
                      args.loader or base.loader, base.fused_adamw)
    label = variant_name(variant)
    steps_ = args.steps or (60 if cuda else 4)
    n_train = args.n_train or (64 if cuda else 8)
    if n_train < cfg.train.batch_size:
        raise UserError(f"--n-train {n_train} is smaller than one batch of {cfg.train.batch_size}")
    if tuple(cfg.model.volume) != (53, 63, 46):
        raise UserError(f"the synthetic set has volumes of 53x63x46, the config asks for {cfg.model.volume}")
    out = Path(args.out) if args.out else \
        Path("runs") / f"profile-{cfg.preset}-{args.stage}-{dt.datetime.now():%Y%m%d-%H%M%S}"
    if out.exists() and not out.is_dir():
        raise UserError("exists and is not a directory", out)

    from stvit.data import make_synthetic

    torch.manual_seed(cfg.train.seed)
    data = make_synthetic(n_train, 1, cfg.train.seed)
    runner = StepRunner(cfg, args.stage, variant, data.X_train, data.y_train, device)
    print(f"profiling {cfg.preset} {args.stage} ({label}: kernels {variant.kernels}, compile "
          f"{variant.compile}, loader {variant.loader}) on {environment(device)['device']}, precision "
          f"{runner.precision.name}, {steps_} steps of {cfg.train.batch_size} volumes", flush=True)
    try:
        result = profile_stage(runner, steps_, args.warmup, args.window or (10 if cuda else 1),
                               args.profile_steps if args.profile_steps is not None else (5 if cuda else 1),
                               args.interval)
    finally:
        runner.close()
    command = "python -m stvit.profile " + " ".join(sys.argv[1:] if argv is None else argv)
    result.update(env=environment(device), command=command, nvml_interval_s=args.interval,
                  run={"preset": cfg.preset, "stage": args.stage, "variant": label, **dataclasses.asdict(variant),
                       "precision": runner.precision.name, "n_train": n_train, "config": cfg.to_dict()})
    files = write_report(out, result)
    nv = result["nvml"]
    print(f"{result['samples_per_s']:.2f} samples/s, {result['tflops']:.3f} TFLOP/s; "
          + ("NVML: " + f"{nv['summary'].get('gpu_util_mean', float('nan')):.0f}% GPU utilization"
             if nv["available"] else f"NVML not available ({nv['reason']})"))
    print("wrote " + ", ".join(str(f) for f in files))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
