"""What the command-line entry points share: the flag table, the device, and the config from a preset, a JSON file
and flags.

`FLAGS` is the one table of the flags that describe a run. Each row says the flag (and its aliases), the config key
it sets (or none: `--out`, `--resume`, `--stage`, ...), its group in `--help` (data, recipe, kernels and precision,
evaluation, run), its argparse settings and its help sentence, which may give the default of the preset and device
the help is asked for. `add_run_flags` builds a command's parser from it (train takes every row; cv, tune, profile
and explain the rows they need), and `config_values` reads the config keys back from the parsed arguments: adding
a flag is one config field and one row here.

Config: a preset (default: paper on CUDA, demo on CPU), then the values of a `--config` JSON file, then the flags,
each overriding the one before; the same rules and error wording in every command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from stvit.config import (AUGMENTS, DEVICES, KERNELS, LEGACY_SECTIONS, MASK_STRATEGIES, PLACEMENTS, PRECISIONS,
                          PRESETS, Config, ConfigError, preset, stage_sections)
from stvit.errors import UserError


def resolve_device(name: str | None) -> torch.device:
    """`auto` (or None): CUDA when there is a GPU, else the CPU. `cuda` without a GPU is a UserError."""
    name = name or "auto"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available")
    return torch.device(name)


def check_path(path: Path | str) -> Path:
    """`path` as a name the system takes: a component longer than the file system allows (255 bytes), a path too
    long, a loop of links... are a UserError naming it (not there yet is fine: the caller says what it needs)."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        pass
    except OSError as e:
        raise UserError(f"cannot use this path ({e.strerror})", path) from None
    return Path(path)


def check_writable(path: Path | str, what: str = "directory") -> None:
    """`path` (a directory to create or fill, or a file to write) can be written: it is not under a file, and its
    first existing ancestor is a folder we may write into. UserError naming it otherwise."""
    path = check_path(path)
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
    path = check_path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError("no such file", path) from None
    except IsADirectoryError:
        raise UserError("is a folder, not a JSON config file", path) from None
    except OSError as e:
        raise UserError(f"cannot read it ({e.strerror})", path) from None
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
    for name in stage_sections() + tuple(LEGACY_SECTIONS):
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


# --- the flag table ---------------------------------------------------------------------------------------------

GROUPS = {"run": "the run", "data": "data", "recipe": "recipe", "kernels": "kernels and precision",
          "evaluation": "evaluation"}
STAGE_CHOICES = ("all", *stage_sections(), "evaluate")


@dataclass(frozen=True)
class Flag:
    """One flag: `names[0]` is the flag, the others aliases; `key` the config key it sets (None: a flag of the
    command, not of the config); `help` a sentence, or a function of (config, device) for one that gives the
    default of the preset asked for."""

    names: tuple[str, ...]
    key: str | None
    group: str
    help: str | Callable[[Config, torch.device], str]
    options: dict[str, Any] = field(default_factory=dict)  # argparse settings: type, choices, metavar, action, ...

    @property
    def dest(self) -> str:
        return self.names[0].lstrip("-").replace("-", "_")

    def text(self, cfg: Config, device: torch.device) -> str:
        return self.help(cfg, device) if callable(self.help) else self.help


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def _epochs(section) -> str:
    """A stage's default length, as --help says it."""
    if not section.min_steps:
        return str(section.epochs)
    return (f"{section.epochs}, or more on a small training split: at least {section.min_steps} optimizer steps "
            "(min_steps); a number given here is run as given")


