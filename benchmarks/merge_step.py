"""ZipLoRA merge step: this implementation vs a dense-ΔW reference vs the LoRA-step floor.

Same UNet, same two LoRAs, same batch, in one run:

* ``ours``: ``core.merging.optimise.merge_step`` — low-rank forward (W0 x + Σ s_i B_i A_i (m_i ⊙ x)), targets
  taken from the teacher pool computed once (its one-time cost is reported as ``pool_s``).
* ``dense``: the unofficial implementation's approach, written here: every adapted layer holds
  dense ΔW_c, ΔW_s (out, in) and forms W0 + m_c ⊙ ΔW_c + m_s ⊙ ΔW_s on every forward, and the
  two targets (D ⊕ L_c)(x_c), (D ⊕ L_s)(x_s) are recomputed every step (two no-grad forwards).
* ``floor``: one plain peft LoRA training step (rank r, AdamW) on the same concatenated batch: a
  merge step is one forward and backward too, so it cannot cost less.

Both merge variants compute the loss with the same ``core.merging.objective.Objective`` (plain Eq. 3:
``normalize_recon=False``), so their step-0 losses must agree
(``loss0_abs_diff``). Timing: one worker process per model, variants interleaved (ABC, CBA, …)
on the same UNet by attaching/detaching them; per-step wall time; median and min over repeats; a
repeat > 3× its median is flagged as a stall. Memory: one fresh worker per variant; on CPU the
peak resident set sampled every 1 ms minus the resident set after the model was built (weights
excluded, everything the variant adds included: dense ΔW copies, activations, optimizer state);
on CUDA ``max_memory_allocated`` minus the allocation after build (both: ``core.evaluation.cost.measure``).

    python benchmarks/merge_step.py           # tiny + large (SDXL block widths), ~5 min on 2 cores
    python benchmarks/merge_step.py --quick   # seconds: small stand-ins

``--solvers``: a whole merge, the 100-step optimiser (``merge.solver: gradient``, the defaults: fresh draws, cosine)
against the closed form (``closed_form.py``: each concept's statistics from forward passes, then every layer's
exact solve, dot overlap; with ``--refine-steps K`` the hybrid: K optimiser steps from there), interleaved (G C C G ...), per repeat; on ``toy`` (the committed toy-world SDXL,
64 px, rank 8) and ``large`` (744M, 128 px, rank 64). The optimiser's 100 steps are timed step by step; with
``--gradient-steps K`` < 100 (large: 5 by default) its merge time is 100 × the median of its K measured steps
(labelled ``estimated_from_steps``). Peak memory in fresh workers: the closed form vs two optimiser steps with
gradient checkpointing (the issue's bound). Random LoRAs: a timing, not a quality figure (the grid verdict is that).

    python benchmarks/merge_step.py --solvers --models toy,large
    python benchmarks/merge_step.py --solvers --models large --memory-only --resolution 512   # the two peaks alone

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time

logger = logging.getLogger("benchmarks.merge_step")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train_step import MODELS, QUICK_MODELS  # noqa: E402  (same model specs as the training benchmark)

VARIANTS = ("ours", "dense", "floor")
STALL_FACTOR = 3.0


# --------------------------------------------------------------------------- the dense reference

def dense_layers(torch, nn):
    class DenseMergeLinear(nn.Module):
        """W0 + Σ_i m_i ⊗ ΔW_i formed densely on every call, as the unofficial implementation does."""

        def __init__(self, base, deltas: dict):
            super().__init__()
            self.base = base
            for n, d in deltas.items():
                self.register_buffer(f"d_{n}", d)
            self.names = list(deltas)
            self.mergers = nn.ParameterDict({n: nn.Parameter(torch.ones(base.in_features, device=base.weight.device))
                                             for n in deltas})

        def forward(self, x):
            w = self.base.weight + sum(self.mergers[n][None, :] * getattr(self, f"d_{n}") for n in self.names)
            return nn.functional.linear(x, w, self.base.bias)

    return DenseMergeLinear


# --------------------------------------------------------------------------- worker

def build(job):
    import torch

    from ziplora_pipeline.core.diffusion.miniature import MiniatureSpec, build_miniature_sdxl
    from ziplora_pipeline.core.diffusion.sdxl import ConceptInputs, time_ids
    from ziplora_pipeline.core.lora.factors import LoraFactors

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    spec = MiniatureSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["spec"].items()})
    pipe = build_miniature_sdxl(spec)
    unet = pipe.unet.to(device).requires_grad_(False)
    del pipe
    g = torch.Generator().manual_seed(0)
    h = job["resolution"] // 8
    cross, proj = unet.config.cross_attention_dim, spec.projection_dim
    inputs = {n: ConceptInputs(torch.randn(3, 4, h, h, generator=g).to(device), torch.full((3, 4, h, h), 0.05, device=device),
                               torch.randn(1, 77, cross, generator=g).to(device), torch.randn(1, proj, generator=g).to(device),
                               time_ids((job["resolution"],) * 2, device=device)) for n in ("subject", "style")}
    r = job["rank"]
    targets = [n for n, m in unet.named_modules() if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    modules = dict(unet.named_modules())
    loras = {n: {p: LoraFactors(torch.randn(r, modules[p].in_features, generator=g).to(device) / r,
                                torch.randn(modules[p].out_features, r, generator=g).to(device) * 0.1, 1.0)
                 for p in targets} for n in ("subject", "style")}
    return unet, inputs, loras, device


class Variant:
    """Attach one variant to the shared UNet; ``step()`` runs one timed optimisation step."""

    def __init__(self, name, unet, inputs, loras, cfg, scheduler, device):
        import torch

        from ziplora_pipeline.core.merging import optimise as M
        from ziplora_pipeline.core.merging.ziplora_layer import attach_ziplora, merger_parameters

        self.name, self.unet, self.torch = name, unet, torch
        self.names = list(loras)
        self.gen = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        if name == "floor":
            from peft import LoraConfig

            unet.add_adapter(LoraConfig(r=cfg["rank"], lora_alpha=cfg["rank"], init_lora_weights="gaussian",
                                        target_modules=["to_q", "to_k", "to_v", "to_out.0"]), adapter_name="floor")
            params = [p for n, p in unet.named_parameters() if "lora_" in n]
            for p in params:
                p.requires_grad_(True)
            self.opt = torch.optim.AdamW(params, lr=1e-4)
        else:
            self.wrappers = attach_ziplora(unet, loras)
            # Pools built with the low-rank wrappers in both variants so the batches are identical.
            self.pools = [M.build_teacher_pool(unet, self.wrappers, scheduler, n, inputs[n], cfg["merge"], self.gen)
                          for n in self.names]
            if name == "dense":
                self._to_dense(loras)
            self.opt = torch.optim.Adam(merger_parameters(self.wrappers), lr=0.01)
            for p in merger_parameters(self.wrappers):
                p.requires_grad_(True)
        self.setup_s = time.perf_counter() - t0
        self.cfg, self.inputs, self.scheduler, self.M = cfg["merge"], inputs, scheduler, M

    def _to_dense(self, loras):
        from torch import nn

        from ziplora_pipeline.core.merging.ziplora_layer import replace_module

        Dense = dense_layers(self.torch, nn)
        dense = {}
        for path, w in self.wrappers.items():
            d = Dense(w.base, {n: loras[n][path].delta().to(w.base.weight.dtype) for n in w.names})
            replace_module(self.unet, path, d)
            dense[path] = d
        self.wrappers = dense

    def step(self) -> float:
        torch, M, cfg = self.torch, self.M, self.cfg
        if self.name == "ours":
            return M.merge_step(self.unet, self.wrappers, self.pools, self.names, cfg, self.opt, self.gen)["recon"]
        if self.name == "floor":
            return self._floor_step()
        idx = [torch.randint(0, cfg.teacher_pool, (cfg.batch_size,), generator=self.gen) for _ in self.names]
        from ziplora_pipeline.core.diffusion.sdxl import unet_call
        from ziplora_pipeline.core.merging.ziplora_layer import set_mergers

        targets = []
        with torch.no_grad():  # teachers recomputed every step: mergers one-hot
            for n, p, i in zip(self.names, self.pools, idx):
                with set_mergers(self.wrappers, {n: 1.0}):
                    targets.append(unet_call(self.unet, *M.concept_batch([p], [i])))
        pred = unet_call(self.unet, *M.concept_batch(self.pools, idx)).split(cfg.batch_size)
        # Eq. 3 exactly as the optimiser computes it (core.merging.objective): only the forward differs
        loss, recon, _ = cfg.objective.loss(list(pred), targets, [p.lora_effect for p in self.pools],
                                            self.wrappers.values())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return sum(r.item() for r in recon)  # the reconstruction part: compared at step 0

    def _floor_step(self) -> float:
        torch = self.torch
        pools = self._floor_batch()
        from ziplora_pipeline.core.diffusion.sdxl import unet_call

        pred = unet_call(self.unet, *pools[:5])
        loss = torch.nn.functional.mse_loss(pred.float(), pools[5].float())
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()

    def _floor_batch(self):
        torch = self.torch
        if not hasattr(self, "_fb"):
            b = self.cfg.batch_size
            parts = []
            for n in self.names:
                x = self.inputs[n]
                lat = x.latent_mean[:b]
                noise = torch.randn_like(lat)
                t = torch.randint(0, 1000, (b,), generator=self.gen).to(lat.device)
                parts.append((self.scheduler.add_noise(lat, noise, t), t, x.prompt_embeds.expand(b, -1, -1),
                              x.pooled_prompt_embeds.expand(b, -1), x.time_ids.expand(b, -1), noise))
            self._fb = [torch.cat(z) for z in zip(*parts)]
        return self._fb

    def detach(self):
        if self.name == "floor":
            self.unet.delete_adapters("floor")
        else:
            from ziplora_pipeline.core.merging.ziplora_layer import replace_module

            for path, w in self.wrappers.items():
                replace_module(self.unet, path, w.base)


def build_toy(job):
    """The committed toy-world SDXL (what ``kedro run`` merges on) with random rank-``job['rank']`` LoRAs on its
    attention layers, and random concept inputs at its native size."""
    import torch

    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline
    from ziplora_pipeline.core.diffusion.sdxl import ConceptInputs, time_ids
    from ziplora_pipeline.core.lora.factors import LoraFactors

    pipe = load_base_pipeline(BaseModelConfig(pretrained_model_name_or_path=os.path.join(
        os.path.dirname(HERE), "data", "06_models", "toy_sdxl"), device="auto"))
    unet = pipe.unet.requires_grad_(False)
    device = unet.device
    g = torch.Generator().manual_seed(0)
    h = unet.config.sample_size
    cross, proj = unet.config.cross_attention_dim, pipe.text_encoder_2.config.projection_dim
    inputs = {n: ConceptInputs(torch.randn(3, 4, h, h, generator=g).to(device), torch.full((3, 4, h, h), 0.05,
                                                                                            device=device),
                               torch.randn(1, 77, cross, generator=g).to(device), torch.randn(1, proj, generator=g).to(device),
                               time_ids((job["resolution"],) * 2, device=device)) for n in ("subject", "style")}
    r = job["rank"]
    modules = dict(unet.named_modules())
    targets = [n for n in modules if n.endswith(("to_q", "to_k", "to_v", "to_out.0"))]
    loras = {n: {p: LoraFactors(torch.randn(r, modules[p].in_features, generator=g).to(device) / r,
                                torch.randn(modules[p].out_features, r, generator=g).to(device) * 0.1, 1.0)
                 for p in targets} for n in ("subject", "style")}
    return unet, inputs, loras, device


def solver_run(job, unet, inputs, loras, device, solver: str, sched) -> dict:
    """One whole merge with ``solver``: seconds (and, for the optimiser, its per-step times)."""
    import torch

    from ziplora_pipeline.core.merging.closed_form import record_concept_stats, solve_all
    from ziplora_pipeline.core.merging.optimise import MergeConfig, ziplora_merge
    from ziplora_pipeline.core.merging.ziplora_layer import attach_ziplora, detach_ziplora

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    if solver == "gradient":
        marks = []
        cfg = MergeConfig(steps=job["gradient_steps"], heldout_draws=2,
                          gradient_checkpointing=job.get("checkpointing", False))
        result = ziplora_merge(unet, loras, inputs, cfg, sched, on_step=lambda *a, **k: marks.append(
            (sync(), time.perf_counter())[1]), progress=False)
        steps = [b - a for a, b in zip(marks, marks[1:])]
        return {"seconds": result.seconds, "step_s": steps}
    wrappers = attach_ziplora(unet, loras)
    try:
        sync()
        t0 = time.perf_counter()
        stats = {n: record_concept_stats(unet, wrappers, n, inputs[n], sched, job["draws"], (0, 1000),
                                         job["stats_batch"], 0, job["statistics_precision"]) for n in loras}
        sync()
        t1 = time.perf_counter()
        counts = {}
        mergers = solve_all(loras, stats, 0.01, job["overlap"], True, job["ridge"], counts=counts,
                            local_steps=job["local_steps"], prompt_ridge=job["prompt_ridge"],
                            precision=job["precision"])
        sync()
        t2 = time.perf_counter()
    finally:
        detach_ziplora(unet, wrappers)
    out = {"seconds": t2 - t0, "stats_s": t1 - t0, "solve_s": t2 - t1, "kink_layers": counts["kink"]}
    if job.get("refine_steps"):  # the hybrid: the optimiser's steps from the closed-form mergers (its own wall time)
        cfg = MergeConfig(steps=job["refine_steps"], learning_rate=job["refine_lr"], heldout_draws=2,
                          gradient_checkpointing=job.get("checkpointing", False))
        refined = ziplora_merge(unet, loras, inputs, cfg, sched, progress=False, initial=mergers)
        out["refine_s"] = refined.seconds
        out["seconds"] += refined.seconds
    return out


def solvers_worker(job: dict) -> dict:
    import torch

    from ziplora_pipeline.core.evaluation.cost import measure as metered
    from ziplora_pipeline.core.merging.optimise import default_scheduler

    torch.manual_seed(0)
    unet, inputs, loras, device = (build_toy if job["model"] == "toy" else build)(job)
    sched = default_scheduler()
    layers = {p: loras["subject"][p].A.shape[1] for p in loras["subject"]}
    out = {"unet_params_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1), "device": str(device),
           "layers": len(layers), "layer_inputs": sorted(set(layers.values()))}
    if job["mode"] == "solver_mem":
        with metered(device) as cost:
            solver_run({**job, "gradient_steps": 2, "checkpointing": True}, unet, inputs, loras, device,
                       job["solver"], sched)
        return {**out, "peak_mb": cost.peak_mb, "memory_kind": cost.memory_kind}
    runs = {"gradient": [], "closed_form": []}
    for rep in range(job["repeats"]):
        for solver in (("gradient", "closed_form") if rep % 2 == 0 else ("closed_form", "gradient")):
            r = solver_run(job, unet, inputs, loras, device, solver, sched)
            runs[solver].append(r)
            logger.info("%s repeat %d %s: %.2f s", job["model"], rep, solver, r["seconds"])
    return {**out, "runs": runs}


def worker(job: dict) -> dict:
    import torch

    from ziplora_pipeline.core.evaluation.cost import measure as metered
    from ziplora_pipeline.core.merging.optimise import MergeConfig, default_scheduler

    if job["mode"].startswith("solver"):
        return solvers_worker(job)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    unet, inputs, loras, device = build(job)
    cfg = {"rank": job["rank"], "merge": MergeConfig(normalize_recon=False, teacher_pool=4, batch_size=job["batch"])}
    sched = default_scheduler()
    out = {"build_s": time.perf_counter() - t0, "unet_params_m": sum(p.numel() for p in unet.parameters()) / 1e6}
    if job["mode"] == "precision":  # a short full merge; held-out reconstruction and peak memory (fresh worker)
        from ziplora_pipeline.core.merging.optimise import ziplora_merge

        mcfg = MergeConfig(steps=job["steps"], teacher_pool=4, heldout_draws=8, batch_size=job["batch"],
                           mixed_precision=job["precision"], gradient_checkpointing=job["ckpt"])
        with metered(device) as cost:
            result = ziplora_merge(unet, loras, inputs, mcfg, sched, progress=False)
        h0, h1 = result.heldout_initial, result.heldout_final
        out.update(seconds=cost.seconds, heldout_initial=h0["recon_subject"] + h0["recon_style"],
                   heldout_final=h1["recon_subject"] + h1["recon_style"], peak_mb=cost.peak_mb,
                   memory_kind=cost.memory_kind)
        return out
    if job["mode"] == "mem":
        with metered(device) as cost:
            v = Variant(job["variant"], unet, inputs, loras, cfg, sched, device)
            for _ in range(job["steps"]):
                v.step()
        out.update(peak_mb=cost.peak_mb, memory_kind=cost.memory_kind)
        return out
    times = {v: [] for v in VARIANTS}
    loss0 = {}
    for rep in range(job["repeats"]):
        order = VARIANTS if rep % 2 == 0 else VARIANTS[::-1]
        for name in order:
            v = Variant(name, unet, inputs, loras, cfg, sched, device)
            first = v.step()  # warm-up step (not timed); the step-0 loss
            loss0.setdefault(name, first)
            if device.type == "cuda":
                torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(job["steps"]):
                v.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t) / job["steps"])
            v.detach()
            logger.info("%s repeat %d %s: %.4f s/step", job["model"], rep, name, times[name][-1])
    out.update(times=times, loss0=loss0, device=str(device))
    return out


# --------------------------------------------------------------------------- driver

def spawn(job: dict) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=job.get("timeout", 1800))
    if proc.returncode != 0:
        raise RuntimeError(f"worker {job['model']}/{job['mode']} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure(name: str, spec: dict, resolution: int, rank: int, repeats: int, steps: int, batch: int,
            merge_steps: int = 0) -> dict:
    job = {"model": name, "spec": spec, "resolution": resolution, "rank": rank, "repeats": repeats,
           "steps": steps, "batch": batch}
    timing = spawn({**job, "mode": "time"})
    mem = {v: spawn({**job, "mode": "mem", "variant": v, "steps": 2})["peak_mb"] for v in VARIANTS}
    stats = {}
    for v, values in timing["times"].items():
        med = statistics.median(values)
        stalls = sum(x > STALL_FACTOR * med for x in values)
        if stalls:
            logger.warning("%s %s: %d repeat(s) > %.0fx median: stall (another process?)", name, v, stalls, STALL_FACTOR)
        stats[v] = {"median_s": round(med, 5), "min_s": round(min(values), 5), "stalls": stalls}
    loss0 = timing["loss0"]
    precision = {}
    if merge_steps:  # fp32 vs bf16 autocast, with and without gradient checkpointing: one fresh worker each
        for label, prec, ckpt in (("fp32", "no", False), ("bf16", "bf16", False), ("bf16_checkpointing", "bf16", True),
                                  ("fp32_checkpointing", "no", True)):
            r = spawn({**job, "mode": "precision", "precision": prec, "ckpt": ckpt, "steps": merge_steps})
            precision[label] = {k: round(r[k], 4) for k in ("heldout_initial", "heldout_final", "peak_mb", "seconds")}
            logger.info("%s merge %s: %s", name, label, precision[label])
        fp32, bf16 = precision["fp32"]["heldout_final"], precision["bf16"]["heldout_final"]
        precision["bf16_heldout_rel_diff"] = round(abs(bf16 - fp32) / fp32, 4)
    return {
        "speedup_vs_dense": round(stats["dense"]["median_s"] / stats["ours"]["median_s"], 3),
        "peak_mem_saving_vs_dense": round(1 - mem["ours"] / mem["dense"], 3) if mem["dense"] > 0 else None,
        "merge_step_over_floor": round(stats["ours"]["median_s"] / stats["floor"]["median_s"], 3),
        "loss0_abs_diff": abs(loss0["ours"] - loss0["dense"]), "loss0": loss0["ours"],
        "s_per_step": stats, "peak_mb_above_model": {k: round(v, 1) for k, v in mem.items()},
        "unet_params_m": round(timing["unet_params_m"], 1), "rank": rank, "resolution": resolution,
        "batch_per_concept": batch, "device": timing["device"], "repeats": repeats, "steps_per_repeat": steps,
        **({"merge_precision": {"steps": merge_steps, **precision}} if precision else {}),
    }


def measure_solvers(name: str, spec: dict, resolution: int, rank: int, repeats: int, gradient_steps: int,
                    draws: int, stats_batch: int, ridge: float, overlap: str, local_steps: int,
                    prompt_ridge: float | None, precision: str = "float64", refine_steps: int = 0,
                    refine_lr: float = 0.01, statistics_precision: str = "float64", memory_only: bool = False) -> dict:
    job = {"model": name, "spec": spec, "resolution": resolution, "rank": rank, "repeats": repeats,
           "gradient_steps": gradient_steps, "draws": draws, "stats_batch": stats_batch, "ridge": ridge,
           "overlap": overlap, "local_steps": local_steps, "prompt_ridge": prompt_ridge, "precision": precision,
           "refine_steps": refine_steps, "refine_lr": refine_lr, "statistics_precision": statistics_precision,
           "timeout": 7200}
    if memory_only:  # the peaks alone (fresh workers): the statistics' draws do not change them, their batch does
        mem = {s: spawn({**job, "mode": "solver_mem", "solver": s, "repeats": 1})["peak_mb"]
               for s in ("gradient", "closed_form")}
        return {"peak_mb_above_model": {"gradient_checkpointing_2_steps": round(mem["gradient"], 1),
                                        "closed_form": round(mem["closed_form"], 1)},
                "closed_over_gradient_peak": round(mem["closed_form"] / mem["gradient"], 3),
                "resolution": resolution, "rank": rank, "draws_per_concept": draws, "stats_batch": stats_batch,
                "ridge": ridge, "precision": precision, "statistics_precision": statistics_precision}
    timing = spawn({**job, "mode": "solver_time"})
    runs = timing.pop("runs")
    grad = [r["seconds"] if gradient_steps >= 100 else 100 * statistics.median(r["step_s"]) for r in runs["gradient"]]
    closed = [r["seconds"] for r in runs["closed_form"]]

    def summary(values, label):
        med = statistics.median(values)
        stalls = sum(x > STALL_FACTOR * med for x in values)
        if stalls:
            logger.warning("%s %s: %d repeat(s) > %.0fx median: stall (another process?)", name, label, stalls,
                           STALL_FACTOR)
        return {"median_s": round(med, 3), "min_s": round(min(values), 3), "stalls": stalls}

    mem = {s: spawn({**job, "mode": "solver_mem", "solver": s, "repeats": 1})["peak_mb"]
           for s in ("gradient", "closed_form")}
    g, c = summary(grad, "gradient"), summary(closed, "closed_form")
    return {
        "closed_over_gradient": round(c["median_s"] / g["median_s"], 4),
        "closed_over_gradient_min": round(c["min_s"] / g["min_s"], 4),
        "gradient_100_steps": {**g, "estimated_from_steps": gradient_steps if gradient_steps < 100 else None,
                               "step_median_s": round(statistics.median(
                                   [x for r in runs["gradient"] for x in r["step_s"]]), 4)},
        "closed_form": {**c, "stats_s": [round(r["stats_s"], 3) for r in runs["closed_form"]],
                        "solve_s": [round(r["solve_s"], 3) for r in runs["closed_form"]],
                        "refine_s": [round(r.get("refine_s", 0.0), 3) for r in runs["closed_form"]],
                        "kink_layers": runs["closed_form"][0]["kink_layers"]},
        "peak_mb_above_model": {"gradient_checkpointing_2_steps": round(mem["gradient"], 1) if mem["gradient"] else None,
                                "closed_form": round(mem["closed_form"], 1) if mem["closed_form"] else None},
        "draws_per_concept": draws, "stats_batch": stats_batch, "ridge": ridge,
        "overlap": overlap, "local_steps": local_steps, "prompt_ridge": prompt_ridge, "precision": precision,
        "statistics_precision": statistics_precision, "refine_steps": refine_steps, "refine_lr": refine_lr, "rank": rank, "resolution": resolution,
        "repeats": repeats, **timing,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small stand-ins, 2 repeats (seconds)")
    p.add_argument("--models", default="tiny,large")
    p.add_argument("--repeats", type=int)
    p.add_argument("--steps", type=int)
    p.add_argument("--merge-steps", type=int, help="steps of the fp32/bf16 merges on the large model (0: skip)")
    p.add_argument("--solvers", action="store_true", help="a whole merge: the 100-step optimiser vs the closed form")
    p.add_argument("--gradient-steps", type=int, help="--solvers: optimiser steps measured (100 = a whole merge)")
    p.add_argument("--ridge", type=float, help="--solvers: the closed form's ridge (default: the "
                   "ziplora_closed_form method's); it decides how many layers reach the kink, the costly solve")
    p.add_argument("--overlap", help="--solvers: the closed form's overlap form (default: the method's)")
    p.add_argument("--local-steps", type=int, help="--solvers: the closed form's local_steps (default: the method's)")
    p.add_argument("--prompt-ridge", type=float, help="--solvers: the closed form's prompt_ridge (default: the method's)")
    p.add_argument("--precision", help="--solvers: the closed form's precision, float64 | float32 (default: the method's)")
    p.add_argument("--refine-steps", type=int, help="--solvers: the hybrid's optimiser steps from the closed form "
                   "(default: the method's)")
    p.add_argument("--refine-lr", type=float, help="--solvers: their learning rate (default: the method's)")
    p.add_argument("--statistics-precision", help="--solvers: the statistics' stored precision, float32 | float64 "
                   "(default: merge.closed_form_statistics_precision's)")
    p.add_argument("--memory-only", action="store_true", help="--solvers: only the two peaks (fresh workers; the "
                   "statistics from one batch of draws, which sets their memory)")
    p.add_argument("--resolution", type=int, help="--solvers: the images' size in pixels (default: toy 64, large "
                   "128); the closed form's statistics do not grow with it, the optimiser's activations do")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    models = {**(QUICK_MODELS if args.quick else MODELS), "toy": ({}, 64, 3)}
    results = {}
    if args.solvers:
        from ziplora_pipeline.core.merging.ziplora_closed_form import ZipLoraClosedFormOptions

        defaults = ZipLoraClosedFormOptions()
        ridge = args.ridge if args.ridge is not None else defaults.ridge
        overlap = args.overlap or defaults.overlap
        local_steps = args.local_steps if args.local_steps is not None else defaults.local_steps
        prompt_ridge = args.prompt_ridge if args.prompt_ridge is not None else defaults.prompt_ridge
        precision = args.precision or defaults.precision
        refine_steps = args.refine_steps if args.refine_steps is not None else defaults.refine_steps
        refine_lr = args.refine_lr or defaults.refine_lr or 0.01
        from ziplora_pipeline.core.merging.optimise import MergeConfig

        statistics_precision = args.statistics_precision or MergeConfig().closed_form_statistics_precision
        for name in args.models.split(","):
            spec, resolution, _ = models[name]
            resolution = args.resolution or resolution
            rank = 8 if name == "toy" else 4 if (name == "tiny" or args.quick) else 64
            steps = args.gradient_steps or (100 if name in ("toy", "tiny") and not args.quick else 5)
            results[name] = measure_solvers(name, spec, resolution, rank, args.repeats or (2 if args.quick else 3),
                                            steps, draws=4 if args.quick or args.memory_only else 16,
                                            stats_batch=4 if name == "large" else 16,
                                            ridge=ridge, overlap=overlap, local_steps=local_steps,
                                            prompt_ridge=prompt_ridge, precision=precision,
                                            refine_steps=refine_steps, refine_lr=refine_lr,
                                            statistics_precision=statistics_precision,
                                            memory_only=args.memory_only)
            logger.info("%s: %s", name, json.dumps(results[name]))
        print(json.dumps(results))
        return 0
    for name in args.models.split(","):
        spec, resolution, _ = models[name]
        rank = 4 if (name == "tiny" or args.quick) else 64  # large: the paper's rank 64
        repeats = args.repeats or (2 if args.quick else 5)
        steps = args.steps or (2 if args.quick else 3)
        merge_steps = 0 if name != "large" else (args.merge_steps if args.merge_steps is not None else
                                                 (2 if args.quick else 20))
        results[name] = measure(name, spec, resolution, rank, repeats, steps, batch=1, merge_steps=merge_steps)
        logger.info("%s: %s", name, json.dumps(results[name]))
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
