"""``grid`` nodes: one concept's data and LoRA, one pair's images and judged scores, the grid's sheets and table.

The merge itself is the ``merge`` stage's nodes (``zip_merge``, ``export_merges``), reused per pair; each pair's
methods are built through the same registry (``build_pair_methods``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from PIL import Image

from ...core.config_utils import from_dict
from ...core.diffusion.base_model import BaseModelConfig, load_base_pipeline, resolve_device
from ...core.evaluation.claims import claim_rows, comparison_markdown, grid_claims, grid_claims_markdown
from ...core.evaluation.contact_sheet import contact_sheet
from ...core.evaluation.generation import GenerationConfig, PromptItem
from ...core.evaluation.grid import (CLAIMED, GridConfig, concept_template, generate_methods, judge_method,
                                     pair_method_entries, pair_methods, pair_name, pair_prompts, strength_name,
                                     unseen_object)
from ...core.evaluation.image_metrics import TOY_MARKER
from ...core.evaluation.judges import EvaluationConfig, load_judges
from ...core.lora.io import LoraFile
from ...core.merging.build import build_methods
from ...core.merging.method import MethodAssets
from ...core.merging.registry import parse_methods
from ...templates.lora_nodes import train_lora_node
from ..data_prep.nodes import prepare_concept
from ..merge.nodes import build_context, concept_pair

logger = logging.getLogger(__name__)


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


def _pair(cfg: GridConfig, subject_prompt: dict, style_prompt: dict):
    concepts = cfg.concepts()
    return concepts[subject_prompt["concept"]][1], concepts[style_prompt["concept"]][1]


def _pair_methods(cfg: GridConfig, methods_params: dict) -> dict:
    return parse_methods(pair_method_entries(cfg, methods_params), "grid.methods")


def build_pair_methods(subject_lora: LoraFile, style_lora: LoraFile, mergers: dict, merge_log: dict,
                       subject_prompt: dict, style_prompt: dict, grid_params: dict, methods_params: dict,
                       base_params: dict, subject_statistics: dict | None = None,
                       style_statistics: dict | None = None, subject_images: dict | None = None,
                       style_images: dict | None = None, merge_params: dict | None = None
                       ) -> tuple[dict[str, LoraFile], dict]:
    """One pair's methods (``pair_method_entries``: ``grid.methods``, the two references, ZipLoRA at the weaker
    style strengths), built by the merge stage's registry: ({method: LoraFile}, {method: cost}). The concepts'
    ``input_statistics`` are their namespaces' (recorded once per concept)."""
    ctx = build_context(subject_lora, style_lora, mergers, {"ziplora": merge_log}, subject_prompt, style_prompt,
                        base_params, concept_pair(subject_statistics, style_statistics),
                        concept_pair(subject_images, style_images), merge_params)
    return build_methods(_pair_methods(_grid(grid_params), methods_params), ctx)


def generate_pair(method_loras: dict[str, LoraFile], subject_lora: LoraFile, style_lora: LoraFile,
                  subject_prompt: dict, style_prompt: dict, grid_params: dict, methods_params: dict,
                  base_params: dict, pair: str) -> dict[str, Image.Image]:
    """The claims' prompt groups × seeds (``{<method>__<group><i>__seed<s>: image}``): ``grid.methods`` on every
    group, the subject and style LoRAs where claim (b) divides by them, ZipLoRA at the weaker style strengths
    (``grid.style_strengths``) on the merge and recontext groups."""
    cfg = _grid(grid_params)
    items = [PromptItem(g, i, p) for g, i, p in pair_prompts(cfg, *_pair(cfg, subject_prompt, style_prompt))]
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"), for_inference=True)
    # the generation stage's loop: the same batching and per-image seeded generators as the one-pair job
    gen = GenerationConfig(seeds=cfg.seeds, num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=cfg.guidance_scale, resolution=cfg.resolution, batch_size=cfg.batch_size)
    groups = pair_methods(cfg)
    methods = {m: spec for m, spec in _pair_methods(cfg, methods_params).items() if m in groups}
    assets = MethodAssets(method_loras, {"subject": subject_lora, "style": style_lora})
    return generate_methods(pipe, methods, groups, assets, items, gen, pair)


