"""What the command-line entry points share: the device, and the config from a preset, a JSON file and flags.

`python -m stvit.train` and `python -m stvit.profile` resolve both here, with the same rules and the same error
wording: a preset (default: paper on CUDA, demo on CPU), then the values of a `--config` JSON file, then the
flags, each overriding the one before.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from .config import LEGACY_SECTIONS, STAGES, Config, preset
from .errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | None) -> torch.device:
    """`auto` (or None): CUDA when there is a GPU, else the CPU. `cuda` without a GPU is a UserError."""
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return torch.device(name)


def default_preset(device: torch.device) -> str:
    return "paper" if device.type == "cuda" else "demo"


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The values of a JSON config file (nested like config.json); UserError naming the file otherwise."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except IsADirectoryError:
        raise UserError("is a folder, not a JSON config file", path) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"not valid JSON ({e})", path) from None
    if not isinstance(values, dict):
        raise UserError(f"a config file holds one JSON object of sections, not a {type(values).__name__}", path)
    return values


def exact_epochs(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (config sections) where each stage section that sets `epochs` but not `min_steps` also sets
    `min_steps` to 0."""
    out = dict(values)
    for name in STAGES + tuple(LEGACY_SECTIONS):
        section = out.get(name)
        if isinstance(section, dict) and "epochs" in section and "min_steps" not in section:
            out[name] = {**section, "min_steps": 0}
    return out


def load_config(preset_name: str | None, config_file: str | None, flags: dict[str, dict[str, Any]],
                device: torch.device) -> Config:
    """Preset (default for the device), then the config file, then `flags` ({section: {key: value}}; None values
    are left out: an absent flag changes nothing). A file or flags that set a stage's `epochs` without its
    `min_steps` get exactly those epochs (`min_steps` 0): an epoch count a user writes is not stretched."""
    cfg = preset(preset_name or default_preset(device))
    if config_file:
        try:
            cfg = cfg.override(exact_epochs(read_config_file(config_file)))
        except (ValueError, TypeError) as e:
            raise UserError(str(e), config_file) from None
    given = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in flags.items()}
    try:
        return cfg.override(exact_epochs({k: v for k, v in given.items() if v}))
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
