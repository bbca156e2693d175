"""MAE masking strategies (`stvit.masking`): random masking unchanged draw for draw; the attention-guided sampler
removes patches with the probabilities it promises, from the encoder's own attention, on the paths a step takes
(fused kernels, two ranks). The compiled step and a resume after SIGKILL: tests/e2e/test_masking.py."""
from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from kernels.reference import random_masking
from stvit.training import stages
from stvit.config import Config, ConfigError
from stvit.model.masking import AttentionMaskNoise, MaskNoise, guided_count, guided_noise, patch_scores
from stvit.model.vit import MAE
from stvit.model.precision import Precision

from helpers import run_epoch, stage_config, tiny_config, tiny_volumes

CPU = torch.device("cpu")
FP32 = Precision.resolve("fp32", CPU)
ALPHA = 1e-6  # chance that a correct sampler fails one of the statistical tests below (for a random seed)


# --- random masking is what it was --------------------------------------------------------------------------------

# ids_keep of the first two steps of epochs 0 and 3 for seed 0 (stage seed 1), `stage_config()`, as drawn before
# the strategies existed (`kernels.reference.random_masking` of the MASK stream's uniforms)
MAIN_IDS_KEEP = {
    (0, 0): [[5, 3, 0], [1, 2, 4], [2, 1, 0], [5, 4, 2], [5, 4, 0], [5, 1, 2]],
    (0, 1): [[1, 4, 5], [1, 3, 0], [5, 0, 2], [3, 2, 4], [0, 3, 1], [5, 1, 3]],
    (3, 0): [[1, 2, 5], [1, 5, 3], [4, 1, 5], [2, 0, 1], [4, 1, 3], [2, 5, 4]],
    (3, 1): [[0, 2, 1], [1, 2, 5], [1, 4, 2], [1, 3, 0], [4, 3, 5], [5, 0, 2]],
}


def test_random_strategy_masks_as_before():
    """The default strategy is random, and the setup's noise masks every slice as the code before it did."""
    cfg = stage_config()
    assert cfg.pretrain.mask_strategy == "random"
    setup = stages.setup_stage("pretrain", cfg, CPU)
    assert type(setup.noise) is MaskNoise
    x = torch.zeros(2, *cfg.model.volume)
    for (epoch, step), want in MAIN_IDS_KEEP.items():
        if step == 0:
            setup.begin_epoch(epoch)
        ids_keep = random_masking(setup.noise(x), cfg.model.mask_ratio)[0]
        assert ids_keep.tolist() == want, (epoch, step)


def test_attention_strategy_without_guided_patches_is_random_masking():
    """A guide ratio that rounds to no patch leaves the uniform noise untouched: the same losses as random."""
    X, y = tiny_volumes()
    runs = {}
    for name, cfg in (("random", stage_config()), ("attention", stage_config(mask_strategy="attention",
                                                                             mask_guide_ratio=0.1))):
        torch.manual_seed(0)
        setup = stages.setup_stage("pretrain", cfg, CPU)
        assert isinstance(setup.noise, AttentionMaskNoise) == (name == "attention")
        runs[name] = run_epoch(setup, X, y, 3).loss
    assert runs["attention"] == runs["random"]


# --- the sampler --------------------------------------------------------------------------------------------------

