"""Fixtures shared by the core tests."""
import pytest

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
