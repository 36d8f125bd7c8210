"""``merge`` nodes: ZipLoRA's mergers (Eq. 3), every compared method built from the two LoRAs, the two
reference merges exported for users, and the merge analysis."""

from __future__ import annotations

import logging

import torch  # noqa: E402
from matplotlib.figure import Figure
from PIL import Image  # noqa: E402

from ...core.config_utils import from_dict, require
from ...core.diffusion.base_model import BaseModelConfig, base_unet_config, load_base_pipeline, resolve_device
from ...core.diffusion.sdxl import encode_concept, training_scheduler  # noqa: E402
from ...core.evaluation.cost import measure  # noqa: E402
from ...core.evaluation.fidelity import make_probe, predict  # noqa: E402
from ...core.evaluation.figures import analysis_figure, merge_figure
from ...core.lora.factors import checked_unet_factors
from ...core.lora.io import LoraFile
from ...core.merging.analysis import column_alignment, merger_cosines, sparsity, summarise
from ...core.merging.build import build_methods as build_all
from ...core.merging.export import kohya_metadata, to_kohya
from ...core.merging.method import BuildContext
from ...core.merging.optimise import ziplora_merge
from ...core.merging.premises import (  # noqa: E402
    PREMISE_DRAWS,
    PREMISE_SEED,
    column_alignment_by_group,
    premises_table,
    sparsity_by_group,
)
from ...core.merging.registry import parse_methods
from ...kedro_glue.params import merge_stage
from ...kedro_glue.tracking import step_logger  # noqa: E402

logger = logging.getLogger(__name__)
NAMES = ("subject", "style")
EXPORTED = ("ziplora", "direct_merge")  # the methods whose files the merge stage also saves on their own


def zip_merge(subject_lora: LoraFile, style_lora: LoraFile, subject_images: dict[str, Image.Image],
              subject_prompt: dict, style_images: dict[str, Image.Image], style_prompt: dict,
              merge_params: dict, base_params: dict) -> tuple[dict, dict, Figure]:
    """Learn ZipLoRA's merger vectors (Eq. 3). The methods that export them (``merge.methods``, kind ziplora)
    are built by ``build_methods``.

    Returns:
        (merger vectors, merge log, loss-curve figure).
    """
    cfg = merge_stage(merge_params).config
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"))
    loras = checked_unet_factors(pipe, {"subject": subject_lora, "style": style_lora})
    inputs = {"subject": encode_concept(pipe, [subject_images[k] for k in sorted(subject_images)], subject_prompt["prompt"]),
              "style": encode_concept(pipe, [style_images[k] for k in sorted(style_images)], style_prompt["prompt"])}
    # merge/step.*: each optimiser step's batch (one noise draw per concept); merge/pool.*: the whole
    # teacher pool before and after (a fixed pool only: with fresh draws the "pool" is the held-out draws, and
    # its metrics would repeat merge/heldout.*); merge/heldout.*: the same on draws from another seed that no
    # step used (the figures that say whether the mergers generalise; the log line leads with them).
    log = step_logger("merge.step")
    with measure(pipe.unet.device) as cost:  # peak memory for the evaluation's cost column
        result = ziplora_merge(pipe.unet, loras, inputs, cfg, training_scheduler(pipe), on_step=log)
    steps = len(result.history["loss"])
    for name, before, after in ((("pool", result.initial, result.final),) * (not cfg.fresh)
                                + (("heldout", result.heldout_initial, result.heldout_final),)):
        step_logger(f"merge.{name}")(steps, **{f"{k}_initial": v for k, v in before.items()},
                                     **{f"{k}_final": v for k, v in after.items()})
    h0, h1 = result.heldout_initial, result.heldout_final
    own = ("" if cfg.fresh else  # fresh draws: no pool of its own, every draw was new
           " (on its own pool: {:.4f} -> {:.4f}, {:.4f} -> {:.4f})".format(
               result.initial["recon_subject"], result.final["recon_subject"], result.initial["recon_style"],
               result.final["recon_style"]))
    pool = "fresh draws" if cfg.fresh else cfg.teacher_pool
    logger.info("ZipLoRA merge: %d steps in %.1f s (teacher_pool %s); held-out recon subject %.4f -> %.4f, "
                "style %.4f -> %.4f%s; mean |cos(m_c, m_s)| %.3f -> %.3f", steps, result.seconds, pool,
                h0["recon_subject"], h1["recon_subject"], h0["recon_style"], h1["recon_style"], own,
                h0["mean_abs_cos"], h1["mean_abs_cos"])
    merge_log = {"steps": steps, "seconds": result.seconds, "stopped_early": result.stopped_early,
                 "teacher_pool": cfg.teacher_pool, "initial": result.initial, "final": result.final,
                 "heldout_draws": cfg.heldout_draws, "heldout_initial": h0, "heldout_final": h1,
                 "history": result.history, "peak_mb": cost.peak_mb, "memory_kind": cost.memory_kind}
    return result.mergers, merge_log, merge_figure(result.history)


