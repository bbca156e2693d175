"""What only the end-to-end tests use: a finished tiny run, and the exported model with the built C++ runner. Both are
made once per session, on first use; a unit test cannot ask for them (tests/conftest.py holds what both tiers share).
"""
import pytest


# --- a tiny training run ----------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def tiny_run(tiny, tmp_path_factory):
    """A finished tiny run (pre-training, fine-tuning, the test evaluation) for tests to read; a test that changes
    a run works on a copy."""
    from helpers import run_main

    data, cfg = tiny
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert run_main(["--data", str(data), "--config", str(cfg), "--out", str(out), "--quiet"]) == 0
    return out


# --- C++ inference ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def deployed(tmp_path_factory):
    """The tiny exported model (model.pt2, golden input, sidecar) and the built `stvit_infer`, made once per session
    for tests/e2e/test_export.py and tests/e2e/test_cpp_inputs.py (the export and the build are the slow part)."""
    from e2e.test_export import deploy

    return deploy(tmp_path_factory)
