"""``grid`` nodes: one concept's data and LoRA, one pair's images and judged scores, the grid's sheets and table.

The merge itself is the ``merge`` stage's node (``zip_merge`` / ``direct_merge``), reused per pair.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import numpy as np
from PIL import Image

from ...core.base_model import BaseModelConfig, load_base_pipeline, resolve_device
from ...core.config_utils import from_dict
from ...core.contact_sheet import contact_sheet
from ...core.evaluation import EvaluationConfig
from ...core.generation import GenerationConfig, PromptItem, generate
from ...core.grid import GridConfig, concept_template, pair_name, pair_prompts
from ...core.image_metrics import image_scores, load_encoders
from ...core.lora_io import LoraFile
from ...core.methods import lora_applied
from ...core.verdict import AXES, bootstrap, summarise
from ...templates.lora_nodes import train_lora_node
from ..data_prep.nodes import prepare_concept

logger = logging.getLogger(__name__)
METHODS = ("ziplora", "direct_merge")  # what every pair generates; the one-pair job compares all 13


def _grid(params: dict) -> GridConfig:
    return from_dict(GridConfig, params, "grid")


def prepare_grid_concept(partitions: dict[str, Callable[[], bytes]], grid_params: dict, resolution: int,
                         name: str) -> tuple[dict[str, Image.Image], dict]:
    """``data/01_raw/<subjects|styles>/<folder>/`` -> training squares and the concept's DreamBooth prompt."""
    kind, c = _grid(grid_params).concepts()[name]
    params = {"folder": c.folder or name, "token": c.token, "noun": c.noun, "template": concept_template(kind, c)}
    images, prompt = prepare_concept(partitions, params, resolution, name, f"data/01_raw/{kind}s")
    return images, prompt | {"kind": kind}


def train_grid_concept_lora(images: dict[str, Image.Image], prompt: dict, lora_params: dict, grid_params: dict,
                            base_params: dict, checkpoints, name: str):
    """The concept's LoRA: ``subject.lora`` / ``style.lora`` with the concept's own overrides (grid.<kind>s.<name>.lora)."""
    _, c = _grid(grid_params).concepts()[name]
    return train_lora_node(images, prompt, {**lora_params, **c.lora}, base_params, checkpoints)


def generate_pair(ziplora: LoraFile, direct_merge: LoraFile, subject_prompt: dict, style_prompt: dict,
                  grid_params: dict, base_params: dict, pair: str) -> dict[str, Image.Image]:
    """Every grid prompt × seed with the ZipLoRA and the direct merge: ``{<method>__p<i>__seed<s>: image}``."""
    cfg = _grid(grid_params)
    concepts = cfg.concepts()
    prompts = pair_prompts(cfg, concepts[subject_prompt["concept"]][1], concepts[style_prompt["concept"]][1])
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"), for_inference=True)
    # the generation stage's loop: the same batching and per-image seeded generators as the one-pair job
    gen = GenerationConfig(seeds=cfg.seeds, num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=cfg.guidance_scale, resolution=cfg.resolution, batch_size=cfg.batch_size)
    items = [PromptItem("merge", i, p) for i, p in enumerate(prompts)]
    images = {}
    for method, lora in zip(METHODS, (ziplora, direct_merge)):
        t0 = time.perf_counter()
        with lora_applied(pipe, method, lora):
            out = generate(pipe, items, gen)
        images.update({f"{method}__p{item.index}__seed{seed}": img for item, seed, img in out})
        logger.info("%s: %d images with %s in %.1f s", pair, len(out), method, time.perf_counter() - t0)
    return images


def judge_pair(images: dict[str, Image.Image], subject_images: dict[str, Image.Image],
               style_images: dict[str, Image.Image], subject_prompt: dict, style_prompt: dict, grid_params: dict,
               evaluation_params: dict, base_params: dict, pair: str) -> dict:
    """Judged subject, style and prompt scores per method (the evaluation stage's judges), 95 % intervals over seeds."""
    cfg, ev = _grid(grid_params), from_dict(EvaluationConfig, evaluation_params, "evaluation")
    concepts = cfg.concepts()
    prompts = pair_prompts(cfg, concepts[subject_prompt["concept"]][1], concepts[style_prompt["concept"]][1])
    encoders = load_encoders({"clip": ev.clip, "dino": ev.dino},
                             resolve_device(from_dict(BaseModelConfig, base_params, "base_model").device))
    tokens = (subject_prompt["token"], style_prompt["token"])
    out = {"pair": pair, "subject": subject_prompt["concept"], "style": style_prompt["concept"], "methods": {}}
    for method in METHODS:
        items = [(f"{method}__p{i}__seed{seed}", p, seed) for i, p in enumerate(prompts) for seed in cfg.seeds]
        scores = image_scores(encoders, [images[n] for n, _, _ in items], [p for _, p, _ in items],
                              list(subject_images.values()), list(style_images.values()), tokens)
        out["methods"][method] = summarise(scores, [seed for _, _, seed in items])
    logger.info("%s judged: %s", pair, "; ".join(
        f"{m} " + " ".join(f"{a} {s['mean']:.3f}" for a, s in j.items() if s.get("mean") is not None)
        for m, j in out["methods"].items()))
    return out


