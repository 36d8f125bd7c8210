"""The method: miniature SDXL, DreamBooth LoRA training, ZipLoRA merging.

Imports torch, diffusers, peft and transformers only (never kedro), so every function here is
usable from a notebook or another orchestrator.
"""
