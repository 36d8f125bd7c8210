"""Continue the toy-world UNet and text encoders on a GPU, without Kedro (a rented GPU box often has
torch and diffusers but not the project's Kedro/MLflow stack).

It calls the ``pretrain`` pipeline's own node functions (``make_pool``, ``encode_pool``,
``pretrain_unet``) in order, with ``conf/base/parameters_pretrain.yml`` plus the overrides below, and
starts from the committed model (``pretrain.unet.continue_from``) with its committed VAE, so the
result drops into ``data/06_models/toy_sdxl`` by replacing the three weight files it writes:

    python scripts/pretrain_gpu.py --seconds 240 --out /tmp/toy_sdxl_gpu
    # then judge it here (CPU): kedro run --pipelines pretrain --nodes pretrain.check_toy_model

The number of steps is chosen from a timed probe so the run fits ``--seconds``; the learning-rate
schedule (warm-up, cosine to 10 %) spans exactly those steps. Last stdout line: the run's JSON log.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
logger = logging.getLogger("pretrain_gpu")
WEIGHTS = ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
           "text_encoder_2/model.safetensors")


def committed_vae_weights(folder: Path) -> dict:
    from diffusers import AutoencoderKL

    from ziplora_pipeline.core.toy_world.pretrain import vae_weights

    return vae_weights(AutoencoderKL.from_pretrained(folder / "vae", dtype=torch.float32))


def probe_seconds_per_step(latents: dict, captions: list[str], vae: dict, params: dict, device: str,
                           steps: int = 30) -> float:
    """Median seconds of one training step (forward, backward, optimiser) at the run's batch size."""
    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.toy_world.config import PretrainConfig
    from ziplora_pipeline.core.toy_world.pretrain import toy_pipeline, train_unet

    cfg = from_dict(PretrainConfig, {**params, "unet": {**params["unet"], "steps": steps}}, "pretrain")
    stamps: list[float] = []
    train_unet(toy_pipeline(cfg, vae).to(device), latents["mean"], latents["std"], captions, cfg.unet,
               cfg.model.sample_size, None, on_step=lambda s, loss: stamps.append(time.perf_counter()))
    per = sorted(b - a for a, b in zip(stamps[5:], stamps[6:]))  # loss.item() syncs every step
    return per[len(per) // 2]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=240, help="training time budget (the steps follow from it)")
    p.add_argument("--out", required=True, help="folder for the three weight files and pretrain_gpu.json")
    p.add_argument("--pool-size", type=int, default=48000, help="renders (the first 24k are the CPU run's pool)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=5e-4)
    p.add_argument("--text-learning-rate", type=float, default=2.5e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--max-steps", type=int, default=40000)
    p.add_argument("--device", default="cuda", help="cpu only for a smoke test of this script")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        logger.error("No CUDA device: on a CPU use `kedro run --pipelines pretrain` (resumable) instead.")
        return 2
    from ziplora_pipeline.pipelines.pretrain.nodes import encode_pool, make_pool, pretrain_unet

    t0 = time.perf_counter()
    folder = ROOT / "data" / "06_models" / "toy_sdxl"
    params = yaml.safe_load((ROOT / "conf" / "base" / "parameters_pretrain.yml").read_text())["pretrain"]
    params["device"] = args.device
    params["pool"].update(size=args.pool_size, workers=os.cpu_count() or 1)
    params["unet"].update(batch_size=args.batch_size, learning_rate=args.learning_rate,
                          text_learning_rate=args.text_learning_rate, warmup_steps=args.warmup_steps,
                          checkpoint_every=0, continue_from=str(folder))
    pool, captions = make_pool(params)
    logger.info("pool: %d renders in %.0f s", len(captions), time.perf_counter() - t0)
    vae = committed_vae_weights(folder)
    latents = encode_pool(pool, vae, params)
    del pool
    per_step = probe_seconds_per_step(latents, captions, vae, params, args.device)
    steps = max(params["unet"]["warmup_steps"] + 10, min(args.max_steps, int(args.seconds / per_step)))
    params["unet"]["steps"] = steps
    logger.info("%.1f ms per step at batch %d: %d steps fit %.0f s", per_step * 1e3, args.batch_size, steps,
                args.seconds)
    pipe, log = pretrain_unet(latents, captions, vae, params, None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        pipe.to(torch.float16).save_pretrained(tmp, safe_serialization=True)  # as DiffusersFolderDataset(fp16)
        for rel in WEIGHTS:
            shutil.copy(Path(tmp) / rel, out / rel.replace("/", "__"))
    losses = log["losses"]
    report = {"device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu", "pool_size": args.pool_size, "steps": steps,
              "batch_size": args.batch_size, "ms_per_step_probe": per_step * 1e3, "train_seconds": log["seconds"],
              "total_seconds": time.perf_counter() - t0, "unet_params": {k: v for k, v in params["unet"].items()},
              "loss_first_100": sum(losses[:100]) / len(losses[:100]), "loss_last_500": sum(losses[-500:]) / len(losses[-500:]),
              "losses_every_50": losses[::50]}
    (out / "pretrain_gpu.json").write_text(json.dumps(report, indent=1))
    print(json.dumps({k: v for k, v in report.items() if k != "losses_every_50"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
