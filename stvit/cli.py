"""What the command-line entry points share: the device, and the config from a preset, a JSON file and flags.

`python -m stvit.train` and `python -m stvit.profile` resolve both here, with the same rules and the same error
wording: a preset (default: paper on CUDA, demo on CPU), then the values of a `--config` JSON file, then the
flags, each overriding the one before.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from stvit.config import LEGACY_SECTIONS, STAGES, Config, ConfigError, preset
from stvit.errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str | None) -> torch.device:
    """`auto` (or None): CUDA when there is a GPU, else the CPU. `cuda` without a GPU is a UserError."""
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return torch.device(name)


def check_writable(path: Path | str, what: str = "directory") -> None:
    """`path` (a directory to create or fill, or a file to write) can be written: it is not under a file, and its
    first existing ancestor is a folder we may write into. UserError naming it otherwise."""
    path = Path(path)
    if path.exists():
        if what == "directory" and not path.is_dir():
            raise UserError("exists and is not a directory", path)
        if what == "file" and path.is_dir():
            raise UserError("is a directory; give a file name", path)
        target = path if what == "directory" else path.parent
        if not os.access(target, os.W_OK | os.X_OK):
            raise UserError("permission denied", path)
        return
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create it: {parent} is a file", path)
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"cannot create it: permission denied in {parent}", path)


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


def nested(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{"train.batch_size": 8} -> {"train": {"batch_size": 8}}."""
    out: dict[str, dict[str, Any]] = {}
    for key, v in values.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = v
    return out


def exact_epochs(values: dict[str, Any]) -> dict[str, Any]:
    """`values` (config sections) where each stage section that sets `epochs` but not `min_steps` also sets
    `min_steps` to 0: an epoch count a user writes is not stretched."""
    out = dict(values)
    for name in STAGES + tuple(LEGACY_SECTIONS):
        section = out.get(name)
        if isinstance(section, dict) and "epochs" in section and "min_steps" not in section:
            out[name] = {**section, "min_steps": 0}
    return out


def load_config(preset_name: str | None, config_file: str | None, values: dict[str, Any], device: torch.device,
                flag_names: dict[str, str] | None = None) -> Config:
    """Preset (default for the device), then the config file, then `values` ({"section.key": value}, from the
    flags). A bad value is a UserError naming the file and the key, or the flag (`flag_names`: key -> flag). A file
    or flags that set a stage's `epochs` without its `min_steps` get exactly those epochs (`min_steps` 0)."""
    cfg = preset(preset_name or default_preset(device))
    if config_file:
        try:
            cfg = cfg.override(exact_epochs(read_config_file(config_file)))
        except ValueError as e:
            raise UserError(str(e), config_file) from None
    try:
        return cfg.override(exact_epochs(nested(values)))
    except ConfigError as e:
        flag = (flag_names or {}).get(e.key)
        raise UserError(f"{flag} {e.problem}" if flag else str(e)) from None
    except ValueError as e:
        raise UserError(str(e)) from None
