"""Parity of the fast paths with the eager reference (kernels eager, no compile, fp32), for the whole train step.

Variants: `compiled` (eager ops under torch.compile), `fused` (the kernels package, eager), `fused+compiled`.
Compared: the MAE loss, the classifier's logits and cross-entropy, and the gradient of every parameter, with fixed
masking noise and dropout 0. The three-way rule of STYLE.md, elementwise: `out` (variant at its precision), `out_pt`
(the eager reference at the same precision), `ref` (the eager reference in fp32);
|out - ref| <= 2 |out_pt - ref| + atol * scale, scale = max |ref| of that tensor (the gradients differ in scale by
decades), atol a few units of the dtype's precision. fp32 variants are held to a tight direct tolerance.

CPU: fp32 and bf16. CUDA (skipped without a GPU): fp32, bf16 (sm80+), fp16 with GradScaler, and the T4 path forced
on any GPU (capability (7, 5): fp16 + GradScaler + memory-efficient SDPA only).

Cost: every compiled (variant, precision, model) is one graph pair (forward, backward) compiled once; on CPU the
fused ops trace to the reference under torch.compile, so `fused+compiled` re-traces but hits Inductor's FX graph
cache for the code of `compiled`.
"""
from __future__ import annotations

import dataclasses
import functools

import pytest
import torch

from stvit.training import steps
from stvit.model.vit import MAE, SpatioTemporalClassifier
from stvit.model.precision import Precision

from helpers import three_way_failure, tiny_config

CUDA = torch.cuda.is_available()
VARIANTS = ("compiled", "fused", "fused+compiled")
# atol per precision, times the scale of the tensor compared (bf16 and fp16 round at 2^-8 and 2^-11 relative:
# a few units of the last place of the largest entry absorb the different rounding of a different summation order);
# fp32 variants: (rtol, atol) of a direct comparison
ATOL = {"bf16": 1e-2, "fp16": 2e-3}
FP32_TOL = {"cpu": (1e-4, 1e-5), "cuda": (1e-3, 1e-4)}


class Case:
    """One set of weights and inputs per device; every run starts from them."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.cfg = tiny_config(device)
        g = torch.Generator().manual_seed(1234)
        torch.manual_seed(1234)
        self.states = {"mae": MAE(self.cfg).state_dict(), "classifier": SpatioTemporalClassifier(self.cfg).state_dict()}
        B, (T, H, W) = 2, self.cfg.volume
        self.x = torch.randn(B, T, H, W, generator=g).to(self.device)
        self.y = torch.tensor([0, 1], device=self.device)
        self.noise = torch.rand(B * T, self.cfg.num_patches, generator=g).to(self.device)

    def model(self, kind: str, kernels: str):
        cls = MAE if kind == "mae" else SpatioTemporalClassifier
        m = cls(dataclasses.replace(self.cfg, kernels=kernels))
        m.load_state_dict(self.states[kind])
        return m.to(self.device).train()

    def precision(self, name: str, policy: bool) -> Precision:
        """The run's policy (SDPA restricted as in training) or, for the references, autocast alone."""
        if name == "t4":
            return Precision.resolve("auto", self.device, capability=(7, 5))
        p = Precision.resolve(name, self.device)
        return p if policy else Precision(p.name, p.device_type)

    def run(self, kind: str, precision: str, variant: str) -> dict[str, torch.Tensor]:
        """Loss (and logits) and every parameter's gradient of one train step; variant 'eager' is the reference."""
        compiled = variant.endswith("compiled")
        kernels = "fused" if variant.startswith("fused") else "eager"
        model = self.model(kind, kernels)
        prec = self.precision(precision, policy=variant != "eager")
        if compiled:
            torch._dynamo.reset()  # one fresh set of graphs per run; keeps Dynamo's cache-size limit far away
        fn = steps.build(steps.mae_loss if kind == "mae" else steps.classifier_loss, model, prec, compile=compiled,
                         name=f"{kind}-{precision}-{variant}")
        if kind == "mae":
            loss = fn(self.x, self.noise)
            out = {"loss": loss.detach()}
        else:
            loss, logits = fn(self.x, self.y)
            out = {"ce": loss.detach(), "logits": logits.detach()}
        scaler = prec.grad_scaler(init_scale=2.0 ** 10)
        scaler.scale(loss).backward()
        if scaler.is_enabled():
            scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.0))
        for name, p in model.named_parameters():
            assert p.grad is not None, f"{variant}: no gradient for {name}"
            out[f"grad {name}"] = p.grad.detach()
        return {k: v.float().cpu() for k, v in out.items()}


