import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """Model tests time nothing, but two threads on a busy 2-core machine wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def nominal(name: str) -> float:
    """A preset's nominal parameter count: "0.3M" -> 300,000."""
    return float(name.removesuffix("M")) * 1e6
