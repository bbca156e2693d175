"""The performance wing: step timing and profiling, GPU telemetry (NVML), analytic FLOPs, report pieces."""
