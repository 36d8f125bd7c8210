"""``merge`` nodes: ZipLoRA and direct merge of the subject and style LoRAs, and the analysis."""

from __future__ import annotations

import logging

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from ...core.diffusion.base_model import BaseModelConfig, load_base_pipeline, model_family  # noqa: E402
from ...core.config_utils import from_dict  # noqa: E402
from ...core.evaluation.cost import measure  # noqa: E402
from ...core.lora.factors import check_against_unet, unet_lora_factors  # noqa: E402
from ...core.lora.io import LoraFile, check_family  # noqa: E402
from ...core.merging.optimise import MergeConfig, ziplora_merge  # noqa: E402
from ...core.evaluation.fidelity import make_probe, predict  # noqa: E402
from ...core.merging.analysis import column_alignment, merger_cosines, sparsity, summarise  # noqa: E402
from ...core.merging.premises import (  # noqa: E402
    PREMISE_DRAWS, PREMISE_SEED, column_alignment_by_group, premises_table, sparsity_by_group)
from ...core.merging.export import (  # noqa: E402
    combined_text_encoders, factors_to_lora_file, kohya_metadata, merged_factors, text_encoder_parts, to_kohya,
    ziplora_file)
from ...core.diffusion.sdxl import encode_concept, training_scheduler  # noqa: E402
from ...kedro_glue.tracking import step_logger  # noqa: E402

logger = logging.getLogger(__name__)
NAMES = ("subject", "style")


def _factors(subject_lora: LoraFile, style_lora: LoraFile, pipe) -> dict:
    """Parse both LoRAs and check they were trained for this base model (family, layer shapes)."""
    family = model_family(pipe)
    check_family(subject_lora, family, "subject LoRA")
    check_family(style_lora, family, "style LoRA")
    loras = {"subject": unet_lora_factors(subject_lora, "subject LoRA", pipe.unet.config),
             "style": unet_lora_factors(style_lora, "style LoRA", pipe.unet.config)}
    check_against_unet(pipe.unet, loras)
    return loras


def zip_merge(subject_lora: LoraFile, style_lora: LoraFile, subject_images: dict[str, Image.Image],
              subject_prompt: dict, style_images: dict[str, Image.Image], style_prompt: dict,
              merge_params: dict, base_params: dict) -> tuple[LoraFile, LoraFile, dict, dict, plt.Figure]:
    """Learn ZipLoRA mergers (Eq. 3) and export the merged rank-(r_c + r_s) LoRA.

    Returns:
        (diffusers-format LoRA, kohya-format copy, merger vectors, merge log, loss-curve figure).
    """
    cfg = from_dict(MergeConfig, merge_params, "merge")
    cfg_base = from_dict(BaseModelConfig, base_params, "base_model")
    pipe = load_base_pipeline(cfg_base)
    loras = _factors(subject_lora, style_lora, pipe)
    inputs = {"subject": encode_concept(pipe, [subject_images[k] for k in sorted(subject_images)], subject_prompt["prompt"]),
              "style": encode_concept(pipe, [style_images[k] for k in sorted(style_images)], style_prompt["prompt"])}
    # merge.step.*: each optimiser step's batch (one noise draw per concept); merge.pool.*: the whole
    # teacher pool before and after; merge.heldout.*: the same on draws from another seed that no step
    # used (the figures that say whether the mergers generalise; the log line leads with them).
    log = step_logger("merge.step")
    with measure(pipe.unet.device) as cost:  # peak memory for the evaluation's cost column
        result = ziplora_merge(pipe.unet, loras, inputs, cfg, training_scheduler(pipe), on_step=log)
    strengths = {"subject": cfg.subject_scale, "style": cfg.style_scale}
    merged = ziplora_file(loras, text_encoder_parts({"subject": subject_lora, "style": style_lora}), result.mergers,
                          strengths, "ZipLoRA merge",
                          f"ZipLoRA merge of '{subject_prompt['prompt']}' and '{style_prompt['prompt']}'")
    steps = len(result.history["loss"])
    for name, before, after in (("pool", result.initial, result.final),
                                ("heldout", result.heldout_initial, result.heldout_final)):
        step_logger(f"merge.{name}")(steps, **{f"{k}_initial": v for k, v in before.items()},
                                     **{f"{k}_final": v for k, v in after.items()})
    h0, h1 = result.heldout_initial, result.heldout_final
    own = ("" if cfg.teacher_pool == "fresh" else  # fresh draws: no pool of its own, every draw was new
           " (on its own pool: {:.4f} -> {:.4f}, {:.4f} -> {:.4f})".format(
               result.initial["recon_subject"], result.final["recon_subject"], result.initial["recon_style"],
               result.final["recon_style"]))
    logger.info("ZipLoRA merge: %d steps in %.1f s (teacher_pool %s); held-out recon subject %.4f -> %.4f, "
                "style %.4f -> %.4f%s; mean |cos(m_c, m_s)| %.3f -> %.3f", steps, result.seconds, cfg.teacher_pool,
                h0["recon_subject"], h1["recon_subject"], h0["recon_style"], h1["recon_style"], own,
                h0["mean_abs_cos"], h1["mean_abs_cos"])
    merge_log = {"steps": steps, "seconds": result.seconds, "stopped_early": result.stopped_early,
                 "teacher_pool": cfg.teacher_pool, "initial": result.initial, "final": result.final,
                 "heldout_draws": cfg.heldout_draws, "heldout_initial": h0, "heldout_final": h1,
                 "history": result.history, "subject_scale": cfg.subject_scale, "style_scale": cfg.style_scale,
                 "merged_rank": _ranks(merged), "peak_mb": cost.peak_mb, "memory_kind": cost.memory_kind}
    kohya = to_kohya(merged, kohya_metadata(
        cfg_base.pretrained_model_name_or_path, _architecture(pipe), [subject_prompt["token"], style_prompt["token"]],
        f"ZipLoRA: {subject_prompt['prompt']} + {style_prompt['prompt']}"))
    return merged, kohya, result.mergers, merge_log, merge_figure(result.history)


