"""`python -m stvit.data import` on studies generated the way users have them (`stvit.data.importer.study`):
fMRIPrep names and sidecars, int16 series with a scale factor, confounds tables whose first rows are `n/a`, both
common 2 mm MNI grids (fMRIPrep's 97 x 115 x 97, FSL's 91 x 109 x 91 stored radiologically), an HCP release with
FSL 3-column EVs, a CSV table of runs. The file reads like any other data file; a pattern planted in the left
hemisphere stays left; an interrupted import continues to the same bytes."""
from __future__ import annotations

from pathlib import Path

import nibabel
import numpy as np
import pytest

from stvit.data import load_dataset
from stvit.data.importer import ImportOptions, import_study
from stvit.data.importer.study import PATTERNS, Design, Signal, make_hcp_release, make_study
from stvit.data.packed import PackedFile, unpack

SMALL = Design(tr=2.0, frames=14, block=8.0, rest=4.0, lead=4.0)  # face 4-12 s, house 16-24 s


@pytest.fixture(scope="module")
def bids(tmp_path_factory):
    """2 subjects x 2 runs of 14 frames on fMRIPrep's grid, 2 non-steady-state frames flagged per run, imported
    with one test subject: (study truth, file, summary)."""
    root = tmp_path_factory.mktemp("bids") / "study"
    truth = make_study(root, subjects=2, runs=2, design=SMALL, signal=Signal(effect=4.0), dummy=2)
    out = root.parent / "study.h5"
    summary = import_study(root, out, ImportOptions(conditions=("face", "house"), test_subjects="1"))
    return truth, out, summary


def test_a_bids_fmriprep_study_reads_like_any_data_file(bids):
    truth, out, summary = bids
    data = load_dataset(out)
    assert data.X_train.shape[1:] == (53, 63, 46)
    assert set(data.ids_train) | set(data.ids_test) == {"01", "02"}  # the BIDS subjects
    assert not set(data.ids_train) & set(data.ids_test) and len(set(data.ids_test)) == 1  # whole subjects
    for split in ("train", "test"):
        m = data.meta[split]
        assert set(m) == {"subject", "session", "run", "volume", "onset", "condition"}
        np.testing.assert_allclose(m["onset"], m["volume"] * 2.0)
        assert set(m["run"]) == {"1", "2"}
        np.testing.assert_array_equal(np.array(["face", "house"])[data.split(split)[1]], m["condition"])
    with PackedFile(out) as p:
        rows = p.rows(np.arange(p.n)).astype(np.float64)
        assert p.class_names == ["face", "house"] and str(p.dtype) == "float16"
    np.testing.assert_allclose(rows.mean(1), 0, atol=2e-3)  # per-volume z-score over the brain
    np.testing.assert_allclose(rows.std(1), 1, atol=2e-3)
    assert (data.X_train.reshape(len(data.X_train), -1)[:, ~p.mask.reshape(-1)] == 0).all()
    assert summary.kept == [int((data.y_train == k).sum() + (data.y_test == k).sum()) for k in (0, 1)]


def test_labels_follow_the_generator_s_truth(bids):
    truth, out, _ = bids
    with PackedFile(out) as p:
        meta, y = p.meta, p.labels
    agree = total = 0
    for r in truth.runs:
        mine = (meta["subject"] == r.subject) & (meta["run"] == r.run)
        true = r.truth[meta["volume"][mine]]
        agree += int((true == np.array(["face", "house"])[y[mine]]).sum())
        total += int(mine.sum())
    assert total > 0 and agree / total >= 0.9  # the 5 s shift vs the response above half its peak