INT, FLOAT, SWITCH = {"type": int, "metavar": "N"}, {"type": float}, {"action": argparse.BooleanOptionalAction}
FLAGS: tuple[Flag, ...] = (
    # the run
    Flag(("--preset",), None, "run", lambda c, d: (
        "model and recipe: paper (the write-up: 7x2 patches, d 192), notebook (the public notebook's recipe), demo "
        f"(small, for a CPU); default: paper on a CUDA GPU, demo on a CPU (here: {default_preset(d)})"),
        {"choices": PRESETS}),
    Flag(("--config",), None, "run", "a JSON file of config values over the preset, nested like a run's config.json "
         "(sections model, data, pretrain, finetune, train, augment); flags override it", {"metavar": "FILE"}),
    Flag(("--out",), None, "run", "the new run directory (absent or empty); default: runs/<preset>-<date>-<time>",
         {"metavar": "DIR"}),
    Flag(("--resume",), None, "run", "continue the run in DIR exactly, from its checkpoints/last.pt; a flag that "
         "would change the run is refused, --ft-epochs / --pretrain-epochs may lengthen it", {"metavar": "DIR"}),
    Flag(("--stage",), None, "run", "what to run: all (pre-training, fine-tuning, then the one test evaluation), "
         "pretrain, finetune (with --out DIR of an earlier pretrain run: from its pretrain.pt), evaluate (DIR's "
         "best.pt on the test split); default: all", {"choices": STAGE_CHOICES, "default": "all"}),
    Flag(("--device",), "train.device", "run", lambda c, d: (
        f"where to train: auto (a CUDA GPU if there is one), cpu or cuda; default: {c.train.device} (here: "
        f"{d.type})"), {"choices": DEVICES}),
    Flag(("--quiet",), None, "run", "no progress bars (they are off anyway when stderr is not a terminal)",
         {"action": "store_true"}),
    # data
    Flag(("--data",), "data.path", "data", lambda c, d: (
        "the data set: a .mat (v5/v7/v7.3), .npz, HDF5 or packed file with X_train, y_train, X_test, y_test (ids_* "
        "optional), or a NIfTI folder with labels.csv; default: the built-in synthetic set "
        f"({c.data.synth_train} + {c.data.synth_test} volumes here), generated once into $STVIT_CACHE"),
        {"metavar": "FILE"}),
    Flag(("--class-names",), "data.class_names", "data", lambda c, d: (
        f"names of the labels 0, 1, ... in metrics and figures; default: {' '.join(c.data.class_names)}"),
        {"nargs": "+", "metavar": "NAME"}),
    Flag(("--flip-axis",), "data.flip_axis", "data", lambda c, d: (
        f"volume axis of the flip augmentation ({100 * c.data.flip_fraction:.0f}%% of the training volumes each "
        f"epoch): 0 left-right, 1 posterior-anterior, 2 inferior-superior; default: {c.data.flip_axis}"),
        {"type": int, "choices": (0, 1, 2)}),
    Flag(("--augment",), "augment.ops", "data", lambda c, d: (
        f"the training augmentations, among {', '.join(AUGMENTS)}: flip (as --flip-axis says), elastic (a smooth "
        "random deformation inside the brain), scale (intensities times a random factor), noise (Gaussian, inside "
        "the brain); their strengths: the config's augment section; the flag alone: none; "
        f"default: {' '.join(c.augment.ops) or 'none'}"), {"nargs": "*", "choices": AUGMENTS, "metavar": "OP"}),
    Flag(("--standardize",), "data.standardize", "data", lambda c, d: (
        "standardize each in-brain voxel with the mean and std of the TRAINING volumes (validation and test only "
        "transformed; the statistics saved in the run directory and applied by stvit.load, predict and embed): for "
        "files not cleaned per voxel, e.g. volumes z-scored per volume only, where the mean brain image hides the "
        "signal; a study imported by python -m stvit.data import is already cleaned per run "
        f"(stvit.data.standardize); default: {_on(c.data.standardize)}"), {**SWITCH, "default": None}),
    Flag(("--nan-to-zero",), "data.nan_to_zero", "data",
         "set NaN/Inf voxels to 0 instead of refusing the file; default: refuse",
         {"action": "store_true", "default": None}),
    Flag(("--data-placement",), "data.placement", "data", lambda c, d: (
        "where a packed data file (python -m stvit.data pack) lives while training: auto (its rows resident on the "
        f"device when they fit {c.data.memory_share:g} of its free memory (data.memory_share; host memory on a CPU), "
        "else streamed from the file by worker processes), device or stream; the same batches either way; a file "
        f"read whole is resident as dense volumes; default: {c.data.placement}"), {"choices": PLACEMENTS}),
    # recipe
    Flag(("--pretrain-epochs", "--mae-epochs"), "pretrain.epochs", "recipe", lambda c, d: (
        f"epochs of MAE pre-training of the spatial encoder, 0 to skip it; default: {_epochs(c.pretrain)}"), INT),
    Flag(("--ft-epochs",), "finetune.epochs", "recipe",
         lambda c, d: f"epochs of fine-tuning; default: {_epochs(c.finetune)}", INT),
    Flag(("--batch-size",), "train.batch_size", "recipe", lambda c, d: (
        f"volumes per optimizer step (each volume is {c.model.volume[0]} slices); under torchrun the global batch; "
        f"default: {c.train.batch_size}"), INT),
    Flag(("--seed",), "train.seed", "recipe", lambda c, d: (
        f"seeds the validation split, initial weights, batch order, flips and masks; default: {c.train.seed}"), INT),
    Flag(("--mask-strategy",), "pretrain.mask_strategy", "recipe", lambda c, d: (
        "how pre-training chooses the patches it removes: random (MAE) or attention (a share of them drawn in "
        "proportion to the attention each patch receives in the current encoder, the rest at random; see "
        f"docs/training.md, Mask strategy); default: {c.pretrain.mask_strategy}"), {"choices": MASK_STRATEGIES}),
    Flag(("--mask-guide-ratio",), "pretrain.mask_guide_ratio", "recipe", lambda c, d: (
        "with --mask-strategy attention: the share of each slice's removed patches chosen by attention, in [0, 1]; "
        f"default: {c.pretrain.mask_guide_ratio:g}"), {**FLOAT, "metavar": "R"}),
    Flag(("--mask-temperature",), "pretrain.mask_temperature", "recipe", lambda c, d: (
        "with --mask-strategy attention: a patch is chosen with probability ~ score ** (1/T); lower T follows the "
        f"attention more closely, higher T is closer to random; default: {c.pretrain.mask_temperature:g}"),
        {**FLOAT, "metavar": "T"}),
    # kernels and precision
    Flag(("--kernels",), "model.kernels", "kernels", lambda c, d: (
        "the patch-embedding, MAE gather/scatter and loss ops: auto (the Triton kernels on a GPU, each after a "
        "startup self-check, falling back to the reference with a warning; the reference on a CPU), fused (the "
        "kernels; a failed self-check stops the run) or eager (the plain-torch reference everywhere); "
        f"default: {c.model.kernels}"), {"choices": KERNELS}),
    Flag(("--compile",), "train.compile", "kernels", lambda c, d: (
        f"compile each stage's train step with torch.compile(fullgraph=True); default: {_on(c.train.compile)}"),
        {**SWITCH, "default": None}),
    Flag(("--precision",), "train.precision", "kernels", lambda c, d: (
        "autocast: auto (bf16 on a GPU of compute capability 8.0+, fp16 with a GradScaler below, fp32 on a CPU), "
        f"fp32, bf16 or fp16; default: {c.train.precision}"), {"choices": PRECISIONS}),
    # evaluation
    Flag(("--select-on-test",), "train.select_on_test", "evaluation",
         "pick the best epoch on the TEST split (the seed notebook's protocol); the result leaks and is marked so; "
         "default: the validation split", {"action": "store_true", "default": None}),
    Flag(("--baseline",), "train.baseline", "evaluation", lambda c, d: (
        "a logistic-regression baseline on the in-brain voxels of the same training split, fitted and tested "
        f"beside the model in the final evaluation; default: {_on(c.train.baseline)}"), {**SWITCH, "default": None}),
    Flag(("--test-permutations",), "train.permutations", "evaluation", lambda c, d: (
        "label permutations of the test split's permutation test against chance (within subject and run, by whole "
        "blocks when the data carry onsets), and subject resamples of the bootstrap intervals, in the final "
        f"statistics; 0: neither (docs/evaluation.md); default: {c.train.permutations}"), INT),
)
FLAG_OF_KEY = {f.key: f.names[0] for f in FLAGS if f.key}


