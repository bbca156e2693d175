"""Brainmarks plugin: a trained stvit run's encoder as the model `stvit` (space "mni").

Brainmarks finds models in the `brainmarks.models` namespace package: put the `integrations` folder of the stvit
repository on PYTHONPATH (or copy this file into your own `brainmarks/models/`), then

    STVIT_RUN=runs/paper-seed0 python -m brainmarks.main_logistic stvit patch hcpya_task21

The wrapper itself is `stvit.training.brainmarks` (docs/library.md).
"""
from brainmarks.models.registry import register_model

from stvit.training.brainmarks import create

register_model("stvit")(create)
