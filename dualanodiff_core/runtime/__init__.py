"""The diffusers runtime: attention processors, the dual UNet, paired sampling, precisions."""
