"""Errors users see; every message names the file or value and what to do."""


class DualAnoDiffError(ValueError):
    """Base class for DualAnoDiff errors that are the input's fault, not a bug."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__module__ = "dualanodiff"


# ComfyUI titles an error with its class's module path, which for a custom node is the checkout's folder
# (``comfyui-dualanodiff.dualanodiff_core.errors``): name the pack instead.
DualAnoDiffError.__module__ = "dualanodiff"


class CheckpointError(DualAnoDiffError):
    """A checkpoint file that cannot be used as given."""
