"""Bad input to `python -m stvit.data import`: one line `error: FILE: problem`, exit code 2, nothing written (no
data file, no work folder), for each mistake a study can hold; the ones found only while reading the voxels
(a truncated .nii.gz, NaN frames) too."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel
import numpy as np
import pytest

from stvit.data.importer.study import Design, make_study

SMALL = Design(tr=2.0, frames=14, block=8.0, rest=4.0, lead=4.0)
FUNC = Path("derivatives/fmriprep/sub-01/func")
BOLD = "sub-01_task-emotion_run-1_space-MNI152NLin2009cAsym_res-2_desc-preproc_bold"
EVENTS = Path("sub-01/func/sub-01_task-emotion_run-1_events.tsv")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors") / "study"
    make_study(root, subjects=2, design=SMALL)
    return root


@pytest.fixture
def study(base, tmp_path):
    """A copy of the base study to break."""
    return Path(shutil.copytree(base, tmp_path / "study"))


def run(argv, capsys) -> tuple[int, str]:
    from stvit.data.__main__ import main
    from stvit.errors import run_cli

    code = run_cli(main, ["import", *argv])
    return code, capsys.readouterr().err


def refused(study: Path, capsys, *extra, problem: str, names: str) -> None:
    """The import of `study` exits 2 with one error line naming `names` and saying `problem`; nothing written."""
    out = study.parent / "out.h5"
    code, err = run([str(study), "--out", str(out), "--conditions", "face", "house", "--test-subjects", "1",
                     "--quiet", *extra], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert names in lines[0] and problem in lines[0], lines[0]
    assert not out.exists() and not (study.parent / "out.h5.parts").exists()
    assert not list(study.parent.glob(".out.h5.*"))


def rewrite_bold(study: Path, change) -> Path:
    """Replace sub-01's series by `change(data, img)` -> (data, affine, zooms)."""
    path = study / FUNC / f"{BOLD}.nii.gz"
    img = nibabel.load(path)
    data, affine, zooms = change(np.asarray(img.get_fdata(), np.float32), img)
    new = nibabel.Nifti1Image(data, affine)
    new.header.set_xyzt_units("mm", "sec")
    new.header.set_zooms(zooms)
    new.set_sform(affine, code="aligned")
    nibabel.save(new, path)
    return path


def test_a_3d_file_where_a_series_belongs(study, capsys):
    path = rewrite_bold(study, lambda d, img: (d[..., 0], img.affine, img.header.get_zooms()[:3]))
    refused(study, capsys, problem="single 3D volume", names=path.name)


def test_events_without_trial_type(study, capsys):
    (study / EVENTS).write_text("onset\tduration\tstim\n4\t8\tface.png\n")
    refused(study, capsys, problem="lacks the column(s) trial_type", names=EVENTS.name)


def test_an_onset_as_text(study, capsys):
    (study / EVENTS).write_text("onset\tduration\ttrial_type\nfour\t8\tface\n16\t8\thouse\n")
    refused(study, capsys, problem="line 2: onset 'four' is not a number", names=EVENTS.name)


def test_onsets_beyond_the_end_of_the_run(study, capsys):
    (study / EVENTS).write_text("onset\tduration\ttrial_type\n4\t8\tface\n16\t8\thouse\n300\t8\tface\n")
    refused(study, capsys, problem="onset 300 s ('face') is beyond the end of the run (14 volumes x TR 2 s",
            names=EVENTS.name)


def test_no_repetition_time_anywhere(study, capsys):
    for side in (study / FUNC / f"{BOLD}.json", study / "sub-01/func/sub-01_task-emotion_run-1_bold.json"):
        side.write_text(json.dumps({"TaskName": "emotion"}))
    path = rewrite_bold(study, lambda d, img: (d, img.affine, (2.0, 2.0, 2.0, 0.0)))
    refused(study, capsys, problem="no RepetitionTime", names=path.name)


def test_sidecar_and_header_disagree(study, capsys):
    path = rewrite_bold(study, lambda d, img: (d, img.affine, (2.0, 2.0, 2.0, 2.5)))
    refused(study, capsys, problem="RepetitionTime 2 s (sidecar", names=path.name)


def test_tr_differs_between_runs(study, capsys):
    for side in (study / FUNC / f"{BOLD}.json", study / "sub-01/func/sub-01_task-emotion_run-1_bold.json"):
        side.write_text(json.dumps({"RepetitionTime": 1.5}))
    path = rewrite_bold(study, lambda d, img: (d, img.affine, (2.0, 2.0, 2.0, 1.5)))
    refused(study, capsys, problem="the repetition time differs between runs: 1.5 s in sub-01", names="sub-02")
    assert path.exists()


