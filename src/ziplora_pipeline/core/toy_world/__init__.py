"""The toy world: a renderer, judges and pretraining that make the miniature SDXL draw real pictures."""
