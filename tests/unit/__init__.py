"""The unit tier: fast tests of the pieces, `pytest -m "not e2e"` (see tests/conftest.py)."""
