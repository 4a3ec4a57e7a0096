"""The frozen VAE's encodings of the training pairs, kept between steps.

Few-shot training draws the same handful of pairs (under a few flips) at every step, and the VAE
never changes, so re-encoding them each step is wasted work (about 5 % of a demo training step on 2
CPU cores). What is kept is the posterior's parameters, not a latent: every step still draws
its own latent sample from its own generator, at the same point of the generator's stream.

Bit for bit the same as encoding each step's batch: a batch with a row not yet kept is encoded
whole, exactly as without the cache, and its rows are kept; a step whose rows are all kept stacks
them in the batch's order and memory layout. A convolution computes each image of a batch on its
own, so a row's encoding does not depend on the rows beside it (``tests/test_latent_cache.py``
holds training with and without the cache to equal losses and weights).
"""
from __future__ import annotations

import torch


class EncodedPairs:
    """Posterior parameters of (pair, hflip, vflip) -> (image rows, anomaly rows), filled as steps
    need them; ``latents`` gives a step's interleaved, scaled latent sample."""

    def __init__(self, vae):
        self.vae = vae
        self._kept: dict = {}
        self._posterior_type = None
        self._memory_format = torch.contiguous_format

    def __len__(self) -> int:
        return len(self._kept)

    @torch.no_grad()
    def latents(self, pixels: callable, keys: list, generator: torch.Generator) -> torch.Tensor:
        """``keys``: one hashable per pair of the step (its index and flips); ``pixels()`` builds
        the step's interleaved ``(2n, 3, H, W)`` batch in [-1, 1], called only when a key is new.
        Returns what ``vae_encode(vae, pixels(), scaled=True, generator=generator)`` returns."""
        if all(k in self._kept for k in keys):
            params = torch.stack([row for k in keys for row in self._kept[k]])
            params = params.contiguous(memory_format=self._memory_format)
            posterior = self._posterior_type(params)
        else:
            x = pixels()
            param = next(self.vae.parameters())
            posterior = self.vae.encode(x.to(param.device, param.dtype)).latent_dist
            params = posterior.parameters
            self._posterior_type = type(posterior)
            channels_last = params.is_contiguous(memory_format=torch.channels_last) and not params.is_contiguous()
            self._memory_format = torch.channels_last if channels_last else torch.contiguous_format
            for i, k in enumerate(keys):
                self._kept.setdefault(k, (params[2 * i].clone(), params[2 * i + 1].clone()))
        return posterior.sample(generator=generator) * self.vae.config.scaling_factor
