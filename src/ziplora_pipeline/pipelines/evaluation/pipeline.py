"""``evaluation``: output fidelity and image metrics per method, one table, and the report."""

from kedro.pipeline import Node, Pipeline

from .nodes import image_metrics, metrics_table, output_fidelity, write_report


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(output_fidelity,
             inputs={"method_loras": "method_loras", "subject_lora": "subject_lora_weights",
                     "style_lora": "style_lora_weights", "joint_lora": "joint_lora_weights", "subject_images": "subject_images",
                     "subject_prompt": "subject_prompt", "style_images": "style_images", "style_prompt": "style_prompt",
                     "methods_params": "params:merge.methods", "evaluation_params": "params:evaluation",
                     "base_params": "params:base_model"},
             outputs="output_fidelity", name="output_fidelity"),
        Node(image_metrics,
             inputs=["generated_images", "generation_manifest", "subject_images", "style_images", "subject_prompt",
                     "style_prompt", "params:evaluation", "params:base_model"],
             outputs="image_metrics", name="image_metrics"),
        Node(metrics_table, inputs=["output_fidelity", "image_metrics", "method_costs", "subject_lora_weights",
                                    "style_lora_weights", "joint_lora_weights", "joint_training_log",
                                    "params:merge.methods"],
             outputs=["metrics_table", "metrics_markdown"], name="metrics_table"),
        Node(write_report,
             inputs=["metrics_table", "contact_sheets", "image_metrics", "generation_manifest", "merge_analysis",
                     "params:evaluation", "params:base_model"],
             outputs="report", name="write_report"),
    ], tags=["evaluation"])
