"""C++ inference: export a tiny trained classifier (torch.export + AOTInductor, CPU), build `stvit_infer` with
CMake, run it on the golden input and match the eager PyTorch probabilities.

One export and one CMake build serve the whole test session (the `deployed` fixture in tests/e2e/conftest.py calls
`deploy` below; tests/e2e/test_cpp_inputs.py uses it too). The build directory is cached under the repository's
`build/` (git-ignored), so a rerun only rebuilds what changed; CI starts from a clean tree. The times of each
step are printed to the terminal. The Python side (preprocessing, argument errors): tests/unit/test_export.py.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch.utils

from stvit.training import checkpoint
from stvit import export
from stvit.model import export as EXP
from stvit.config import Config, DataConfig
from stvit.errors import run_cli
from stvit.model.vit import SpatioTemporalClassifier

from helpers import ROOT as REPO
from unit.test_export import TINY

TORCH_CMAKE = torch.utils.cmake_prefix_path
LOADER_H = Path(torch.__file__).parent / "include/torch/csrc/inductor/aoti_package/model_package_loader.h"
CLASSES = ("face", "shape")
ATOL = 1e-4

# torch's own notice, raised while Inductor imports its TorchScript helpers: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def tiny_checkpoint(path: Path) -> None:
    """A few AdamW steps on random volumes, so the weights are not the initialization; saved like best.pt.
    Its data config asks for z-scoring, so the package's preprocessing is exported and checked too."""
    cfg = Config(preset="demo", model=TINY, data=DataConfig(class_names=CLASSES, zscore=True))
    clf = SpatioTemporalClassifier(cfg.model)
    opt = torch.optim.AdamW(clf.parameters(), lr=1e-2)
    x, y = torch.randn(8, *TINY.volume), torch.randint(0, 2, (8,))
    for _ in range(5):
        loss = F.cross_entropy(clf(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    checkpoint.save(path, {"stage": "finetune", "model": clf.state_dict(), "config": cfg.to_dict(), "epoch": 1})


# --- export + CMake build, once per session ---------------------------------------------------------------------

def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _build_runner(build: Path) -> tuple[Path, float, float]:
    """Configure and build stvit_infer in `build`; returns (binary, configure s, build s)."""
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not on PATH: the C++ runner test needs cmake >= 3.18 and a C++17 compiler")
    if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "c++", "g++", "clang++")):
        pytest.fail("no C++ compiler on PATH (c++, g++ or clang++): the C++ runner test needs one")
    # A cache made for another checkout or another torch is thrown away, not reused.
    stamp, want = build / "stvit-stamp.txt", f"{REPO}\n{TORCH_CMAKE}\n"
    if build.exists() and (not stamp.exists() or stamp.read_text() != want):
        shutil.rmtree(build)
    build.mkdir(parents=True, exist_ok=True)
    stamp.write_text(want)
    t0 = time.perf_counter()
    r = _run(["cmake", "-S", str(REPO), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
              f"-DCMAKE_PREFIX_PATH={TORCH_CMAKE}"])
    assert r.returncode == 0, f"cmake configure failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    t1 = time.perf_counter()
    r = _run(["cmake", "--build", str(build), "--parallel", "2"])
    assert r.returncode == 0, f"cmake build failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    return build / "stvit_infer", t1 - t0, time.perf_counter() - t1


def deploy(tmp_path_factory) -> dict:
    """Export the tiny model to model.pt2 (+ golden input, sidecar) and build the runner; with the times."""
    if not LOADER_H.exists():
        pytest.skip(f"this torch build has no AOTInductor C++ package loader ({LOADER_H} is missing)")
    tmp = tmp_path_factory.mktemp("export")
    tiny_checkpoint(tmp / "best.pt")
    model = tmp / "model.pt2"
    t0 = time.perf_counter()
    assert run_cli(export.main, ["--checkpoint", str(tmp / "best.pt"), "--out", str(model)]) == 0
    t_export = time.perf_counter() - t0

    build = REPO / "build" / "pytest-stvit_infer"
    build.parent.mkdir(exist_ok=True)
    with open(build.parent / "pytest-stvit_infer.lock", "w") as lock:  # one build at a time in this checkout
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary, t_configure, t_build = _build_runner(build)
        # Copy the binary out: another test session may rebuild the cached one while we use it.
        exe = tmp / "stvit_infer"
        shutil.copy2(binary, exe)
    return {"dir": tmp, "model": model, "exe": exe,
            "times": {"export": t_export, "configure": t_configure, "build": t_build}}


