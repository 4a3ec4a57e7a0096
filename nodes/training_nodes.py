"""Training nodes: few-shot pairs in, a trained DualAnoDiff model out, without leaving the graph."""
from __future__ import annotations

CATEGORY = "DualAnoDiff/training"


class DualAnoDiffTrainingPairs:
    CATEGORY = CATEGORY
    DESCRIPTION = ("The few real defect images and their masks to train on: an MVTec-style category folder with a "
                   "defect type, a folder holding images/ and masks/, or IMAGE + MASK batches (Load Image with the "
                   "defect painted in the mask editor). Split, flips and resizing follow `dualanodiff train`.")
    RETURN_TYPES = ("DUALANODIFF_PAIRS", "IMAGE")
    RETURN_NAMES = ("pairs", "preview")
    OUTPUT_TOOLTIPS = ("For DualAnoDiff Train.", "The pairs' images with their masks tinted red (one per pair, at "
                                                 "the first pair's size).")
    FUNCTION = "collect"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "folder": ("STRING", {"default": "", "tooltip": "A folder under ComfyUI's input folder (or an absolute "
                                  "path): an MVTec AD category (test/<defect>, ground_truth/<defect>) or a folder with "
                                  "images/ and masks/ (masks named like the images, x.png or x_mask.png). Leave empty "
                                  "when the images and masks inputs are connected."}),
            "defect": ("STRING", {"default": "", "tooltip": "The defect type of an MVTec category folder, e.g. "
                                  "broken_large; empty for an images/ + masks/ folder."}),
            "split": (["floor", "reference"], {"default": "floor", "tooltip": "MVTec few-shot split: floor = the "
                      "first third of the sorted defect images (disjoint from evaluation), reference = the paper "
                      "code's rounding."}),
        }, "optional": {
            "images": ("IMAGE", {"tooltip": "Defect images (a batch); their masks come from the masks input."}),
            "masks": ("MASK", {"tooltip": "One mask per image, white (1) on the defect: Load Image's MASK output "
                               "after painting the defect in the mask editor."}),
        }}

    def collect(self, folder, defect, split, images=None, masks=None):
        from .training_pairs import pairs_from_folder, pairs_from_tensors, preview

        if images is not None or masks is not None:
            if folder.strip():
                raise ValueError("give the pairs either as a folder or as the images and masks inputs, not both: "
                                 "clear 'folder' or disconnect images/masks")
            pairs = pairs_from_tensors(images, masks)
        else:
            pairs = pairs_from_folder(folder, defect, split)
        return (pairs, preview(pairs))


def _choice(options: tuple, default: str, tooltip: str) -> tuple:
    return (list(options), {"default": default, "tooltip": tooltip})