def test_a_condition_with_no_volumes(study, capsys):
    for sub in ("01", "02"):
        p = study / f"sub-{sub}/func/sub-{sub}_task-emotion_run-1_events.tsv"
        p.write_text("onset\tduration\ttrial_type\n4\t8\tface\n16.5\t0.4\thouse\n")  # 0.4 s: no volume inside
    refused(study, capsys, problem="condition 'house' labels no volume", names=str(study))


def test_a_condition_in_no_events_file(study, capsys):
    out = study.parent / "out.h5"
    code, err = run([str(study), "--out", str(out), "--conditions", "face", "tree", "--quiet"], capsys)
    assert code == 2 and "condition 'tree' is in no events file (they have: face, house)" in err


def test_no_conditions_given_lists_them(study, capsys):
    code, err = run([str(study), "--out", str(study.parent / "o.h5")], capsys)
    assert code == 2 and "choose the conditions to import with --conditions (the events have: face, house)" in err


def test_a_truncated_nii_gz(study, capsys):
    path = study / FUNC / f"{BOLD}.nii.gz"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    refused(study, capsys, problem="truncated or damaged file?", names=path.name)


def test_nan_frames(study, capsys):
    def nan(d, img):
        d[..., 3] = np.nan
        return d, img.affine, img.header.get_zooms()
    path = rewrite_bold(study, nan)
    refused(study, capsys, problem="frame(s) 3 hold NaN/Inf values", names=path.name)


def test_a_derivative_in_a_non_mni_space_only(study, capsys):
    for p in sorted((study / FUNC).glob("*space-MNI152NLin2009cAsym_res-2*")):
        p.rename(p.with_name(p.name.replace("space-MNI152NLin2009cAsym_res-2", "space-T1w")))
    refused(study, capsys, problem="space-T1w is not MNI space: stvit needs volumes in MNI space: fMRIPrep's MNI "
            "output", names="space-T1w_desc-preproc_bold")


def test_another_mni_space_is_named(study, capsys):
    refused(study, capsys, "--space", "MNI152NLin6Asym",
            problem="no space-MNI152NLin6Asym output (it has space-MNI152NLin2009cAsym): pass --space "
                    "MNI152NLin2009cAsym", names=BOLD)


def test_a_subject_with_no_matching_runs(study, capsys):
    (study / "sub-03/func").mkdir(parents=True)
    shutil.copy(study / EVENTS, study / "sub-03/func/sub-03_task-emotion_run-1_events.tsv")
    refused(study, capsys, problem="no fMRIPrep run of task 'emotion'", names="sub-03")


def test_an_existing_output_is_kept_without_force(study, capsys):
    out = study.parent / "out.h5"
    out.write_bytes(b"precious")
    code, err = run([str(study), "--out", str(out), "--conditions", "face", "house"], capsys)
    assert code == 2 and "file exists; pass --force" in err and out.read_bytes() == b"precious"


def test_a_table_row_with_text_for_a_tr_and_a_native_series(study, tmp_path, capsys):
    bold = study / FUNC / f"{BOLD}.nii.gz"
    table = tmp_path / "runs.csv"
    table.write_text(f"bold,events,subject,run,tr\n{bold},{study / EVENTS},01,1,two\n")
    code, err = run([str(table), "--out", str(tmp_path / "t.h5"), "--conditions", "face", "house"], capsys)
    assert code == 2 and "runs.csv: line 2: tr 'two' is not a repetition time in seconds" in err
    img = nibabel.load(bold)
    native = tmp_path / "scan.nii.gz"
    raw = nibabel.Nifti1Image(np.asarray(img.dataobj), img.affine)
    raw.set_sform(img.affine, code="scanner")
    raw.set_qform(img.affine, code="scanner")
    nibabel.save(raw, native)
    table.write_text(f"bold,events,subject,run,tr\n{native},{study / EVENTS},01,1,2\n")
    code, err = run([str(table), "--out", str(tmp_path / "t.h5"), "--conditions", "face", "house"], capsys)
    assert code == 2 and "scan.nii.gz: the header places it in scanner coordinates" in err


def test_a_second_import_into_the_same_file_waits_its_turn(study, capsys):
    from stvit.data.importer.work import WorkFolder

    out = study.parent / "out.h5"
    holder = WorkFolder(out)
    holder.claim()
    try:
        code, err = run([str(study), "--out", str(out), "--conditions", "face", "house", "--quiet"], capsys)
    finally:
        holder.release(remove=True)
    assert code == 2 and "another import into this file is running" in err and not out.exists()


def test_a_missing_package_says_what_to_install(study, capsys, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_nilearn(name, *args, **kwargs):
        if name == "nilearn" or name.startswith("nilearn."):
            raise ImportError(f"No module named '{name}'")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nilearn)
    code, err = run([str(study), "--out", str(study.parent / "o.h5"), "--conditions", "face", "house"], capsys)
    assert code == 2 and err.strip() == ("error: python -m stvit.data import needs nibabel, nilearn and pandas "
                                         "(nilearn is missing): pip install 'stvit[import]'")
