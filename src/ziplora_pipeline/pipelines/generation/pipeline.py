"""``generation``: each method's LoRA file and cost, images for every method × prompt × seed, contact sheets."""

from kedro.pipeline import Node, Pipeline

from .nodes import build_methods, generate_images, make_contact_sheets


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(build_methods,
             inputs={"subject_lora": "subject_lora_weights", "style_lora": "style_lora_weights",
                     "joint_lora": "joint_lora_weights", "direct_merge_lora": "direct_merge_weights",
                     "ziplora_lora": "ziplora_weights", "mergers": "ziplora_mergers", "merge_log": "merge_log",
                     "joint_training_log": "joint_training_log", "generation_params": "params:generation",
                     "base_params": "params:base_model"},
             outputs=["method_loras", "method_costs"], name="build_methods"),
        Node(generate_images,
             inputs={"method_loras": "method_loras", "subject_lora": "subject_lora_weights",
                     "style_lora": "style_lora_weights", "subject_prompt": "subject_prompt",
                     "style_prompt": "style_prompt", "generation_params": "params:generation",
                     "base_params": "params:base_model"},
             outputs=["generated_images", "generation_manifest"], name="generate_images"),
        Node(make_contact_sheets, inputs=["generated_images", "generation_manifest", "params:generation"],
             outputs="contact_sheets", name="make_contact_sheets"),
    ], tags=["generation"])
