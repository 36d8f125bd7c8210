"""Held-out Eq. 3 reconstruction of the closed-form mergers against the 100-step optimiser's, per grid pair.

A **diagnostic**, not a verdict (the grid's judged table is the verdict): for every pair of a finished grid run
(``kedro run --env grid``) it loads the pair's two concept LoRAs, images and prompts, the optimiser's mergers
(``<pair>.ziplora_mergers``) and the concepts' recorded statistics (``<concept>.input_statistics``), solves every
``ziplora_closed_form`` entry named by ``--methods`` (default: the ``ziplora_closed_form`` entry) from those
statistics with all its options, and scores the direct merge (all mergers 1), the optimiser's and each closed form's
mergers on the same held-out draws the merge stage scores itself on (``merge.heldout_draws`` per concept from seed
``merge.seed + 1000003``; no merge saw them). Beside it, how each set of mergers moved from the direct merge
against the optimiser's: ``mean_shift`` (the mean of 1 − m over all columns: > 0 shrinks the LoRAs as a whole) and
``corr_with_ziplora`` (Pearson correlation of 1 − m with the optimiser's 1 − m over all columns). And
``gradient_agreement``: at the direct merge, the correlation of the layer-local objective's gradient (the closed
form's, from the statistics, no ridge) with Eq. 3's own gradient at the UNet's output (one backward per half of each
concept's held-out draws), per layer (the median over the layers both LoRAs adapt) and over all columns, with the
split-half correlation of Eq. 3's gradient (how reliable its estimate is); with ``--output-draws N`` the same for the
K-FAC output-weighted layer objective, its weights recorded from N forward + backward passes per concept.

    python benchmarks/closed_form_heldout.py --project <grid run folder> [--env grid] [--methods a,b] [--output-draws 4]

Logs go to stderr; the last stdout line is one JSON object (per pair, and the ratio of the sums over pairs).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path

logger = logging.getLogger("benchmarks.closed_form_heldout")


def moves(mergers: dict, reference: dict) -> dict:
    """How ``mergers`` moved from all ones: the mean of 1 − m, and its correlation with ``reference``'s 1 − m."""
    import torch

    keys = sorted(reference)
    d, ref = (torch.cat([1 - x[k].float().flatten() for k in keys]) for x in (mergers, reference))
    corr = float(torch.corrcoef(torch.stack([d, ref]))[0, 1]) if d.std() > 0 and ref.std() > 0 else 0.0
    return {"mean_shift": round(float(d.mean()), 4), "corr_with_ziplora": round(corr, 3)}


def gradient_agreement(unet, wrappers: dict, heldout: list, names: list[str], loras: dict, stats: dict,
                       cfg) -> dict:
    """Eq. 3's gradient at the direct merge (the held-out draws, halves apart) against the layer objective's."""
    import statistics as st

    import torch

    from ziplora_pipeline.core.diffusion.sdxl import batch_conditioning, unet_call
    from ziplora_pipeline.core.merging.closed_form import layer_quadratic

    params = {f"{p}.{n}": w.mergers[n] for p, w in wrappers.items() for n in w.mergers}
    halves = []
    with torch.no_grad():
        for m in params.values():
            m.fill_(1.0)
            m.requires_grad_(True)
    for half in (0, 1):
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for pool in heldout:
            i = torch.arange(pool.noisy.shape[0])[half::2]
            pred = unet_call(unet, pool.noisy[i], pool.timesteps[i], *batch_conditioning(pool.inputs, len(i)))
            loss = cfg.objective.recon_term(pred, pool.target[i], pool.lora_effect)
            for k, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
                total[k] += g
        halves.append(total)
    full = {k: (halves[0][k] + halves[1][k]) / 2 for k in params}

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1])

    def agreement(weighted: bool) -> dict:
        local, per_layer = {}, []
        for path in wrappers:
            if not all(path in loras[n] for n in names):
                continue
            outputs = {n: stats[n].outputs[path] for n in names} if weighted else None
            quad = layer_quadratic({n: loras[n][path] for n in names}, {n: stats[n].of(path) for n in names},
                                   cfg.normalize_recon, 0.0, path, outputs)
            grad = 2 * (quad.P.sum(dim=1) - quad.r)  # ∇Q at m = 1: 2 (P 1 − r)
            local[path] = grad.float()
            per_layer.append(corr(grad, torch.cat([full[f"{path}.{n}"] for n in names])))
        flat = torch.cat(list(local.values()))
        eq3 = torch.cat([torch.cat([full[f"{p}.{n}"] for n in names]) for p in local])
        return {"per_layer_median": round(st.median(per_layer), 3), "all_columns": round(corr(flat, eq3), 3),
                "sign_agreement": round(float((flat.sign() == eq3.sign()).float().mean()), 3)}

    split = corr(*(torch.cat([h[k].flatten() for k in params]) for h in halves))
    out = {**agreement(False), "eq3_split_half": round(split, 3)}
    if all(stats[n].outputs for n in names):  # the K-FAC output-weighted layer objective too
        out["output_weighted"] = agreement(True)
    return out


