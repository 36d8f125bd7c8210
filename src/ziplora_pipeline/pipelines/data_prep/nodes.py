"""``data_prep`` nodes: raw reference folders -> validated training squares and DreamBooth prompts."""

from __future__ import annotations

import logging
from typing import Callable

from PIL import Image

from ...core.config_utils import from_dict
from ...core.evaluation.contact_sheet import check_same_size
from ...core.images import ImageInputError, prepare_image
from ...kedro_glue.params import ConceptDataConfig

logger = logging.getLogger(__name__)


def prepare_concept(partitions: dict[str, Callable[[], bytes]], concept_params: dict, resolution: int,
                    concept: str, root: str) -> tuple[dict[str, Image.Image], dict]:
    """Select ``<folder>/*`` from the raw partitions, validate and square-resize every image.

    Args:
        partitions: ``PartitionedDataset`` of raw bytes, ids like ``robot/robot_00.png``.
        concept_params: ``data_prep.subject`` or ``data_prep.style``.
        concept: "subject" or "style" (names the LoRA adapter downstream).
        root: the raw folder, for error messages.

    Raises:
        ImageInputError: missing or empty folder, or any unusable file (all named at once).
    """
    cfg = from_dict(ConceptDataConfig, concept_params, f"data_prep.{concept}")
    prefix = f"{cfg.folder}/"
    ids = concept_ids(partitions, cfg.folder, concept, root)
    images, errors = {}, []
    for pid in ids:
        name = f"{root}/{pid}"
        try:
            img = prepare_image(partitions[pid](), name, resolution)
        except ImageInputError as err:
            errors.append(str(err))
            continue
        images[pid[len(prefix):].rsplit(".", 1)[0].replace("/", "_")] = img
    if errors:
        raise ImageInputError(f"{len(errors)} unusable {concept} file(s):\n  " + "\n  ".join(errors))
    prompt = {"concept": concept, "prompt": cfg.prompt, "token": cfg.token, "noun": cfg.noun,
              "folder": cfg.folder, "images": sorted(images), "resolution": resolution}
    logger.info("Prepared %d %s image(s) from %s/%s at %d px; prompt: %r", len(images), concept, root, cfg.folder,
                resolution, cfg.prompt)
    return images, prompt


def concept_ids(partitions, folder: str, concept: str, root: str, setting: str | None = None) -> list[str]:
    """The partition ids under ``<folder>/`` (hidden files skipped), sorted; also the pre-run check of the
    raw folders (``preflight``), so a missing folder fails before any stage saves anything.

    Raises:
        ImageInputError: the folder is missing or empty (names it and the folders that exist).
    """
    prefix = f"{folder}/"
    ids = sorted(p for p in partitions if p.startswith(prefix) and not p.rsplit("/", 1)[-1].startswith("."))
    if not ids:
        folders = sorted({p.split("/", 1)[0] for p in partitions})
        raise ImageInputError(
            f"No images in {root}/{folder}/ for the {concept}. Create that folder with your images, set "
            f"{setting or f'data_prep.{concept}.folder'} to one of {folders}, or run "
            f"`python scripts/make_sample_data.py{' --grid' if setting else ''}` for the sample "
            f"{'concepts' if setting else 'robot and style'}."
        )
    return ids


# Raw catalog inputs -> (concept, folder shown in messages); preflight checks them before the run.
RAW_INPUTS = {"raw_subjects": ("subject", "data/01_raw/subjects"), "raw_styles": ("style", "data/01_raw/styles")}


def prepare_subject(partitions: dict[str, Callable[[], bytes]], params: dict, resolution: int):
    """Subject photos from ``data/01_raw/subjects/<folder>/``."""
    return prepare_concept(partitions, params, resolution, *RAW_INPUTS["raw_subjects"])


def prepare_style(partitions: dict[str, Callable[[], bytes]], params: dict, resolution: int):
    """The style exemplar from ``data/01_raw/styles/<folder>/``."""
    return prepare_concept(partitions, params, resolution, *RAW_INPUTS["raw_styles"])


def combine_for_joint(subject_images: dict[str, Image.Image], subject_prompt: dict, style_images: dict[str, Image.Image],
                      style_prompt: dict) -> tuple[dict[str, Image.Image], dict]:
    """Joint training's data (the paper's second baseline): the subject photos and the style image in one
    set, each group keeping its own DreamBooth prompt (``groups``); the trainer alternates the groups.

    Raises:
        ImageInputError: the subject and style images differ in size (both are named).
    """
    images = {f"subject_{k}": v for k, v in subject_images.items()} | {f"style_{k}": v for k, v in style_images.items()}
    try:
        check_same_size(images, "joint-training images (subject and style)")
    except ValueError as err:
        raise ImageInputError(str(err)) from err
    groups = [{"prompt": p["prompt"], "images": sorted(f"{c}_{k}" for k in imgs)}
              for c, p, imgs in (("subject", subject_prompt, subject_images), ("style", style_prompt, style_images))]
    prompt = {"concept": "joint", "prompt": f"{subject_prompt['prompt']} | {style_prompt['prompt']}", "groups": groups,
              "images": sorted(images), "resolution": subject_prompt.get("resolution")}
    logger.info("Joint training set: %d subject + %d style image(s), prompts %r and %r", len(subject_images),
                len(style_images), subject_prompt["prompt"], style_prompt["prompt"])
    return images, prompt
