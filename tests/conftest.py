"""Shared fixtures."""
import pytest
import torch


@pytest.fixture
def one_thread():
    """Small matmuls: one thread is faster and steadier on a shared machine (torch's thread count
    is restored after the test)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
