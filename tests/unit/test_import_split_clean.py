"""The importer's test split (`testsplit`: whole subjects, stratified, seeded) and its per-run cleaning (`clean`:
nilearn's signal.clean and fMRIPrep confounds through load_confounds, the per-volume z-score)."""
from __future__ import annotations

import numpy as np
import pytest

from stvit.data.dataset import DataError
from stvit.data.importer.clean import Cleaning, clean_run, load_run_confounds, zscore_rows
from stvit.data.importer.testsplit import choose, choose_test, parse_rule, read_ids


def test_rule_is_a_count_a_fraction_or_a_file(tmp_path):
    assert parse_rule("3") == ("count", 3) and parse_rule("0.25") == ("fraction", 0.25)
    f = tmp_path / "test.txt"
    f.write_text("sub-02\n# held out\n\n05\n")
    assert parse_rule(str(f)) == ("file", f)
    assert read_ids(f, ["01", "02", "05"]) == ["02", "05"]
    for bad in ("0", "1.5", "-2", "nofile.txt"):
        with pytest.raises(DataError):
            parse_rule(bad)
    f.write_text("07\n")
    with pytest.raises(DataError, match="line 1: subject '07' is not in the study"):
        read_ids(f, ["01", "02"])


def test_choice_is_seeded_and_keeps_the_class_shares():
    rng = np.random.default_rng(0)
    counts = np.stack([rng.integers(5, 40, 60), rng.integers(5, 40, 60)], 1)  # 60 subjects, uneven classes
    a, b = choose(counts, 12, seed=1), choose(counts, 12, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.sum() == 12 and not np.array_equal(a, choose(counts, 12, seed=2))
    share = counts[a].sum(0) / counts[a].sum()
    np.testing.assert_allclose(share, counts.sum(0) / counts.sum(), atol=0.03)


def test_counts_and_fractions_of_subjects():
    counts = np.ones((10, 2))
    groups = [f"{i:02d}" for i in range(10)]
    assert choose_test(groups, counts, ("count", 3), 0, "subjects").sum() == 3
    assert choose_test(groups, counts, ("fraction", 0.2), 0, "subjects").sum() == 2
    assert choose_test(groups, counts, ("fraction", 0.01), 0, "subjects").sum() == 1  # at least one
    assert choose_test(groups, counts, ("fraction", 0.99), 0, "subjects").sum() == 9  # never all
    with pytest.raises(DataError, match="leaves no subject for the training split"):
        choose_test(groups, counts, ("count", 10), 0, "subjects")
    with pytest.raises(DataError, match="one run only"):
        choose_test(["a"], counts[:1], ("count", 1), 0, "runs")


def test_cleaning_removes_drift_mean_and_a_motion_artefact():
    """A run of 60 frames: a big mean image, a linear drift, a motion artefact (a spatial map times a motion
    parameter) and noise. Detrend + confounds + z-score leave unit-variance voxels uncorrelated with the motion."""
    rng = np.random.default_rng(0)
    T, V = 60, 500
    motion = np.cumsum(rng.standard_normal((T, 6)) * 0.05, 0)
    series = (1000 + 50 * rng.random(V))[None] + np.linspace(0, 20, T)[:, None] * rng.random(V)[None] \
        + motion @ rng.standard_normal((6, V)) * 30 + rng.standard_normal((T, V))
    inside = np.ones(V, bool)
    inside[:10] = False
    out = clean_run(series.astype(np.float32), inside, 2.0, Cleaning(confounds=("motion",)), confounds=motion)
    assert out.shape == (T, V) and (out[:, :10] == 0).all()
    np.testing.assert_allclose(out[:, inside].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(out[:, inside].std(0, ddof=1), 1, atol=1e-3)
    r = np.corrcoef(np.hstack([out[:, inside], motion]).T)[:-6, -6:]
    assert np.abs(r).max() < 0.05
    plain = clean_run(series.astype(np.float32), inside, 2.0, Cleaning())
    assert np.abs(np.corrcoef(np.hstack([plain[:, inside], motion]).T)[:-6, -6:]).max() > 0.5


def test_censored_frames_leave_the_cleaned_run():
    rng = np.random.default_rng(1)
    series = rng.standard_normal((30, 40)).astype(np.float32) + 100
    kept = np.setdiff1d(np.arange(30), [0, 1, 17])
    out = clean_run(series, np.ones(40, bool), 1.0, Cleaning(), kept=kept)
    assert out.shape == (27, 40)


def test_zscore_rows_over_the_brain_only():
    rows = np.random.default_rng(2).standard_normal((4, 50)).astype(np.float32) * 3 + 7
    inside = np.arange(50) % 5 != 0
    zscore_rows(rows, inside)
    np.testing.assert_allclose(rows[:, inside].mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(rows[:, inside].std(1), 1, atol=1e-5)
    assert (rows[:, ~inside] == 0).all()


def test_fmriprep_confounds_with_na_first_rows_and_non_steady_state(tmp_path):
    """load_confounds reads the generated table (first rows n/a), censors the flagged non-steady-state frames, and
    a high-motion frame with scrub."""
    from stvit.data.importer.study import Design, make_study

    truth = make_study(tmp_path / "s", subjects=1, design=Design(tr=2.0, frames=30, block=8.0, rest=4.0, lead=4.0),
                       dummy=2)
    bold = truth.runs[0].bold
    values, kept = load_run_confounds(bold, ("motion", "wm_csf"), 30)
    assert values.shape[0] == 30 and np.isfinite(values).all() and values.shape[1] >= 6 + 2
    assert kept.tolist() == list(range(2, 30))
    tsv = next(bold.parent.glob("*confounds_timeseries.tsv"))
    lines = tsv.read_text().splitlines()
    col = lines[0].split("\t").index("framewise_displacement")
    cells = lines[15].split("\t")
    cells[col] = "2.5"  # frame 14 moved 2.5 mm
    lines[15] = "\t".join(cells)
    tsv.write_text("\n".join(lines) + "\n")
    _, kept = load_run_confounds(bold, ("motion", "scrub"), 30)
    assert 14 not in kept.tolist() and 0 not in kept.tolist() and len(kept) < 28
    with pytest.raises(DataError, match="has 30 rows for 31 frames"):
        load_run_confounds(bold, ("motion",), 31)
