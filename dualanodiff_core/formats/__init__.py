"""File formats: our checkpoint, the reference's files, ordinary LoRA export, SD 1.5 base models offline."""
