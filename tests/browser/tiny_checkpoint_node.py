"""A test-only custom node for the browser tests' ComfyUI server: **Tiny SD 1.5 Checkpoint** gives the
MODEL, CLIP and VAE of the tests' tiny SD-1-shaped model, built as ComfyUI's own objects (what Load
Checkpoint gives for a real SD 1.5 file, which these machines do not have), so a workflow that trains
can run through the real UI. conftest installs it into the scratch server's custom_nodes."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]


class TinySD15Checkpoint:
    CATEGORY = "testing"
    DESCRIPTION = "Test only: a tiny SD-1-shaped model with random weights, in place of Load Checkpoint."
    RETURN_TYPES = ("MODEL", "CLIP", "VAE")
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    def load(self):
        for path in (_TESTS, _TESTS / "comfyui"):  # the tests' tiny models and their ComfyUI builders
            if str(path) not in sys.path:
                sys.path.insert(0, str(path))
        import harness
        from tiny_models import tiny_text_encoder, tiny_unet, tiny_vae, write_tiny_tokenizer

        tokenizer = Path(tempfile.mkdtemp(prefix="tiny-tokenizer-"))
        write_tiny_tokenizer(tokenizer)
        return (harness.comfy_model_from_diffusers(tiny_unet()),
                harness.comfy_clip_from_transformers(tiny_text_encoder(), tokenizer),
                harness.comfy_vae_from_diffusers(tiny_vae()))


NODE_CLASS_MAPPINGS = {"TinySD15Checkpoint": TinySD15Checkpoint}
NODE_DISPLAY_NAME_MAPPINGS = {"TinySD15Checkpoint": "Tiny SD 1.5 Checkpoint (test)"}


def install(custom_nodes: Path) -> Path:
    """Put a package importing this module into ``custom_nodes``."""
    target = Path(custom_nodes) / "dualanodiff_test_tiny_checkpoint"
    target.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve().parent
    (target / "__init__.py").write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(here)!r})\n"
        "from tiny_checkpoint_node import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402\n",
        encoding="utf-8")
    return target
