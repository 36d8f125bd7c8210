"""Style-LoRA settings against content leakage, without Kedro (core only).

The style LoRA learns from one image (a house in the sketch style). Asked for "a cat in zwx style" it
should draw a cat in that style; a LoRA that copies its image draws the house instead. For each setting and
LoRA seed this trains the style LoRA with the project's own ``train_lora`` (as the ``style`` stage does),
samples ``--samples`` images of objects the image never showed ("a cat/car/cup/tree in zwx style"), and
prints one JSON line with the attribute judge's two rates:

- ``style_rate``: the judge names the reference style (the issue's check, >= 0.7);
- ``content_rate``: the judge names the prompted class (1 - leakage; the base model alone on
  "a <class> in sketch style" is the ceiling, printed once as ``base_content_rate``);
- ``leaked_class`` / ``leaked_rate``: the class drawn most often instead, and how often (the house).

    python benchmarks/style_sweep.py --settings '{}' '{"target_modules": ["attn2.to_k", "attn2.to_v"]}' --seeds 1 2
    python benchmarks/style_sweep.py --prior car cup --objects cat tree   # with a prior of other objects (ours)

``--round2 OBJ ...`` (ours, after StyleDrop's iterative training): the first LoRA draws ``--round2-images``
pictures of "a <OBJ> in zwx style"; the base model itself, used as a diffusion classifier (lower denoising
loss under "a <OBJ>" than under "a house" on the same noise draws; no judge of the evaluation), keeps those
that show the object; a second LoRA is trained from scratch on the style image and the kept pictures in turn.

``--prior OBJ ...`` (ours, DreamBooth's prior preservation carried over to a style LoRA): the base model draws
``--prior-images`` pictures of "a <OBJ>" (seeds 50,000+), and every optimizer step adds one micro-batch of them
(in turn per object, caption "a <OBJ>") to the style image's micro-batch, so the LoRA is pulled back towards the
base model wherever the style image does not speak. Keep ``--objects`` (the judged prompts) disjoint from them.

``--crops N`` (ours; diffusers' DreamBooth scripts offer the same augmentation): train on N random resized
crops (scale ``--crop-scale``) with random horizontal flips of the one style image instead of the image itself.

Every setting is a JSON object of ``style.lora`` keys over conf/base's values, plus ``blocks`` (ours, after
B-LoRA's finding that SDXL's style and layout sit in different blocks): a list of UNet block prefixes
(``up_blocks.1``, ``mid_block``) to which ``target_modules`` is restricted. ``timestep_range: [lo, hi]`` trains
on those timesteps only (``LoraTrainingConfig``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
logger = logging.getLogger("style_sweep")
OBJECTS = ("cat", "car", "cup", "tree", "house")  # the judged prompts: the first four the style image does not show


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["{}"], help="JSON objects of style.lora overrides")
    p.add_argument("--seeds", nargs="+", type=int, default=[1, 2], help="LoRA training seeds")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--sample-seed", type=int, default=20_000)
    p.add_argument("--base", default=str(ROOT / "data" / "06_models" / "toy_sdxl"))
    p.add_argument("--judges", default=str(ROOT / "data" / "06_models" / "toy_judges"))
    p.add_argument("--style", default="sketch",
                   help="a style of conf/grid (sketch: a house, mosaic: a tree, dots: a cat; written by "
                        "scripts/make_sample_data.py --grid): its one image, token and noun")
    p.add_argument("--objects", nargs="+", default=None, help="objects of the judged prompts (default: four the "
                   "style image does not show)")
    p.add_argument("--prior", nargs="*", default=[], help="objects of a prior (see above); none by default")
    p.add_argument("--prior-images", type=int, default=8)
    p.add_argument("--round2", nargs="*", default=[],
                   help="objects of a second round (StyleDrop-like, see above); none by default")
    p.add_argument("--round2-images", type=int, default=16, help="first-round samples per object")
    p.add_argument("--crops", type=int, default=0, help="train on N random resized crops + flips (0: the image)")
    p.add_argument("--crop-scale", nargs=2, type=float, default=[0.35, 1.0], help="crop area range")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")

    from PIL import Image

    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline
    from ziplora_pipeline.core.diffusion.sdxl import encode_concept
    from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora
    from ziplora_pipeline.core.merging.method import lora_applied
    from ziplora_pipeline.core.toy_world import checks as tc
    from ziplora_pipeline.core.toy_world.judges import ToyAttributeEncoder
    from ziplora_pipeline.core.toy_world.render import STYLES

    lora_defaults = yaml.safe_load((ROOT / "conf/base/parameters_style_lora.yml").read_text())["style"]["lora"]
    concept = yaml.safe_load((ROOT / "conf/grid/parameters.yml").read_text())["grid"]["styles"][args.style]
    token, noun = concept["token"], concept["noun"]
    args.objects = args.objects or [o for o in OBJECTS if o != noun][:4]
    image = [Image.open(ROOT / f"data/01_raw/styles/{args.style}/{args.style}.png").convert("RGB")]
    attr = ToyAttributeEncoder(str(Path(args.judges) / "attributes"))
    target = STYLES[int(attr.predict(image)["style"].argmax(-1)[0])]
    base_cfg = BaseModelConfig(pretrained_model_name_or_path=args.base, miniature_seed=None)
    pipe = load_base_pipeline(base_cfg, for_inference=True)
    seeds = [args.sample_seed + k for k in range(args.samples)]
    objects = [args.objects[k % len(args.objects)] for k in range(args.samples)]
    assert not (set(args.prior) | set(args.round2)) & set(args.objects), "judge objects training never drew"
    assert not args.round2 or args.style == "sketch", "--round2 is written for the sketch house"
    priors = {o: tc.sample(pipe, [f"a {o}"] * args.prior_images, [50_000 + k for k in range(args.prior_images)])
              for o in args.prior}

    def rates(images) -> dict:
        r = tc.style_transfer_rate(attr, images, target, objects)
        return {"style_rate": r["rate"], "content_rate": r["content_rate"], "leaked_class": r.get("leaked_class"),
                "leaked_rate": r.get("leaked_rate", 0.0)}

    ceiling = rates(tc.sample(pipe, [f"a {o} in {target} style" for o in objects], seeds))
    print(json.dumps({"style": args.style, "base_named_style": target, "base_content_rate": ceiling["content_rate"],
                      "base_style_rate": ceiling["style_rate"]}), flush=True)
    for setting in args.settings:
        overrides = json.loads(setting)
        blocks = overrides.pop("blocks", None)
        for seed in args.seeds:
            params = {**lora_defaults, "checkpoint_every": 0, **overrides, "seed": seed}
            if blocks:
                params["target_modules"] = block_modules(pipe.unet, blocks, params["target_modules"])
            if priors:  # one style micro-batch and one prior micro-batch per optimizer step
                params["gradient_accumulation_steps"] = 2
            cfg = from_dict(LoraTrainingConfig, params, "style.lora")
            fresh = load_base_pipeline(base_cfg)  # train_lora leaves its adapter on the UNet it trained
            train_images = random_crops(image[0], args.crops, args.crop_scale, seed) if args.crops else image
            style_inputs = encode_concept(fresh, train_images, f"a {noun} in {token} style")
            groups = alternate(style_inputs, [encode_concept(fresh, ims, f"a {o}") for o, ims in priors.items()])
            result = train_lora(fresh, groups, cfg, "style")
            del fresh
            kept = {}
            if args.round2:
                result, kept = second_round(pipe, base_cfg, cfg, image, result.lora, args.round2,
                                            args.round2_images)
            with lora_applied(pipe, "style", result.lora):
                styled = tc.sample(pipe, [f"a {o} in {token} style" for o in objects], seeds)
            print(json.dumps({"style": args.style, "setting": {**overrides, **({"blocks": blocks} if blocks else {})},
                              "crops": args.crops, "crop_scale": args.crop_scale if args.crops else None, "prior": args.prior, "round2_kept": kept,
                              "objects": args.objects, "seed": seed, "sample_seed": args.sample_seed,
                              **rates(styled), "n": len(styled),
                              "train_seconds": round(result.seconds, 1), "target_style": target}), flush=True)
    return 0


def block_modules(unet, blocks: list[str], suffixes: list[str]) -> list[str]:
    """Full names of the UNet's Linear modules under ``blocks`` whose name ends with one of ``suffixes``
    (peft matches a full name exactly, so the LoRA goes on those layers only)."""
    import torch

    names = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear)
             and any(n.startswith(b + ".") for b in blocks) and any(n.endswith("." + s) for s in suffixes)]
    assert names, f"no {suffixes} layers under {blocks}"
    return names


def random_crops(image, n: int, scale: tuple[float, float], seed: int) -> list:
    """``n`` random resized crops (area fraction in ``scale``, aspect 3/4-4/3) with random flips, at the image's size."""
    import math
    import random

    from PIL import Image

    rng, (w, h), out = random.Random(seed), image.size, []
    for _ in range(n):
        area = rng.uniform(*scale) * w * h
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = min(w, round(math.sqrt(area * ratio))), min(h, round(math.sqrt(area / ratio)))
        x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
        crop = image.crop((x, y, x + cw, y + ch)).resize((w, h), Image.BICUBIC)
        out.append(crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop)
    return out