@functools.cache
def case(device: str) -> Case:
    return Case(device)


@functools.cache
def reference(device: str, kind: str, precision: str) -> dict[str, torch.Tensor]:
    """The eager reference (kernels eager, no compile) at `precision` ('fp32' is THE reference)."""
    return case(device).run(kind, precision, "eager")


def assert_parity(out, out_pt, ref, precision: str, device: str, label: str) -> None:
    """The three-way rule (`helpers.three_way_failure`) for every tensor of the step, atol relative to each tensor's
    own scale (max |ref|: the gradients differ in scale by decades).

    fp32 variants: out_pt is the reference itself, so the rule is a direct elementwise
    |out - ref| <= atol * scale + rtol |ref|. bf16/fp16: per tensor, max |out - ref| <= 2 max |out_pt - ref| +
    atol * scale. Why not elementwise: a whole train step rounds through a dozen ops, and the fast paths round at
    other points than eager (Inductor fuses ops and keeps their intermediates in fp32; the fused kernels
    accumulate in fp32), so WHICH elements carry the dtype's error differs; an element where the bf16 reference
    happens to land on the fp32 value leaves no slack (measured: 1-4% of a gradient's scale at single elements).
    Per tensor, the fast path's worst error stays within twice the error the dtype forces on the reference."""
    assert out.keys() == ref.keys()
    failures = []
    for k, r in ref.items():
        scale = max(r.abs().max().item(), 1e-6)
        if precision == "fp32":
            rtol, atol = FP32_TOL[device]
            failure = three_way_failure(out[k], r, r, k, atol=atol, rtol=rtol, scale=scale)
        else:
            atol = ATOL["fp16" if precision == "t4" else precision]
            failure = three_way_failure(out[k], out_pt[k], r, k, atol=atol, rtol=0.0, scale=scale, per_tensor=True)
        if failure or not torch.isfinite(out[k]).all():
            failures.append(failure or f"{k}: not finite")
    assert not failures, f"{label}: {len(failures)} of {len(ref)} tensors off\n" + "\n".join(failures)


def check(device: str, kind: str, precision: str, variant: str) -> None:
    ref = reference(device, kind, "fp32")
    out_pt = reference(device, kind, "fp16" if precision == "t4" else precision)
    out = case(device).run(kind, precision, variant)
    assert_parity(out, out_pt, ref, precision, device, f"{kind} {precision} {variant} on {device}")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("kind", ["mae", "classifier"])
def test_parity_cpu(kind, precision, variant):
    check("cpu", kind, precision, variant)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16", "t4"])
@pytest.mark.parametrize("kind", ["mae", "classifier"])
def test_parity_cuda(kind, precision, variant):
    if precision == "bf16" and torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("bf16 is emulated below sm80")
    check("cuda", kind, precision, variant)


def test_references_differ_by_precision_only():
    """Sanity of the rule's inputs: the bf16 reference is close to, but not equal to, the fp32 one."""
    ref, pt = reference("cpu", "mae", "fp32"), reference("cpu", "mae", "bf16")
    assert not torch.equal(ref["loss"], pt["loss"])
    torch.testing.assert_close(pt["loss"], ref["loss"], rtol=5e-2, atol=5e-2)
