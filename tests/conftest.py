import pytest
import torch


@pytest.fixture(autouse=True)
def _seed():
    """Each test draws fresh but reproducible inputs."""
    torch.manual_seed(0)
