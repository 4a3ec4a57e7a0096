"""DualAnoDiff's branch math: per-branch LoRA, SAIM, BCM fusion, the trainable layers and the one attention step."""