def help_context(argv: Sequence[str] | None) -> tuple[Config, torch.device]:
    """The config and device `--help` describes: those of the --preset, --device and --config on this command
    line (the machine's defaults otherwise); never an error, since help must always print."""
    pre = argparse.ArgumentParser(add_help=False)
    for flag in ("--preset", "--device", "--config"):
        pre.add_argument(flag)
    known, _ = pre.parse_known_args(sys.argv[1:] if argv is None else list(argv))
    try:
        device = resolve_device(known.device if known.device in DEVICES else None)
    except UserError:
        device = torch.device("cpu")
    name = known.preset if known.preset in PRESETS else None
    try:
        return load_config(name, known.config, {}, device), device
    except UserError:
        return load_config(name, None, {}, device), device


def command_parser(prog: str, doc: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A command's parser: `doc`'s first paragraph as its description, `epilog` (examples, exit codes) below."""
    about = " ".join(doc.split("\n\n")[0].split())
    return argparse.ArgumentParser(prog=prog, description=textwrap.fill(about, 100), epilog=epilog,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def add_run_flags(ap: argparse.ArgumentParser, argv: Sequence[str] | None = None, *, only: Sequence[str] | None = None,
                  skip: Sequence[str] = (), help_for: dict[str, str] | None = None) -> dict[str, Any]:
    """Add the rows of `FLAGS` to `ap` in their groups (`only`: just these flags; `skip`: all but these; `help_for`:
    another sentence for a flag in this command). Each help gives the default of the preset and device that
    `argv` asks for. Returns the argument groups by name, for the command's own flags."""
    cfg, device = help_context(argv)
    groups: dict[str, Any] = {}
    for f in FLAGS:
        if (only is not None and f.names[0] not in only) or f.names[0] in skip:
            continue
        if f.group not in groups:
            groups[f.group] = ap.add_argument_group(GROUPS[f.group])
        text = (help_for or {}).get(f.names[0]) or f.text(cfg, device)
        groups[f.group].add_argument(*f.names, dest=f.dest, help=text, **f.options)
    return groups


def group(ap: argparse.ArgumentParser, groups: dict[str, Any], name: str):
    """The argument group `name` of a parser built by `add_run_flags` (made when it has none yet)."""
    if name not in groups:
        groups[name] = ap.add_argument_group(GROUPS.get(name, name))
    return groups[name]


def config_values(args: argparse.Namespace) -> dict[str, Any]:
    """{config key: value} of the flags given on the command line (a list value as a tuple)."""
    out = {}
    for f in FLAGS:
        v = getattr(args, f.dest, None) if f.key else None
        if v is not None:
            out[f.key] = tuple(v) if isinstance(v, list) else v
    return out
