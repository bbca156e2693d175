"""What only the end-to-end tests use, made once per session on first use; a unit test cannot ask for it
(tests/conftest.py holds what both tiers share)."""
import pytest


# --- C++ inference ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def deployed(tmp_path_factory):
    """The tiny exported model (model.pt2, golden input, sidecar) and the built `stvit_infer`, made once per session
    for tests/e2e/test_export.py and tests/e2e/test_cpp_inputs.py (the export and the build are the slow part)."""
    from e2e.test_export import deploy

    return deploy(tmp_path_factory)
