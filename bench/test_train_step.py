"""Train steps, pretrain and finetune: the seed-style baseline vs eager+compile vs fused+compile.

Each variant (`stvit.perf.profiler.VARIANTS`) is set up as training sets it up (`stvit.training.stages.setup_stage`: the same
model, optimizer, compiled graph and masking noise) and makes optimizer steps through the training loop
(`stvit.training.engine.train_one_epoch`): baseline = eager ops, no compile, autocast per the precision policy, float32
volumes from host memory through a DataLoader (2 workers, pinned on CUDA) copied each step, torch's default
AdamW; eager+compile and fused+compile = the whole step compiled, the split resident on the device in the
compute dtype, the fused AdamW on CUDA. Reported: samples/s, tokens/s (patch tokens), achieved TFLOP/s (analytic
count, `stvit.flops`), peak memory (CUDA), compile time.

CUDA: the paper preset, batch 8 volumes (424 slices). CPU: the demo preset (what `python -m stvit.train` runs
there: 21x23 patches, d 64, one block per stage, batch 8), so the suite stays under 10 minutes on 2 cores; on CPU
the fused ops trace to the reference under compile, so fused+compile compiles the graph eager+compile compiled
just before, and finds it in Inductor's cache.
"""
import pytest
import torch

from stvit.config import preset
from stvit.data import make_synthetic
from stvit.perf.profiler import VARIANTS, StepRunner

ON_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if ON_CUDA else "cpu")

if ON_CUDA:
    CFG = preset("paper")
    N_TRAIN, WARMUP, STEPS, ROUNDS = 64, 3, 10, 5
else:
    CFG = preset("demo")  # what a CPU user trains: 21x23 patches, d 64, 1 + 1 blocks, batch 8
    N_TRAIN, WARMUP, STEPS, ROUNDS = 16, 2, 5, 5
CFG = CFG.override({"train": {"device": DEVICE.type}})
M = CFG.model
SHAPE = f"{CFG.preset}: B={CFG.train.batch_size} patch {M.patch[0]}x{M.patch[1]} D={M.dim}" \
        f" depth {M.depth}+{M.temporal_depth} dec {M.decoder_dim}x{M.decoder_depth}"


@pytest.fixture(scope="module")
def data():
    return make_synthetic(N_TRAIN, 1, 0)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_train_step(bench_step, data, stage, variant):
    torch.manual_seed(0)
    runner = StepRunner(CFG, stage, VARIANTS[variant], data.X_train, data.y_train, DEVICE)
    try:
        info = bench_step(runner, warmup=WARMUP, steps=STEPS, rounds=ROUNDS, shape=SHAPE)
    finally:
        runner.close()
        del runner
        if ON_CUDA:
            torch.cuda.empty_cache()
    assert info["samples_per_s"] > 0
