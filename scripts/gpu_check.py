"""Real-scale check of the three GPU-heavy stages (see gpu_check.sh). Last stdout line: JSON."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
logger = logging.getLogger("gpu_check")

# Memory targets on one GPU at 1024 px (issue: training <= 16 GB, merge <= 18 GB, generation <= 12 GB).
TARGETS_GB = {"lora_training": 16, "merge": 18, "generation": 12}


def peak_gb(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # CPU: peak RSS of the process


def reset(device):
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed_steps(fn, steps: int, device) -> list[float]:
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def build(args, device, dtype):
    from ziplora_pipeline.core.miniature import MiniatureSpec, build_miniature_sdxl, build_sdxl_from_configs

    t = time.perf_counter()
    pipe = build_miniature_sdxl(MiniatureSpec()).to(device) if args.small else build_sdxl_from_configs(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    for m in (pipe.unet, pipe.vae, pipe.text_encoder, pipe.text_encoder_2):
        m.requires_grad_(False)
    logger.info("built pipeline in %.1f s: UNet %.2fB parameters", time.perf_counter() - t,
                sum(p.numel() for p in pipe.unet.parameters()) / 1e9)
    return pipe


def check_training(pipe, images, args, device) -> tuple[dict, object]:
    from ziplora_pipeline.core.lora_training import LoraTrainingConfig, train_lora
    from ziplora_pipeline.core.sdxl import encode_concept

    inputs = encode_concept(pipe, images, "a photo of sks robot")
    cfg = LoraTrainingConfig(rank=args.rank, steps=args.train_steps, learning_rate=5e-5, checkpoint_every=0,
                             mixed_precision="no" if args.small else "bf16", gradient_checkpointing=not args.small)
    reset(device)
    stamps = []
    result = train_lora(pipe, inputs, cfg, "subject", on_step=lambda s, l: (
        torch.cuda.synchronize() if device.type == "cuda" else None, stamps.append(time.perf_counter())))
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    fig = {"s_per_step_median": sorted(per_step)[len(per_step) // 2], "s_per_step_min": min(per_step),
           "peak_gb": peak_gb(device), "steps": len(result.losses), "final_loss": result.losses[-1]}
    pipe.unet.delete_adapters("subject")
    return fig, (inputs, result.lora)


def check_merge(pipe, subject, style_images, args, device) -> tuple[dict, dict]:
    from merge_step import Variant  # the dense-ΔW reference lives in the benchmark

    from ziplora_pipeline.core.lora_factors import LoraFactors, unet_lora_factors
    from ziplora_pipeline.core.merge import MergeConfig, ziplora_merge
    from ziplora_pipeline.core.sdxl import encode_concept, training_scheduler

    inputs = {"subject": subject[0], "style": encode_concept(pipe, style_images, "a house in zwx style")}
    g = torch.Generator().manual_seed(1)
    sub = unet_lora_factors(subject[1], "subject")
    sty = {p: LoraFactors(torch.randn(f.A.shape, generator=g).to(device) / args.rank,
                          torch.randn(f.B.shape, generator=g).to(device) * 0.01, 1.0) for p, f in sub.items()}
    loras = {"subject": {p: LoraFactors(f.A.to(device), f.B.to(device), f.scale) for p, f in sub.items()}, "style": sty}
    cfg = MergeConfig(steps=args.merge_steps, teacher_pool=4, mixed_precision="no" if args.small else "bf16")
    reset(device)
    stamps = []
    result = ziplora_merge(pipe.unet, loras, inputs, cfg, training_scheduler(pipe), progress=False,
                           on_step=lambda s, **k: stamps.append(time.perf_counter()))
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    ours = {"s_per_step_median": sorted(per_step)[len(per_step) // 2], "s_per_step_min": min(per_step),
            "peak_gb": peak_gb(device), "initial": result.initial, "final": result.final}
    reset(device)
    dense = Variant("dense", pipe.unet, inputs, loras, {"rank": args.rank, "merge": cfg}, training_scheduler(pipe), device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.small):
        times = timed_steps(dense.step, args.dense_steps, device)
    dense.detach()
    ours["dense_reference"] = {"s_per_step_median": sorted(times)[len(times) // 2], "peak_gb": peak_gb(device)}
    return ours, {"loras": loras, "mergers": result.mergers}


def check_generation(pipe, merged, args, device, tmp) -> dict:
    from ziplora_pipeline.core.merge_export import factors_to_lora_file, merged_factors
    from ziplora_pipeline.datasets.lora_safetensors import LoraSafetensorsDataset

    path = os.path.join(tmp, "ziplora.safetensors")
    LoraSafetensorsDataset(filepath=path).save(factors_to_lora_file(merged_factors(merged["loras"], merged["mergers"])))
    pipe.load_lora_weights(path, adapter_name="ziplora")
    reset(device)
    stamps = []

    def on_step(p, i, t, kw):
        if device.type == "cuda":
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())
        return kw

    pipe("a sks robot riding a bicycle in zwx style", num_inference_steps=args.gen_steps, height=args.resolution,
         width=args.resolution, generator=torch.Generator("cpu").manual_seed(0), callback_on_step_end=on_step)
    per_step = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"s_per_step_median": sorted(per_step)[len(per_step) // 2], "peak_gb": peak_gb(device)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--small", action="store_true", help="CPU-sized: miniature SDXL at 64 px")
    p.add_argument("--out", default="gpu_check.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.small else "cpu")
    if not args.small and device.type != "cuda":
        logger.error("No CUDA device: run with --small for the CPU-sized variant.")
        return 2
    args.resolution, args.rank = (64, 4) if args.small else (1024, 64)
    args.train_steps, args.merge_steps, args.dense_steps, args.gen_steps = 20, 20, 5, 10
    dtype = torch.float32 if args.small else torch.bfloat16
    from ziplora_pipeline.sample_data import style_image, subject_views

    images = subject_views(views=3, size=args.resolution)
    t0 = time.perf_counter()
    pipe = build(args, device, dtype)
    report = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
              "resolution": args.resolution, "rank": args.rank, "dtype": str(dtype),
              "memory": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "peak RSS of the process (GB)"}
    report["lora_training"], subject = check_training(pipe, images, args, device)
    logger.info("lora_training: %s", report["lora_training"])
    report["merge"], merged = check_merge(pipe, subject, [style_image(size=args.resolution)], args, device)
    logger.info("merge: %s", report["merge"])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        report["generation"] = check_generation(pipe, merged, args, device, tmp)
    logger.info("generation: %s", report["generation"])
    if device.type == "cuda":
        report["within_targets"] = {k: report[k]["peak_gb"] <= v for k, v in TARGETS_GB.items()}
    report["total_s"] = time.perf_counter() - t0
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
