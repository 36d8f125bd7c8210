"""``merge``: ZipLoRA (learned mergers) and the direct merge, both exported as standard LoRAs."""

from kedro.pipeline import Node, Pipeline

from .nodes import analyse_merge, direct_merge, zip_merge


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(zip_merge,
             inputs=["subject_lora_weights", "style_lora_weights", "subject_images", "subject_prompt",
                     "style_images", "style_prompt", "params:merge", "params:base_model"],
             outputs=["ziplora_weights", "ziplora_kohya_weights", "ziplora_mergers", "merge_log", "merge_curves"],
             name="ziplora_merge"),
        Node(direct_merge, inputs=["subject_lora_weights", "style_lora_weights", "params:merge", "params:base_model"],
             outputs=["direct_merge_weights", "direct_merge_kohya_weights"], name="direct_merge"),
        Node(analyse_merge,
             inputs=["subject_lora_weights", "style_lora_weights", "ziplora_mergers", "subject_images",
                     "subject_prompt", "style_images", "style_prompt", "params:base_model"],
             outputs=["merge_analysis", "merge_analysis_plot"], name="analyse_merge"),
    ], tags=["merge"])
