"""ComfyUI node classes (thin glue over dualanodiff_core); cheap to import: no torch-heavy imports here."""
from .image_nodes import DualAnoDiffBackground, DualAnoDiffExtractMask, DualAnoDiffPasteBack, DualAnoDiffSaveDataset
from .loader_nodes import DualAnoDiffLoader, DualAnoDiffLoraPairLoader, DualAnoDiffSAMLoader, DualAnoDiffU2NetLoader
from .model_folders import register_model_folders
from .training_nodes import DualAnoDiffTrain, DualAnoDiffTrainingPairs
from .sampler_nodes import (
    DualAnoDiffApplyBackground,
    DualAnoDiffPairConditioning,
    DualAnoDiffPairedKSampler,
    DualAnoDiffPairLatents,
    DualAnoDiffSplitLatents,
)

try:
    register_model_folders()
except ImportError:  # imported outside ComfyUI (e.g. by the core test suite): nothing to register
    pass

_NODES = {
    "DualAnoDiffLoader": (DualAnoDiffLoader, "DualAnoDiff Loader"),
    "DualAnoDiffLoraPairLoader": (DualAnoDiffLoraPairLoader, "DualAnoDiff Two-LoRA Loader"),
    "DualAnoDiffPairedKSampler": (DualAnoDiffPairedKSampler, "DualAnoDiff Paired KSampler"),
    "DualAnoDiffPairConditioning": (DualAnoDiffPairConditioning, "DualAnoDiff Pair Conditioning"),
    "DualAnoDiffPairLatents": (DualAnoDiffPairLatents, "DualAnoDiff Pair Latents"),
    "DualAnoDiffSplitLatents": (DualAnoDiffSplitLatents, "DualAnoDiff Split Latents"),
    "DualAnoDiffApplyBackground": (DualAnoDiffApplyBackground, "DualAnoDiff Apply Background (BCM)"),
    "DualAnoDiffBackground": (DualAnoDiffBackground, "DualAnoDiff Background (BCM)"),
    "DualAnoDiffU2NetLoader": (DualAnoDiffU2NetLoader, "DualAnoDiff U-2-Net Loader"),
    "DualAnoDiffSAMLoader": (DualAnoDiffSAMLoader, "DualAnoDiff SAM Loader"),
    "DualAnoDiffExtractMask": (DualAnoDiffExtractMask, "DualAnoDiff Extract Mask"),
    "DualAnoDiffPasteBack": (DualAnoDiffPasteBack, "DualAnoDiff Paste Back (placement)"),
    "DualAnoDiffSaveDataset": (DualAnoDiffSaveDataset, "DualAnoDiff Save Dataset"),
    "DualAnoDiffTrainingPairs": (DualAnoDiffTrainingPairs, "DualAnoDiff Training Pairs"),
    "DualAnoDiffTrain": (DualAnoDiffTrain, "DualAnoDiff Train"),
}
NODE_CLASS_MAPPINGS = {name: cls for name, (cls, _) in _NODES.items()}
NODE_DISPLAY_NAME_MAPPINGS = {name: label for name, (_, label) in _NODES.items()}
