"""The importer of real studies: a BIDS dataset preprocessed by fMRIPrep, an HCP release, or a table of runs, into
one packed data file (`python -m stvit.data import SOURCE --out FILE`; docs/import.md).

    sources    find the runs (BIDS + fMRIPrep derivatives, HCP, CSV table), refuse non-MNI series
    plan       check every run before a volume is read: header, TR, events, labels, confounds
    events     BIDS events tables and FSL 3-column files
    labels     which volume takes which condition (events shifted by the haemodynamic delay), why others drop
    geometry   the grid's brain mask; a run's frames resampled onto the grid through the affines, a few at a time
    clean      per-run cleaning (nilearn's signal.clean, load_confounds) and the per-volume z-score
    work       one run -> one part file, in parallel, resumable
    testsplit  whole test subjects, stratified, seeded
    assemble   the parts -> one packed file
    command    import_study() and the command line
    study      generated studies (BIDS + fMRIPrep, HCP) with known ground truth, for tests and for trying it out
"""
from stvit.data.importer.command import ImportOptions, Summary, import_study

__all__ = ["ImportOptions", "Summary", "import_study"]
