"""ComfyUI entry point of the DualAnoDiff node pack.

Kept cheap to import: node classes import torch-heavy code only when they run.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
