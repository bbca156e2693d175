"""A screenshot of a report.html, as the docs show it: headless Chromium (Debian's package) at a laptop's width,
the whole page, scaled down and reduced to 256 colours.

    python bench/studies/2026-12-03-cpu-report/screenshot.py REPORT.html OUT.png [--width 1280] [--height 4200]
        [--scale 0.6]

The page height is given (Chromium's --screenshot takes the window); the blank bottom is cropped.
"""
from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4200)
    ap.add_argument("--scale", type=float, default=0.6)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={tmp}/profile", f"--window-size={args.width},{args.height}",
                        f"--screenshot={raw}", args.report.resolve().as_uri()], check=True, capture_output=True,
                       timeout=600)
        img = Image.open(raw).convert("RGB")
    rows = np.flatnonzero((np.asarray(img) < 250).any(axis=(1, 2)))  # the last row with ink
    img = img.crop((0, 0, img.width, min(img.height, int(rows[-1]) + 40)))
    img = img.resize((round(img.width * args.scale), round(img.height * args.scale)), Image.LANCZOS)
    img.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {img.width} x {img.height}, {args.out.stat().st_size / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
