"""``data_prep``: subject and style folders -> ``<concept>_images`` (PNG squares) and ``<concept>_prompt``."""

from kedro.pipeline import Node, Pipeline

from .nodes import prepare_style, prepare_subject


def create_pipeline(**kwargs) -> Pipeline:
    return Pipeline([
        Node(prepare_subject, inputs=["raw_subjects", "params:data_prep.subject", "params:data_prep.resolution"],
             outputs=["subject_images", "subject_prompt"], name="prepare_subject"),
        Node(prepare_style, inputs=["raw_styles", "params:data_prep.style", "params:data_prep.resolution"],
             outputs=["style_images", "style_prompt"], name="prepare_style"),
    ], tags=["data_prep"])
