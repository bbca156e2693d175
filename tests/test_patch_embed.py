"""patch_embed: patch extraction + embedding, against Conv2d (the layout the model's weights follow)."""
import pytest
import torch

from kernels import reference


@pytest.mark.parametrize("S,H,W,patch,D", [(3, 63, 46, (7, 2), 192), (1, 14, 6, (7, 2), 5), (5, 12, 9, (3, 3), 7)])
def test_reference_equals_conv2d(S, H, W, patch, D):
    conv = torch.nn.Conv2d(1, D, patch, stride=patch)
    x = torch.randn(S, H, W)
    want = conv(x[:, None]).flatten(2).transpose(1, 2)  # (S, P, D), patches row-major
    got = reference.patch_embed(x, conv.weight.flatten(1), conv.bias, patch=patch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_adds_position_embedding():
    x, w, b = torch.randn(2, 63, 46), torch.randn(16, 14), torch.randn(16)
    pos = torch.randn(207, 16)
    torch.testing.assert_close(reference.patch_embed(x, w, b, pos), reference.patch_embed(x, w, b) + pos)


def test_patchify_pixel_order_and_inverse():
    x = torch.arange(63 * 46, dtype=torch.float32).view(1, 63, 46)
    p = reference.patchify(x, (7, 2))
    assert p.shape == (1, 207, 14)
    # patch 1 is row-block 0, column-block 1; pixels (row, col) inside: (0,2), (0,3), (1,2), ...
    assert p[0, 1, :4].tolist() == [2.0, 3.0, 46.0 + 2, 46.0 + 3]
    assert p[0, 23, 0].item() == 7 * 46  # second row of patches starts at pixel row 7
    torch.testing.assert_close(reference.unpatchify(p, (9, 23), (7, 2)), x)
