"""What the tests share: tiny model configs, a tiny learnable data set and run config, the three-way assertion,
and the driver of `python -m stvit.train` (in process, and killed mid-epoch in a subprocess)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from kernels.select import TOL, three_way
from stvit.config import ModelConfig

ROOT = Path(__file__).resolve().parents[1]

# --- tiny models ------------------------------------------------------------------------------------------------

# 5 slices of 14x6 -> 2x3 patches of 7x2: the model of the tiny training runs and of the export tests
SMALL = dict(volume=(5, 14, 6), dim=16, depth=1, heads=2, temporal_depth=1, temporal_heads=2, head_hidden=8,
             decoder_dim=8, decoder_depth=1, decoder_heads=2)


def small_config(**kw) -> ModelConfig:
    """`SMALL` without dropout, MAE keeping 3 of 6 patches (overrides in `kw`)."""
    return ModelConfig(**{**SMALL, "dropout": 0.0, "mask_ratio": 0.5, **kw})


def tiny_config(device: str = "cpu", **kw) -> ModelConfig:
    """3 slices of 14x6 -> 2x3 patches of 7x2, MAE keeps 3 of 6; head dims 12/12/8 on CPU, 16/16/8 on CUDA (the
    fused CUDA SDPA kernels want multiples of 8). The model of the parity, compile, SDPA and fused-model tests:
    one shape, so Inductor's FX graph cache serves a graph compiled by one test to the others."""
    base = dict(volume=(3, 14, 6), dim=32 if device == "cuda" else 24, depth=1, heads=2, temporal_depth=1,
                temporal_heads=2, head_hidden=8, decoder_dim=16, decoder_depth=1, decoder_heads=2, dropout=0.0,
                mask_ratio=0.5)
    return ModelConfig(**{**base, **kw})


def stage_config(compile: bool = False, **pretrain):
    """The demo preset with the tiny CPU model, batches of 2, fp32 on CPU, for `stages.setup_stage`; `pretrain`:
    values of the pre-training section (`mask_strategy="attention"`, ...)."""
    import dataclasses

    from stvit.config import preset

    cfg = preset("demo")
    cfg.model = tiny_config()
    cfg.pretrain = dataclasses.replace(cfg.pretrain, **pretrain)
    cfg.train.batch_size, cfg.train.compile, cfg.train.device, cfg.train.precision = 2, compile, "cpu", "fp32"
    return cfg


