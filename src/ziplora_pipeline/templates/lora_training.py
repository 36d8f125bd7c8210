"""The LoRA training template: written once, instantiated as ``subject_lora`` and ``style_lora``.

Inside the template datasets have generic names (``images``, ``lora_weights``); the mapping
turns them into ``<concept>_images``, ``<concept>_lora_weights``, ``<concept>_lora_checkpoints``
and ``params:lora`` into ``params:<concept>.lora``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from . import lora_nodes


def _template(concept: str) -> Pipeline:
    return Pipeline([
        Node(lora_nodes.train_lora_node,
             inputs=["images", "prompt", "params:lora", "params:base_model", "checkpoints"],
             outputs=["lora_weights", "training_log", "loss_curve"],
             name=f"train_{concept}_lora"),  # unique across stages: Kedro-Viz labels nodes by this name
    ])


def create_lora_pipeline(concept: str) -> Pipeline:
    """Template instantiated for ``concept`` ("subject", "style", or e.g. "joint").

    No namespace here: ``pipeline_registry`` puts every stage in a namespace named after it
    (``subject_lora``), so the template maps its datasets and ``params:lora`` explicitly.
    """
    return Pipeline(
        _template(concept),
        inputs={"images": f"{concept}_images", "prompt": f"{concept}_prompt", "checkpoints": f"{concept}_lora_checkpoints"},
        outputs={"lora_weights": f"{concept}_lora_weights", "training_log": f"{concept}_training_log",
                 "loss_curve": f"{concept}_loss_curve"},
        parameters={"params:lora": f"params:{concept}.lora", "params:base_model": "params:base_model"},
        tags=["lora", concept],
    )
