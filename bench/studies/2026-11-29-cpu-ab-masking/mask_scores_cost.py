"""What attention-guided masking costs per pre-training step, and what caching the scores would save.

Two ways to get the scores a guided mask needs (`stvit.masking`), measured side by side in one process:
- per step (what `--mask-strategy attention` does): a no-grad pass of the current encoder over the step's volumes;
- cached per volume: one no-grad pass over the whole training split per epoch (batches of `--cache-batch`), the
  scores kept for the next epoch's steps; per step that is the pass's time per volume times the batch size.

Both score every volume once per epoch, so the cache can only win by batching better; it would also mask with
weights up to an epoch old, hold N x T x P scores, and need them at resume. Reported per round (rounds
interleaved): seconds per optimizer step with random masking and with the attention strategy, the scoring pass
of one step, the cache's pass per step, and the sampler (`guided_noise`) alone, each as wall and as CPU time
(this process, all threads: the work itself, where a shared machine makes the wall time wait); medians and
ratios to random.

    nice -n 10 python bench/studies/2026-11-29-cpu-ab-masking/mask_scores_cost.py [--preset demo] [--rounds 5]
        [--steps 20]
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import time

import torch

from stvit.training import engine
from stvit.config import preset
from stvit.data import DeviceSplit, make_synthetic
from stvit.model.masking import guided_noise, patch_scores
from stvit.training.stages import setup_stage


def seconds(fn, repeat: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds per call of `fn`. CPU time (this process, all threads) is the work itself; on a shared
    machine the wall time also holds the time spent waiting for a core."""
    w, c = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - w) / repeat, (time.process_time() - c) / repeat


def scoring_flop_share(name: str) -> float:
    """Analytic FLOPs of the scoring pass over those of a pre-training step, per volume (`stvit.flops`): the patch
    embedding and the spatial encoder on 1 + P tokens, plus the recomputed q, k and q k^T of every block."""
    from stvit.perf.flops import finetune_flops, linear, pretrain_flops

    m = preset(name).model
    T, N, D = m.volume[0], 1 + m.num_patches, m.dim
    f = finetune_flops(m).parts
    extra = T * m.depth * (linear(N, D, 2 * D) + 2 * N * N * D)
    return (f["patch_embed"] + f["spatial"] + extra) / pretrain_flops(m).train


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps timed per round and strategy")
    ap.add_argument("--cache-batch", type=int, default=64, help="volumes per batch of the cache's epoch pass")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's); 1 keeps a busy machine's "
                                                "thread-pool waits out of small ops")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    cfg = preset(args.preset).override({"train": {"device": "cpu", "compile": False}})
    B, n = cfg.train.batch_size, max(args.cache_batch, cfg.train.batch_size)
    data = make_synthetic(n, 1, 0)
    X, y = data.X_train, data.y_train
    setups = {s: setup_stage("pretrain", cfg.override({"pretrain": {"mask_strategy": s}}), device)
              for s in ("random", "attention")}
    split = DeviceSplit(X, y, device)
    x = split.X[:B]  # (B, T, H, W): one step's volumes
    enc, prec = setups["attention"].model.encoder, setups["attention"].precision
    noise = setups["attention"].noise
    u = torch.rand(B * cfg.model.volume[0], cfg.model.num_patches)
    scores = patch_scores(enc, x.reshape(-1, *x.shape[-2:]), prec)
    load = [os.getloadavg()]
    rows = []
    for r in range(args.rounds):
        row = {}
        for name, s in setups.items():
            s.begin_epoch(r)
            batches = itertools.cycle(split.epoch_batches(B, epoch=r, seed=s.seed))
            epoch = lambda s=s, b=batches: engine.train_one_epoch(  # noqa: E731
                s.step, s.model, s.optimizer, s.scaler, b, args.steps, s.optim, 0, quiet=True)
            row[f"step_{name}"] = [t / args.steps for t in seconds(epoch)]
        row["scoring_pass_per_step"] = seconds(lambda: patch_scores(enc, x.reshape(-1, *x.shape[-2:]), prec), 5)
        all_x = split.X[:n]
        row["cache_pass_per_step"] = [t * B / n for t in
                                      seconds(lambda: patch_scores(enc, all_x.reshape(-1, *all_x.shape[-2:]), prec), 2)]
        row["sampler"] = seconds(lambda: guided_noise(u, scores, noise.guided, noise.temperature), 20)
        rows.append(row)
        print(json.dumps({k: [round(t * 1e3, 2) for t in v] for k, v in row.items()}), "ms (wall, CPU)", flush=True)
    load.append(os.getloadavg())
    med = {k: [statistics.median(r[k][i] for r in rows) for i in (0, 1)] for k in rows[0]}  # (wall, CPU)
    ratios = {clock: {
        "attention_per_step": med["step_attention"][i] / med["step_random"][i],
        "cached (random step + sampler + cache pass)":
            (med["step_random"][i] + med["sampler"][i] + med["cache_pass_per_step"][i]) / med["step_random"][i],
    } for i, clock in enumerate(("wall", "cpu"))}
    result = {"preset": args.preset, "device": "cpu", "threads": torch.get_num_threads(), "steps": args.steps,
              "rounds": rows, "median_s": med, "ratio_to_random": ratios, "loadavg_before_after": load,
              "batch": B, "cache_batch": n, "slices_per_volume": cfg.model.volume[0],
              "patches_per_slice": cfg.model.num_patches, "guided_per_slice": noise.guided,
              "scoring_flops_over_step_flops": {p: scoring_flop_share(p) for p in ("demo", "paper")}}
    print(json.dumps({"median_ms (wall, CPU)": {k: [round(t * 1e3, 2) for t in v] for k, v in med.items()},
                      "ratio_to_random": {c: {k: round(v, 3) for k, v in r.items()} for c, r in ratios.items()},
                      "scoring_flops_over_step_flops": {k: round(v, 3) for k, v in
                                                        result["scoring_flops_over_step_flops"].items()},
                      "load": load}))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