def test_the_summary_and_the_provenance_say_what_was_done(bids):
    truth, out, summary = bids
    text = summary.text()
    assert "2 subjects, 4 runs, 56 volumes; TR 2 s from the JSON sidecars" in text
    assert f"kept {sum(summary.kept)} volumes: face {summary.kept[0]}, house {summary.kept[1]}" in text
    assert summary.dropped["rest"] == 56 - sum(summary.kept) - summary.dropped["censored"]
    assert "test split: 1 whole subject (" in text and "MB" in text
    with PackedFile(out) as p:
        prov = p.provenance
    assert prov["parameters"]["hrf_shift"] == 5.0 and prov["parameters"]["conditions"] == ["face", "house"]
    assert {"numpy", "nibabel", "nilearn", "scipy"} <= set(prov["libraries"])
    run = prov["runs"][0]
    assert run["subject"] == "01" and run["tr_source"].startswith("sidecar")
    files = dict((Path(f).name, size) for f, size in run["files"])
    bold = truth.runs[0].bold
    assert files[bold.name] == bold.stat().st_size
    assert "brain mask" in prov["mask"] and prov["test_split"]["unit"] == "subjects"


def test_the_series_are_int16_with_a_scale_factor_and_confounds_start_with_na(bids):
    truth, _, _ = bids
    img = nibabel.load(truth.runs[0].bold)
    assert img.get_data_dtype() == np.int16 and img.dataobj.slope != 1.0
    tsv = next(truth.runs[0].bold.parent.glob("*_desc-confounds_timeseries.tsv")).read_text().splitlines()
    header, first = tsv[0].split("\t"), tsv[1].split("\t")
    assert first[header.index("framewise_displacement")] == "n/a"
    assert first[header.index("trans_x_derivative1")] == "n/a"


def planted_side(out: Path) -> tuple[np.ndarray, float, float]:
    """(voxel of the largest face - house difference; mean difference within 6 mm of x = -42 mm, where class 0 is
    planted, and within 6 mm of its mirror x = +42 mm)."""
    with PackedFile(out) as p:
        rows = p.rows(np.arange(p.n)).astype(np.float64)
        diff = rows[p.labels == 0].mean(0) - rows[p.labels == 1].mean(0)
        dense = unpack(diff[None], p.index, p.volume_shape)[0]
        inside = p.mask
    peak = np.array(np.unravel_index(np.argmax(dense), dense.shape))
    ijk = np.indices(dense.shape).reshape(3, -1).T
    mm = ijk * 3.0 + np.array([-78.0, -112.0, -50.0])

    def ball(x: float) -> float:
        near = (np.linalg.norm(mm - np.array([x, -56.0, -18.0]), axis=1) <= 6) & inside.reshape(-1)
        return float(dense.reshape(-1)[near].mean())

    return peak, ball(-42.0), ball(42.0)


@pytest.mark.parametrize("space, x_step", [("MNI152NLin6Asym", -1), ("MNI152NLin2009cAsym", 1)])
def test_a_left_hemisphere_pattern_stays_left(tmp_path, space, x_step):
    """Class 0 ('face') is planted at x = -42 mm only, class 1 nowhere: after import the difference map peaks in
    the left half of the grid (axis 0 < 26, x < 0) and is flat at the mirror place, whether the source stores x
    decreasing (FSL's radiological MNI152) or increasing (fMRIPrep's)."""
    root = tmp_path / "study"
    truth = make_study(root, subjects=2, space=space, x_step=x_step, design=SMALL,
                       signal=Signal(effect=8.0, noise=0.5, patterns=(PATTERNS[0], [])))
    assert np.sign(truth.affine[0, 0]) == x_step
    out = tmp_path / "lr.h5"
    import_study(root, out, ImportOptions(conditions=("face", "house"), space=space, test_subjects="1"))
    peak, left, right = planted_side(out)
    assert peak[0] < 26 and abs(peak[0] * 3 - 78 - (-42)) <= 9, peak  # x = -42 mm is index 12
    assert left > 0.5 and abs(right) < 0.25 * left, (left, right)