def removal_law(w: list[float], removed: int, guided: int) -> dict[frozenset, float]:
    """The exact law of the removed set: `guided` patches drawn one by one without replacement with probabilities
    proportional to `w` among those left, then `removed - guided` uniformly among the others."""
    law: dict[frozenset, float] = defaultdict(float)
    for seq in itertools.permutations(range(len(w)), guided):
        p, left = 1.0, sum(w)
        for i in seq:
            p, left = p * w[i] / left, left - w[i]
        rest = [j for j in range(len(w)) if j not in seq]
        fills = list(itertools.combinations(rest, removed - guided))
        for fill in fills:
            law[frozenset(seq) | frozenset(fill)] += p / len(fills)
    return law


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_guided_sampler_removes_patches_with_the_right_probabilities(temperature):
    """20,000 slices of 6 patches losing 3, 2 of them by attention: each patch's removal count lies in its exact
    binomial interval, and the 20 possible removed sets pass a chi-square test against their exact law (which
    also checks that the random part is uniform given the guided draw). A peaked score is removed far more often
    than random masking's 1/2."""
    n, P, keep, guided = 20_000, 6, 3, 2
    scores = torch.tensor([1.0, 8.0, 2.0, 1.0, 0.5, 3.0])
    u = torch.rand(n, P, generator=torch.Generator().manual_seed(1))
    mask = random_masking(guided_noise(u, scores.expand(n, P), guided, temperature), 1 - keep / P)[2].bool()
    assert (mask.sum(1) == P - keep).all()
    law = removal_law((scores ** (1 / temperature)).tolist(), P - keep, guided)
    p = torch.tensor([sum(q for s, q in law.items() if i in s) for i in range(P)], dtype=torch.float64)
    lo, hi = stats.binom.interval(1 - ALPHA / P, n, p.numpy())
    counts = mask.sum(0).numpy()
    assert ((lo <= counts) & (counts <= hi)).all(), (counts / n, p)
    sets = [frozenset(torch.nonzero(row).flatten().tolist()) for row in mask]
    observed = [sets.count(s) for s in law]
    chi2 = stats.chisquare(observed, [n * q for q in law.values()])
    assert chi2.pvalue > ALPHA, chi2
    peak = int(scores.argmax())
    assert p[peak] > 0.85 and counts[peak] > stats.binom.ppf(1 - ALPHA, n, 0.5)  # random masking: p = 1/2


@pytest.mark.parametrize("guided", [1, 40, 135])
def test_equal_scores_mask_exactly_as_random(guided):
    """With equal scores (any value, any temperature) the guided noise sorts as the uniform draw does: the same
    ids_keep, ids_restore and mask as random masking, bit for bit."""
    P, ratio = 207, 0.65  # the paper's slices: 135 of 207 removed
    u = torch.rand(64, P, generator=torch.Generator().manual_seed(2))
    assert all(len(set(row.tolist())) == P for row in u)  # no tied draws (a tie may be ordered either way)
    want = random_masking(u, ratio)
    for value, temperature in ((1.0, 1.0), (0.37, 0.2), (5.0, 8.0)):
        got = random_masking(guided_noise(u, torch.full_like(u, value), guided, temperature), ratio)
        assert all(torch.equal(a, b) for a, b in zip(got, want)), (value, temperature)


def test_guided_count_rounds_half_up():
    assert [guided_count(r, 4) for r in (0.0, 0.1, 0.125, 0.5, 0.875, 1.0)] == [0, 0, 1, 2, 4, 4]
    assert guided_count(0.5, 3) == 2 and guided_count(0.5, 135) == 68


# --- the score ----------------------------------------------------------------------------------------------------

def test_attention_weights_are_the_attention_sdpa_computes():
    attn = MAE(tiny_config(heads=3, dim=24)).encoder.blocks[0].attn
    x = torch.randn(4, 7, 24)
    q, k, v = attn.split_heads(x)
    with torch.no_grad():
        torch.testing.assert_close(attn.weights(x) @ v, F.scaled_dot_product_attention(q, k, v))
        assert torch.allclose(attn.weights(x).sum(-1), torch.ones(()))


def test_score_is_the_attention_each_patch_receives():
    """`attention_received` against the attention maps of the real forward (each block's input captured by a
    hook, its softmax(q k^T / sqrt(d)) written out): column sums over queries minus the diagonal, head mean,
    summed over the blocks, CLS dropped."""
    cfg = tiny_config(depth=2, dropout=0.1)
    enc = MAE(cfg).encoder.eval()
    x = torch.randn(5, *cfg.volume[1:])
    inputs = []
    hooks = [blk.norm1.register_forward_hook(lambda m, i, o: inputs.append(o)) for blk in enc.blocks]
    with torch.no_grad():
        enc(x)
        want = torch.zeros(5, 1 + cfg.num_patches)
        for blk, h in zip(enc.blocks, inputs):
            W, b = blk.attn.qkv.weight, blk.attn.qkv.bias
            d = cfg.dim // cfg.heads
            q, k = ((h @ W[i * cfg.dim:(i + 1) * cfg.dim].T + b[i * cfg.dim:(i + 1) * cfg.dim])
                    .view(5, -1, cfg.heads, d).transpose(1, 2) for i in (0, 1))
            a = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, -1).mean(1)  # (S, N, N)
            want += a.sum(1) - torch.diagonal(a, dim1=1, dim2=2)
        for hk in hooks:
            hk.remove()
        got = enc.attention_received(x)
    torch.testing.assert_close(got, want[:, 1:])
    assert got.shape == (5, cfg.num_patches) and (got > 0).all()


