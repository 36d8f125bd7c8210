"""``generation``: images for every method (built by the merge stage) × prompt × seed, and contact sheets."""

from kedro.pipeline import Node, Pipeline

from .nodes import generate_images, make_contact_sheets


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(generate_images,
             inputs={"method_loras": "method_loras", "subject_lora": "subject_lora_weights",
                     "style_lora": "style_lora_weights", "joint_lora": "joint_lora_weights",
                     "subject_prompt": "subject_prompt",
                     "style_prompt": "style_prompt", "generation_params": "params:generation",
                     "methods_params": "params:merge.methods", "base_params": "params:base_model"},
             outputs=["generated_images", "generation_manifest"], name="generate_images"),
        Node(make_contact_sheets, inputs=["generated_images", "generation_manifest", "params:generation"],
             outputs="contact_sheets", name="make_contact_sheets"),
    ], tags=["generation"])
