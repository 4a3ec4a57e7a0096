"""Fixtures shared by the core tests."""
import os

import pytest
import torch

# the commands pick torch's thread count from the machine's load (runtime/threads.py); the tests keep one
# count for the whole session, so that runs compared with each other use the same kernels
os.environ.setdefault("DUALANODIFF_THREADS", str(torch.get_num_threads()))

from synthetic_data import write_mvtec_category
from tiny_models import save_tiny_pipeline


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory):
    """A diffusers-layout tiny SD-1-shaped model folder (UNet, VAE, CLIP, tokenizer, scheduler)."""
    folder = tmp_path_factory.mktemp("tiny_sd")
    save_tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def mvtec_bottle(tmp_path_factory):
    return write_mvtec_category(tmp_path_factory.mktemp("mvtec") / "bottle", n=6)


@pytest.fixture
def one_thread():
    """Tiny detectors run fastest on one CPU thread (two thrash on a shared machine); restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
