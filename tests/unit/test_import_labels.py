"""Events and labels of the importer (`stvit.data.importer.events`, `labels`): BIDS tables as presentation
software writes them, FSL 3-column files, the haemodynamic shift and the reasons volumes are dropped."""
from __future__ import annotations

import numpy as np
import pytest

from stvit.data.dataset import DataError
from stvit.data.importer.events import Events, read_bids_events, read_events, read_fsl_events
from stvit.data.importer.labels import check_events_in_run, label_run


def events(*rows) -> Events:
    o, d, c = zip(*rows)
    return Events(np.array(o, float), np.array(d, float), np.array(c, dtype=str))


def test_bids_table_with_na_columns_and_na_trial_types(tmp_path):
    p = tmp_path / "sub-01_task-x_run-1_events.tsv"
    p.write_text("onset\tduration\ttrial_type\tresponse_time\tstim_file\n"
                 "0\t12.5\tface\tn/a\tn/a\n12.5\t3\tn/a\t0.6\tx.png\n20\t12.5\thouse\t0.7\tn/a\n")
    e = read_bids_events(p)
    assert e.conditions() == ["face", "house"]
    np.testing.assert_array_equal(e.onset, [0, 20])
    np.testing.assert_array_equal(e.of("house")[1], [12.5])


@pytest.mark.parametrize("text, problem", [
    ("onset\ttrial_type\n0\tface\n", r"lacks the column\(s\) duration"),
    ("onset\tduration\ttrial_type\n0\tten\tface\n", "line 2: duration 'ten' is not a number"),
    ("onset\tduration\ttrial_type\nn/a\t3\tface\n", "line 2: onset 'n/a' is not a number"),
    ("onset\tduration\ttrial_type\n4\t-3\tface\n", "negative duration"),
    ("", "empty"),
])
def test_bad_bids_tables_name_the_line(tmp_path, text, problem):
    p = tmp_path / "e.tsv"
    p.write_text(text)
    with pytest.raises(DataError, match=problem) as err:
        read_bids_events(p)
    assert str(err.value).startswith(str(p))


def test_fsl_three_column_files_by_condition_weight_zero_is_no_event(tmp_path):
    evs = tmp_path / "EVs"
    evs.mkdir()
    (evs / "fear.txt").write_text("36.1\t18.0\t1\n 90.3  18.0  1.0\n")
    (evs / "neut.txt").write_text("10\t18\t1\n60\t18\t0\n")
    (evs / "Sync.txt").write_text("0.0\n")  # HCP writes it beside the EVs: not one
    e = read_events(evs, ["fear", "neut"])
    assert sorted(e.conditions()) == ["fear", "neut"]
    np.testing.assert_array_equal(e.of("fear")[0], [36.1, 90.3])
    np.testing.assert_array_equal(e.of("neut")[0], [10])
    with pytest.raises(DataError, match="1 columns, expected FSL's 3"):
        read_fsl_events(evs / "Sync.txt")


def test_a_volume_takes_the_condition_of_its_shifted_time():
    # TR 2: volumes at 0, 2, ..., 30 s; face block [4, 12), house [16, 24)
    e = events((4, 8, "face"), (16, 8, "house"))
    lab = label_run(e, ["face", "house"], 16, 2.0, hrf_shift=5.0)
    # t - 5 in [4, 12) -> t in [9, 17): volumes 10, 12, 14, 16 s = indices 5..8
    assert np.flatnonzero(lab.label == 0).tolist() == [5, 6, 7, 8]
    assert np.flatnonzero(lab.label == 1).tolist() == [11, 12, 13, 14]
    assert lab.reason[0] == "rest" and lab.reason[10] == "rest" and lab.reason[5] == ""
    none = label_run(e, ["face", "house"], 16, 2.0, hrf_shift=0.0)
    assert np.flatnonzero(none.label == 0).tolist() == [2, 3, 4, 5]


def test_transition_other_condition_and_overlap_reasons():
    e = events((4, 8, "face"), (12, 2, "cue"), (16, 8, "house"), (18, 4, "face"))
    lab = label_run(e, ["face", "house"], 16, 2.0, hrf_shift=0.0, trim=2.0)
    assert lab.reason[2] == "transition" and lab.reason[3] == "" and lab.reason[5] == "transition"
    assert lab.reason[6] == "other condition"
    assert lab.reason[9] == "overlap" and lab.reason[10] == "overlap"
    assert lab.label[3] == 0 and lab.label[4] == 0 and (lab.label[lab.reason != ""] == -1).all()


def test_start_time_moves_every_volume(tmp_path):
    e = events((4, 4, "a"), (10, 4, "b"))
    lab = label_run(e, ["a", "b"], 8, 2.0, start=1.0, hrf_shift=0.0)
    np.testing.assert_allclose(lab.time[:3], [1, 3, 5])
    assert lab.label.tolist() == [-1, -1, 0, 0, -1, 1, 1, -1]


def test_an_onset_beyond_the_run_is_refused(tmp_path):
    e = events((4, 8, "face"), (40, 8, "house"))
    with pytest.raises(DataError, match=r"onset 40 s \('house'\) is beyond the end of the run \(16 volumes x TR 2 s"):
        check_events_in_run(e, 16, 2.0, 0.0, tmp_path / "e.tsv")
    check_events_in_run(e, 21, 2.0, 0.0, tmp_path / "e.tsv")
