"""mae_gather / random_masking: MAE's masking semantics."""
import torch

from kernels import reference


def test_random_masking_semantics():
    S, L, ratio = 4, 207, 0.65
    noise = torch.rand(S, L)
    ids_keep, ids_restore, mask = reference.random_masking(noise, ratio)
    K = int(L * (1 - ratio))
    assert K == 72 and ids_keep.shape == (S, K) and ids_restore.shape == (S, L)
    assert mask.sum(1).tolist() == [L - K] * S  # 1 = removed
    for s in range(S):
        kept = noise[s].argsort()[:K]  # smallest noise is kept, in ascending noise order
        assert torch.equal(ids_keep[s], kept)
        assert mask[s, kept].sum() == 0
        # ids_restore undoes the shuffle
        assert torch.equal(noise[s].argsort()[ids_restore[s]], torch.arange(L))


def test_gather_keeps_tokens_in_ids_keep_order():
    t = torch.randn(3, 11, 5)
    ids_keep = torch.stack([torch.randperm(11)[:4] for _ in range(3)])
    got = reference.mae_gather(t, ids_keep)
    for s in range(3):
        torch.testing.assert_close(got[s], t[s, ids_keep[s]])
