"""Files the toolkit writes: atomic (nothing half-written, nothing replaced unasked) and with the
permissions a plain ``open()`` / ``mkdir`` gives under the user's umask, so that a dataset or checkpoint
written by one account (a ComfyUI service, a container) can be read by the next."""
import json
import os
import stat

import numpy as np
import pytest
import torch

from dualanodiff_core.errors import DualAnoDiffError
from dualanodiff_core.image_io import save_array_png
from dualanodiff_core.io_utils import atomic_save_safetensors, atomic_write
from dualanodiff_core.training.train_checkpoints import save_training_checkpoint

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@posix_only
def test_written_files_and_folders_get_the_modes_of_a_plain_open(tmp_path, umask):
    png = save_array_png(np.zeros((4, 4), np.uint8), tmp_path / "data" / "mask" / "0.png")
    weights = atomic_save_safetensors({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    text = atomic_write(tmp_path / "metrics.json", lambda tmp: open(tmp, "w").write("{}"))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)
    step = save_training_checkpoint(tmp_path / "run", 3, {"w": torch.zeros(2)}, optimizer, keep=1, extra={})
    with open(tmp_path / "plain.txt", "w"):
        pass
    (tmp_path / "plain_dir").mkdir()
    assert _mode(tmp_path / "plain.txt") == 0o666 & ~umask
    for path in (png, weights, text, step / "trainable.safetensors", step / "state.json"):
        assert _mode(path) == _mode(tmp_path / "plain.txt"), path
    assert _mode(step) == _mode(tmp_path / "plain_dir") == 0o777 & ~umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "metrics.json", "model.safetensors", "plain.txt",
                                                          "plain_dir", "run"], "no temporary file left behind"


def test_a_failed_write_leaves_the_target_and_no_temporary(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_text(json.dumps({"kept": 1}))

    def fail(tmp):
        open(tmp, "w").write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail, overwrite=True)
    assert json.loads(target.read_text()) == {"kept": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
    with pytest.raises(DualAnoDiffError, match="metrics.json already exists"):
        atomic_write(target, lambda tmp: None)
