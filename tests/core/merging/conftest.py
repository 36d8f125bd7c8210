"""The merge methods' shared fixture: two LoRAs trained on the sample data, ZipLoRA's mergers, and every method of
the parameters file (conf/base/parameters_merge.yml) built through the registry, as the merge stage builds them."""

from __future__ import annotations

import pytest
from PIL import Image

from tests.helpers import RESOLUTION, default_methods
from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline
from ziplora_pipeline.core.diffusion.sdxl import encode_concept, training_scheduler
from ziplora_pipeline.core.images import square_resize
from ziplora_pipeline.core.lora.factors import unet_lora_factors
from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora
from ziplora_pipeline.core.merging.build import build_methods, trained_costs
from ziplora_pipeline.core.merging.closed_form import record_alone
from ziplora_pipeline.core.merging.method import BuildContext, MethodAssets
from ziplora_pipeline.core.merging.optimise import MergeConfig, default_scheduler, ziplora_merge
from ziplora_pipeline.core.merging.registry import parse_methods

SUBJECT_PROMPT, STYLE_PROMPT = "a photo of sks robot", "a house in zwx style"


@pytest.fixture(scope="session")
def style_images(sample_raw):
    return [square_resize(Image.open(p).convert("RGB"), RESOLUTION)
            for p in sorted((sample_raw / "styles" / "sketch").glob("*.png"))]


@pytest.fixture(scope="session")
def trained(base_cfg, subject_images, style_images):
    """Subject and style LoRAs (20 steps each), their ZipLoRA mergers (20 steps), every enabled method of the
    parameters file built (``specs``, ``assets``, ``costs``), and the build context (``ctx``)."""
    files = {}
    for name, images, prompt, seed in (("subject", subject_images, SUBJECT_PROMPT, 0),
                                       ("style", style_images, STYLE_PROMPT, 1)):
        pipe = load_base_pipeline(base_cfg)
        files[name] = train_lora(pipe, encode_concept(pipe, images, prompt),
                                 LoraTrainingConfig(steps=20, seed=seed, learning_rate=1e-2), name).lora
    factors = {n: unet_lora_factors(f, n) for n, f in files.items()}
    pipe = load_base_pipeline(base_cfg)
    inputs = {"subject": encode_concept(pipe, subject_images, SUBJECT_PROMPT),
              "style": encode_concept(pipe, style_images, STYLE_PROMPT)}
    merge = ziplora_merge(pipe.unet, factors, inputs, MergeConfig(steps=20), training_scheduler(pipe), progress=False)
    sources = {**files, "joint": files["subject"]}  # joint training has its own tests: any LoRA stands in
    # each concept's recorded layer inputs, as the merge stage's input_statistics nodes record them (4 draws)
    statistics = {n: record_alone(pipe.unet, factors[n], n, inputs[n], default_scheduler(), 4, (0, 1000), 4, 0)
                  for n in factors}
    ctx = BuildContext(sources, merge.mergers, {"ziplora": {"seconds": merge.seconds}, "joint": {"seconds": 1.0}},
                       lambda: load_base_pipeline(base_cfg).unet, description="'a sks robot' and 'a zwx house'",
                       statistics=statistics)
    specs = parse_methods(default_methods())
    built, costs = build_methods(specs, ctx)
    return {"files": files, "factors": factors, "mergers": merge.mergers, "specs": specs, "ctx": ctx,
            "inputs": inputs, "statistics": statistics,
            "assets": MethodAssets(built, sources), "costs": costs | trained_costs(specs, ctx)}
