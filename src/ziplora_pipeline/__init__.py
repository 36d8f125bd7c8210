"""ziplora_pipeline: any subject in any style, with ZipLoRA on SDXL."""

__version__ = "0.1.0"