def alternate(style_inputs, others: list) -> list | object:
    """Training groups [style, other 1, style, other 2, ...] (``train_lora`` takes one group per micro-batch in
    turn, so the style image gets half of them); the style inputs alone when there are no others."""
    return [g for other in others for g in (style_inputs, other)] or style_inputs


def diffusion_classify(pipe, images, prompts: list[str], draws: int = 16, seed: int = 0) -> list[int]:
    """Index into ``prompts`` of the prompt under which the base UNet denoises each image best (mean MSE over
    ``draws`` noise levels and noises, the same draws for every prompt): the base model as a zero-shot classifier."""
    import torch

    from ziplora_pipeline.core.diffusion.sdxl import encode_concept, training_scheduler
    from ziplora_pipeline.core.lora.training import diffusion_loss

    scheduler = training_scheduler(pipe)
    encoded = [encode_concept(pipe, images, prompt) for prompt in prompts]  # every image's latents, once per prompt
    losses = torch.zeros(len(images), len(prompts))
    with torch.no_grad():
        for i in range(len(images)):
            idx = torch.full((draws,), i, dtype=torch.long)
            for j, inputs in enumerate(encoded):
                losses[i, j] = diffusion_loss(pipe.unet, scheduler, inputs, idx, torch.Generator().manual_seed(seed))
    return losses.argmin(dim=1).tolist()


