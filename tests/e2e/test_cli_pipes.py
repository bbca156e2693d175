"""Command output into a pipe whose reader has gone (`... | head -n 1`) ends quietly: no traceback, exit status
141 (128 + SIGPIPE, as a shell reports for other commands; see stvit.errors)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stvit.data.__main__ import main as data_main
from stvit.errors import EXIT_BROKEN_PIPE, run_cli

from helpers import ROOT as REPO

SHAPE = ("--volume-shape", "53", "63", "46")


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pipes") / "tiny.mat"
    assert run_cli(data_main, ["synth", "--out", str(path), "--n-train", "4", "--n-test", "2"]) == 0
    return path


def _env(buffered: bool) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    return env


def _into_closed_pipe(args: list[str], buffered: bool) -> subprocess.CompletedProcess:
    """`python -m stvit.data ARGS` with its stdout a pipe whose reader is gone before the first write."""
    r, w = os.pipe()
    os.close(r)
    try:
        return subprocess.run([sys.executable, "-m", "stvit.data", *args], stdout=w, stderr=subprocess.PIPE,
                              text=True, cwd=REPO, env=_env(buffered), timeout=120)
    finally:
        os.close(w)


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
def test_inspect_into_a_closed_pipe_exits_quietly(tiny_set, buffered):
    """Buffered stdout: the write at the end fails; unbuffered: the first print fails."""
    p = _into_closed_pipe(["inspect", str(tiny_set), *SHAPE], buffered)
    assert p.stderr == "" and p.returncode == EXIT_BROKEN_PIPE, p.stderr


def test_help_into_a_closed_pipe_exits_quietly():
    """argparse exits after --help (ignoring the failed write itself); the buffered text must not fail at exit."""
    p = _into_closed_pipe(["--help"], buffered=True)
    assert p.stderr == "" and p.returncode == EXIT_BROKEN_PIPE, p.stderr


def test_inspect_piped_into_head(tiny_set):
    """The real pipeline: head prints the first line and exits while inspect is still reading the volumes."""
    inspect = subprocess.Popen([sys.executable, "-m", "stvit.data", "inspect", str(tiny_set), *SHAPE],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=_env(buffered=False))
    head = subprocess.Popen(["head", "-n", "1"], stdin=inspect.stdout, stdout=subprocess.PIPE)
    inspect.stdout.close()  # head holds the only reading end
    first, _ = head.communicate(timeout=120)
    err = inspect.stderr.read().decode()
    inspect.stderr.close()
    assert inspect.wait(timeout=120) in (0, EXIT_BROKEN_PIPE)  # 0 only if inspect finished before head exited
    assert err == "", err
    assert first.decode().startswith(f"{tiny_set}: MAT v5/v7 (uncompressed)")


def test_user_error_keeps_its_status_when_the_pipe_is_closed(tmp_path):
    """A bad file still says why on stderr, and exits 2, though its stdout reader is gone."""
    bad = tmp_path / "bad.mat"
    bad.write_text("not a data file\n")
    p = _into_closed_pipe(["inspect", str(bad)], buffered=True)
    assert p.returncode == 2 and p.stderr == f"error: {bad}: not a MAT (v5/v7/v7.3), HDF5 or .npz file\n"
