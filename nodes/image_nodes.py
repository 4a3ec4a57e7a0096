"""Image nodes: BCM background, mask extraction, dataset writer."""
from __future__ import annotations

CATEGORY = "DualAnoDiff"


class DualAnoDiffBackground:
    CATEGORY = CATEGORY
    DESCRIPTION = ("BCM: turns a normal (defect-free) sample into the BACKGROUND the BCM variant conditions on: the "
                   "object blacked out (from a MASK, or U-2-Net saliency), VAE-encoded without latent scaling.")
    RETURN_TYPES = ("BACKGROUND", "IMAGE")
    RETURN_NAMES = ("background", "preview")
    OUTPUT_TOOLTIPS = ("For the Paired KSampler's background input (or Apply Background).", "The background pixels.")
    FUNCTION = "make"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "A normal sample of the object at the generation size (1 image, or one per pair)."}),
                "vae": ("VAE", {"tooltip": "The VAE of the SD 1.5 checkpoint."}),
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Object mask (1 = object). Without it U-2-Net finds the object."}),
                "u2net": ("U2NET_MODEL", {"tooltip": "U-2-Net from DualAnoDiff U-2-Net Loader; used when no mask is given."}),
            },
        }

    def make(self, image, vae, mask=None, u2net=None):
        from .background import encode_background

        background, pixels = encode_background(vae, image, mask, u2net)
        return (background, pixels)


class DualAnoDiffExtractMask:
    CATEGORY = CATEGORY
    DESCRIPTION = "Anomaly mask from a generated anomaly-part image (the defect on mid-grey)."
    RETURN_TYPES = ("MASK", "MASK", "IMAGE")
    RETURN_NAMES = ("mask", "soft_mask", "preview")
    OUTPUT_TOOLTIPS = ("Binary mask (0/1), grown by 'grow'.", "Graded mask, softened by 'blur'.",
                       "The image with the mask tinted red.")
    FUNCTION = "extract"

    @classmethod
    def INPUT_TYPES(cls):
        from ..dualanodiff_core.masks.methods import MASK_METHODS

        return {
            "required": {
                "anomaly_image": ("IMAGE", {"tooltip": "Decoded anomaly-part images (the Paired KSampler's 'anomaly' output)."}),
                "method": (list(MASK_METHODS), {"default": "threshold", "tooltip": " ".join(
                    f"{m.name}: {m.summary}" + (f" (needs the {', '.join(m.needs)} input)." if m.needs else ".")
                    for m in MASK_METHODS.values())}),
                "threshold": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 0.99, "step": 0.01, "tooltip": "0 = the method's default (0.1 grey distance for threshold, 0.5 saliency for u2net)."}),
                "grow": ("INT", {"default": 0, "min": -64, "max": 64, "tooltip": "Pixels to grow (negative: shrink) the mask."}),
                "blur": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 64.0, "step": 0.5, "tooltip": "Blur radius in pixels of the soft mask (the binary mask is never blurred)."}),
            },
            "optional": {
                "u2net": ("U2NET_MODEL", {"tooltip": "For method u2net (and as sam's coarse mask)."}),
                "sam": ("SAM_MODEL", {"tooltip": "For method sam, from DualAnoDiff SAM Loader."}),
            },
        }

    def extract(self, anomaly_image, method, threshold, grow, blur, u2net=None, sam=None):
        from .mask_extraction import extract

        return extract(anomaly_image, method, threshold, grow, blur, u2net, sam)