def input_statistics(lora: LoraFile, images: dict[str, Image.Image], prompt: dict, merge_params: dict,
                     base_params: dict) -> dict[str, torch.Tensor]:
    """One concept's recorded layer inputs (Σ x xᵀ per distinct input of every layer its LoRA adapts) under its own
    model, on ``merge.closed_form_draws`` draws of its images (``core.merging.closed_form.record_alone``):
    what the ``ziplora_closed_form`` method is solved from. A function of the concept alone, so the grid records
    it once per concept."""
    from ...core.merging.closed_form import record_alone

    cfg = merge_stage(merge_params).config
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"))
    factors = checked_unet_factors(pipe, {prompt.get("concept", "concept"): lora})
    name = next(iter(factors))
    inputs = encode_concept(pipe, [images[k] for k in sorted(images)], prompt["prompt"])
    stats = record_alone(pipe.unet, factors[name], name, inputs, training_scheduler(pipe), cfg.closed_form_draws,
                         cfg.timestep_range, cfg.closed_form_batch_size, cfg.seed, cfg.closed_form_output_draws,
                         cfg.closed_form_statistics_precision)
    logger.info("Input statistics of '%s': %d layers reading %d distinct inputs, %d draws (%d with output weights) "
                "in %.1f s", prompt["prompt"], len(stats.group_of), len(stats.moments), cfg.closed_form_draws,
                cfg.closed_form_output_draws, stats.seconds)
    return stats.to_tensors()


def build_context(subject_lora: LoraFile, style_lora: LoraFile, mergers: dict, logs: dict[str, dict],
                  subject_prompt: dict, style_prompt: dict, base_params: dict,
                  statistics: dict[str, dict] | None = None, images: dict[str, dict] | None = None,
                  merge_params: dict | None = None) -> BuildContext:
    """What the methods are built from; the UNet is loaded only when a method needs one (PEFT). ``statistics``:
    {"subject" | "style": an ``input_statistics`` output}; ``images``: {"subject" | "style": its images} (for the
    methods that take UNet steps)."""
    from ...core.merging.closed_form import ConceptStats

    base = from_dict(BaseModelConfig, base_params, "base_model")
    sources = {"subject": subject_lora, "style": style_lora}
    stats = None if statistics is None else {
        n: ConceptStats.from_tensors(t, f"{n}_input_statistics") for n, t in statistics.items()}
    prompts = {"subject": subject_prompt["prompt"], "style": style_prompt["prompt"]}
    concepts = (None if images is None
                else {n: ([imgs[k] for k in sorted(imgs)], prompts[n]) for n, imgs in images.items()})
    return BuildContext(sources, mergers, logs, lambda: load_base_pipeline(base).unet, resolve_device(base.device),
                        base_unet_config(base), f"'{subject_prompt['prompt']}' and '{style_prompt['prompt']}'",
                        statistics=stats, load_pipeline=lambda: load_base_pipeline(base), concepts=concepts,
                        merge_config=None if merge_params is None else merge_stage(merge_params).config)


def build_methods(subject_lora: LoraFile, style_lora: LoraFile, mergers: dict, merge_log: dict,
                  subject_prompt: dict, style_prompt: dict, methods_params: dict, base_params: dict,
                  subject_statistics: dict | None = None, style_statistics: dict | None = None,
                  subject_images: dict | None = None, style_images: dict | None = None,
                  merge_params: dict | None = None) -> tuple[dict[str, LoraFile], dict]:
    """Every enabled method of ``merge.methods`` that is built from the two LoRAs (the registry's classes; a LoRA
    as trained is not): its LoRA file (none for the base model and K-LoRA) and what building it cost (merge
    seconds, peak memory, file size)."""
    methods = parse_methods(methods_params, "merge.methods")
    ctx = build_context(subject_lora, style_lora, mergers, {"ziplora": merge_log}, subject_prompt, style_prompt,
                        base_params, concept_pair(subject_statistics, style_statistics),
                        concept_pair(subject_images, style_images), merge_params)
    return build_all(methods, ctx)


