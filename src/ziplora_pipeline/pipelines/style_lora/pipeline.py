"""``style_lora``: DreamBooth LoRA on the style image (the shared template, namespace ``style``)."""

from kedro.pipeline import Pipeline

from ...templates.lora_training import create_lora_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return create_lora_pipeline("style")