class DualAnoDiffTrain:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Trains a DualAnoDiff model (both branch LoRAs, SAIM, the text-encoder LoRA; BCM with object masks or U-2-Net) on the few-shot pairs, "
                   "on this MODEL, CLIP and VAE, with `dualanodiff train`'s steps: the same pairs, seed and settings give "
                   "the same weights. Saves models/dualanodiff/<name>.safetensors and outputs the model ready for the "
                   "Paired KSampler. Cancel stops at a step boundary; queue again to continue.")
    RETURN_TYPES = ("MODEL", "CLIP", "IMAGE", "STRING")
    RETURN_NAMES = ("model", "clip", "loss_curve", "checkpoint")
    OUTPUT_TOOLTIPS = ("The trained dual model (as the DualAnoDiff Loader gives it) for the Paired KSampler.",
                       "The CLIP with the trained text-encoder LoRA; encode the global and anomaly prompts with it.",
                       "The training loss per step (grey) and its running mean (blue).",
                       "The checkpoint's file name in models/dualanodiff (for the Loader in other graphs).")
    FUNCTION = "train"

    @classmethod
    def INPUT_TYPES(cls):
        from ..dualanodiff_core.training.data import FLIP_RULES, RESAMPLING
        from ..dualanodiff_core.training.train_args import BATCHES, TrainConfig

        d = TrainConfig(base_model=None, output_dir=None)
        return {"required": {
            "model": ("MODEL", {"tooltip": "An SD 1.5 MODEL from Load Checkpoint (a LoRA loaded before trains along)."}),
            "clip": ("CLIP", {"tooltip": "The CLIP of the same checkpoint."}),
            "vae": ("VAE", {"tooltip": "The VAE of the same checkpoint."}),
            "pairs": ("DUALANODIFF_PAIRS", {"tooltip": "From DualAnoDiff Training Pairs."}),
            "name": ("STRING", {"default": "my_defect", "tooltip": "File name of the checkpoint in models/dualanodiff "
                                "(letters, digits, _ - .; no folders)."}),
            "steps": ("INT", {"default": d.steps, "min": 1, "max": 100000, "tooltip": "Training steps (the paper: 5000; "
                              "a few hundred show the defect on small data)."}),
            "learning_rate": ("FLOAT", {"default": d.lr, "min": 1e-7, "max": 1.0, "step": 1e-6, "round": False,
                                        "tooltip": "AdamW learning rate, constant (the paper: 2e-5)."}),
            "rank": ("INT", {"default": d.rank, "min": 1, "max": 256, "tooltip": "LoRA rank of both branches and the "
                             "text encoder (the paper: 32)."}),
            "pairs_per_step": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": "Pairs per step (the paper: 4). "
                                       "Memory grows with it: 1 or 2 on an 8 GB card at 512 px."}),
            "resolution": ("INT", {"default": d.resolution, "min": 64, "max": 2048, "step": 8, "tooltip": "Training size "
                                   "in pixels (images are resized to cover it and centre-cropped)."}),
            "seed": ("INT", {"default": d.seed, "min": 0, "max": 2 ** 31 - 1, "tooltip": "Fixes the initial weights and "
                             "every step's pairs, flips, timesteps and noise."}),
            "text_encoder_lora": ("BOOLEAN", {"default": True, "tooltip": "Also train the shared text-encoder LoRA "
                                              "(the paper does)."}),
            "saim": ("BOOLEAN", {"default": True, "tooltip": "Train SAIM, the cross-branch attention (off only for an "
                                 "ablation: the two images of a pair then do not line up)."}),
            "prompt_global": ("STRING", {"default": d.prompt_global, "tooltip": "Prompt of the global branch (the whole "
                                         "anomalous object); plain words, no (weights)."}),
            "prompt_anomaly": ("STRING", {"default": d.prompt_anomaly, "tooltip": "Prompt of the anomaly branch (the "
                                          "defect alone)."}),
            "gradient_checkpointing": ("BOOLEAN", {"default": False, "tooltip": "Recompute the UNet's activations "
                                           "in the backward pass instead of keeping them: less memory, slower "
                                           "steps, the same weights."}),
            "precision": _choice(("auto", "fp32", "bf16", "fp16"), "auto", "Compute precision: auto = the dtype "
                                 "ComfyUI loaded the model in (fp16/bf16 run under autocast; the trained weights stay fp32)."),
            "save_precision": _choice(("fp16", "bf16", "fp32"), d.save_dtype, "Precision of the saved checkpoint."),
            "overwrite": ("BOOLEAN", {"default": False, "tooltip": "Replace an existing checkpoint of this name made with "
                                      "other settings (the same settings reuse it without training)."}),
        }, "optional": {
            "flip": _choice(tuple(FLIP_RULES), d.flip, "Shared random flips: reference = all categories but cable, "
                            "orientation = also not metal_nut and transistor, hv = always, none = never."),
            "resample": _choice(RESAMPLING, d.resample, "Resizing: bilinear (image and mask, mask kept where >= 0.5) or "
                                "bicubic image with nearest-neighbour mask."),
            "batches": _choice(BATCHES, d.batches, "random = each step draws pairs with replacement; epoch = shuffled "
                               "passes over the pairs."),
            "weight_decay": ("FLOAT", {"default": d.weight_decay, "min": 0.0, "max": 1.0, "step": 0.001,
                                       "tooltip": "AdamW weight decay."}),
            "max_grad_norm": ("FLOAT", {"default": d.max_grad_norm, "min": 0.0, "max": 100.0, "step": 0.1,
                                        "tooltip": "Gradient clipping norm (0 = off)."}),
            "bcm_object_masks": ("MASK", {"tooltip": "Also train BCM (the background module): the object's mask (1 "
                                          "on the object) for each pair, in the pairs' order and at their images' "
                                          "size. The object is cut out of each training image to make its background."}),
            "bcm_u2net": ("U2NET_MODEL", {"tooltip": "Also train BCM, finding each pair's object with U-2-Net (from "
                                          "DualAnoDiff U-2-Net Loader) when no bcm_object_masks are given."}),
        }}

    def train(self, model, clip, vae, pairs, name, steps, learning_rate, rank, pairs_per_step, resolution, seed,
              text_encoder_lora, saim, prompt_global, prompt_anomaly, gradient_checkpointing, precision, save_precision,
              overwrite, flip="reference", resample="bilinear", batches="random", weight_decay=0.01, max_grad_norm=1.0,
              bcm_object_masks=None, bcm_u2net=None):
        from .training_run import train_node

        return train_node(model, clip, vae, pairs, name=name, steps=steps, lr=learning_rate, rank=rank,
                          pairs_per_step=pairs_per_step, resolution=resolution, seed=seed,
                          no_text_encoder_lora=not text_encoder_lora, no_saim=not saim, prompt_global=prompt_global,
                          prompt_anomaly=prompt_anomaly, gradient_checkpointing=gradient_checkpointing,
                          precision=precision, save_dtype=save_precision,
                          overwrite=overwrite, flip=flip, resample=resample, batches=batches,
                          weight_decay=weight_decay, max_grad_norm=max_grad_norm, bcm_object_masks=bcm_object_masks,
                          bcm_u2net=bcm_u2net)