def second_round(pipe, base_cfg, cfg, image, lora, objects: list[str], n: int):
    """Sample each object with the first LoRA, keep what the base model classifies as that object, retrain."""
    from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline
    from ziplora_pipeline.core.diffusion.sdxl import encode_concept
    from ziplora_pipeline.core.lora.training import train_lora
    from ziplora_pipeline.core.merging.method import lora_applied
    from ziplora_pipeline.core.toy_world import checks as tc

    kept = {}
    with lora_applied(pipe, "style", lora):
        drawn = {o: tc.sample(pipe, [f"a {o} in zwx style"] * n, [60_000 + k for k in range(n)]) for o in objects}
    for o, ims in drawn.items():
        calls = diffusion_classify(pipe, ims, [f"a {o}", "a house"])
        kept[o] = [im for im, c in zip(ims, calls) if c == 0]
    fresh = load_base_pipeline(base_cfg)
    style_inputs = encode_concept(fresh, image, "a house in zwx style")
    groups = alternate(style_inputs, [encode_concept(fresh, ims, f"a {o} in zwx style") for o, ims in kept.items() if ims])
    import dataclasses

    result = train_lora(fresh, groups, dataclasses.replace(cfg, steps=cfg.steps * 2), "style")
    return result, {o: len(ims) for o, ims in kept.items()}


if __name__ == "__main__":
    sys.exit(main())
