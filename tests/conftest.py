"""Shared fixtures: one miniature SDXL per session, sample data, fresh pipelines, encoded concepts.

Everything runs offline on a CPU: the miniature SDXL (random weights, ~1.4M-parameter UNet) is
written once per session and each test that trains loads its own *fresh* pipeline from that
folder (~0.1 s), because training attaches adapters to the UNet in place.
"""

from __future__ import annotations

import os

# Before anything imports huggingface_hub / kedro: no network, no telemetry.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["KEDRO_DISABLE_TELEMETRY"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread (inherited by the kedro subprocesses): the models here are tiny, and on a
# 2-core machine where another process is busy, torch's default 2 OpenMP threads wait on each
# other at every op and a 0.05 s LoRA step takes ~8 s (measured). Override by exporting it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import RESOLUTION


@pytest.fixture(scope="session")
def mini_model_path(tmp_path_factory) -> Path:
    """A miniature SDXL in diffusers format, written once per session (seed 0). Treat as read-only."""
    from ziplora_pipeline.core.diffusion.miniature import write_miniature_sdxl

    return write_miniature_sdxl(tmp_path_factory.mktemp("base_model") / "mini")


@pytest.fixture(scope="session")
def base_cfg(mini_model_path):
    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig

    # miniature_seed=None: never rebuild; the folder must already be a valid SDXL.
    return BaseModelConfig(pretrained_model_name_or_path=str(mini_model_path), miniature_seed=None, device="cpu")


@pytest.fixture(scope="session")
def base_params(base_cfg) -> dict:
    """``params:base_model`` as Kedro would pass it to a node."""
    import dataclasses

    return dataclasses.asdict(base_cfg)


@pytest.fixture
def fresh_pipe(base_cfg):
    """Factory: a newly loaded pipeline (no adapters) from the session's miniature model."""
    from ziplora_pipeline.core.diffusion.base_model import load_base_pipeline

    return lambda: load_base_pipeline(base_cfg)


@pytest.fixture(scope="session")
def sample_raw(tmp_path_factory) -> Path:
    """``data/01_raw``-like folder with the procedural sample subject (5 views) and style (1 image)."""
    from ziplora_pipeline.sample_data import write_sample_data

    return write_sample_data(tmp_path_factory.mktemp("raw") / "01_raw", size=128)


@pytest.fixture(scope="session")
def subject_images(sample_raw) -> list:
    """The sample subject images as 64 px RGB squares, in file order."""
    from PIL import Image

    from ziplora_pipeline.core.images import square_resize

    paths = sorted((sample_raw / "subjects" / "robot").glob("*.png"))
    return [square_resize(Image.open(p).convert("RGB"), RESOLUTION) for p in paths]


@pytest.fixture
def encode(subject_images):
    """``encode(pipe)`` -> ConceptInputs of the sample subject with the DreamBooth prompt."""
    from ziplora_pipeline.core.diffusion.sdxl import encode_concept

    return lambda pipe: encode_concept(pipe, subject_images, "a photo of sks robot")


@pytest.fixture(scope="session")
def unet_probe():
    """A fixed UNet input for the miniature model: ``probe(unet)`` -> output tensor (no grad)."""
    import torch

    g = torch.Generator().manual_seed(1234)
    sample = torch.randn(2, 4, RESOLUTION // 8, RESOLUTION // 8, generator=g)
    hidden = torch.randn(2, 77, 64, generator=g)  # cross_attention_dim = 2 * text_hidden (32)
    pooled = torch.randn(2, 32, generator=g)
    time_ids = torch.tensor([[64.0, 64, 0, 0, 64, 64]] * 2)
    t = torch.tensor([10, 500])

    @torch.no_grad()
    def probe(unet):
        unet.eval()
        return unet(sample, t, encoder_hidden_states=hidden,
                    added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}, return_dict=False)[0]

    return probe
