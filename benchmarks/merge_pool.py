"""ZipLoRA merge settings judged on held-out draws; by default the teacher pool: a fixed pool of N draws
per concept vs fresh draws every step (issue 9). ``--vary overlap=cosine,mean_product,dot`` compares
another ``merge`` key the same way.

On the default run's own subject and style LoRAs (the newest catalog versions; run ``kedro run``
first), each setting runs the full merge (``params:merge``, 100 steps) and is judged on draws from
another seed that no setting trained on (``merge.heldout_draws`` per concept: the same draws for every
setting): the held-out reconstruction of each concept, relative to its LoRA's own effect, before (the
direct merge: all mergers 1) and after. Seconds are the whole ``ziplora_merge`` call (pool + steps).
Settings are interleaved per repeat (ABC, CBA, ...) and each repeat uses another merge seed; median
and min over repeats, a repeat > 3x its setting's median flagged as a stall.

    python benchmarks/merge_pool.py                  # pools 16 / 64 / null (fresh draws), 3 repeats, ~3 min on 2 cores
    python benchmarks/merge_pool.py --vary overlap=cosine,mean_product,dot
    python benchmarks/merge_pool.py --quick          # 10 steps, 1 repeat

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

logger = logging.getLogger("merge_pool")
ROOT = Path(__file__).resolve().parents[1]
STALL_FACTOR = 3.0


def load_inputs() -> tuple[dict, dict]:
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT) as session:
        context = session.load_context()
        catalog = context.catalog
        data = {name: catalog.load(name) for name in ("subject_lora_weights", "style_lora_weights", "subject_images",
                                                      "subject_prompt", "style_images", "style_prompt")}
        return data, context.params


def run_one(data: dict, params: dict, key: str, value, seed: int, steps: int | None, heldout_draws: int) -> dict:
    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline
    from ziplora_pipeline.core.diffusion.sdxl import encode_concept, training_scheduler
    from ziplora_pipeline.core.lora.factors import checked_unet_factors
    from ziplora_pipeline.core.merging.optimise import ziplora_merge
    from ziplora_pipeline.kedro_glue.params import merge_stage

    merge = {**params["merge"], key: value, "seed": seed, "heldout_draws": heldout_draws}
    if steps is not None:
        merge["steps"] = steps
    cfg = merge_stage(merge).config
    pipe = load_base_pipeline(from_dict(BaseModelConfig, params["base_model"], "base_model"))
    loras = checked_unet_factors(pipe, {"subject": data["subject_lora_weights"], "style": data["style_lora_weights"]})
    inputs = {c: encode_concept(pipe, [data[f"{c}_images"][k] for k in sorted(data[f"{c}_images"])],
                                data[f"{c}_prompt"]["prompt"]) for c in ("subject", "style")}
    t0 = time.perf_counter()
    result = ziplora_merge(pipe.unet, loras, inputs, cfg, training_scheduler(pipe), progress=False)
    seconds = time.perf_counter() - t0
    h0, h1 = result.heldout_initial, result.heldout_final
    return {"seconds": seconds, "heldout_direct": h0["recon_subject"] + h0["recon_style"],
            "heldout_final": h1["recon_subject"] + h1["recon_style"],
            "heldout_subject": h1["recon_subject"], "heldout_style": h1["recon_style"],
            "pool_final": (result.final["recon_subject"] + result.final["recon_style"]) if not cfg.fresh
            else None, "mean_abs_cos": h1["mean_abs_cos"],
            "mean_merger": float(sum(m.mean() for m in result.mergers.values()) / len(result.mergers))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vary", default="teacher_pool=16,64,null", help="KEY=V1,V2,...: a merge parameter's values")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--heldout-draws", type=int, default=64)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    logging.getLogger("kedro").setLevel(logging.WARNING)
    import yaml

    key, _, values = args.vary.partition("=")
    pools = [yaml.safe_load(v) for v in values.split(",")]  # 16 -> int, null -> None (fresh draws), as in parameters.yml
    repeats, steps = (1, 10) if args.quick else (args.repeats, None)
    data, params = load_inputs()
    # Kedro's session set its own logging (rich, on stdout): back to stderr, so stdout's last line is the JSON.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("kedro").setLevel(logging.WARNING)
    runs: dict[str, list[dict]] = {str(s): [] for s in pools}
    for r in range(repeats):
        order = pools if r % 2 == 0 else pools[::-1]
        for setting in order:
            fig = run_one(data, params, key, setting, seed=r, steps=steps, heldout_draws=args.heldout_draws)
            runs[str(setting)].append(fig)
            logger.info("%s %s, repeat %d: held-out recon %.4f (direct merge %.4f), %.1f s", key, setting, r,
                        fig["heldout_final"], fig["heldout_direct"], fig["seconds"])
    summary = {}
    for setting, figs in runs.items():
        secs = [f["seconds"] for f in figs]
        med = statistics.median(secs)
        summary[setting] = {
            "heldout_final_median": statistics.median(f["heldout_final"] for f in figs),
            "heldout_final_min": min(f["heldout_final"] for f in figs),
            "heldout_final_max": max(f["heldout_final"] for f in figs),
            "heldout_subject_median": statistics.median(f["heldout_subject"] for f in figs),
            "heldout_style_median": statistics.median(f["heldout_style"] for f in figs),
            "heldout_direct": figs[0]["heldout_direct"],
            "mean_abs_cos_median": statistics.median(f["mean_abs_cos"] for f in figs),
            "mean_merger_median": statistics.median(f["mean_merger"] for f in figs),
            "pool_final_median": (statistics.median(f["pool_final"] for f in figs)
                                  if figs[0]["pool_final"] is not None else None),
            "seconds_median": med, "seconds_min": min(secs),
            "stalls": sum(s > STALL_FACTOR * med for s in secs), "repeats": len(figs)}
    print(json.dumps({"vary": key, "steps": steps or params["merge"]["steps"], "heldout_draws": args.heldout_draws,
                      "settings": summary}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
