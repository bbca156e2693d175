"""The compiled train step as a training loop drives it: fixed shapes, no recompiles across epochs (the last
partial batch dropped in training, padded in evaluation), compile time logged apart, the SDPA policy inside the
compiled graph, Inductor's FX graph cache on.

The tiny model is the CPU one of test_parity.py: the MAE and classifier train graphs are the same, so Inductor's FX
graph cache serves their code to whichever test compiles them second (only the evaluation graph is new here).
"""
from __future__ import annotations

import logging

import pytest
import torch

from stvit.training import engine
from stvit.training import steps
from stvit.model.vit import MAE, SpatioTemporalClassifier
from stvit.model.precision import Precision

from helpers import tiny_config

FLASH_CPU = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"


def sdpa_ops(fn) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    names = [e.name for e in prof.events() if e.name.startswith("aten::_scaled_dot_product")]
    return {n: names.count(n) for n in set(names)}


def test_three_epochs_without_recompiles(caplog):
    """MAE epochs then fine-tune epochs (train step + padded evaluation), as the training loop runs them: after the
    first epoch of each stage, nothing compiles again (`error_on_recompile` turns a recompile into an error)."""
    torch._dynamo.reset()
    cfg = tiny_config()
    n, batch = 7, 2  # 3 full training batches (the 7th volume is dropped), 4 eval batches (the last one padded)
    data, labels = torch.randn(n, *cfg.volume), torch.arange(n) % 2
    prec = Precision.resolve("auto", torch.device("cpu"))
    mae, clf = MAE(cfg), SpatioTemporalClassifier(cfg)
    caplog.set_level(logging.INFO, logger="stvit.training.steps")
    mae_step = steps.build(steps.mae_loss, mae, prec, compile=True, name="mae")
    clf_step = steps.build(steps.classifier_loss, clf, prec, compile=True, name="classifier")
    clf_eval = steps.build(steps.classifier_logits, clf, prec, compile=True, name="classifier eval")
    import torch._inductor.config as inductor_config
    assert inductor_config.fx_graph_cache
    opt_mae, opt_clf = torch.optim.AdamW(mae.parameters(), 1e-3), torch.optim.AdamW(clf.parameters(), 1e-3)


    def train_epoch(step, opt, model, with_labels):
        model.train()
        perm = torch.randperm(n)
        for i in range(0, n - batch + 1, batch):  # drop the last partial batch
            idx = perm[i:i + batch]
            if with_labels:
                loss = step(data[idx], labels[idx])[0]
            else:  # masking noise drawn outside: the graph is test_parity's (noise=None compiles another one)
                loss = step(data[idx], torch.rand(batch * cfg.volume[0], cfg.num_patches))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss

    def evaluate():  # engine.predict pads the last partial batch to the compiled shape
        batches = ((data[i:i + batch], labels[i:i + batch], torch.arange(i, min(n, i + batch)))
                   for i in range(0, n, batch))
        probs = engine.predict(clf_eval, clf, batches, batch)[0]
        return torch.from_numpy(probs)

    def quiet_after_first(epoch: int):
        """From the second epoch on: a recompile raises, and no new graph may appear."""
        return torch._dynamo.config.patch(error_on_recompile=epoch > 0)

    graphs = lambda: torch._dynamo.utils.counters["stats"]["unique_graphs"]  # noqa: E731
    for epoch in range(3):
        before = graphs()
        with quiet_after_first(epoch):
            loss = train_epoch(mae_step, opt_mae, mae, with_labels=False)
        assert epoch == 0 or graphs() == before, f"MAE epoch {epoch} compiled a new graph"
    assert torch.isfinite(loss)
    for epoch in range(3):
        before = graphs()
        with quiet_after_first(epoch):
            train_epoch(clf_step, opt_clf, clf, with_labels=True)
            logits = evaluate()
        assert epoch == 0 or graphs() == before, f"fine-tune epoch {epoch} compiled a new graph"
    assert logits.shape == (n, cfg.num_classes)

    # compile time measured apart from step time, forward and backward
    for t in (mae_step, clf_step):
        assert t.compile_seconds > 0 and t.backward_compile_seconds > 0
    assert clf_eval.compile_seconds > 0 and clf_eval.backward_compile_seconds is None
    assert "compiled mae in" in caplog.text and "compiled mae backward in" in caplog.text

    # the policy's kernel runs inside the compiled graphs (dropout 0: flash on CPU, no math)
    for fn in (lambda: clf_step(data[:batch], labels[:batch])[0].backward(), evaluate):
        ops = sdpa_ops(fn)
        assert ops.get(FLASH_CPU, 0) >= cfg.depth + cfg.temporal_depth and MATH not in ops, ops

    # the padded last batch gives the same probabilities as the unpadded eager model
    with torch.no_grad():
        torch.testing.assert_close(logits, clf(data).float().softmax(1), rtol=1e-4, atol=1e-5)
