"""Checks of maps against a known truth: the synthetic set's planted patterns (`stvit.data.synth.planted_patterns`),
by correlation over the brain and by the enrichment of the top voxels in the planted regions."""
from __future__ import annotations

import numpy as np

from stvit.maps.render import PEAK_TOP, top_threshold


def correlation(a: np.ndarray, b: np.ndarray, mask: np.ndarray, rank: bool = False) -> float:
    """Pearson (or with `rank`, Spearman) correlation of two maps over the voxels of `mask`."""
    from scipy import stats

    return float((stats.spearmanr if rank else stats.pearsonr)(a[mask], b[mask])[0])


def enrichment(values: np.ndarray, region: np.ndarray, inside: np.ndarray, top: float = PEAK_TOP) -> float:
    """The share of the top `top` voxels of |values| (among `inside`) that fall in `region`, over the share that
    chance would put there (the region's share of `inside`): 1 = chance."""
    chosen = np.abs(values[inside]) >= top_threshold(values, inside, top)
    return float(region[inside][chosen].mean() / region[inside].mean())


def class_difference(maps: dict[str, np.ndarray]) -> np.ndarray:
    """IG evidence for class 0 in class-0 volumes minus evidence for class 1 in class-1 volumes: positive where the
    model reads class 0, negative where it reads class 1."""
    return maps["ig_class0"] - maps["ig_class1"]


def planted_agreement(maps: dict[str, np.ndarray], planted) -> dict[str, float]:
    """How the maps of a model trained on the synthetic set match what its generator planted
    (`stvit.data.synth.planted_patterns`): correlation of the class-difference map with the planted difference
    over the brain (Spearman also over the planted regions alone, where that difference is more than a Gaussian
    tail), and the enrichment of each map's top 1% voxels in the discriminative regions."""
    brain, truth = planted.brain, planted.difference
    regions = planted.regions["face"] | planted.regions["shape"]
    out = {}
    if "ig_class0" in maps and "ig_class1" in maps:
        diff = class_difference(maps)
        out.update(pearson=correlation(diff, truth, brain), spearman=correlation(diff, truth, brain, rank=True),
                   spearman_regions=correlation(diff, truth, regions, rank=True),
                   enrichment_difference=enrichment(diff, planted.discriminative, brain))
    for name in ("ig_abs_mean", "attention_abs_mean"):
        if name in maps:
            out[f"enrichment_{name}"] = enrichment(maps[name], planted.discriminative, brain)
    return out
