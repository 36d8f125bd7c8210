"""LoRA files: I/O and format checks, per-layer factors, training, resumable checkpoints."""
