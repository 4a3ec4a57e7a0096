"""Errors users see; every message names the file or value and what to do."""


class DualAnoDiffError(ValueError):
    """Base class for DualAnoDiff errors that are the input's fault, not a bug."""


class CheckpointError(DualAnoDiffError):
    """A checkpoint file that cannot be used as given."""