def pair_figures(catalog, params, subject: str, style: str, methods: list[str], output_draws: int = 0) -> dict:
    import dataclasses

    import torch

    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline
    from ziplora_pipeline.core.diffusion.sdxl import encode_concept, training_scheduler
    from ziplora_pipeline.core.lora.factors import checked_unet_factors
    from ziplora_pipeline.core.merging.closed_form import ConceptStats
    from ziplora_pipeline.core.merging.registry import parse_method
    from ziplora_pipeline.core.merging.optimise import build_teacher_pool, pool_terms
    from ziplora_pipeline.core.merging.ziplora_closed_form import ZipLoraClosedForm
    from ziplora_pipeline.core.merging.ziplora_layer import (attach_ziplora, detach_ziplora, load_merger_state_dict,
                                                             merger_state_dict)
    from ziplora_pipeline.kedro_glue.params import merge_stage

    cfg = merge_stage(params["merge"]).config
    pipe = load_base_pipeline(from_dict(BaseModelConfig, params["base_model"], "base_model"))
    pair = f"{subject}_x_{style}"
    roles = {"subject": subject, "style": style}
    loras = checked_unet_factors(pipe, {r: catalog.load(f"{c}.lora_weights") for r, c in roles.items()})
    inputs = {}
    for role, concept in roles.items():
        images, prompt = catalog.load(f"{concept}.images"), catalog.load(f"{concept}.prompt")
        inputs[role] = encode_concept(pipe, [images[k] for k in sorted(images)], prompt["prompt"])
    stats = {r: ConceptStats.from_tensors(catalog.load(f"{c}.input_statistics"), f"{c}.input_statistics")
             for r, c in roles.items()}
    agreement_stats = dict(stats)  # never emptied: the agreement only reads the matrices
    solved = {}
    for name in methods:
        method = parse_method(name, params["merge"]["methods"].get(name))
        if not isinstance(method, ZipLoraClosedForm):
            raise SystemExit(f"--methods: {name!r} is not a ziplora_closed_form entry of merge.methods.")
        solved[name] = method.solve(loras, {n: s.copy() for n, s in stats.items()})  # each solve empties its copy
    gradient = catalog.load(f"{pair}.ziplora_mergers")
    wrappers = attach_ziplora(pipe.unet, loras)
    scheduler = training_scheduler(pipe)
    out = {}
    try:
        gen = torch.Generator().manual_seed(cfg.seed + 1_000_003)  # the merge stage's held-out draws
        torch.manual_seed(cfg.seed)
        heldout = [build_teacher_pool(pipe.unet, wrappers, scheduler, n, inputs[n], cfg, gen, cfg.heldout_draws)
                   for n in ("subject", "style")]
        ones = {k: torch.ones_like(v) for k, v in merger_state_dict(wrappers).items()}  # the direct merge
        for label, mergers in (("direct", ones), ("gradient", gradient), *solved.items()):
            load_merger_state_dict(wrappers, mergers)
            t = pool_terms(pipe.unet, wrappers, heldout, ["subject", "style"], cfg)
            out[label] = {k: round(t[k], 4) for k in ("recon_subject", "recon_style", "mean_abs_cos")}
            out[label].update(moves(mergers, gradient))
        if output_draws:  # the output weights, recorded here on each concept's own model
            from ziplora_pipeline.core.merging.closed_form import record_output_moments

            for n in ("subject", "style"):
                agreement_stats[n] = dataclasses.replace(agreement_stats[n], outputs={})
                record_output_moments(pipe.unet, wrappers, n, inputs[n], scheduler, output_draws, cfg.timestep_range,
                                      cfg.seed, agreement_stats[n])
        out["gradient_agreement"] = gradient_agreement(pipe.unet, wrappers, heldout, ["subject", "style"], loras,
                                                       agreement_stats, cfg)
    finally:
        detach_ziplora(pipe.unet, wrappers)
    logger.info("%s: %s", pair, out)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--project", required=True, help="the grid run's project folder")
    p.add_argument("--env", default="grid")
    p.add_argument("--output-draws", type=int, default=0,
                   help="> 0: also the agreement of the output-weighted (K-FAC) layer objective, its weights recorded "
                        "from this many forward + backward passes per concept")
    p.add_argument("--methods", default="ziplora_closed_form",
                   help="comma-separated ziplora_closed_form entries of merge.methods to solve and score")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.evaluation.grid import GridConfig

    methods = [m for m in args.methods.split(",") if m]
    project = Path(args.project).resolve()
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=args.env) as session:
        context = session.load_context()
        params = context.params
        catalog = context.catalog
        pairs = from_dict(GridConfig, params["grid"], "grid").pair_list()
        per_pair = {f"{s}_x_{t}": pair_figures(catalog, params, s, t, methods, args.output_draws)
                    for s, t in pairs}
    labels = ("direct", "gradient", *methods)
    total = {label: sum(v[label]["recon_subject"] + v[label]["recon_style"] for v in per_pair.values())
             for label in labels}
    summary = {}
    for name in methods:
        ratios = [(v[name]["recon_subject"] + v[name]["recon_style"])
                  / (v["gradient"]["recon_subject"] + v["gradient"]["recon_style"]) for v in per_pair.values()]
        summary[name] = {"over_gradient_sum": round(total[name] / total["gradient"], 3),
                         "over_gradient_per_pair_median": round(statistics.median(ratios), 3),
                         "over_gradient_per_pair_range": [round(min(ratios), 3), round(max(ratios), 3)]}
    agreement = {k: round(statistics.mean(v["gradient_agreement"][k] for v in per_pair.values()), 3)
                 for k in ("per_layer_median", "all_columns", "sign_agreement", "eq3_split_half")}
    if args.output_draws:
        agreement["output_weighted"] = {
            k: round(statistics.mean(v["gradient_agreement"]["output_weighted"][k] for v in per_pair.values()), 3)
            for k in ("per_layer_median", "all_columns", "sign_agreement")}
    moved = {label: {k: round(statistics.mean(v[label][k] for v in per_pair.values()), 4)
                     for k in ("mean_shift", "corr_with_ziplora")} for label in labels}
    print(json.dumps({"pairs": per_pair, "sum_over_pairs": {k: round(v, 4) for k, v in total.items()},
                      "closed_form": summary, "moves_mean_over_pairs": moved,
                      "gradient_agreement_mean_over_pairs": agreement}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