class DualAnoDiffPasteBack:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Placement on your own images: pastes the generated global image back onto your normal image "
                   "inside the region (edge feathered inside it), so every pixel outside the region is your "
                   "image's own, and cuts the anomaly mask to the region.")
    RETURN_TYPES = ("IMAGE", "MASK")
    RETURN_NAMES = ("image", "mask")
    OUTPUT_TOOLTIPS = ("Your image with the defect inside the region; outside it unchanged, pixel for pixel.",
                       "The anomaly mask inside the region (0 outside it).")
    FUNCTION = "paste"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generated": ("IMAGE", {"tooltip": "The decoded global images of the Paired KSampler (sampled from "
                                                   "your image's latent with Set Latent Noise Mask)."}),
                "image": ("IMAGE", {"tooltip": "Your normal images (the ones VAE-encoded for the sampler), same size."}),
                "region": ("MASK", {"tooltip": "Where the defect may go (1 = allowed): the mask given to Set Latent "
                                               "Noise Mask. One mask, or one per image."}),
                "anomaly_mask": ("MASK", {"tooltip": "The mask from DualAnoDiff Extract Mask."}),
                "feather": ("INT", {"default": 3, "min": 0, "max": 64, "tooltip": "Pixels inside the region's "
                                    "edge over which the generated image fades into yours (0: a hard edge)."}),
            },
        }

    def paste(self, generated, image, region, anomaly_mask, feather):
        from .placement_nodes import paste_back_batch

        return paste_back_batch(generated, image, region, anomaly_mask, feather)


class DualAnoDiffSaveDataset:
    CATEGORY = CATEGORY
    DESCRIPTION = ("Saves generated pairs as a dataset under ComfyUI's output folder: the pairs layout "
                   "<object>/<defect>/{image,fg,mask}/<i>.png and/or MVTec test/ + ground_truth/, never overwriting, "
                   "with a manifest.jsonl; optionally also as COCO instance segmentation and/or YOLO segmentation.")
    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"

    @classmethod
    def INPUT_TYPES(cls):
        from .dataset_io import FORMAT_CHOICES

        return {"required": {
            "images": ("IMAGE", {"tooltip": "The global (whole) images."}),
            "masks": ("MASK", {"tooltip": "Their anomaly masks (binary), e.g. from Extract Mask."}),
            "anomaly_images": ("IMAGE", {"tooltip": "The anomaly-part images."}),
            "object_name": ("STRING", {"default": "object", "tooltip": "Object category, e.g. bottle (letters, digits, _ - .)."}),
            "defect_name": ("STRING", {"default": "defect", "tooltip": "Defect type, e.g. broken_large (letters, digits, _ - .)."}),
            "layout": (["pairs", "mvtec", "both"], {"default": "both", "tooltip": "pairs: <defect>/image|fg|mask/<i>.png; mvtec: test/<defect>/<i>.png + ground_truth/<defect>/<i>_mask.png; both."}),
            "folder": ("STRING", {"default": "dualanodiff", "tooltip": "Sub-folder of ComfyUI's output folder that holds the dataset."}),
        }, "optional": {
            "format": (list(FORMAT_CHOICES), {"default": "none", "tooltip": "Also export every "
                       "sample of the folder (earlier ones too) for detector training: coco = <folder>/coco/ (COCO "
                       "instance segmentation, one RLE mask per defect region, annotations/instances_train.json and "
                       "_val.json), yolo = <folder>/yolo/ (Ultralytics segmentation polygons, data.yaml); 10 % of the "
                       "images drawn for validation. none: only the layout above."}),
        }}

    def save(self, images, masks, anomaly_images, object_name, defect_name, layout, folder, format="none"):
        import os

        import folder_paths

        from .dataset_io import save_dataset

        output_dir = folder_paths.get_output_directory()
        records, exported = save_dataset(output_dir, folder, object_name, defect_name, layout, images, masks,
                                         anomaly_images, format)
        root = os.path.relpath(os.path.join(output_dir, folder), output_dir)
        previews = []
        for r in records:
            rel = (r.get("pairs") or r["mvtec"])["image"]
            sub, name = os.path.split(os.path.join(root, rel))
            previews.append({"filename": name, "subfolder": sub, "type": "output"})
        text = [f"{len(records)} samples saved to {os.path.join(output_dir, folder)}"] + exported
        return {"ui": {"images": previews, "text": text}}
