"""Node functions of the LoRA training template: thin adapters over ``core.lora_training``."""

from __future__ import annotations

import functools
import logging

from matplotlib.figure import Figure
from PIL import Image  # noqa: E402

from ..core.config_utils import from_dict  # noqa: E402
from ..core.diffusion.base_model import BaseModelConfig, load_base_pipeline  # noqa: E402
from ..core.diffusion.sdxl import encode_concept  # noqa: E402
from ..core.evaluation.cost import measure  # noqa: E402
from ..core.evaluation.figures import loss_figure
from ..core.images import images_to_tensor  # noqa: E402
from ..core.lora.checkpoints import CheckpointStore  # noqa: E402
from ..core.lora.io import LoraFile  # noqa: E402
from ..core.lora.training import LoraTrainingConfig, train_lora  # noqa: E402
from ..kedro_glue.tracking import step_logger  # noqa: E402

logger = logging.getLogger(__name__)


def train_lora_node(images: dict[str, Image.Image], prompt: dict, lora_params: dict, base_params: dict,
                    checkpoints: CheckpointStore) -> tuple[LoraFile, dict, Figure]:
    """Train the concept's DreamBooth LoRA; return the LoRA file, a training log and a loss plot.

    Resumes from ``checkpoints`` when an identical run was interrupted.
    """
    concept = prompt["concept"]
    cfg = from_dict(LoraTrainingConfig, lora_params, f"{concept}.lora")
    base = from_dict(BaseModelConfig, base_params, "base_model")
    pipe = load_base_pipeline(base)
    ordered = [images[k] for k in sorted(images)]
    encode, groups = _encoder(pipe, images, prompt)
    log = step_logger(concept)
    with measure(pipe.unet.device) as cost:
        result = train_lora(pipe, encode, cfg, concept, checkpoints,
                            key_parts=(base_params, prompt["prompt"], images_to_tensor(ordered), *groups),
                            on_step=lambda step, loss: log(step, loss=loss))
    n = len(result.losses)
    tail = sum(result.losses[-10:]) / len(result.losses[-10:])
    logger.info("Trained %s LoRA: rank %d, %d steps (%d resumed) on %d process(es) in %.1f s, final loss %.4f "
                "(mean of last %d: %.4f)", concept, cfg.rank, n, result.resumed_from, result.processes, result.seconds,
                result.losses[-1], min(10, n), tail)
    training_log = {"concept": concept, "prompt": prompt["prompt"], "steps": n, "resumed_from": result.resumed_from,
                    "seconds": result.seconds, "final_loss": result.losses[-1], "losses": result.losses,
                    "rank": cfg.rank, "alpha": cfg.lora_alpha, "peak_mb": cost.peak_mb,
                    "memory_kind": cost.memory_kind}
    return result.lora, training_log, loss_figure(result.losses, f"{concept} LoRA: diffusion loss")


def _encoder(pipe, images: dict[str, Image.Image], prompt: dict):
    """``(encode, groups)``: one concept encodes its images with its prompt; a prompt with ``groups``
    (joint training: ``[{"prompt", "images"}]``) encodes each group on its own, trained in turn."""
    groups = prompt.get("groups") or []
    if not groups:
        return functools.partial(encode_concept, pipe, [images[k] for k in sorted(images)], prompt["prompt"]), ()
    return (lambda: [encode_concept(pipe, [images[k] for k in g["images"]], g["prompt"]) for g in groups]), (groups,)
