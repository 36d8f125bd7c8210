"""``data_prep``: subject and style folders -> ``<concept>_images`` (PNG squares) and ``<concept>_prompt``,
plus ``joint_images``/``joint_prompt`` (both sets, each with its own prompt) for the joint-training baseline."""

from kedro.pipeline import Node, Pipeline

from .nodes import combine_for_joint, prepare_style, prepare_subject


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(prepare_subject, inputs=["raw_subjects", "params:data_prep.subject", "params:data_prep.resolution"],
             outputs=["subject_images", "subject_prompt"], name="prepare_subject"),
        Node(prepare_style, inputs=["raw_styles", "params:data_prep.style", "params:data_prep.resolution"],
             outputs=["style_images", "style_prompt"], name="prepare_style"),
        Node(combine_for_joint, inputs=["subject_images", "subject_prompt", "style_images", "style_prompt"],
             outputs=["joint_images", "joint_prompt"], name="combine_for_joint"),
    ], tags=["data_prep"])
