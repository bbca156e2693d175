"""Every random stream of a run, named in one place, and the capture and restore of the global RNG state.

Two kinds of randomness:
- per-epoch streams, a function of (stage seed, epoch, stream) only, so that a resumed run, a run on N processes
  and the profiler draw exactly what an uninterrupted single-process run draws: the visiting order of the
  training split (`Stream.ORDER`), the volumes flipped this epoch (`Stream.FLIP`), the MAE masking noise
  (`Stream.MASK`) and the other augmentations of each batch (`Stream.AUGMENT`);
- the global generators (python, numpy, torch CPU and CUDA), which dropout draws from: seeded once per process
  (`seed_everything`), saved in every resumable checkpoint (`rng_state`) and restored on resume.

Each stage has its own seed, derived from the run's `train.seed` (`stage_seed`), so pre-training and fine-tuning
never share a stream.
"""
from __future__ import annotations

import enum
import random
from typing import Any

import numpy as np
import torch


class Stream(enum.IntEnum):
    """The per-epoch streams of a stage."""

    ORDER = 1  # the visiting order of the training split
    FLIP = 2  # which training volumes are flipped
    MASK = 3  # the MAE masking noise
    AUGMENT = 4  # the random augmentations of each training batch (elastic fields, intensity factors, noise)


def stage_seed(seed: int, offset: int) -> int:
    """The seed of a stage's per-epoch streams, from the run's seed and the stage's own offset
    (`stvit.training.stages.Stage.seed_offset`)."""
    return seed * 1000 + offset


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator that depends only on (seed, epoch, stream)."""
    state = np.random.SeedSequence([seed % 2**64, epoch % 2**64, int(stream)]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> np.uint64(1)))


def device_generator(seed: int, epoch: int, stream: int, device: torch.device) -> torch.Generator:
    """The same stream as `epoch_generator`, as a generator on `device` (draws stay on the device)."""
    return torch.Generator(device).manual_seed(epoch_generator(seed, epoch, stream).initial_seed())


def seed_everything(seed: int) -> None:
    """Seed the global generators (python, numpy, torch on every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """Every global RNG (python, numpy, torch CPU and CUDA), as tensors and plain values (weights_only loadable)."""
    np_state = np.random.get_state()
    state = {
        "python": _plain(random.getstate()),
        "numpy": {"name": np_state[0], "keys": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _plain(x):
    """Tuples -> lists, recursively (weights_only loading accepts both, lists are explicit)."""
    return [_plain(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tuples(x):
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x
