"""``joint_lora``: one LoRA on the subject photos and the style image together (ZipLoRA's second
baseline, "joint training"), from the shared template under namespace ``joint``."""

from kedro.pipeline import Pipeline

from ...templates.lora_training import create_lora_pipeline


def create_pipeline(**kwargs) -> Pipeline:
    return create_lora_pipeline("joint")