def direct_merge(subject_lora: LoraFile, style_lora: LoraFile, merge_params: dict,
                 base_params: dict) -> tuple[LoraFile, LoraFile]:
    """The reference: ΔW = w_c ΔW_c + w_s ΔW_s, exported exactly like the ZipLoRA merge."""
    cfg = from_dict(MergeConfig, merge_params, "merge")
    cfg_base = from_dict(BaseModelConfig, base_params, "base_model")
    pipe = load_base_pipeline(cfg_base)
    loras = _factors(subject_lora, style_lora, pipe)
    w_c, w_s = cfg.direct_weights
    weights = {"subject": w_c, "style": w_s}
    merged = factors_to_lora_file(merged_factors(loras, None, weights),
                                  description=f"direct merge, weights subject={w_c}, style={w_s}",
                                  text_encoders=combined_text_encoders(
                                      text_encoder_parts({"subject": subject_lora, "style": style_lora}), weights,
                                      "direct merge"))
    logger.info("Direct merge: weights (%.2f, %.2f), rank %s", w_c, w_s, _ranks(merged))
    # no trigger words here: this node does not read the concepts' prompts
    return merged, to_kohya(merged, kohya_metadata(cfg_base.pretrained_model_name_or_path, _architecture(pipe),
                                                   title="direct merge"))


def _architecture(pipe) -> str:
    """kohya_metadata's architecture: SDXL, or the SD 1.x family (SD 2.x is loaded the same way; its files are
    labelled SD 1 here)."""
    return "sdxl" if type(pipe).__name__ == "StableDiffusionXLPipeline" else "sd15"


def _ranks(lora: LoraFile) -> dict:
    cfg = lora.adapter_config() or {}
    return {"r": cfg.get("r"), "other_layer_ranks": sorted(set((cfg.get("rank_pattern") or {}).values()))}


def analyse_merge(subject_lora: LoraFile, style_lora: LoraFile, mergers: dict[str, torch.Tensor],
                  subject_images: dict[str, Image.Image], subject_prompt: dict, style_images: dict[str, Image.Image],
                  style_prompt: dict, base_params: dict) -> tuple[dict, plt.Figure]:
    """Column alignment, merger overlap before/after, sparsity and the paper's two premises per layer group
    (§3: sparsity and column alignment with its shuffled chance level, core/merging/premises.py)."""
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"))
    loras = _factors(subject_lora, style_lora, pipe)
    align = column_alignment(loras["subject"], loras["style"])
    after = merger_cosines(mergers, NAMES)
    # Each LoRA on held-out draws of its own concept (seed PREMISE_SEED, which no merge or evaluation draw uses).
    probes = {n: make_probe(pipe, [imgs[k] for k in sorted(imgs)], prompt["prompt"], PREMISE_DRAWS, PREMISE_SEED)
              for n, imgs, prompt in (("subject", subject_images, subject_prompt), ("style", style_images, style_prompt))}
    by_group = {n: sparsity_by_group(pipe.unet, loras[n], lambda unet, n=n: predict(unet, probes[n]))
                for n in NAMES}
    alignment = column_alignment_by_group(loras["subject"], loras["style"])
    report = {
        "column_alignment": {"per_layer": align, **summarise(align)},
        "merger_abs_cos": {"before": 1.0, "after": summarise(after), "per_layer_after": after},
        "sparsity": {n: sparsity(f) for n, f in loras.items()},
        "pruning_output_change": {n: {k: v for k, v in by_group[n]["all"].items() if k.startswith("prune_")}
                                  for n in NAMES},
        "premises": {"draws": PREMISE_DRAWS, "seed": PREMISE_SEED, "column_alignment": alignment,
                     "sparsity": by_group, "table": premises_table(alignment, by_group)},
    }
    step_logger("merge.premises")(0, **_premise_metrics(alignment, by_group))
    logger.info("Merge premises: zeroing 90%% of ΔW changes the output by %.1f%% (subject) / %.1f%% (style) of the "
                "LoRA's effect (paper: barely); matching-column |cos| %.3f vs %.3f shuffled; merger |cos| 1.000 -> %.3f",
                100 * by_group["subject"]["all"]["prune_90pct"], 100 * by_group["style"]["all"]["prune_90pct"],
                alignment["all"]["aligned"], alignment["all"]["shuffled"], report["merger_abs_cos"]["after"]["mean"])
    return report, analysis_figure(report)