def test_an_hcp_release_with_fsl_evs(tmp_path):
    """One subject (LR and RL runs): the test split holds out a whole run, and says so."""
    root = tmp_path / "HCP"
    make_hcp_release(root, subjects=1, design=Design(tr=0.72, frames=24, block=6.0, rest=1.5, lead=2.0))
    out = tmp_path / "hcp.h5"
    summary = import_study(root, out, ImportOptions(test_subjects="1"))  # EMOTION: fear, neut as face, shape
    text = summary.text()
    assert "HCP release" in text and "task EMOTION" in text and "1 subject, 2 runs" in text
    assert "test split: 1 whole run (" in text and "not new subjects" in text
    assert "TR 0.72 s from the NIfTI header (no JSON sidecar)" in text
    assert "face (fear)" in text and "shape (neut)" in text
    data = load_dataset(out)
    assert {data.meta["train"]["run"][0], data.meta["test"]["run"][0]} == {"LR", "RL"} and len(data.ids_train[0]) == 6
    assert set(data.meta["train"]["condition"]) == {"fear", "neut"}


def test_sessions_are_kept_apart(tmp_path):
    root = tmp_path / "study"
    make_study(root, subjects=2, sessions=2, design=SMALL)
    assert (root / "sub-01" / "ses-2" / "func").is_dir()
    out = tmp_path / "ses.h5"
    summary = import_study(root, out, ImportOptions(conditions=("face", "house"), test_subjects="1"))
    assert summary.runs == 4
    data = load_dataset(out)
    assert set(data.meta["train"]["session"]) == {"1", "2"} and set(data.meta["train"]["run"]) == {"1"}


def test_a_table_of_runs_with_bids_and_fsl_events(bids, tmp_path):
    truth, _, _ = bids
    rows = ["bold,events,subject,run,tr"]
    for i, r in enumerate([truth.runs[0], truth.runs[3]]):
        if i % 2:  # FSL 3-column files, one per condition, in a folder
            evs = tmp_path / f"evs-{i}"
            evs.mkdir()
            for c in ("face", "house"):
                (evs / f"{c}.txt").write_text("".join(f"{o:g} {d:g} 1\n" for o, d, n in r.events if n == c))
            events = evs
        else:
            events = next((truth.root / f"sub-{r.subject}" / "func").glob(f"*run-{r.run}_events.tsv"))
        rows.append(f"{r.bold},{events},S{r.subject},{r.run},2.0")
    table = tmp_path / "runs.csv"
    table.write_text("\n".join(rows) + "\n")
    summary = import_study(table, tmp_path / "t.h5", ImportOptions(conditions=("face", "house"), test_subjects="1"))
    assert summary.runs == 2 and summary.subjects == 2 and "TR 2 s from the table" in summary.text()
    assert set(load_dataset(tmp_path / "t.h5").ids_train) <= {"S01", "S02"}


def test_an_interrupted_import_continues_to_the_same_bytes(bids, tmp_path, monkeypatch):
    truth, whole, _ = bids
    options = ImportOptions(conditions=("face", "house"), test_subjects="1")
    out = tmp_path / "again.h5"
    with monkeypatch.context() as m:
        interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            import_study(truth.root, out, options)
    assert not out.exists() and len(list((tmp_path / "again.h5.parts").glob("*.npz"))) == 2
    summary = import_study(truth.root, out, options)
    assert summary.reused == 2 and out.read_bytes() == whole.read_bytes()
    assert not (tmp_path / "again.h5.parts").exists()


def interrupt_after(monkeypatch, n: int) -> None:
    """The import stops (KeyboardInterrupt) when it starts its run number n + 1."""
    import stvit.data.importer.work as W

    real, calls = W.process_run, []

    def process(job):
        calls.append(job)
        if len(calls) > n:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(W, "process_run", process)


def test_other_parameters_do_not_reuse_parts(bids, tmp_path, monkeypatch):
    truth, _, _ = bids
    out = tmp_path / "p.h5"
    one = dict(conditions=("face", "house"), test_subjects="1", subjects=("01",))  # its 2 runs: split by run
    with monkeypatch.context() as m:
        interrupt_after(m, 1)
        with pytest.raises(KeyboardInterrupt):
            import_study(truth.root, out, ImportOptions(**one))
    assert len(list((tmp_path / "p.h5.parts").glob("*.npz"))) == 1
    other = import_study(truth.root, out, ImportOptions(**one, hrf_shift=4.0))
    assert other.reused == 0 and not (tmp_path / "p.h5.parts").exists()