def _first(images: dict[str, Image.Image]) -> Image.Image:
    return images[sorted(images)[0]]


def grid_sheets(grid_params: dict, **inputs) -> dict[str, Image.Image]:
    """The paper's grid figure, one per method: rows subjects, columns styles, each cell that pair's image for one
    seed and the first prompt; the concepts' reference images on the top row and the left column.

    Args:
        inputs: ``<pair>__images`` (generate_pair's output) and ``<concept>__refs`` (the concept's training images).
    """
    cfg = _grid(grid_params)
    pairs = cfg.pair_list()
    subjects, styles = list(dict.fromkeys(s for s, _ in pairs)), list(dict.fromkeys(t for _, t in pairs))
    seed = cfg.sheet_seed if cfg.sheet_seed is not None else cfg.seeds[0]
    size = cfg.resolution
    refs = {c: _first(inputs[f"{c}__refs"]).resize((size, size)) for c in subjects + styles}
    sheets = {}
    for method in METHODS:
        cells = {("reference", t): refs[t] for t in styles} | {(s, "reference"): refs[s] for s in subjects}
        for s, t in pairs:
            cells[(s, t)] = inputs[f"{pair_name(s, t)}__images"][f"{method}__p0__seed{seed}"]
        labels = {"reference": "style reference"} | {s: f"{s} ({cfg.concepts()[s][1].token})" for s in subjects}
        sheets[f"{method}_seed{seed}"] = contact_sheet(
            cells, ["reference", *subjects], ["reference", *styles], cfg.sheet_cell,
            title=f"{method}: '{cfg.prompts[0]}', seed {seed} (rows: subjects, columns: styles)", row_labels=labels)
    logger.info("Grid sheets: %d subjects x %d styles, %d pairs, methods %s", len(subjects), len(styles), len(pairs),
                list(METHODS))
    return sheets


def grid_table(grid_params: dict, **scores) -> tuple[dict, str]:
    """Judged scores per method as the mean over pairs (95 % bootstrap interval over pairs), ZipLoRA − direct merge
    paired by pair, and the per-pair rows; as JSON and as a Markdown table."""
    cfg = _grid(grid_params)
    rows = [scores[k] for k in sorted(scores)]
    summary, diffs = {}, {}
    for method in METHODS:
        summary[method] = {axis: bootstrap(np.array([r["methods"][method][axis]["mean"] for r in rows
                                                     if r["methods"][method].get(axis, {}).get("mean") is not None]))
                           for axis in AXES}
    for axis in AXES:
        d = [r["methods"]["ziplora"][axis]["mean"] - r["methods"]["direct_merge"][axis]["mean"] for r in rows
             if all(r["methods"][m].get(axis, {}).get("mean") is not None for m in METHODS)]
        diffs[axis] = bootstrap(np.array(d))
    table = {"pairs": len(rows), "seeds": list(cfg.seeds), "prompts": list(cfg.prompts), "methods": summary,
             "ziplora_minus_direct_merge": diffs,
             "per_pair": [{"pair": r["pair"], **{f"{m}.{a}": r["methods"][m].get(a, {}).get("mean") for m in METHODS
                                                 for a in AXES}} for r in rows]}
    fmt = lambda s: "—" if s["mean"] is None else f"{s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]"  # noqa: E731
    lines = [f"Judged scores over {len(rows)} pairs (mean over pairs, 95 % bootstrap interval over pairs; each pair's "
             f"score is its mean over {len(cfg.seeds)} seeds × {len(cfg.prompts)} prompts).", "",
             "| method | " + " | ".join(AXES) + " |", "|---|" + "---|" * len(AXES)]
    lines += [f"| {m} | " + " | ".join(fmt(summary[m][a]) for a in AXES) + " |" for m in METHODS]
    lines += ["| ZipLoRA − direct merge | " + " | ".join(fmt(diffs[a]) for a in AXES) + " |", "",
              "| pair | " + " | ".join(f"{m} {a}" for m in METHODS for a in AXES) + " |",
              "|---|" + "---|" * (len(METHODS) * len(AXES))]
    lines += [f"| {r['pair']} | " + " | ".join("—" if r[f"{m}.{a}"] is None else f"{r[f'{m}.{a}']:.3f}"
                                              for m in METHODS for a in AXES) + " |" for r in table["per_pair"]]
    logger.info("Grid over %d pairs: ZipLoRA − direct merge %s", len(rows),
                ", ".join(f"{a} {fmt(d)}" for a, d in diffs.items()))
    return table, "\n".join(lines) + "\n"