def _premise_metrics(alignment: dict, by_group: dict) -> dict[str, float]:
    """MLflow metric names: ``<group>.col_cos`` / ``.col_cos_shuffled`` / ``.<lora>_prune_90pct`` (``/`` -> ``_``)."""
    out = {}
    for group, a in alignment.items():
        g = group.replace("/", "_")
        out[f"{g}.col_cos"], out[f"{g}.col_cos_shuffled"] = a["aligned"], a["shuffled"]
    for name, groups in by_group.items():
        for group, row in groups.items():
            out.update({f"{group.replace('/', '_')}.{name}_{k}": v for k, v in row.items() if k.startswith("prune_")})
    return out


def merge_figure(history: dict[str, list[float]]) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    steps = range(1, len(history["loss"]) + 1)
    for name in NAMES:
        axes[0].plot(steps, history[f"recon_{name}"], label=name)
    axes[0].set(title="reconstruction (relative)", xlabel="step", yscale="log")
    axes[0].legend()
    axes[1].plot(steps, history["overlap"])
    axes[1].set(title="overlap penalty", xlabel="step")
    axes[2].plot(steps, history["mean_abs_cos"])
    axes[2].set(title="mean |cos(m_c, m_s)|", xlabel="step", ylim=(0, 1.05))
    fig.tight_layout()
    return fig


def _unet_block(layer: str) -> str:
    """``down_blocks.1.attentions.0...to_q`` -> ``down_blocks.1``; ``mid_block...`` -> ``mid_block``."""
    parts = layer.split(".")
    return ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]


def _bars_by_block(ax, per_layer: dict[str, float], label: str | None = None) -> None:
    """One bar per layer (adapted linear layer), in UNet order, coloured and labelled by UNet block."""
    blocks = [_unet_block(k) for k in per_layer]
    order = list(dict.fromkeys(blocks))
    colours = {b: plt.cm.tab10(i % 10) for i, b in enumerate(order)}
    x = np.arange(len(per_layer))
    ax.bar(x, list(per_layer.values()), width=0.85, color=[colours[b] for b in blocks], label=label)
    centres = [x[[b == block for b in blocks]].mean() for block in order]
    ax.set_xticks(centres, [b.replace("_blocks.", " ").replace("_block", "") for b in order], rotation=30, ha="right")
    for boundary in np.flatnonzero([a != b for a, b in zip(blocks, blocks[1:])]):
        ax.axvline(boundary + 0.5, color="grey", linewidth=0.5)


def analysis_figure(report: dict) -> plt.Figure:
    """Per-layer bars grouped by UNet block (why the mergers matter where), the premises per layer group
    (column |cos| against its shuffled chance level), then the pruning curve."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    _bars_by_block(axes[0], report["column_alignment"]["per_layer"])
    axes[0].set(title="|cos| of ΔW_c, ΔW_s columns, per layer", xlabel="UNet block (one bar per adapted layer)",
                ylabel="mean |cos| over columns", ylim=(0, 1))
    _bars_by_block(axes[1], report["merger_abs_cos"]["per_layer_after"], label="after ZipLoRA")
    axes[1].axhline(1.0, linestyle="--", color="black", linewidth=0.8, label="before (all ones)")
    axes[1].set(title="|cos(m_c, m_s)| per layer (Fig. 3b)", xlabel="UNet block (one bar per adapted layer)",
                ylabel="|cos(m_c, m_s)|", ylim=(0, 1.15))
    axes[1].legend(fontsize=8, loc="upper right", ncols=2)
    alignment = report["premises"]["column_alignment"]
    x = np.arange(len(alignment))
    axes[2].bar(x - 0.2, [a["aligned"] for a in alignment.values()], 0.4, label="matching columns")
    axes[2].bar(x + 0.2, [a["shuffled"] for a in alignment.values()], 0.4, label="style columns shuffled (chance)")
    axes[2].set_xticks(x, list(alignment), rotation=30, ha="right")
    axes[2].set(title="column alignment per layer group (Obs. 3)", ylabel="mean |cos|", ylim=(0, 1))
    axes[2].legend(fontsize=8)
    for name, pr in report["pruning_output_change"].items():
        fr = [int(k.split("_")[1].rstrip("pct")) for k in pr]
        axes[3].plot(fr, list(pr.values()), "o-", label=name)
    axes[3].axhline(0.25, linestyle="--", color="grey", linewidth=0.8, label="testbed target at 90 %")
    axes[3].set(title="output change when zeroing smallest |ΔW| (Obs. 2)", xlabel="% of entries zeroed (every layer)",
                ylabel="relative to the LoRA's effect")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    return fig
