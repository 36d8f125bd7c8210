"""Subject-LoRA settings against the toy world's identity check, without Kedro (core only).

For each setting and LoRA seed it trains the subject LoRA on the sample robot's views with the
project's own ``train_lora`` (as the ``subject`` stage does), samples ``--samples`` "a sks robot"
images with it and the same seeds of "a robot" from the base model alone, and prints one JSON line:
the identity judge's AUROC (LoRA samples vs base samples; the issue asks >= 0.9), both means, and
the training time. Sampling seeds start at ``--sample-seed`` (20,000: disjoint from training and from the
default run; a setting chosen on those is confirmed on another range, e.g. 30,000).

    python benchmarks/subject_sweep.py --settings '{"steps": 600}' '{"steps": 600, "target_modules": ["to_q","to_k","to_v","to_out.0","ff.net.0.proj","ff.net.2"]}' --seeds 0 1
    python benchmarks/subject_sweep.py --base DIR ...     # another base model folder (e.g. a GPU-continued one)

Every setting is a JSON object of ``subject.lora`` keys over conf/base's values.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
logger = logging.getLogger("subject_sweep")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["{}"], help="JSON objects of subject.lora overrides")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="LoRA training seeds")
    p.add_argument("--samples", type=int, default=32, help="samples per arm")
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--sample-seed", type=int, default=20_000,
                   help="first sampling seed (another range confirms a setting chosen on this one)")
    p.add_argument("--base", default=str(ROOT / "data" / "06_models" / "toy_sdxl"))
    p.add_argument("--judges", default=str(ROOT / "data" / "06_models" / "toy_judges"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")

    from PIL import Image

    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline
    from ziplora_pipeline.core.diffusion.sdxl import encode_concept
    from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora
    from ziplora_pipeline.core.merging.method import lora_applied
    from ziplora_pipeline.core.toy_world import checks as tc
    from ziplora_pipeline.core.toy_world.judges import ToyIdentityEncoder

    lora_defaults = yaml.safe_load((ROOT / "conf/base/parameters_subject_lora.yml").read_text())["subject"]["lora"]
    refs = [Image.open(f).convert("RGB") for f in sorted((ROOT / "data/01_raw/subjects/robot").glob("*.png"))]
    ident = ToyIdentityEncoder(str(Path(args.judges) / "identity"))
    base_cfg = BaseModelConfig(pretrained_model_name_or_path=args.base, miniature_seed=None)
    pipe = load_base_pipeline(base_cfg, for_inference=True)
    seeds = [args.sample_seed + k for k in range(args.samples)]
    t0 = time.perf_counter()
    base_robots = tc.sample(pipe, ["a robot"] * args.samples, seeds, guidance=args.guidance)
    logger.info("base samples: %.1f s", time.perf_counter() - t0)
    for setting in args.settings:
        overrides = json.loads(setting)
        for seed in args.seeds:
            params = {**lora_defaults, "checkpoint_every": 0, **overrides, "seed": seed}
            cfg = from_dict(LoraTrainingConfig, params, "subject.lora")
            fresh = load_base_pipeline(base_cfg)  # train_lora leaves its adapter on the UNet it trained
            result = train_lora(fresh, encode_concept(fresh, refs, "a sks robot"), cfg, "subject")
            del fresh
            with lora_applied(pipe, "subject", result.lora):
                robots = tc.sample(pipe, ["a sks robot"] * args.samples, seeds, guidance=args.guidance)
            sep = tc.subject_separation(ident, robots, base_robots, refs)
            line = {"setting": overrides, "seed": seed, **sep, "train_seconds": round(result.seconds, 1),
                    "final_loss_mean10": sum(result.losses[-10:]) / len(result.losses[-10:]),
                    "sample_seeds": [seeds[0], seeds[-1]], "base": args.base, "device": str(pipe.unet.device)}
            print(json.dumps(line), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
