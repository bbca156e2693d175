"""The model wing: the one model tree (`vit`), its attention and precision policies (`attention`, `precision`), the
MAE's masking noise (`masking`) and the export of a trained classifier (`export`).

`python -m stvit.model --summary` prints the parameter count of every part of a preset's model.
"""
from stvit.model.vit import MAE, SpatioTemporalClassifier, count_parameters, transfer_encoder

__all__ = ["MAE", "SpatioTemporalClassifier", "count_parameters", "transfer_encoder"]
