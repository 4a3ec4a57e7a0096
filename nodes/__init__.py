"""ComfyUI node classes (thin glue over dualanodiff_core)."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
