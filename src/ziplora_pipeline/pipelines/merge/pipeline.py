"""``merge``: ZipLoRA's mergers, each concept's recorded layer inputs (the closed-form method's), every compared
method built from the two LoRAs (``merge.methods``), the ZipLoRA and direct-merge files on their own (diffusers and
kohya formats), and the merge analysis."""

from kedro.pipeline import Node, Pipeline

from .nodes import analyse_merge, build_methods, export_merges, input_statistics, zip_merge


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(zip_merge,
             inputs=["subject_lora_weights", "style_lora_weights", "subject_images", "subject_prompt",
                     "style_images", "style_prompt", "params:merge", "params:base_model"],
             outputs=["ziplora_mergers", "merge_log", "merge_curves"], name="ziplora_merge"),
        *[Node(input_statistics, inputs=[f"{c}_lora_weights", f"{c}_images", f"{c}_prompt", "params:merge",
                                         "params:base_model"],
               outputs=f"{c}_input_statistics", name=f"{c}_input_statistics") for c in ("subject", "style")],
        Node(build_methods,
             inputs={"subject_lora": "subject_lora_weights", "style_lora": "style_lora_weights",
                     "mergers": "ziplora_mergers", "merge_log": "merge_log", "subject_prompt": "subject_prompt",
                     "style_prompt": "style_prompt", "methods_params": "params:merge.methods",
                     "base_params": "params:base_model", "subject_statistics": "subject_input_statistics",
                     "style_statistics": "style_input_statistics", "subject_images": "subject_images",
                     "style_images": "style_images", "merge_params": "params:merge"},
             outputs=["method_loras", "method_costs"], name="build_methods"),
        Node(export_merges, inputs=["method_loras", "subject_prompt", "style_prompt", "params:base_model",
                                    "params:generation"],
             outputs=["ziplora_weights", "ziplora_kohya_weights", "direct_merge_weights", "direct_merge_kohya_weights",
                      "ziplora_sample_image", "direct_merge_sample_image", "ziplora_model_card",
                      "direct_merge_model_card"],  # the card last: its save registers the model (hooks/registry.py)
             name="export_merges"),
        Node(analyse_merge,
             inputs=["subject_lora_weights", "style_lora_weights", "ziplora_mergers", "subject_images",
                     "subject_prompt", "style_images", "style_prompt", "params:base_model"],
             outputs=["merge_analysis", "merge_analysis_plot"], name="analyse_merge"),
    ], tags=["merge"])
