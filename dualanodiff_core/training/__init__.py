"""Few-shot training: data, options, the loop, resumable checkpoints."""