def concept_pair(subject: dict | None, style: dict | None) -> dict | None:
    """{"subject": subject, "style": style} (their statistics or images) as ``build_context`` takes them; None
    unless both are given."""
    return None if subject is None or style is None else {"subject": subject, "style": style}


def export_merges(method_loras: dict[str, LoraFile], subject_prompt: dict, style_prompt: dict,
                  base_params: dict, inference: dict | None = None
                  ) -> tuple[LoraFile, LoraFile, LoraFile, LoraFile, dict, dict, str, str]:
    """The ``ziplora`` and ``direct_merge`` methods' files on their own, in diffusers and kohya formats (the
    latter with A1111/ComfyUI header keys: base model, trigger words, title), a model card beside each
    (``README.md``: base model, trigger words, prompt, how to load it; ``inference``: the generation settings the
    project judged it with, ``num_inference_steps`` / ``guidance_scale`` / ``resolution`` / ``seeds``) and a sample
    image each ({"sample": PIL}: the card's prompt with those settings and the first seed)."""
    from ...core.merging.model_card import card_prompt, merge_model_card, sample_image
    from ...kedro_glue.tracking import active_run_id

    missing = [m for m in EXPORTED if m not in method_loras]
    require(not missing, f"merge.methods: {missing} switched off or missing; the merge stage saves their files "
                         f"as ziplora_weights / direct_merge_weights. Enable them (kind ziplora / direct_merge).")
    base = from_dict(BaseModelConfig, base_params, "base_model")
    architecture = _architecture(base_unet_config(base))
    tokens = [subject_prompt["token"], style_prompt["token"]]
    ziplora, direct = method_loras["ziplora"], method_loras["direct_merge"]
    titles = {"ziplora": f"ZipLoRA: {subject_prompt['prompt']} + {style_prompt['prompt']}",
              "direct_merge": f"direct merge: {subject_prompt['prompt']} + {style_prompt['prompt']}"}
    logger.info("Exported: ZipLoRA rank %s, direct merge rank %s", _ranks(ziplora), _ranks(direct))
    cards = [merge_model_card(m, f"{m}.safetensors", f"{m}_kohya.safetensors", base.pretrained_model_name_or_path,
                              architecture, subject_prompt, style_prompt, inference, active_run_id())
             for m in EXPORTED]
    pipe = load_base_pipeline(base, for_inference=True)
    prompt = card_prompt(subject_prompt, style_prompt)
    samples = [{"sample": sample_image(pipe, method_loras[m], m, prompt, inference)} for m in EXPORTED]
    return (ziplora, to_kohya(ziplora, kohya_metadata(base.pretrained_model_name_or_path, architecture, tokens,
                                                      titles["ziplora"])),
            direct, to_kohya(direct, kohya_metadata(base.pretrained_model_name_or_path, architecture, tokens,
                                                    titles["direct_merge"])), *samples, *cards)


def _architecture(unet_config) -> str:
    """kohya_metadata's architecture: SDXL (its UNet takes added text/time conditioning), or the SD 1.x family
    (SD 2.x is loaded the same way; its files are labelled SD 1 here)."""
    return "sdxl" if unet_config.get("addition_embed_type") == "text_time" else "sd15"


def _ranks(lora: LoraFile) -> dict:
    cfg = lora.adapter_config() or {}
    return {"r": cfg.get("r"), "other_layer_ranks": sorted(set((cfg.get("rank_pattern") or {}).values()))}


def analyse_merge(subject_lora: LoraFile, style_lora: LoraFile, mergers: dict[str, torch.Tensor],
                  subject_images: dict[str, Image.Image], subject_prompt: dict, style_images: dict[str, Image.Image],
                  style_prompt: dict, base_params: dict) -> tuple[dict, Figure]:
    """Column alignment, merger overlap before/after, sparsity and the paper's two premises per layer group
    (§3: sparsity and column alignment with its shuffled chance level, core/merging/premises.py)."""
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base_params, "base_model"))
    loras = checked_unet_factors(pipe, {"subject": subject_lora, "style": style_lora})
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

