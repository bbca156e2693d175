"""GPU telemetry while steps run: NVML (nvidia-ml-py) sampled in a background thread.

Used by `python -m stvit.profile` and `bench/gpu_check.py`. Without nvidia-ml-py, a driver, or a GPU, the sampler
is a no-op that says why (`available`, `reason`).
"""
from __future__ import annotations

import threading
import time

import numpy as np
import torch


class NvmlSampler:
    """Samples GPU utilization, memory used, power and SM clock every `interval` s in a background thread.

    `available` is False (and `reason` says why) when nvidia-ml-py is missing, NVML does not start or the
    device is not a GPU; `start`/`stop` are then no-ops and `samples` stays empty.
    """

    def __init__(self, device: torch.device, interval: float = 0.1):
        self.interval, self.samples, self.available, self.reason = interval, [], False, ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml = self._handle = None
        if device.type != "cuda":
            self.reason = "the device is not a GPU"
            return
        try:
            import pynvml  # from nvidia-ml-py
        except ImportError:
            self.reason = "nvidia-ml-py (pynvml) is not installed"
            return
        try:
            pynvml.nvmlInit()
            index = device.index if device.index is not None else torch.cuda.current_device()
            props = torch.cuda.get_device_properties(index)
            handle = None
            if getattr(props, "pci_bus_id", None) is not None:  # torch's GPU, whatever CUDA_VISIBLE_DEVICES says
                try:
                    handle = pynvml.nvmlDeviceGetHandleByPciBusId(
                        f"{getattr(props, 'pci_domain_id', 0):08x}:{props.pci_bus_id:02x}:"
                        f"{getattr(props, 'pci_device_id', 0):02x}.0")
                except Exception:
                    handle = None
            self._handle = handle or pynvml.nvmlDeviceGetHandleByIndex(index)
            self.name = pynvml.nvmlDeviceGetName(self._handle)
        except Exception as e:  # no driver, no permission
            self.reason = f"NVML did not start ({type(e).__name__}: {e})"
            return
        self._nvml, self.available = pynvml, True

    def _sample(self, t0: float) -> dict:
        nv, h, s = self._nvml, self._handle, {"t": time.perf_counter() - t0}
        for key, read in (("gpu_util", lambda: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                          ("mem_util", lambda: nv.nvmlDeviceGetUtilizationRates(h).memory),
                          ("mem_used_gb", lambda: nv.nvmlDeviceGetMemoryInfo(h).used / 1e9),
                          ("power_w", lambda: nv.nvmlDeviceGetPowerUsage(h) / 1e3),
                          ("sm_clock_mhz", lambda: nv.nvmlDeviceGetClockInfo(h, nv.NVML_CLOCK_SM))):
            try:
                s[key] = float(read())
            except Exception:
                s[key] = None
        return s

    def start(self, t0: float) -> None:
        if not self.available:
            return

        def loop():
            while not self._stop.is_set():
                self.samples.append(self._sample(t0))
                self._stop.wait(self.interval)

        self._stop.clear()
        self._thread = threading.Thread(target=loop, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def summary(self, since: float = 0.0) -> dict:
        """Mean and max of each quantity over the samples taken after `since` seconds."""
        rows = [s for s in self.samples if s["t"] >= since]
        out = {"samples": len(rows)}
        for key in ("gpu_util", "mem_util", "mem_used_gb", "power_w", "sm_clock_mhz"):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                out[f"{key}_mean"], out[f"{key}_max"] = float(np.mean(vals)), float(np.max(vals))
        return out
