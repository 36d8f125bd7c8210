"""``subject_lora``: DreamBooth LoRA on the subject images (the shared template, namespace ``subject``)."""

from kedro.pipeline import Pipeline

from ...templates.lora_training import create_lora_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return create_lora_pipeline("subject")