def tiny_volumes(n: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """`n` random volumes of `tiny_config`'s shape and alternating labels."""
    g = np.random.default_rng(0)
    return g.standard_normal((n, 3, 14, 6)).astype(np.float32), np.arange(n) % 2


def run_epoch(setup, X: np.ndarray, y: np.ndarray, steps: int, epoch: int = 0):
    """`steps` steps of `epoch` of a `stages.setup_stage` setup on (X, y), as `stvit.fit` makes them: EpochStats."""
    from stvit.training import engine
    from stvit.data import DeviceSplit

    cfg = setup.cfg
    setup.begin_epoch(epoch)
    batches = DeviceSplit(X, y, setup.device).epoch_batches(
        cfg.train.batch_size, epoch=epoch, seed=setup.seed, flip_fraction=cfg.data.flip_fraction,
        flip_axis=cfg.data.flip_axis)
    return engine.train_one_epoch(setup.step, setup.model, setup.optimizer, setup.scaler, batches, steps,
                                  setup.optim, epoch, quiet=True)


# --- a tiny training run ----------------------------------------------------------------------------------------

VOLUME = SMALL["volume"]
TINY_RUN = {
    "model": {**SMALL, "volume": list(VOLUME), "patch": [7, 2], "dropout": 0.1},
    "pretrain": {"epochs": 2, "lr": 1e-3, "warmup_epochs": 0.5},
    "finetune": {"epochs": 3, "lr": 3e-3, "warmup_epochs": 0.5},
    "train": {"batch_size": 4, "eval_batch_size": 5, "compile": False, "device": "cpu", "precision": "fp32"},
    "data": {"val_fraction": 0.25},
}


def write_tiny_data(path: Path, n_train: int = 32, n_test: int = 10, seed: int = 0) -> Path:
    """A learnable toy set in the npz layout: class 1 has a bright blob in the left half of the slices."""
    rng = np.random.default_rng(seed)

    def make(n, subj_offset):
        y = np.arange(n) % 2
        X = rng.normal(size=(n, *VOLUME)).astype(np.float32)
        X[y == 1, :2, 3:10, 1:4] += 1.5
        ids = np.array([f"S{subj_offset + i // 4:03d}" for i in range(n)])
        return X, y.astype(np.float64).reshape(-1, 1), ids

    Xtr, ytr, itr = make(n_train, 0)
    Xte, yte, ite = make(n_test, 100)
    np.savez(path, X_train=Xtr, y_train=ytr, ids_train=itr, X_test=Xte, y_test=yte, ids_test=ite)
    return path


def run_main(args: list[str]) -> int:
    """`python -m stvit.train ARGS` in this process; the exit code."""
    from stvit import train
    from stvit.errors import run_cli

    return run_cli(train.main, args)


def losses(run_dir: Path) -> list[tuple]:
    """(stage, epoch, loss, train loss, train accuracy, val loss, val accuracy) of each line of log.jsonl."""
    from stvit.training.rundir import read_log

    keys = ("loss", "train_loss", "train_acc", "val_loss", "val_acc")
    return [(r["stage"], r["epoch"], *(r.get(k) for k in keys)) for r in read_log(run_dir / "log.jsonl")]


KILLER = """
import os, signal, sys
import stvit.training.engine as E
import {module} as T
real = E.train_one_epoch
def killing(step, model, opt, scaler, batches, steps, cfg, epoch, **kw):
    if cfg.epochs == {ft} and cfg.lr == {lr} and epoch == 1:  # the stage's 2nd epoch: die after two steps
        def gen(src=batches):
            for i, b in enumerate(src):
                if i == 2:
                    os.kill(os.getpid(), signal.SIGKILL)
                yield b
        batches = gen()
    return real(step, model, opt, scaler, batches, steps, cfg, epoch, **kw)
E.train_one_epoch = killing
sys.exit(T.run_cli(T.main, sys.argv[1:]))
"""


def killer_script(path: Path, section: dict, module: str = "stvit.train") -> Path:
    """An entry point of `module` (stvit.train, stvit.cv) that SIGKILLs its own process in the middle of the first
    2nd epoch it runs of the stage whose config section is `section` (found by its epochs and lr:
    TINY_RUN["finetune"], TINY_RUN["pretrain"])."""
    path.write_text(KILLER.replace("{ft}", repr(section["epochs"])).replace("{lr}", repr(section["lr"]))
                    .replace("{module}", module))
    return path


# --- the three-way rule -----------------------------------------------------------------------------------------

def three_way_failure(out, out_pt, ref, name: str = "output", atol: float | None = None, rtol: float | None = None,
                      scale: float | None = None, per_tensor: bool = False) -> str | None:
    """The three-way rule of STYLE.md, elementwise: |out - ref| <= 2 |out_pt - ref| + atol * scale + rtol |ref|.

    out: the fast path at some dtype; out_pt: the reference at the same dtype; ref: the reference in fp32 from
    the same (rounded) inputs. atol and rtol default to `kernels.select.TOL` of out's dtype (the rule the kernels'
    startup self-check applies: one rule for both); scale to max |ref| (at least 1).
    per_tensor: the looser form max |out - ref| <= 2 max |out_pt - ref| + atol * scale, for a caller that says
    why elementwise cannot hold. Returns None when the rule holds, else a message with the first mismatches."""
    if out.shape != ref.shape:
        return f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    if out.dtype != out_pt.dtype:
        return f"{name}: dtype {out.dtype} != reference's {out_pt.dtype}"
    dtype = out.dtype
    bad, err, _, scale = three_way(out, out_pt, ref, atol=atol, rtol=rtol, scale=scale)  # NaN is a mismatch
    out, out_pt, ref = (t.detach().float().cpu() for t in (out, out_pt, ref))
    if per_tensor and torch.isfinite(err).all():
        if err.max() <= 2 * (out_pt - ref).abs().max() + (TOL[dtype][0] if atol is None else atol) * scale:
            return None
    elif not bad.any():
        return None
    idx = bad.nonzero()[:8].tolist()
    rows = [f"  at {tuple(i)}: out {out[tuple(i)].item():.6g}, reference at dtype {out_pt[tuple(i)].item():.6g}, "
            f"fp32 {ref[tuple(i)].item():.6g}" for i in idx]
    return (f"{name}: {int(bad.sum())} of {bad.numel()} mismatches (max error {err.max().item():.3g}, scale "
            f"{scale:.3g}); first:\n" + "\n".join(rows))


def assert_three_way(out, out_pt, ref, name: str = "output", **tol) -> None:
    """`three_way_failure` as an assertion."""
    failure = three_way_failure(out, out_pt, ref, name, **tol)
    assert failure is None, failure


# --- a broken kernel -------------------------------------------------------------------------------------------

def break_scatter(monkeypatch) -> None:
    """mae_scatter's forward kernel writes its output off by 1e-3 (for the self-check's fallback and failure)."""
    import sys

    mod = sys.modules["kernels.mae_scatter"]
    real = mod.launch

    def launch(plan, *tensors):
        real(plan, *tensors)
        if plan.name == "_mae_scatter_fwd":
            tensors[-1].add_(1e-3)

    monkeypatch.setattr(mod, "launch", launch)
