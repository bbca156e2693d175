"""stvit: spatio-temporal Vision Transformers for fMRI volumes (MAE pre-training, fine-tuning, fused kernels).

The Python API (imported on first use, so that `import stvit` stays cheap):
    stvit.STViTClassifier(preset="demo", ...)   a scikit-learn classifier of volumes (stvit.training.estimator)
    stvit.load(RUN_DIR)                         a trained run: predict_proba, predict, embed (stvit.training.trained)
"""
__version__ = "0.1.0"
__all__ = ["STViTClassifier", "load"]


def __getattr__(name: str):
    if name == "STViTClassifier":
        from stvit.training.estimator import STViTClassifier

        return STViTClassifier
    if name == "load":
        from stvit.training.trained import load

        return load
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