def test_scoring_pass_leaves_the_training_state_alone():
    """The no-grad pass runs in eval mode (no dropout: the same scores twice) and hands the model back in train
    mode, with no gradient and the global generator where it was."""
    model = MAE(tiny_config(dropout=0.5)).train()
    x = torch.randn(6, 14, 6)
    rng = torch.get_rng_state()
    a, b = patch_scores(model.encoder, x, FP32), patch_scores(model.encoder, x, FP32)
    assert torch.equal(a, b) and not a.requires_grad
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# --- every path a step takes --------------------------------------------------------------------------------------

def test_two_ranks_draw_for_their_slices_what_one_process_draws():
    """Each rank scores its own volumes; the uniforms are drawn for the global batch and sliced: the two ranks'
    noise, put together, is one process's."""
    cfg = stage_config(mask_strategy="attention")
    model = MAE(cfg.model)
    x = torch.from_numpy(tiny_volumes(2)[0])
    one = AttentionMaskNoise(cfg, 7, CPU, model, FP32)
    ranks = [AttentionMaskNoise(cfg, 7, CPU, model, FP32, rank=r, world=2) for r in (0, 1)]
    for epoch in (0, 2):
        for noise in (one, *ranks):
            noise.begin_epoch(epoch)
        for _ in range(2):
            assert torch.equal(torch.cat([ranks[0](x[:1]), ranks[1](x[1:])]), one(x))


def test_fused_kernels_mask_and_train_as_eager(kernel_device):
    """kernels="fused": the scoring pass embeds through the fused patch_embed and gives the noise eager gives;
    the step's gather, scatter and loss take it as they take random noise."""
    cfg = stage_config(mask_strategy="attention")
    eager = MAE(cfg.model).to(kernel_device)
    fused = MAE(tiny_config(kernels="fused")).to(kernel_device)
    fused.load_state_dict(eager.state_dict())
    x = torch.from_numpy(tiny_volumes(2)[0]).to(kernel_device)
    out = {}
    for name, model in (("eager", eager), ("fused", fused)):
        draw = AttentionMaskNoise(cfg, 7, kernel_device, model, FP32)
        draw.begin_epoch(0)
        noise = draw(x)
        out[name] = noise, model(x, noise)[0]
    assert out["eager"][0].shape == (6, 6) and torch.equal(out["fused"][0], out["eager"][0])
    torch.testing.assert_close(out["fused"][1], out["eager"][1], rtol=1e-5, atol=1e-6)


# --- config -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("section, key, value, problem", [
    ("pretrain", "mask_strategy", "attn", "must be one of random, attention"),
    ("pretrain", "mask_guide_ratio", "0.5", "must be a number"),
    ("pretrain", "mask_guide_ratio", 1.5, "must be in [0, 1]"),
    ("pretrain", "mask_temperature", 0, "must be a finite number > 0"),
])
def test_bad_mask_values_name_their_key(section, key, value, problem):
    with pytest.raises(ConfigError) as e:
        Config().override({section: {key: value}})
    assert e.value.key == f"{section}.{key}" and problem in e.value.problem


def test_masking_is_pretraining_only_and_old_configs_mask_at_random():
    with pytest.raises(ValueError, match="unknown config key 'finetune.mask_strategy'"):
        Config().override({"finetune": {"mask_strategy": "attention"}})
    old = Config().to_dict()
    for k in ("mask_strategy", "mask_guide_ratio", "mask_temperature"):
        del old["pretrain"][k]
    assert Config.from_dict(old).pretrain.mask_strategy == "random"
