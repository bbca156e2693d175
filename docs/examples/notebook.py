# %% [markdown]
# # stvit from Python: cross-validation, a NIfTI series, embeddings and a probe
#
# A notebook as a script (cells marked `# %%`: VS Code, Jupytext and Spyder open it as a notebook). It runs on a CPU:
# `python docs/examples/notebook.py` uses the demo preset on the built-in synthetic set (about 2,000 volumes; tens of
# minutes on 2 cores); `STVIT_EXAMPLE_TINY=1` makes it a small set and a small model (what the test suite runs).
# `STVIT_EXAMPLE_OUT=DIR` keeps its files in DIR (default: a new temporary folder). Docs: docs/library.md.

# %%
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import stvit
from stvit import predict
from stvit.data import builtin_dataset_path, grid_affine, load_dataset

TINY = os.environ.get("STVIT_EXAMPLE_TINY") == "1"
OUT = Path(os.environ.get("STVIT_EXAMPLE_OUT") or tempfile.mkdtemp(prefix="stvit-example-"))
OUT.mkdir(parents=True, exist_ok=True)
N_TRAIN, N_TEST = (96, 16) if TINY else (1920, 320)
# the demo preset as it is; tiny: one epoch per stage and a narrow model (the same code)
SETTINGS = dict(pretrain_epochs=1, finetune_epochs=1, batch_size=8, device="cpu",
                config={"model": {"dim": 16, "heads": 2, "temporal_heads": 2, "head_hidden": 8, "decoder_dim": 8,
                                  "decoder_heads": 2}, "train.baseline": False}) if TINY else {}

# %% [markdown]
# ## The built-in set
# Volumes (N, 53, 63, 46) on SPM's 3 mm MNI grid (axis 0 left-right), labels 0/1 (face, shape), subject ids.

# %%
data = load_dataset(builtin_dataset_path(N_TRAIN, N_TEST, seed=0))
X, y, subjects = data.X_train, np.array(["face", "shape"])[data.y_train], data.ids_train
if TINY:  # 8 volumes of each of 6 subjects, 4 per class
    keep = np.arange(len(y)) % 2 == 0
    X, y, subjects = X[keep], y[keep], subjects[keep]
print(f"{len(X)} volumes of {len(np.unique(subjects))} subjects; classes {sorted(set(y))}")

# %% [markdown]
# ## Cross-validation with whole subjects per fold
# Each fold is one stvit run (pre-training, fine-tuning, the best epoch chosen on a validation split carved from the
# fold's training volumes); `cross_val_score` clones the estimator for each fold. `groups=` goes to the splitter
# only (scikit-learn's rule): the test folds hold whole subjects. `params={"groups": ...}` also hands each fold's
# subjects to `fit`, so that its validation split takes whole subjects too (without it, stvit warns that the
# validation split is stratified random).

# %%
clf = stvit.STViTClassifier(preset="demo", seed=0, **SETTINGS)
scores = cross_val_score(clf, X, y, groups=subjects, cv=GroupKFold(n_splits=3), params={"groups": subjects})
print(f"accuracy per fold {np.round(scores, 3).tolist()}, mean {scores.mean():.3f}")

# %% [markdown]
# ## One model on every subject, kept in a run directory

# %%
clf = stvit.STViTClassifier(preset="demo", seed=0, run_dir=OUT / "runs", **SETTINGS).fit(X, y, groups=subjects)
print(f"run directory {clf.run_dir_}, best epoch {clf.best_epoch_}, validation accuracy {clf.val_accuracy_:.3f}")

# %% [markdown]
# ## Prediction on a NIfTI series
# The test volumes as one 4D NIfTI (TR 0.72 s, as HCP's). These are already cleaned and z-scored, so `--no-clean`;
# a raw fMRIPrep series in MNI space would be cleaned as the importer cleans a run (the default).

# %%
series = nib.Nifti1Image(np.moveaxis(data.X_test, 0, -1), grid_affine())
series.header.set_xyzt_units("mm", "sec")
series.header["pixdim"][4] = 0.72
nib.save(series, OUT / "test_bold.nii.gz")
csv = OUT / "test_bold.csv"
# in a shell: python -m stvit.predict RUN_DIR test_bold.nii.gz --out test_bold.csv --no-clean (here in-process)
predict.main([str(clf.run_dir_), str(OUT / "test_bold.nii.gz"), "--out", str(csv), "--no-clean"])
table = pd.read_csv(csv)
print(table.head())

run = stvit.load(clf.run_dir_)  # the same run as an object: the same probabilities in memory
probs = run.predict_proba(data.X_test)
print("largest difference, CSV vs in memory:", np.abs(table[["prob_face", "prob_shape"]].to_numpy() - probs).max())
print(f"test accuracy {(np.array(run.classes)[probs.argmax(1)] == np.array(['face', 'shape'])[data.y_test]).mean():.3f}")

# %% [markdown]
# ## Embeddings and a linear probe
# The volume embedding is what the classifier's head reads (the temporal encoder's output, mean-pooled). A probe of
# your own: logistic regression on the embeddings of the training subjects, scored on the test subjects.

# %%
Z_train, Z_test = run.embed(X), run.embed(data.X_test)
probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
probe_cv = cross_val_score(probe, Z_train, y, groups=subjects, cv=GroupKFold(n_splits=3))
probe.fit(Z_train, y)
probe_test = probe.score(Z_test, np.array(["face", "shape"])[data.y_test])
print(f"probe: {Z_train.shape[1]}-d embeddings, cross-validated accuracy {probe_cv.mean():.3f}, test {probe_test:.3f}")

RESULTS = {"scores": scores, "run_dir": clf.run_dir_, "table": table, "probs": probs, "probe_cv": probe_cv,
           "probe_test": probe_test, "embedding_shape": Z_train.shape}
