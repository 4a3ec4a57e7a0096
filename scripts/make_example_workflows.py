"""Write the example workflows: ComfyUI UI format (version 0.4) in example_workflows/, their API-format
twins in tests/comfyui/workflow_api/ (the tests check that both agree with the installed node
definitions). The same-name .jpg thumbnails are real screenshots made by scripts/make_thumbnails.py
(run it after changing a workflow); only a workflow without one gets a PIL-drawn placeholder here.

    .venv/bin/python scripts/make_example_workflows.py
"""
from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UI_DIR = REPO / "example_workflows"
API_DIR = REPO / "tests" / "comfyui" / "workflow_api"

# Per node type: link inputs, widget names in the order ComfyUI's frontend stores them (a "+" entry is
# a UI-only value: the seed's control_after_generate, LoadImage's upload button), outputs.
NODE_SPECS = {
    "CheckpointLoaderSimple": ([], ["ckpt_name"], [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
    "LoraLoader": ([("model", "MODEL"), ("clip", "CLIP")], ["lora_name", "strength_model", "strength_clip"],
                   [("MODEL", "MODEL"), ("CLIP", "CLIP")]),
    "CLIPTextEncode": ([("clip", "CLIP")], ["text"], [("CONDITIONING", "CONDITIONING")]),
    "EmptyLatentImage": ([], ["width", "height", "batch_size"], [("LATENT", "LATENT")]),
    "VAEDecode": ([("samples", "LATENT"), ("vae", "VAE")], [], [("IMAGE", "IMAGE")]),
    "PreviewImage": ([("images", "IMAGE")], [], []),
    "LoadImage": ([], ["image", "+upload"], [("IMAGE", "IMAGE"), ("MASK", "MASK")]),
    "ControlNetLoader": ([], ["control_net_name"], [("CONTROL_NET", "CONTROL_NET")]),
    "ControlNetApply": ([("conditioning", "CONDITIONING"), ("control_net", "CONTROL_NET"), ("image", "IMAGE")],
                        ["strength"], [("CONDITIONING", "CONDITIONING")]),
    "DualAnoDiffLoader": ([("model", "MODEL"), ("clip", "CLIP")],
                          ["checkpoint", "strength_global", "strength_anomaly", "strength_saim", "strength_clip"],
                          [("MODEL", "MODEL"), ("CLIP", "CLIP")]),
    "DualAnoDiffPairedKSampler": (
        [("model", "MODEL"), ("positive_global", "CONDITIONING"), ("positive_anomaly", "CONDITIONING"),
         ("negative", "CONDITIONING"), ("latent_image", "LATENT"), ("background", "BACKGROUND")],
        ["seed", "+control_after_generate", "steps", "cfg", "sampler_name", "scheduler", "denoise"],
        [("global", "LATENT"), ("anomaly", "LATENT")]),
    "DualAnoDiffU2NetLoader": ([], ["model_name"], [("U2NET_MODEL", "U2NET_MODEL")]),
    "DualAnoDiffBackground": ([("image", "IMAGE"), ("vae", "VAE"), ("mask", "MASK"), ("u2net", "U2NET_MODEL")], [],
                              [("background", "BACKGROUND"), ("preview", "IMAGE")]),
    "DualAnoDiffExtractMask": ([("anomaly_image", "IMAGE"), ("u2net", "U2NET_MODEL"), ("sam", "SAM_MODEL")],
                               ["method", "threshold", "grow", "blur"],
                               [("mask", "MASK"), ("soft_mask", "MASK"), ("preview", "IMAGE")]),
    "VAEEncode": ([("pixels", "IMAGE"), ("vae", "VAE")], [], [("LATENT", "LATENT")]),
    "SetLatentNoiseMask": ([("samples", "LATENT"), ("mask", "MASK")], [], [("LATENT", "LATENT")]),
    "RepeatLatentBatch": ([("samples", "LATENT")], ["amount"], [("LATENT", "LATENT")]),
    "DualAnoDiffPasteBack": ([("generated", "IMAGE"), ("image", "IMAGE"), ("region", "MASK"), ("anomaly_mask", "MASK")],
                             ["feather"], [("image", "IMAGE"), ("mask", "MASK")]),
    "DualAnoDiffSaveDataset": ([("images", "IMAGE"), ("masks", "MASK"), ("anomaly_images", "IMAGE")],
                               ["object_name", "defect_name", "layout", "folder"], []),
    "DualAnoDiffTrainingPairs": ([("images", "IMAGE"), ("masks", "MASK")], ["folder", "defect", "split"],
                                 [("pairs", "DUALANODIFF_PAIRS"), ("preview", "IMAGE")]),
    "DualAnoDiffTrain": (
        [("model", "MODEL"), ("clip", "CLIP"), ("vae", "VAE"), ("pairs", "DUALANODIFF_PAIRS")],
        ["name", "steps", "learning_rate", "rank", "pairs_per_step", "resolution", "seed", "+control_fixed",
         "text_encoder_lora", "saim", "prompt_global", "prompt_anomaly", "gradient_checkpointing", "precision",
         "save_precision", "overwrite",
         "flip", "resample", "batches", "weight_decay", "max_grad_norm"],
        [("model", "MODEL"), ("clip", "CLIP"), ("loss_curve", "IMAGE"), ("checkpoint", "STRING")]),
}
# a training seed stays fixed: "randomize" would train a new model at every queue
UI_ONLY_VALUES = {"+control_after_generate": "randomize", "+control_fixed": "fixed", "+upload": "image"}

SD15 = "v1-5-pruned-emaonly.safetensors"
CHECKPOINT = "bottle_broken_large.safetensors"
CHECKPOINT_BCM = "bottle_broken_large_bcm.safetensors"


def _sampler(model, pos_g, pos_a, neg, latent, cfg=2.5, background=None):
    inputs = {"model": model, "positive_global": pos_g, "positive_anomaly": pos_a, "negative": neg,
              "latent_image": latent, "seed": 42, "steps": 50, "cfg": cfg, "sampler_name": "euler",
              "scheduler": "normal", "denoise": 1.0}
    if background:
        inputs["background"] = background
    return ("DualAnoDiffPairedKSampler", inputs)


def _common(checkpoint, model_src, clip_src, cfg=2.5, background=None) -> dict:
    """Loader, prompts, paired sampling, decoding, masks and the dataset writer."""
    return {
        10: ("DualAnoDiffLoader", {"model": model_src, "clip": clip_src, "checkpoint": checkpoint,
                                   "strength_global": 1.0, "strength_anomaly": 1.0, "strength_saim": 1.0,
                                   "strength_clip": 1.0}),
        11: ("CLIPTextEncode", {"clip": (10, 1), "text": "a vfx with sks"}),
        12: ("CLIPTextEncode", {"clip": (10, 1), "text": "sks"}),
        13: ("CLIPTextEncode", {"clip": (10, 1), "text": ""}),
        14: ("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 4}),
        20: _sampler((10, 0), (11, 0), (12, 0), (13, 0), (14, 0), cfg=cfg, background=background),
        21: ("VAEDecode", {"samples": (20, 0), "vae": (1, 2)}),
        22: ("VAEDecode", {"samples": (20, 1), "vae": (1, 2)}),
        23: ("DualAnoDiffExtractMask", {"anomaly_image": (22, 0), "method": "threshold", "threshold": 0.0,
                                        "grow": 0, "blur": 0.0}),
        24: ("PreviewImage", {"images": (23, 2)}),
        25: ("DualAnoDiffSaveDataset", {"images": (21, 0), "masks": (23, 0), "anomaly_images": (22, 0),
                                        "object_name": "bottle", "defect_name": "broken_large", "layout": "both",
                                        "folder": "dualanodiff"}),
    }


def workflows() -> dict:
    base = {1: ("CheckpointLoaderSimple", {"ckpt_name": SD15})}
    basic = {**base, **_common(CHECKPOINT, (1, 0), (1, 1))}
    bcm = {**base, **_common(CHECKPOINT_BCM, (1, 0), (1, 1), cfg=2.0, background=(32, 0)),
           30: ("LoadImage", {"image": "bottle_good.png"}),
           31: ("DualAnoDiffU2NetLoader", {"model_name": "u2net.pth"}),
           32: ("DualAnoDiffBackground", {"image": (30, 0), "vae": (1, 2), "u2net": (31, 0)}),
           33: ("PreviewImage", {"images": (32, 1)})}
    mixed = {**base, **_common(CHECKPOINT, (2, 0), (2, 1)),
             2: ("LoraLoader", {"model": (1, 0), "clip": (1, 1), "lora_name": "extra_detail.safetensors",
                                "strength_model": 0.6, "strength_clip": 0.6}),
             40: ("ControlNetLoader", {"control_net_name": "control_v11p_sd15_canny.pth"}),
             41: ("LoadImage", {"image": "bottle_edges.png"}),
             42: ("ControlNetApply", {"conditioning": (11, 0), "control_net": (40, 0), "image": (41, 0), "strength": 0.8})}
    mixed[20] = _sampler((10, 0), (42, 0), (12, 0), (13, 0), (14, 0))
    # placement: your normal image with the region painted in Load Image's mask editor (its MASK output)
    place = {**base, **_common(CHECKPOINT, (1, 0), (1, 1)),
             50: ("LoadImage", {"image": "bottle_good_region.png"}),
             51: ("VAEEncode", {"pixels": (50, 0), "vae": (1, 2)}),
             52: ("SetLatentNoiseMask", {"samples": (51, 0), "mask": (50, 1)}),
             53: ("RepeatLatentBatch", {"samples": (52, 0), "amount": 4}),
             54: ("DualAnoDiffPasteBack", {"generated": (21, 0), "image": (50, 0), "region": (50, 1),
                                           "anomaly_mask": (23, 0), "feather": 3}),
             55: ("PreviewImage", {"images": (54, 0)})}
    del place[14]
    place[20] = _sampler((10, 0), (11, 0), (12, 0), (13, 0), (53, 0))
    place[25] = ("DualAnoDiffSaveDataset", {"images": (54, 0), "masks": (54, 1), "anomaly_images": (22, 0),
                                            "object_name": "bottle", "defect_name": "broken_large", "layout": "both",
                                            "folder": "dualanodiff_placed"})
    # training in the graph: your defect photos (images/ + masks/ under ComfyUI's input folder) -> Train ->
    # the trained model straight into the paired sampler
    train = {**base, **_common(CHECKPOINT, (1, 0), (1, 1)),
             60: ("DualAnoDiffTrainingPairs", {"folder": "my_defects", "defect": "", "split": "floor"}),
             61: ("DualAnoDiffTrain", {"model": (1, 0), "clip": (1, 1), "vae": (1, 2), "pairs": (60, 0),
                                       "name": "my_defect", "steps": 5000, "learning_rate": 2e-5, "rank": 32,
                                       "pairs_per_step": 4, "resolution": 512, "seed": 0, "text_encoder_lora": True,
                                       "saim": True, "prompt_global": "a vfx with sks", "prompt_anomaly": "sks",
                                       "gradient_checkpointing": False, "precision": "auto", "save_precision": "fp16", "overwrite": False,
                                       "flip": "reference", "resample": "bilinear", "batches": "random",
                                       "weight_decay": 0.01, "max_grad_norm": 1.0}),
             62: ("PreviewImage", {"images": (61, 2)}),
             63: ("PreviewImage", {"images": (60, 1)})}
    del train[10]
    for prompt in (11, 12, 13):
        train[prompt] = (train[prompt][0], {**train[prompt][1], "clip": (61, 1)})
    train[20] = _sampler((61, 0), (11, 0), (12, 0), (13, 0), (14, 0))
    train[25] = ("DualAnoDiffSaveDataset", {"images": (21, 0), "masks": (23, 0), "anomaly_images": (22, 0),
                                            "object_name": "my_part", "defect_name": "my_defect", "layout": "both",
                                            "folder": "dualanodiff"})
    return {"dualanodiff_basic": basic, "dualanodiff_bcm": bcm, "dualanodiff_controlnet_lora": mixed,
            "dualanodiff_place_on_image": place, "dualanodiff_train_and_generate": train}


def to_api(graph: dict) -> dict:
    return {str(i): {"class_type": cls, "inputs": {k: [str(v[0]), v[1]] if isinstance(v, tuple) else v
                                                   for k, v in inputs.items()}}
            for i, (cls, inputs) in sorted(graph.items())}


def _layout(graph: dict) -> dict:
    """Left-to-right columns by dependency depth."""
    depth = {}

    def d(i):
        if i not in depth:
            sources = [v[0] for v in graph[i][1].values() if isinstance(v, tuple)]
            depth[i] = 1 + max((d(s) for s in sources), default=-1)
        return depth[i]

    tops: dict = {}
    pos = {}
    for i in sorted(graph):
        col = d(i)
        top = tops.get(col, 40)
        tops[col] = top + _height(graph[i][0]) + 40
        pos[i] = [40 + 360 * col, top]
    return pos


def _height(cls: str) -> int:
    link_inputs, widgets, _ = NODE_SPECS[cls]
    return 60 + 26 * (len(link_inputs) + len(widgets))


def to_ui(graph: dict) -> dict:
    pos = _layout(graph)
    links, nodes = [], []
    out_links: dict = {}
    for target in sorted(graph):
        cls, inputs = graph[target]
        link_inputs = NODE_SPECS[cls][0]
        for slot, (name, _type) in enumerate(link_inputs):
            src = inputs.get(name)
            if isinstance(src, tuple):
                link_id = len(links) + 1
                src_type = NODE_SPECS[graph[src[0]][0]][2][src[1]][1]
                links.append([link_id, src[0], src[1], target, slot, src_type])
                out_links.setdefault((src[0], src[1]), []).append(link_id)
    link_of = {(lk[3], lk[4]): lk[0] for lk in links}
    for order, i in enumerate(sorted(graph)):
        cls, inputs = graph[i]
        link_inputs, widgets, outputs = NODE_SPECS[cls]
        values = [UI_ONLY_VALUES[w] if w.startswith("+") else inputs[w] for w in widgets]
        nodes.append({
            "id": i, "type": cls, "pos": pos[i], "size": [320, _height(cls)],
            "flags": {}, "order": order, "mode": 0,
            "inputs": [{"name": n, "type": t, "link": link_of.get((i, s))} for s, (n, t) in enumerate(link_inputs)],
            "outputs": [{"name": n, "type": t, "links": out_links.get((i, s), []), "slot_index": s}
                        for s, (n, t) in enumerate(outputs)],
            "properties": {"Node name for S&R": cls},
            "widgets_values": values,
        })
    return {"last_node_id": max(graph), "last_link_id": len(links), "nodes": nodes, "links": links,
            "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4}


def thumbnail(ui: dict, path: Path, title: str) -> None:
    from PIL import Image, ImageDraw

    xs = [n["pos"][0] + n["size"][0] for n in ui["nodes"]]
    ys = [n["pos"][1] + n["size"][1] for n in ui["nodes"]]
    scale = min(640 / (max(xs) + 40), 400 / (max(ys) + 40))
    img = Image.new("RGB", (640, 440), (32, 32, 36))
    draw = ImageDraw.Draw(img)
    draw.text((12, 10), title, fill=(230, 230, 230))
    nodes = {n["id"]: n for n in ui["nodes"]}

    def box(n):
        x, y = n["pos"]
        return (x * scale, 40 + y * scale, (x + n["size"][0]) * scale, 40 + (y + n["size"][1]) * scale)

    for _, src, _, dst, _, _ in ui["links"]:
        a, b = box(nodes[src]), box(nodes[dst])
        draw.line([(a[2], (a[1] + a[3]) / 2), (b[0], (b[1] + b[3]) / 2)], fill=(150, 150, 90), width=2)
    for n in ui["nodes"]:
        colour = (70, 60, 110) if n["type"].startswith("DualAnoDiff") else (60, 64, 72)
        draw.rectangle(box(n), fill=colour, outline=(200, 200, 200))
        draw.text((box(n)[0] + 4, box(n)[1] + 4), n["type"].replace("DualAnoDiff", "DAD ")[:22], fill=(240, 240, 240))
    img.save(path, "JPEG", quality=88)


TITLES = {
    "dualanodiff_basic": "DualAnoDiff: pairs -> masks -> dataset",
    "dualanodiff_bcm": "DualAnoDiff BCM: background from a normal sample",
    "dualanodiff_controlnet_lora": "DualAnoDiff with LoRA + ControlNet",
    "dualanodiff_place_on_image": "DualAnoDiff: defects on your own image",
    "dualanodiff_train_and_generate": "DualAnoDiff: train on your defects, then generate",
}


def main() -> None:
    UI_DIR.mkdir(exist_ok=True)
    API_DIR.mkdir(exist_ok=True)
    for name, graph in workflows().items():
        ui = to_ui(graph)
        (UI_DIR / f"{name}.json").write_text(json.dumps(ui, indent=1) + "\n", encoding="utf-8")
        (API_DIR / f"{name}.json").write_text(json.dumps(to_api(graph), indent=1) + "\n", encoding="utf-8")
        if not (UI_DIR / f"{name}.jpg").is_file():  # real ones come from scripts/make_thumbnails.py
            thumbnail(ui, UI_DIR / f"{name}.jpg", TITLES[name])
        print(f"wrote {name}")


if __name__ == "__main__":
    main()
