"""stvit: spatio-temporal Vision Transformers for fMRI volumes (MAE pre-training, fine-tuning, fused kernels)."""
__version__ = "0.1.0"
