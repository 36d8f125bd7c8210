"""Judged quality of every method on the default pair, with more seeds than the default run.

Reuses the project's own stages (no second implementation): it runs ``generation`` and
``evaluation`` through a Kedro session with ``generation.seeds`` replaced by ``--seeds`` seeds
(disjoint from the default run's 100-107 and from every training seed), on the newest saved
LoRAs and merges in the catalog (run ``kedro run`` first). Then it runs the toy world's three
checks with ``--check-samples`` samples each (core/toy_world/checks.py):

- subject LoRA alone: identity AUROC of "a sks robot" vs the base model's "a robot";
- style LoRA alone: how often the style judge names the reference style for objects its one
  image never showed ("a cat/car/cup/tree in zwx style"), and how often the attribute judge names the
  prompted object (``content_rate``) or the class it draws instead (``leaked_class``: content leakage);
- base model: class and style accuracy on held-out class × colour × style prompts.

Output: logs (Kedro's go to stdout too); the last stdout lines are one JSON line per method ({"method", "subject", "style",
"prompt"}, each {mean, lo, hi, n} over seeds, plus "harmonic") and one per check.

Usage::

    python benchmarks/quality.py                 # 16 seeds, 48 samples per check (~5 min on 2 cores)
    python benchmarks/quality.py --seeds 8 --check-samples 16   # quicker
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

logger = logging.getLogger("quality")
ROOT = Path(__file__).resolve().parents[1]


def run_stages(seeds: list[int]) -> dict:
    """generation + evaluation with ``seeds``; returns the saved ``image_metrics``."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, runtime_params={"generation": {"seeds": seeds}}) as session:
        session.run(pipeline_names=["generation", "evaluation"])
        return session.load_context().catalog.load("image_metrics")


def checks(n: int) -> list[dict]:
    """The three toy-world checks on the newest subject/style LoRAs, ``n`` samples per arm."""
    from kedro.framework.session import KedroSession

    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline
    from ziplora_pipeline.core.evaluation.judges import EvaluationConfig
    from ziplora_pipeline.core.merging.method import lora_applied
    from ziplora_pipeline.core.toy_world import checks as tc
    from ziplora_pipeline.core.toy_world.data import heldout_prompts
    from ziplora_pipeline.core.toy_world.judges import ToyAttributeEncoder, ToyIdentityEncoder
    from ziplora_pipeline.core.toy_world.render import STYLES

    with KedroSession.create(project_path=ROOT) as session:
        context = session.load_context()
        params, catalog = context.params, context.catalog
        subject, style = catalog.load("subject_lora_weights"), catalog.load("style_lora_weights")
        refs = list(catalog.load("subject_images").values())
        style_refs = list(catalog.load("style_images").values())
    ev = from_dict(EvaluationConfig, params["evaluation"], "evaluation")
    attr, ident = ToyAttributeEncoder(ev.clip.name_or_path), ToyIdentityEncoder(ev.dino.name_or_path)
    target = STYLES[int(attr.predict(style_refs)["style"].mean(0).argmax())]  # the reference image's style
    pipe = load_base_pipeline(from_dict(BaseModelConfig, params["base_model"], "base_model"), for_inference=True)
    seeds = [20_000 + k for k in range(n)]
    base_robots = tc.sample(pipe, ["a robot"] * n, seeds)
    base, _ = tc.check_base_model(pipe, attr, heldout_prompts(), max(1, n // 12 + 1), 20, 4.0, 64)
    with lora_applied(pipe, "subject", subject):
        lora_robots = tc.sample(pipe, ["a sks robot"] * n, seeds)
    objects = [["cat", "car", "cup", "tree"][k % 4] for k in range(n)]  # the style image shows a house
    with lora_applied(pipe, "style", style):
        styled = tc.sample(pipe, [f"a {o} in zwx style" for o in objects], seeds)
    return [{"check": "subject_lora_identity_auroc", **tc.subject_separation(ident, lora_robots, base_robots, refs)},
            {"check": "style_lora_unseen_objects", "target_style": target, **tc.style_transfer_rate(attr, styled, target, objects)},
            {"check": "base_model_heldout_combinations", **base}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=16, help="seeds per prompt (from 200 on)")
    parser.add_argument("--check-samples", type=int, default=48, help="samples per arm of each check")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.chdir(ROOT)
    metrics = run_stages([200 + k for k in range(args.seeds)])
    for method, summary in metrics["judged"].items():
        row = {axis: {k: v for k, v in stats.items() if k != "by_seed"} for axis, stats in summary.items()}
        print(json.dumps({"method": method, **row, "harmonic": metrics["methods"][method]["harmonic"]}), flush=True)
    for line in checks(args.check_samples):
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
