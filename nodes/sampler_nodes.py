"""Sampling nodes: the Paired KSampler and the helpers that let stock samplers run pairs."""
from __future__ import annotations

CATEGORY = "DualAnoDiff"


def _sampler_choices():
    import comfy.samplers

    return comfy.samplers.KSampler.SAMPLERS, comfy.samplers.KSampler.SCHEDULERS


SEED = ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                "tooltip": "Seed of the initial noise (each image of each pair gets its own noise) and of the BCM background noise."})


class DualAnoDiffPairedKSampler:
    CATEGORY = CATEGORY
    DESCRIPTION = ("KSampler for DualAnoDiff: samples N (global, anomaly) pairs in one batch, both branches of a pair "
                   "at the same timesteps in one UNet call.")
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("global", "anomaly")
    OUTPUT_TOOLTIPS = ("The N whole images (decode with VAE Decode).", "The N anomaly parts on mid-grey (decode, then Extract Mask).")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        samplers, schedulers = _sampler_choices()
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A MODEL from a DualAnoDiff loader."}),
                "seed": SEED,
                "steps": ("INT", {"default": 50, "min": 1, "max": 10000, "tooltip": "Denoising steps (the reference uses 100 with PNDM; 30-50 with euler/dpmpp are enough)."}),
                "cfg": ("FLOAT", {"default": 2.5, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01, "tooltip": "Classifier-free guidance scale (reference: 2.5, 2.0 with BCM)."}),
                "sampler_name": (samplers, {"tooltip": "Sampling algorithm."}),
                "scheduler": (schedulers, {"tooltip": "Noise schedule."}),
                "positive_global": ("CONDITIONING", {"tooltip": "Prompt of the whole image (trained: 'a vfx with sks')."}),
                "positive_anomaly": ("CONDITIONING", {"tooltip": "Prompt of the anomaly part (trained: 'sks')."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative prompt, shared by both branches (trained: empty)."}),
                "latent_image": ("LATENT", {"tooltip": "N pairs: N images (e.g. Empty Latent Image, batch 1-8) or a LATENT from Pair Latents."}),
                "denoise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "How much of the latent is replaced by noise (1 = all)."}),
            },
            "optional": {
                "background": ("BACKGROUND", {"tooltip": "BCM only: the normal sample's background from DualAnoDiff Background."}),
            },
        }

    def sample(self, model, seed, steps, cfg, sampler_name, scheduler, positive_global, positive_anomaly, negative,
               latent_image, denoise, background=None):
        from .paired_sampling import paired_ksample

        return paired_ksample(model, seed, steps, cfg, sampler_name, scheduler, positive_global, positive_anomaly,
                              negative, latent_image, denoise, background)


class DualAnoDiffPairConditioning:
    CATEGORY = CATEGORY
    DESCRIPTION = "Pairs the global and anomaly prompts into one CONDITIONING for stock samplers (KSampler, SamplerCustomAdvanced...)."
    RETURN_TYPES = ("CONDITIONING",)
    OUTPUT_TOOLTIPS = ("Positive conditioning for a stock sampler running a paired latent.",)
    FUNCTION = "pair"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "positive_global": ("CONDITIONING", {"tooltip": "Prompt of the whole image."}),
            "positive_anomaly": ("CONDITIONING", {"tooltip": "Prompt of the anomaly part."}),
        }}

    def pair(self, positive_global, positive_anomaly):
        from .paired_sampling import pair_conditioning

        return (pair_conditioning(positive_global, positive_anomaly),)


class DualAnoDiffPairLatents:
    CATEGORY = CATEGORY
    DESCRIPTION = "Interleaves latents into (global, anomaly) pairs for stock samplers."
    RETURN_TYPES = ("LATENT",)
    OUTPUT_TOOLTIPS = ("2N rows [g0, a0, g1, a1, ...] for a stock sampler with a DualAnoDiff MODEL.",)
    FUNCTION = "pair"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"latent_global": ("LATENT", {"tooltip": "N latents for the global branch (or for both when no anomaly latent is given)."})},
            "optional": {"latent_anomaly": ("LATENT", {"tooltip": "N latents for the anomaly branch; without it each pair starts from the global latent."})},
        }

    def pair(self, latent_global, latent_anomaly=None):
        from .paired_sampling import pair_latents

        return (pair_latents(latent_global, latent_anomaly),)


class DualAnoDiffSplitLatents:
    CATEGORY = CATEGORY
    DESCRIPTION = "Splits a paired LATENT back into the global and the anomaly latents."
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("global", "anomaly")
    OUTPUT_TOOLTIPS = ("The N global latents.", "The N anomaly-part latents.")
    FUNCTION = "split"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT", {"tooltip": "A LATENT of interleaved pairs (even batch)."})}}

    def split(self, latent):
        from .paired_sampling import split_latents

        return split_latents(latent)


class DualAnoDiffApplyBackground:
    CATEGORY = CATEGORY
    DESCRIPTION = "BCM for stock samplers: makes the DualAnoDiff MODEL run every UNet call with the background rows (BCM's reference pass) beside the pairs."
    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("The MODEL with the background attached.",)
    FUNCTION = "apply"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "A MODEL from the DualAnoDiff loader with a BCM checkpoint."}),
            "background": ("BACKGROUND", {"tooltip": "From DualAnoDiff Background."}),
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "tooltip": "Seed of the noise added to the background at every step."}),
        }}

    def apply(self, model, background, seed):
        from .background import apply_background

        return (apply_background(model, background, seed),)
