"""``generation`` nodes: every method's LoRA file and cost, its images, and the contact sheets."""

from __future__ import annotations

import logging
import time

from PIL import Image

from ...core.diffusion.base_model import BaseModelConfig, base_unet_config, load_base_pipeline, model_family, resolve_device
from ...core.config_utils import from_dict
from ...core.evaluation.contact_sheet import contact_sheet
from ...core.evaluation.generation import GenerationConfig, generate, image_name, prompt_token_warnings
from ...core.lora.io import LoraFile, check_family
from ...core.merging.build import MethodBuilder
from ...core.merging.method import MethodAssets

logger = logging.getLogger(__name__)


def build_methods(subject_lora: LoraFile, style_lora: LoraFile, joint_lora: LoraFile, direct_merge_lora: LoraFile,
                  ziplora_lora: LoraFile, mergers: dict, merge_log: dict, joint_training_log: dict,
                  generation_params: dict, base_params: dict) -> tuple[dict[str, LoraFile], dict]:
    """One LoRA file per file-backed method (copied, or built: ZipLoRA strengths, PEFT merges) and
    each method's cost (merge seconds, peak memory, file size)."""
    cfg = from_dict(GenerationConfig, generation_params, "generation")
    base = from_dict(BaseModelConfig, base_params, "base_model")
    sources = {"subject": subject_lora, "style": style_lora, "joint": joint_lora, "direct_merge": direct_merge_lora,
               "ziplora": ziplora_lora}
    builder = MethodBuilder(sources, mergers, {"ziplora": merge_log, "joint": joint_training_log},
                            lambda: load_base_pipeline(base).unet, resolve_device(base.device), base_unet_config(base))
    files, costs = {}, {}
    for name, spec in cfg.method_specs().items():
        lora, costs[name] = builder.build(spec)
        if lora is not None:
            files[name] = lora
        logger.info("Method %-18s (%s): %s", name, spec.kind,
                    ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in costs[name].items()))
    return files, costs


def generate_images(method_loras: dict[str, LoraFile], subject_lora: LoraFile, style_lora: LoraFile,
                    subject_prompt: dict, style_prompt: dict, generation_params: dict,
                    base_params: dict) -> tuple[dict[str, Image.Image], dict]:
    """Every enabled method × prompt × seed; returns ``{image name: PIL}`` and a manifest."""
    cfg = from_dict(GenerationConfig, generation_params, "generation")
    # for_inference: honours base_model.cpu_offload (enable_model_cpu_offload on small GPUs)
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"), for_inference=True)
    for lora, name in ((subject_lora, "subject LoRA"), (style_lora, "style LoRA")):
        check_family(lora, model_family(pipe), name)
    items = cfg.prompt_items()
    for warning in prompt_token_warnings(items, subject_prompt["token"], style_prompt["token"]):
        logger.warning("%s (data_prep uses %r / %r).", warning, subject_prompt["token"], style_prompt["token"])
    assets = MethodAssets(method_loras, subject_lora, style_lora)
    images, entries = {}, []
    for method, spec in cfg.method_specs().items():
        t0 = time.perf_counter()
        with spec.applied(pipe, assets):
            out = generate(pipe, items, cfg)
        for item, seed, img in out:
            name = image_name(method, item, seed)
            images[name] = img
            entries.append({"name": name, "file": f"{name}.png", "method": method, "group": item.group,
                            "key": item.key, "prompt": item.prompt, "seed": seed})
        logger.info("Generated %d images with %s in %.1f s", len(out), method, time.perf_counter() - t0)
    manifest = {"methods": list(cfg.method_specs()), "prompts": [vars(i) | {"key": i.key} for i in items],
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
