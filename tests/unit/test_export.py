"""`python -m stvit.export`, the Python side: the package's preprocessing against the data loader, and the
checkpoints it refuses with one line. The export itself and the C++ runner: tests/e2e/test_export.py.
"""
from __future__ import annotations

import numpy as np
import torch

from stvit.training import checkpoint
from stvit import export
from stvit.model import export as EXP
from stvit.config import Config, ModelConfig
from stvit.data import zscore_volumes
from stvit.errors import run_cli
from stvit.model.vit import MAE

TINY = ModelConfig(volume=(5, 14, 6), dim=16, depth=1, heads=2, temporal_depth=1, temporal_heads=2, head_hidden=8,
                   decoder_dim=8, decoder_depth=1, decoder_heads=2, dropout=0.0)


# --- the Python side: preprocessing and argument errors, no build needed -----------------------------------------------------------

def test_zscore_in_the_package_matches_the_data_loader():
    x = np.random.default_rng(0).normal(300.0, 40.0, (4, *TINY.volume)).astype(np.float32)
    x[:, 0] = 0  # background
    x[3] = 0
    x[3, 2, 3, 3] = x[3, 2, 3, 4] = 5.0  # a constant volume: only centered
    want = zscore_volumes(x.copy())
    got = EXP.zscore(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert (got[:, 0] == 0).all()


def test_export_refuses_a_missing_checkpoint(tmp_path, capsys):
    rc = run_cli(export.main, ["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {tmp_path / 'nope.pt'}: no such checkpoint\n"
    assert not (tmp_path / "m.pt2").exists()


def test_export_refuses_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bad = tmp_path / "junk.pt"
    bad.write_bytes(b"\x00not a checkpoint" * 10)
    rc = run_cli(export.main, ["--checkpoint", str(bad), "--out", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith(f"error: {bad}: cannot read checkpoint") and err.count("\n") == 1


def test_export_refuses_a_pretraining_checkpoint(tmp_path, capsys):
    """What the pretrain stage writes (checkpoints/pretrain.pt: the MAE's weights) is named as such."""
    path = tmp_path / "pretrain.pt"
    cfg = Config(preset="demo", model=TINY)
    checkpoint.save(path, {"stage": "pretrain", "model": MAE(cfg.model).state_dict(), "config": cfg.to_dict(),
                           "epoch": 1})
    rc = run_cli(export.main, ["--checkpoint", str(path), "--out", str(tmp_path / "m.pt2")])
    err = capsys.readouterr().err
    assert rc == 2 and "holds the pretrain stage's model" in err and err.count("\n") == 1