def judge_pair(images: dict[str, Image.Image], subject_images: dict[str, Image.Image],
               style_images: dict[str, Image.Image], subject_prompt: dict, style_prompt: dict, grid_params: dict,
               evaluation_params: dict, base_params: dict, pair: str) -> dict:
    """One pair's judged scores per method and prompt group (both judges, 95 % intervals over seeds) and its claim
    figures (core/evaluation/claims.py: (a)-(c) per method; ``judged``: the merge and recontext groups together, for (d))."""
    cfg, ev = _grid(grid_params), from_dict(EvaluationConfig, evaluation_params, "evaluation")
    subject, style = _pair(cfg, subject_prompt, style_prompt)
    prompts = pair_prompts(cfg, subject, style)
    device = resolve_device(from_dict(BaseModelConfig, base_params, "base_model").device)
    encoders = load_judges(ev, device)
    tokens = (subject_prompt["token"], style_prompt["token"])
    judged_groups, judged = {}, {}
    for method, groups in pair_methods(cfg).items():
        judged_groups[method], both = judge_method(
            encoders, images, method, groups, prompts, cfg.seeds, list(subject_images.values()),
            list(style_images.values()), tokens, style_prompt["prompt"])
        if both is not None:
            judged[method] = both
    claims = {m: r for m, r in claim_rows(judged_groups).items() if m in cfg.methods}
    out = {"pair": pair, "subject": subject_prompt["concept"], "style": style_prompt["concept"],
           "object": unseen_object(cfg, subject, style), "seeds": list(cfg.seeds), "claims": claims,
           "judged": judged, "judged_groups": judged_groups}
    logger.info("%s judged: %s", pair, "; ".join(
        f"{m} merge subject {_mean(r, 'merge_subject')} style {_mean(r, 'merge_style')}, alone object "
        f"{_mean(r, 'alone_object')}" for m, r in claims.items()))
    return out


def _mean(row: dict, col: str) -> str:
    v = (row.get(col) or {}).get("mean")
    return "—" if v is None else f"{v:.3f}"


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
    for method in cfg.methods:
        cells = {("reference", t): refs[t] for t in styles} | {(s, "reference"): refs[s] for s in subjects}
        for s, t in pairs:
            cells[(s, t)] = inputs[f"{pair_name(s, t)}__images"][f"{method}__merge0__seed{seed}"]
        labels = {"reference": "style reference"} | {s: f"{s} ({cfg.concepts()[s][1].token})" for s in subjects}
        sheets[f"{method}_seed{seed}"] = contact_sheet(
            cells, ["reference", *subjects], ["reference", *styles], cfg.sheet_cell,
            title=f"{method}: '{cfg.prompts['merge'][0]}', seed {seed} (rows: subjects, columns: styles)", row_labels=labels)
    logger.info("Grid sheets: %d subjects x %d styles, %d pairs, methods %s", len(subjects), len(styles), len(pairs),
                list(cfg.methods))
    return sheets


def grid_table(grid_params: dict, evaluation_params: dict, **scores) -> tuple[dict, str]:
    """The paper's claims over the grid's pairs (core/evaluation/claims.py ``grid_claims``: each pair's figure its mean over
    seeds, 95 % intervals over pairs, ZipLoRA − direct merge paired by pair, both judges and their agreement; no
    interval below 3 pairs), as JSON and as a Markdown report."""
    cfg = _grid(grid_params)
    ev = from_dict(EvaluationConfig, evaluation_params, "evaluation")
    rows = [scores[k] for k in sorted(scores)]
    strengths = {"ziplora": 1.0} | {strength_name(s): s for s in cfg.style_strengths}
    claims = grid_claims(rows, "ziplora", "direct_merge", strengths)
    # any further method of grid.methods (e.g. np_lora): the same figures against each of the paper's two
    others = {f"{m} vs {b}": grid_claims(rows, m, b) for m in cfg.methods if m not in CLAIMED
              for b in ("direct_merge", "ziplora")}
    first = "toy judges" if any(Path(c.name_or_path, TOY_MARKER).is_file() for c in (ev.clip, ev.dino)) else "DINO/CLIP"
    table = {**claims, "others": {k: c["figures"] for k, c in others.items()}, "seeds": list(cfg.seeds),
             "prompts": dict(cfg.prompts),
             "per_pair": [{"pair": r["pair"], "object": r.get("object"), "claims": r["claims"]} for r in rows]}
    markdown = grid_claims_markdown(claims, rows, len(cfg.seeds), (first, "EfficientNet-Lite0"))
    if others:
        markdown = markdown.rstrip() + "\n\n" + comparison_markdown(others)
    logger.info("Grid over %d pairs, ZipLoRA − direct merge: %s", len(rows), "; ".join(
        f"{c} {f['difference']['mean']:+.3f} ({f['verdict']})" for c, f in claims["figures"].items()
        if f["difference"]["mean"] is not None))
    return table, markdown