def infer(deployed, model, volumes, *extra) -> subprocess.CompletedProcess:
    return _run([str(deployed["exe"]), str(model), str(volumes), *extra], timeout=120)


def read_csv(text: str) -> tuple[list[str], np.ndarray, list[str]]:
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    probs = np.array([[float(v) for v in r[1:-1]] for r in body])
    assert [int(r[0]) for r in body] == list(range(len(body)))
    return header, probs, [r[-1] for r in body]


def test_export_writes_package_golden_input_and_sidecar(deployed):
    model = deployed["model"]
    side = json.loads(model.with_name("model.pt2.json").read_text())
    golden = np.load(model.with_name("model.pt2.golden.npy"))
    assert golden.dtype == np.float32 and golden.shape == (EXP.GOLDEN_N, *TINY.volume)
    assert side["class_names"] == list(CLASSES) and side["ops"] == "eager" and side["preprocess"] == "zscore"
    assert side["metadata"]["stvit.volume"] == "5,14,6"
    assert side["golden"]["package_max_abs_diff"] < 1e-5  # the package, loaded back in Python, matches eager
    probs = np.array(side["golden"]["probabilities"])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-9)


def test_cpp_runner_matches_python_probabilities(deployed, capsys):
    model, d = deployed["model"], deployed["dir"]
    want = np.array(json.loads(model.with_name("model.pt2.json").read_text())["golden"]["probabilities"])
    golden = model.with_name("model.pt2.golden.npy")

    t0 = time.perf_counter()
    r = infer(deployed, model, golden)
    t_run = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    header, probs, predicted = read_csv(r.stdout)
    assert header == ["volume", *CLASSES, "predicted"]
    np.testing.assert_allclose(probs, want, atol=ATOL, rtol=0)
    assert predicted == [CLASSES[i] for i in want.argmax(1)]

    # Batches of 2 over 3 volumes (a full and a partial batch), written to a file.
    out = d / "probs.csv"
    r = infer(deployed, model, golden, "--batch-size", "2", "--out", str(out))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    np.testing.assert_allclose(read_csv(out.read_text())[1], want, atol=ATOL, rtol=0)

    t = deployed["times"]
    with capsys.disabled():
        print(f"\n[stvit_infer] export {t['export']:.1f} s, cmake configure {t['configure']:.1f} s, "
              f"build {t['build']:.1f} s, run {t_run:.2f} s (golden input, {len(want)} volumes)")


def _npy_cases(d: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, expected message after 'error: <file>: ')."""
    good = np.random.default_rng(0).standard_normal((2, *TINY.volume)).astype(np.float32)
    cases = {
        "int16": (good.astype(np.int16), "dtype <i2 is not float32 or float64 (<f4, <f8, >f4, >f8)"),
        "shape": (good[:, :, 1:], "shape (2, 5, 13, 6) is not (N, 5, 14, 6)"),
        "rank": (good[:, :, :, 0], "shape (2, 5, 14) is not (N, T, H, W)"),
    }
    files = {}
    for name, (arr, msg) in cases.items():
        np.save(d / f"{name}.npy", arr)
        files[name] = (d / f"{name}.npy", msg)
    np.save(d / "truncated.npy", good)
    with open(d / "truncated.npy", "r+b") as f:
        f.truncate(300)
    files["truncated"] = (d / "truncated.npy", "truncated: shape (2, 5, 14, 6) needs")
    (d / "text.npy").write_text("volume,1,2,3\n")
    files["text"] = (d / "text.npy", "not a .npy file (bad magic)")
    return files


@pytest.mark.parametrize("case", ["int16", "shape", "rank", "truncated", "text"])
def test_cpp_runner_refuses_bad_volumes(deployed, case):
    d = deployed["dir"] / f"npy-{case}"
    d.mkdir()
    path, msg = _npy_cases(d)[case]
    r = infer(deployed, deployed["model"], path)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {path}: {msg}"), r.stderr


@pytest.mark.parametrize("case", ["missing", "not_zip", "corrupt_zip"])
def test_cpp_runner_refuses_bad_model_files(deployed, case):
    d = deployed["dir"]
    bad = d / f"{case}.pt2"
    if case == "not_zip":
        bad.write_bytes(b"\x00" * 512)
    elif case == "corrupt_zip":  # a zip's magic, then garbage: the central directory cannot be found
        bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    msg = {"missing": "no such file", "not_zip": "not an AOTInductor package",
           "corrupt_zip": "cannot load the AOTInductor package"}[case]
    r = infer(deployed, bad, deployed["model"].with_name("model.pt2.golden.npy"))
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {bad}: {msg}"), r.stderr
