"""Several hundred configs through the run API's plan: each is refused with one line and nothing written, or
accepted with models that build. The configs start from the tiny run's: first every key set to each edge value in
turn, then random configs of one to three changes: a value of the wrong type, a huge or tiny number, NaN or
Infinity (JSON literals Python's json reads), an unknown key, a whole section of the wrong type. Each is written as
JSON text and read back the way `--config FILE` reads it."""
from __future__ import annotations

import json
import random
import time

import pytest
import torch

from stvit.config import Config
from stvit.errors import UserError
from stvit.training import api
from stvit.training.stages import STAGES

from helpers import TINY_RUN, write_tiny_data

ODD = ["8", "", "NaN", True, False, None, [], {}, [1, 2, 3], {"a": 1}, 0, -1, -0.0, 1, 2, 3, 7, 0.5, 1.5, 1e-300,
       5e-324, 1e300, 2e205, 2**31, 2**32, 2**63, 10**30, -(2**63), float("nan"), float("inf"), float("-inf")]


def mutate(cfg: dict, rng: random.Random) -> dict:
    """`cfg` with one to three random changes."""
    cfg = json.loads(json.dumps(cfg))
    schema = Config.from_dict(cfg).to_dict()
    for _ in range(rng.randint(1, 3)):
        section = rng.choice(sorted(schema))
        if section == "preset":
            cfg["preset"] = rng.choice(["demo", "paper", "notebook", "tiny", *ODD])
            continue
        if rng.random() < 0.05:  # a section of the wrong type, or an unknown one
            cfg[rng.choice([section, "extra"])] = rng.choice(ODD + [{"a": 1}])
            continue
        keys = sorted(schema[section])
        key = rng.choice(keys) if rng.random() > 0.05 else "unknown_key"
        old = schema[section].get(key, 1)
        near = [old]  # values of the right type, near and far from valid ones
        if isinstance(old, (int, float)) and not isinstance(old, bool):
            near = [type(old)(v) for v in (old * 2, old / 2, old * 1000, old + 1, old - 1, old * 1e6)]
        elif isinstance(old, list):
            near = [old[:-1], old + old[-1:], [v * 2 for v in old], [v * 1000 for v in old]]
        elif isinstance(old, bool):
            near = [not old]
        sec = cfg.setdefault(section, {})
        if isinstance(sec, dict):
            sec[key] = rng.choice(near if rng.random() < 0.5 else ODD)
    return cfg


def sweep(cfg: dict) -> list[dict]:
    """`cfg` with one value changed, for every key of every section and each value of `EDGES`."""
    out = []
    schema = Config.from_dict(cfg).to_dict()
    for section, keys in schema.items():
        if not isinstance(keys, dict):
            continue
        for key in keys:
            for v in EDGES:
                changed = json.loads(json.dumps(cfg))
                changed.setdefault(section, {})[key] = v
                out.append(changed)
    return out


EDGES = ["8", None, 1.5, -1, 0, 2**63, 1e300, 5e-324, float("nan"), float("inf")]
N_RANDOM = 200
MAX_BUILDABLE_DEPTH = 10_000  # an accepted depth past this cannot be built in any time a plan may take


@pytest.mark.filterwarnings("error:Initializing zero-element tensors")  # an MLP of width 0 is no model either
def test_random_configs_are_refused_in_one_line_or_build(tmp_path):
    """Every key swept through edge values (wrong types, 2**63, 1e300, 5e-324, NaN, Infinity), then random
    configs of one to three changes; each through `api.plan` as `--config FILE` reads it."""
    data = write_tiny_data(tmp_path / "tiny.npz")
    rng = random.Random(28)
    configs = sweep(TINY_RUN) + [mutate(TINY_RUN, rng) for _ in range(N_RANDOM)]
    t0 = time.perf_counter()
    refused, accepted, other = [], 0, []
    for i, cfg in enumerate(configs):
        text = json.dumps(cfg)  # NaN and Infinity as the literals Python's json writes and reads
        path = tmp_path / "cfg.json"
        path.write_text(text)
        out = tmp_path / f"out{i}"
        request = api.Request(values={"data.path": str(data)}, sources={"data.path": "--data"}, config_file=path,
                              out=out, quiet=True)
        try:
            plan = api.plan(request)
        except UserError as e:
            msg = str(e)
            assert msg and "\n" not in msg and "Traceback" not in msg, (text, msg)
            refused.append(msg)
        except Exception as e:  # noqa: BLE001 - anything else is a defect: collect them all, then fail
            other.append((text, f"{type(e).__name__}: {e}"))
        else:
            accepted += 1
            m = plan.cfg.model
            depths = (m.depth, m.temporal_depth, m.decoder_depth)
            if max(depths) > MAX_BUILDABLE_DEPTH:
                other.append((text, f"accepted depths {depths}: a model that cannot be built"))
                continue
            for stage in STAGES.values():  # the models build: on the meta device, and for real when small
                try:
                    with torch.device("meta"):
                        size = sum(p.numel() for p in stage.build_model(m).parameters())
                    if size < 2_000_000:
                        model = stage.build_model(m)
                        assert all(torch.isfinite(p).all() for p in model.parameters()), text
                except Exception as e:  # noqa: BLE001
                    other.append((text, f"accepted, but the {stage.name} model does not build: "
                                        f"{type(e).__name__}: {str(e)[:200]}"))
        assert not out.exists(), (text, "the plan wrote into the run directory")
    seconds = time.perf_counter() - t0
    assert not other, f"{len(other)} configs neither refused in one line nor buildable:\n" + "\n".join(
        f"{t}\n  -> {e}" for t, e in other[:10])
    # the fuzz reaches both sides: most changes are refused, but not all of them
    assert accepted >= len(configs) // 10 and len(refused) >= len(configs) // 2, (accepted, len(refused))
    print(f"{len(configs)} configs: {len(refused)} refused, {accepted} accepted, {seconds:.1f} s")
    assert seconds < 120
