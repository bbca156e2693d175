"""The end-to-end tier: runs of the commands, subprocesses, the C++ build and slow compiles; every test here is
marked `e2e` by tests/conftest.py."""
