"""One setup for every stage, compiled: the profiler's compiled step is the graph a training step compiled, with no
graph of its own (tests/unit/test_stages.py: the same losses, eager)."""
from __future__ import annotations

import torch

from stvit.perf.profiler import StepRunner, Variant

from helpers import stage_config, tiny_volumes
from unit.test_stages import CPU, training_steps


def test_profiler_compiles_no_graph_of_its_own():
    """After a training step has compiled the pretrain graph, the profiler's compiled step reuses it: no new
    graph and no recompile (Dynamo would raise)."""
    torch._dynamo.reset()
    cfg = stage_config(compile=True)
    X, y = tiny_volumes()
    training_steps(cfg, "pretrain", X, y, 1)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    runner = StepRunner(cfg, "pretrain", Variant("eager", True, "device", True), X, y, CPU)
    with torch._dynamo.config.patch(error_on_recompile=True):
        runner.run(2)
    runner.close()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
