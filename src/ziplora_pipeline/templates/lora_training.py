"""The LoRA training template: written once, instantiated as ``subject_lora`` and ``style_lora``.

Inside the template datasets have generic names (``images``, ``lora_weights``); the namespace
maps them to ``<concept>_images``, ``<concept>_lora_weights`` and ``params:lora`` to
``params:<concept>.lora``.
"""

from __future__ import annotations

from kedro.pipeline import Node, Pipeline

from . import lora_nodes


def _template() -> Pipeline:
    return Pipeline([
        Node(lora_nodes.train_lora_node,
             inputs=["images", "prompt", "params:lora", "params:base_model", "lora_checkpoints"],
             outputs=["lora_weights", "training_log", "loss_curve"],
             name="train_lora"),
    ])


def create_lora_pipeline(concept: str) -> Pipeline:
    """Template instantiated for ``concept`` ("subject", "style", or e.g. "joint")."""
    return Pipeline(
        _template(),
        namespace=concept,
        inputs={"images": f"{concept}_images", "prompt": f"{concept}_prompt", "lora_checkpoints": "lora_checkpoints"},
        outputs={"lora_weights": f"{concept}_lora_weights", "training_log": f"{concept}_training_log",
                 "loss_curve": f"{concept}_loss_curve"},
        parameters={"params:base_model": "params:base_model"},
        tags=["lora", concept],
    )
