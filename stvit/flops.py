"""`python -m stvit.flops`: the analytic FLOPs per training sample of each preset (`stvit.perf.flops`)."""
from __future__ import annotations

import argparse
import sys

from stvit.config import PRESETS, preset
from stvit.errors import run_cli
from stvit.perf.flops import finetune_flops, pretrain_flops


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m stvit.flops", description=__doc__.split(":", 1)[1].strip()).parse_args(argv)
    for name in PRESETS:
        cfg = preset(name).model
        m, c = pretrain_flops(cfg), finetune_flops(cfg)
        print(f"{name:<9} pretrain (MAE) {m.forward / 1e9:7.2f} GFLOP forward, {m.train / 1e9:7.2f} training per volume; "
              f"fine-tune {c.forward / 1e9:7.2f} forward, {c.train / 1e9:7.2f} training")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
