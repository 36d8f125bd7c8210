"""DreamBooth LoRA training on the SDXL UNet (paper §4: rank 64 on the attention projections,
text encoders frozen, Adam, lr 5e-5, batch 1, 1000 steps), as named functions and a short loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config_utils import require
from ..diffusion.sdxl import ConceptInputs, diffusion_target, noisy_batch, training_scheduler, unet_predict
from .checkpoints import CheckpointStore, run_key
from .io import LoraFile, lora_file_from_unet

logger = logging.getLogger(__name__)

ATTENTION_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")  # paper: every UNet attention projection


@dataclass(frozen=True)
class LoraTrainingConfig:
    """One LoRA's training run. Defaults suit the miniature model; conf/sdxl has the paper's."""

    rank: int = 4
    alpha: float | None = None  # LoRA scale = alpha / rank; null means alpha = rank (scale 1)
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS
    learning_rate: float = 1e-3  # paper (SDXL): 5e-5
    steps: int = 30  # optimizer steps; paper: 1000
    batch_size: int = 1
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # no | fp16 | bf16 (autocast on CUDA; LoRA weights stay fp32)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 10  # steps between resumable checkpoints; 0 disables
    cache_latents: bool = True  # encode images/prompts once (False re-encodes each step: benchmark only)
    optimizer: str = "adamw"  # adamw | adamw8bit (bitsandbytes, CUDA only; saves optimizer memory)
    # Ours (the paper samples t over the whole schedule): train only on timesteps [lo, hi). Layout is set at
    # high noise and texture at low noise, so a style LoRA trained on low t alone has no say in where and
    # what the object is (benchmarks/style_sweep.py measures the content leakage this removes). null: all t.
    timestep_range: tuple[int, int] | None = None

    def __post_init__(self):
        require(self.rank > 0, f"lora.rank must be a positive integer, got {self.rank}. Typical: 4-128.")
        require(self.alpha is None or self.alpha > 0, f"lora.alpha must be positive or null, got {self.alpha}.")
        require(self.steps > 0, f"lora.steps must be > 0, got {self.steps}.")
        require(self.batch_size > 0, f"lora.batch_size must be > 0, got {self.batch_size}.")
        require(self.gradient_accumulation_steps > 0, "lora.gradient_accumulation_steps must be > 0.")
        require(self.learning_rate > 0, f"lora.learning_rate must be > 0, got {self.learning_rate}.")
        require(self.checkpoint_every >= 0, "lora.checkpoint_every must be >= 0 (0 disables checkpoints).")
        require(self.mixed_precision in ("no", "fp16", "bf16"),
                f"lora.mixed_precision must be no, fp16 or bf16, got {self.mixed_precision!r}.")
        require(len(self.target_modules) > 0, "lora.target_modules must name at least one module.")
        require(self.optimizer in ("adamw", "adamw8bit"), f"lora.optimizer must be adamw or adamw8bit, got {self.optimizer!r}.")
        require(self.timestep_range is None or (len(self.timestep_range) == 2
                                                and 0 <= self.timestep_range[0] < self.timestep_range[1]),
                f"lora.timestep_range must be null or [lo, hi] with 0 <= lo < hi, got {self.timestep_range!r}.")

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else self.rank


@dataclass
class TrainingResult:
    lora: LoraFile
    losses: list[float]  # one per optimizer step
    seconds: float
    resumed_from: int  # 0 when trained from scratch
    processes: int = 1  # data-parallel processes (accelerate launch)


def add_lora_adapter(unet, cfg: LoraTrainingConfig, adapter_name: str) -> list[torch.nn.Parameter]:
    """Attach a trainable peft LoRA to the UNet's attention projections; return its parameters.

    Gaussian init of A and zero B (peft's "gaussian"), so the adapter starts as the identity.
    LoRA weights are kept in fp32 even when the UNet is half precision (mixed-precision master weights).
    """
    from peft import LoraConfig

    torch.manual_seed(cfg.seed)  # peft draws the gaussian A init from the global RNG
    unet.add_adapter(LoraConfig(r=cfg.rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                                target_modules=list(cfg.target_modules)), adapter_name=adapter_name)
    unet.set_adapters([adapter_name])
    params = [p for n, p in unet.named_parameters() if f".{adapter_name}." in n and "lora_" in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def diffusion_loss(unet, scheduler, inputs: ConceptInputs, idx: torch.Tensor, generator: torch.Generator,
                   t_range: tuple[int, int] | None = None) -> torch.Tensor:
    """DreamBooth objective: MSE between the UNet's prediction and the diffusion target (t in ``t_range``)."""
    latents = inputs.sample_latents(idx, generator)  # (B, C, h, w)
    noisy, noise, t = noisy_batch(scheduler, latents, generator, t_range)
    pred = unet_predict(unet, noisy, t, inputs)
    return F.mse_loss(pred.float(), diffusion_target(scheduler, latents, noise, t).float())


def make_accelerator(cfg: LoraTrainingConfig, device: torch.device):
    """An ``accelerate.Accelerator`` for this run: single process by default; under
    ``accelerate launch`` with several GPUs it wraps the UNet in DDP (one process per GPU).

    ``AcceleratorState`` is a process-wide singleton: a second run in the same process (tests,
    notebooks) with another mixed-precision setting resets it, keeping the process group.
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    mixed = cfg.mixed_precision if device.type == "cuda" else "no"  # autocast only on CUDA
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed:
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed, cpu=device.type == "cpu", device_placement=False)


def make_optimizer(params, cfg: LoraTrainingConfig):
    """AdamW, or bitsandbytes' 8-bit AdamW when asked for and installed (saves ~3/4 of the optimizer state)."""
    if cfg.optimizer == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ImportError("lora.optimizer: adamw8bit needs bitsandbytes (pip install bitsandbytes, CUDA only); "
                              "or set lora.optimizer: adamw.") from err
        return bnb.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=1e-4)
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=1e-4)


