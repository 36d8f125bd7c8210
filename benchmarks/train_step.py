"""Seconds per LoRA training step and peak memory, with and without the latent/text cache.

Two models, both random weights built in memory (no download):

* ``tiny``: the project's miniature SDXL (``MiniatureSpec()``) at 64 px, what the tests and the
  default ``kedro run`` train.
* ``large``: an SDXL-shaped UNet: SDXL's block widths (320, 640, 1280), its text_time
  conditioning sizes (pooled projection 1280, time embedding 256, cross-attention 2048), SDXL's
  VAE widths; but one ResNet layer per block and (1, 2, 3) transformer layers instead of SDXL's
  (2 per block, (1, 2, 10)), 2-layer text encoders, and a small resolution so a step fits a CPU.
  The exact spec is printed in the JSON.

"cached" = ``LoraTrainingConfig(cache_latents=True)``: images and prompt are encoded once (VAE
and both text encoders), each step is one UNet forward/backward. "uncached" re-encodes every step.

Method: each configuration runs in a fresh subprocess (so peak memory is that configuration's
alone). A worker first trains a short warm-up of its *first* mode and records the peak memory,
then times ``repeats`` runs alternating the two modes (ABBA order) on the same model. Per-step
time is measured between consecutive steps' callbacks, so one-time setup (adapter creation, the
cached encode) is excluded. A repeat slower than 3x its mode's median is flagged as a stall.

Memory: on CPU, the worker's peak resident set size (``VmHWM``) over the warm-up training, with
the high-water mark reset just before it (``/proc/self/clear_refs``), so building the model does
not count; it includes weights, activations, optimizer state and the Python/torch runtime.
(``tracemalloc`` would miss torch's allocations.) ``train_delta_mb`` subtracts the RSS just
before training (model built, inputs encoded). Where the reset is not possible, ``ru_maxrss`` of
the fresh process. On CUDA, ``torch.cuda.max_memory_allocated`` instead.

Usage::

    python benchmarks/train_step.py            # full: both models, 5 repeats (~5 min on 2 cores)
    python benchmarks/train_step.py --quick    # smoke run (~15 s): small stand-ins, 2 repeats
    python benchmarks/train_step.py --threads 1  # when another process is busy on a 2-core machine

On a 2-core machine shared with another busy process, torch's default 2 OpenMP threads wait on
each other at every op: a 0.03 s tiny step was measured at ~7 s. Such repeats show up as stalls.

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time

logger = logging.getLogger("benchmarks.train_step")

# name -> (MiniatureSpec kwargs, resolution in px, images)
MODELS = {
    "tiny": ({}, 64, 3),
    "large": (dict(unet_channels=(320, 640, 1280), text_hidden=1024, projection_dim=1280, time_embed_dim=256,
                   vae_channels=(128, 256, 512, 512), sample_size=128), 128, 3),
}
QUICK_MODELS = {  # same code paths, sizes that run in seconds
    "tiny": ({}, 64, 2),
    "large": (dict(unet_channels=(32, 64, 128), text_hidden=32, projection_dim=32, time_embed_dim=8,
                   vae_channels=(8, 16, 16, 16), sample_size=64), 64, 2),
}
STALL_FACTOR = 3.0


# --------------------------------------------------------------------------- worker (subprocess)

# memory metering: core.evaluation.cost (reset_peak / peak_mb / current_mb), the figures the pipeline reports
MEMORY_METHODS = {
    "cuda_allocated": "torch.cuda.max_memory_allocated during warm-up training (MiB)",
    "cpu_rss_peak": "VmHWM (peak RSS) of the worker process during warm-up training, reset when training starts (MiB)",
    "cpu_rss_peak_since_start": "ru_maxrss of the fresh worker process since it started (MiB; includes model building)",
}


def worker(job: dict) -> dict:
    """Build the model, warm up ``first`` mode (-> peak memory), then time both modes interleaved."""
    import functools

    import torch

    from ziplora_pipeline.core.diffusion.base_model import resolve_device
    from ziplora_pipeline.core.diffusion.miniature import MiniatureSpec, build_miniature_sdxl
    from ziplora_pipeline.core.diffusion.sdxl import encode_concept
    from ziplora_pipeline.core.lora.training import LoraTrainingConfig, train_lora
    from ziplora_pipeline.sample_data import subject_views

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    device = resolve_device("auto")
    t0 = time.perf_counter()
    spec = MiniatureSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["spec"].items()})
    pipe = build_miniature_sdxl(spec).to(device)
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        module.requires_grad_(False)
    res = job["resolution"]
    images = subject_views(views=job["images"], size=res)
    encode = functools.partial(encode_concept, pipe, images, "a photo of sks robot")
    encode()  # first call pays lazy initialisation; not part of any measurement
    build_s = time.perf_counter() - t0
    unet_params = sum(p.numel() for p in pipe.unet.parameters())

    def run(mode: str, steps: int, name: str) -> list[float]:
        stamps: list[float] = []

        def on_step(step, loss):
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

        cfg = LoraTrainingConfig(steps=steps, cache_latents=(mode == "cached"), checkpoint_every=0)
        train_lora(pipe, encode, cfg, name, on_step=on_step)
        pipe.unet.delete_adapters(name)
        return [b - a for a, b in zip(stamps, stamps[1:])]  # step 2..n; step 1 holds setup

    first, other = job["first"], ("uncached" if job["first"] == "cached" else "cached")
    from ziplora_pipeline.core.evaluation.cost import current_mb, reset_peak
    from ziplora_pipeline.core.evaluation.cost import peak_mb as read_peak_mb

    before_mb = current_mb(device)
    memory_method = MEMORY_METHODS[reset_peak(device)]
    run(first, job["warmup_steps"], "warmup")
    peak_mb = read_peak_mb(device)
    timings: dict[str, list[float]] = {"cached": [], "uncached": []}
    for r in range(job["repeats"]):
        for mode in ((first, other) if r % 2 == 0 else (other, first)):
            dts = run(mode, job["steps"], f"{mode}{r}")
            timings[mode].append(statistics.fmean(dts))
            logger.info("%s %-8s repeat %d: %.4f s/step (%d steps)", job["model"], mode, r, timings[mode][-1],
                        len(dts) + 1)
    return {"model": job["model"], "first": first, "timings": timings, "peak_mb": peak_mb, "before_mb": before_mb,
            "build_s": build_s, "unet_params_m": unet_params / 1e6, "device": str(device), "memory_method": memory_method,
            "threads": torch.get_num_threads()}


# --------------------------------------------------------------------------- driver

def _spawn(job: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=job["timeout"])
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job['model']}/{job['first']} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def stats(values: list[float]) -> tuple[float, float, int]:
    """(median, min, repeats slower than STALL_FACTOR x the median: stalls)."""
    med = statistics.median(values)
    stalls = [v for v in values if v > STALL_FACTOR * med]
    return med, min(values), len(stalls)


def summarise(name: str, results: list[dict], spec: dict, resolution: int) -> dict:
    pooled = {m: [t for r in results for t in r["timings"][m]] for m in ("cached", "uncached")}
    med_c, min_c, stall_c = stats(pooled["cached"])
    med_u, min_u, stall_u = stats(pooled["uncached"])
    for mode, stalls, med in (("cached", stall_c, med_c), ("uncached", stall_u, med_u)):
        if stalls:
            logger.warning("%s %s: %d repeat(s) > %.0fx the median %.4f s/step (stall: another process?)",
                           name, mode, stalls, STALL_FACTOR, med)
    by_first = {r["first"]: r for r in results}
    cached = by_first.get("cached")
    uncached = by_first.get("uncached")
    return {
        "s_per_step": round(med_c, 5), "s_per_step_min": round(min_c, 5),
        "s_per_step_uncached": round(med_u, 5), "s_per_step_uncached_min": round(min_u, 5),
        "cache_speedup": round(med_u / med_c, 3),
        "peak_mb": round(cached["peak_mb"], 1) if cached else None,
        "peak_mb_uncached": round(uncached["peak_mb"], 1) if uncached else None,
        "train_delta_mb": round(cached["peak_mb"] - cached["before_mb"], 1) if cached else None,
        "repeats": len(pooled["cached"]), "stalls": stall_c + stall_u,
        "resolution": resolution, "unet_params_m": round(results[0]["unet_params_m"], 2),
        "build_s": round(results[0]["build_s"], 1), "spec": spec,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: small stand-in models, 2 repeats")
    parser.add_argument("--models", default="tiny,large", help="comma-separated subset of: tiny, large")
    parser.add_argument("--repeats", type=int, help="timed repeats per mode (default 5, quick 2)")
    parser.add_argument("--steps", type=int, help="steps per timed repeat (default tiny 8 / large 3, quick 3)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch default)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("diffusers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    if args.worker:
        import warnings

        warnings.filterwarnings("ignore")
        print(json.dumps(worker(json.loads(args.worker))))
        return 0

    models = QUICK_MODELS if args.quick else MODELS
    out: dict = {}
    t_start = time.perf_counter()
    for name in args.models.split(","):
        spec, resolution, n_images = models[name]
        steps = args.steps or (3 if args.quick else 8 if name == "tiny" else 3)
        job = {"model": name, "spec": spec, "resolution": resolution, "images": n_images,
               "repeats": args.repeats or (2 if args.quick else 5), "steps": steps, "warmup_steps": 2,
               "threads": args.threads, "timeout": 600 if args.quick else 3600}
        firsts = ("cached",) if args.quick else ("cached", "uncached")  # quick: no uncached peak
        results = []
        for first in firsts:
            logger.info("%s: fresh worker, warm-up and peak memory of %s, then interleaved timing", name, first)
            results.append(_spawn({**job, "first": first}))
        out[name] = summarise(name, results, spec, resolution)
        logger.info("%s: %s", name, json.dumps({k: v for k, v in out[name].items() if k != "spec"}))
    dev = results[0]["device"]
    out["meta"] = {
        "device": dev, "torch_threads": results[0]["threads"], "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "quick": args.quick,
        "load_avg": [round(x, 2) for x in os.getloadavg()], "wall_s": round(time.perf_counter() - t_start, 1),
        "s_per_step": "median over repeats of the mean step time (steps 2..n of each run)",
        "peak_mb": results[0]["memory_method"] + "; one fresh worker per mode, that mode trained first",
        "train_delta_mb": "peak_mb minus the memory in use just before training (model built, inputs encoded)",
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
