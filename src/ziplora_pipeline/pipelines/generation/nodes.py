"""``generation`` nodes: every method's images (the methods the merge stage built), and the contact sheets."""

from __future__ import annotations

import logging
import time

from PIL import Image

from ...core.config_utils import from_dict
from ...core.diffusion.base_model import BaseModelConfig, load_base_pipeline, model_family
from ...core.evaluation.contact_sheet import contact_sheet
from ...core.evaluation.generation import GenerationConfig, generate, image_name, prompt_token_warnings
from ...core.lora.io import LoraFile, check_family
from ...core.merging.method import MethodAssets
from ...core.merging.registry import parse_methods

logger = logging.getLogger(__name__)


def generate_images(method_loras: dict[str, LoraFile], subject_lora: LoraFile, style_lora: LoraFile,
                    joint_lora: LoraFile, subject_prompt: dict, style_prompt: dict, generation_params: dict, methods_params: dict,
                    base_params: dict) -> tuple[dict[str, Image.Image], dict]:
    """Every enabled method of ``merge.methods`` × prompt × seed; returns ``{image name: PIL}`` and a manifest."""
    cfg = from_dict(GenerationConfig, generation_params, "generation")
    methods = parse_methods(methods_params, "merge.methods")
    # for_inference: honours base_model.cpu_offload (enable_model_cpu_offload on small GPUs)
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"), for_inference=True)
    for lora, name in ((subject_lora, "subject LoRA"), (style_lora, "style LoRA")):
        check_family(lora, model_family(pipe), name)
    items = cfg.prompt_items()
    for warning in prompt_token_warnings(items, subject_prompt["token"], style_prompt["token"]):
        logger.warning("%s (data_prep uses %r / %r).", warning, subject_prompt["token"], style_prompt["token"])
    assets = MethodAssets(method_loras, {"subject": subject_lora, "style": style_lora, "joint": joint_lora})
    images, entries = {}, []
    for method, spec in methods.items():
        t0 = time.perf_counter()
        with spec.applied(pipe, assets):
            out = generate(pipe, items, cfg)
        for item, seed, img in out:
            name = image_name(method, item, seed)
            images[name] = img
            entries.append({"name": name, "file": f"{name}.png", "method": method, "group": item.group,
                            "key": item.key, "prompt": item.prompt, "seed": seed})
        logger.info("Generated %d images with %s in %.1f s", len(out), method, time.perf_counter() - t0)
    manifest = {"methods": list(methods), "prompts": [vars(i) | {"key": i.key} for i in items],
                "seeds": list(cfg.seeds), "num_inference_steps": cfg.num_inference_steps,
                "guidance_scale": cfg.guidance_scale, "resolution": cfg.resolution, "images": entries}
    return images, manifest


def make_contact_sheets(images: dict[str, Image.Image], manifest: dict,
                        generation_params: dict) -> dict[str, Image.Image]:
    """One sheet per seed: rows = prompts (in group order), columns = methods."""
    cfg = from_dict(GenerationConfig, generation_params, "generation")
    rows = [p["key"] for p in manifest["prompts"]]
    labels = {p["key"]: f"{p['key']}: {p['prompt']}" for p in manifest["prompts"]}
    sheets = {}
    for seed in manifest["seeds"]:
        cells = {(e["key"], e["method"]): images[e["name"]] for e in manifest["images"] if e["seed"] == seed}
        sheets[f"contact_sheet_seed{seed}"] = contact_sheet(cells, rows, manifest["methods"], cfg.sheet_cell,
                                                            title=f"seed {seed}", row_labels=labels)
    logger.info("Contact sheets: %d (rows: %d prompts, columns: %d methods)", len(sheets), len(rows),
                len(manifest["methods"]))
    return sheets