def train_lora(
    pipe,
    inputs: ConceptInputs | list[ConceptInputs] | Callable[[], ConceptInputs | list[ConceptInputs]],
    cfg: LoraTrainingConfig,
    adapter_name: str,
    checkpoints: CheckpointStore | None = None,
    key_parts: tuple = (),
    on_step: Callable[[int, float], None] | None = None,
) -> TrainingResult:
    """Train one LoRA adapter on ``pipe.unet`` and export it as a diffusers-format ``LoraFile``.

    Runs under Hugging Face ``accelerate``: plain single-process by default, data-parallel when
    started with ``accelerate launch`` (see scripts/train_lora.py); each process then draws its
    own samples (seed + process index) and only the main process writes checkpoints.

    Args:
        inputs: the encoded concept, or a function that encodes it (called every step when
            ``cfg.cache_latents`` is false, to measure what caching saves). A list of encoded
            groups (each with its own images and prompt: joint training) is trained on in turn,
            one group per micro-batch (``group_for_step``).
        checkpoints: where to save/resume; the run key hashes ``cfg`` and ``key_parts``.
        on_step: called with (step, loss) after each optimizer step (e.g. MLflow logging).
    """
    unet, device = pipe.unet, pipe.unet.device
    encode = inputs if callable(inputs) else (lambda: inputs)
    cached = encode() if cfg.cache_latents else None
    scheduler = training_scheduler(pipe)
    params = add_lora_adapter(unet, cfg, adapter_name)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    accelerator = make_accelerator(cfg, device)
    optimizer = make_optimizer(params, cfg)
    generator = torch.Generator().manual_seed(cfg.seed + accelerator.process_index)
    world = (f"world_size={accelerator.num_processes}",) if accelerator.num_processes > 1 else ()
    key = run_key(dataclasses.asdict(cfg), adapter_name, *key_parts, *world)
    start, losses = _maybe_resume(checkpoints, key, cfg, unet, adapter_name, optimizer, generator)
    model, optimizer = accelerator.prepare(unet, optimizer)  # DDP wrapper only with several processes
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, desc=f"LoRA {adapter_name}", leave=False,
               disable=None if accelerator.is_main_process else True)  # None: a bar on terminals only
    for step in bar:
        total = _optimizer_step(accelerator, model, optimizer, params, scheduler, cached or encode, step, cfg,
                                generator)
        losses.append(total)
        bar.set_postfix(loss=f"{total:.4f}")
        if on_step and accelerator.is_main_process:
            on_step(step + 1, total)
        due = cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0 and step + 1 < cfg.steps
        if checkpoints and due and accelerator.is_main_process:
            checkpoints.save(key, step + 1, _state(unet, adapter_name, optimizer, generator, losses, step + 1))
    unet.eval()
    accelerator.wait_for_everyone()
    if checkpoints and accelerator.is_main_process:
        checkpoints.clear(key)  # finished: the LoRA itself is the artifact now
    from ..diffusion.base_model import model_family

    lora = lora_file_from_unet(accelerator.unwrap_model(model), adapter_name, pipe.config.get("_name_or_path"),
                               model_family(pipe))
    return TrainingResult(lora, losses, time.perf_counter() - t0, start, accelerator.num_processes)


def _optimizer_step(accelerator, model, optimizer, params, scheduler, get_inputs, step, cfg, generator) -> float:
    """One optimizer step over ``gradient_accumulation_steps`` micro-batches; returns the mean loss."""
    optimizer.zero_grad(set_to_none=True)
    total, k = 0.0, cfg.gradient_accumulation_steps
    for micro in range(k):
        inputs = group_for_step(get_inputs() if callable(get_inputs) else get_inputs, step * k + micro)
        idx = torch.randint(0, inputs.latent_mean.shape[0], (cfg.batch_size,), generator=generator)
        sync = contextlib.nullcontext() if micro == k - 1 else accelerator.no_sync(model)  # all-reduce once
        with sync, accelerator.autocast():
            loss = diffusion_loss(model, scheduler, inputs, idx, generator, cfg.timestep_range)
            accelerator.backward(loss / k)
        total += loss.item() / k
    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    return total


def group_for_step(inputs: ConceptInputs | list[ConceptInputs], micro_step: int) -> ConceptInputs:
    """The group a micro-batch trains on. Groups alternate, so each gets an equal share of the steps
    whatever its image count (joint training sees the one style image as often as the subject
    photos; sampling images uniformly would give it 1/(N+1) of the steps). One group: itself."""
    return inputs[micro_step % len(inputs)] if isinstance(inputs, list) else inputs


def _state(unet, adapter_name, optimizer, generator, losses, step) -> dict:
    from peft.utils import get_peft_model_state_dict

    lora = {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet, adapter_name=adapter_name).items()}
    return {"step": step, "lora": lora, "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(), "losses": list(losses)}


def _maybe_resume(checkpoints, key, cfg, unet, adapter_name, optimizer, generator) -> tuple[int, list[float]]:
    state = checkpoints.latest(key) if checkpoints else None
    if state is None:
        return 0, []
    from peft.utils import set_peft_model_state_dict

    set_peft_model_state_dict(unet, state["lora"], adapter_name=adapter_name)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    logger.info("Resuming LoRA '%s' from checkpoint step %d/%d", adapter_name, state["step"], cfg.steps)
    return state["step"], list(state["losses"])
