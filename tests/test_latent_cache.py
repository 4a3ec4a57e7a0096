"""The trainer keeps the frozen VAE's encodings of the training pairs: same numbers, fewer encodes."""
import torch
from safetensors.torch import load_file

from dualanodiff_core.cli import main
from dualanodiff_core.formats.base_model import load_base_model
from dualanodiff_core.runtime.sampling import vae_encode
from dualanodiff_core.training.latent_cache import EncodedPairs


def _train(tiny_sd, data, out):
    argv = ["train", "--mvtec", str(data), "--defect", "scratch", "--split", "3", "--base-model", str(tiny_sd),
            "--output-dir", str(out), "--resolution", "64", "--rank", "4", "--pairs-per-step", "2", "--steps", "12",
            "--validate-every", "0", "--checkpoint-every", "0", "--save-dtype", "fp32", "--lr", "1e-3"]
    assert main(argv) == 0
    return load_file(str(out / "bottle_scratch.safetensors"))


def test_training_with_kept_encodings_equals_encoding_every_step(tiny_sd, mvtec_bottle, tmp_path, monkeypatch):
    encodes = []
    real_latents = EncodedPairs.latents

    def counting(self, pixels, keys, generator):
        before = len(self)
        out = real_latents(self, pixels, keys, generator)
        encodes.append(len(self) > before)
        return out

    monkeypatch.setattr(EncodedPairs, "latents", counting)
    kept = _train(tiny_sd, mvtec_bottle, tmp_path / "kept")
    assert len(encodes) == 12 and 0 < sum(encodes) < 12, "later steps must reuse the kept encodings"

    monkeypatch.setattr(EncodedPairs, "latents",
                        lambda self, pixels, keys, generator: vae_encode(self.vae, pixels(), scaled=True, generator=generator))
    every_step = _train(tiny_sd, mvtec_bottle, tmp_path / "every_step")
    assert kept.keys() == every_step.keys()
    for key in kept:
        assert torch.equal(kept[key], every_step[key]), key


def test_kept_rows_give_the_batch_encoding_without_the_encoder(tiny_sd):
    vae = load_base_model(tiny_sd).vae.float()
    images = torch.rand(3, 3, 64, 64) * 2 - 1
    cache = EncodedPairs(vae)

    def batch(order):
        return lambda: torch.stack([images[order], -images[order]], dim=1).flatten(0, 1)

    first = cache.latents(batch([0, 1]), ["a", "b"], torch.Generator().manual_seed(0))
    assert torch.equal(first, vae_encode(vae, batch([0, 1])(), generator=torch.Generator().manual_seed(0)))
    cache.latents(batch([2, 0]), ["c", "a"], torch.Generator().manual_seed(1))
    assert len(cache) == 3

    def no_pixels():
        raise AssertionError("every row is kept: the batch must not be built or encoded")

    again = cache.latents(no_pixels, ["b", "c"], torch.Generator().manual_seed(2))
    assert torch.equal(again, vae_encode(vae, batch([1, 2])(), generator=torch.Generator().manual_seed(2)))
