"""Merging two LoRAs: ZipLoRA (Eq. 2-3) and the compared merge methods, found through a registry."""
