"""mae_scatter: the inverse of mae_gather, with mask tokens in the removed places."""
import torch

from kernels import reference


def test_scatter_of_gather_restores_visible_and_fills_removed():
    S, P, D = 5, 207, 8
    t = torch.randn(S, P, D)
    ids_keep, ids_restore, mask = reference.random_masking(torch.rand(S, P), 0.65)
    m = torch.randn(D)
    pos = torch.randn(P, D)
    out = reference.mae_scatter(reference.mae_gather(t, ids_keep), ids_restore, m)
    kept = mask == 0
    torch.testing.assert_close(out[kept], t[kept])
    torch.testing.assert_close(out[~kept], m.expand(int((~kept).sum()), D))
    out_pos = reference.mae_scatter(reference.mae_gather(t, ids_keep), ids_restore, m, pos)
    torch.testing.assert_close(out_pos, out + pos)
