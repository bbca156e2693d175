"""`python -m stvit.model --summary`: the patches, tokens and parameter count of every part of a preset's model."""
from __future__ import annotations

import argparse
import sys

from stvit.config import PRESETS, preset
from stvit.errors import run_cli
from stvit.model.vit import summary


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m stvit.model", description="Describe the model of a preset: its "
                                 "patches and tokens, and the parameter count of every part.")
    ap.add_argument("--preset", default="paper", choices=PRESETS,
                    help="the preset whose model is described; default: paper")
    ap.add_argument("--summary", action="store_true", help="print the parameter counts (what it does anyway)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    print(f"preset {args.preset}")
    print(summary(preset(args.preset).model))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
