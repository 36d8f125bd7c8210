"""Training and held-out evaluation of the toy judges (see ``judges``).

Data: one pool of pre-rendered views, ``views_per_design`` random scenes of every object design
(class × colours × variant × detail, 1,619 designs: all but the sample subject's), each with its
own style, pose, hat, tree and background. Rendering on the fly would cost ~4.6 ms per image,
~6× a training step's share per image (~0.7 ms), so the pool is rendered once (~50 s for 13k
views, 1 core) and reused by both judges, with fresh augmentations at every step:

* the attribute judge trains on random pool views with one cross-entropy per head;
* the identity judge trains with NT-Xent on batches of K designs × 2 views (half of the designs
  share one class: hard negatives), starting from the attribute judge's trunk.

The subject (``SKS_ROBOT``, the only design with a chest panel) is never drawn, nor its design
without the panel, so the identity judge's view of the subject is a held-out one.
"""

from __future__ import annotations

import itertools
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from .checks import auroc
from .judges import (DEFAULT_WIDTHS, HEADS, AttributeJudge, IdentityJudge, JudgeError, ToyAttributeEncoder,
                     ToyIdentityEncoder, images_to_tensor, save_judge)
from .render import BACKGROUNDS, CLASSES, COLOURS, DETAILS, SKS_ROBOT, STYLES, VARIANTS, Instance, random_scene, render

logger = logging.getLogger(__name__)

HELD_OUT_SEED_OFFSET = 7_919  # evaluation draws use seed + this, never the training seed
SCENE_KW = {"p_hat": 0.35, "p_tree": 0.35, "p_background": 0.4}


@dataclass(frozen=True)
class JudgeTrainingConfig:
    """How the toy judges are trained; the defaults take ~3.5 min on one busy CPU core."""

    seed: int = 0
    image_size: int = 64
    attribute_steps: int = 1000
    identity_steps: int = 2400
    batch_size: int = 64
    learning_rate: float = 2e-3
    eval_samples: int = 600
    views_per_design: int = 8  # pool size = designs × views (1,619 × 8 ≈ 13k renders)
    pool_designs: int | None = None  # None: every design but the subject's; fewer for quick tests
    widths: tuple[int, ...] = DEFAULT_WIDTHS
    temperature: float = 0.1  # NT-Xent


# ---------------------------------------------------------------- data
def is_subject_design(inst: Instance) -> bool:
    """The sample subject's design (with or without its chest panel): never trained on."""
    return inst.chest or (inst.cls, inst.primary, inst.secondary, inst.variant, inst.detail) == (
        SKS_ROBOT.cls, SKS_ROBOT.primary, SKS_ROBOT.secondary, SKS_ROBOT.variant, SKS_ROBOT.detail)


def training_designs() -> list[Instance]:
    """Every design the judges may train on (deterministic order)."""
    designs = [Instance(c, p, s, v, d) for c, p, s, v, d in itertools.product(
        CLASSES, COLOURS, COLOURS, range(VARIANTS), range(DETAILS)) if p != s]
    return [d for d in designs if not is_subject_design(d)]


def scene_labels(scene) -> list[int]:
    """[style, class, hat, tree, background] indices, in HEADS order."""
    return [STYLES.index(scene.style), CLASSES.index(scene.instance.cls), int(scene.hat), int(scene.tree),
            list(BACKGROUNDS).index(scene.background)]


@dataclass
class Pool:
    images: torch.Tensor  # (M, 3, S, S) uint8
    labels: torch.Tensor  # (M, 5) int64, HEADS order
    design: torch.Tensor  # (M,) int64 design index
    views: list[list[int]]  # design index -> its pool rows
    designs: list[Instance]  # design index -> its Instance


def render_pool(cfg: JudgeTrainingConfig) -> Pool:
    """``views_per_design`` random scenes of each training design, rendered once."""
    rng = random.Random(cfg.seed)
    designs = training_designs()
    if cfg.pool_designs is not None:
        designs = rng.sample(designs, cfg.pool_designs)
    arrays, labels, design, views = [], [], [], []
    for d, inst in enumerate(tqdm(designs, desc="Rendering judge pool", leave=False, disable=None)):
        views.append(list(range(len(arrays), len(arrays) + cfg.views_per_design)))
        for _ in range(cfg.views_per_design):
            scene = random_scene(rng, instance=inst, **SCENE_KW)
            arrays.append(np.asarray(render(scene, cfg.image_size)))
            labels.append(scene_labels(scene))
            design.append(d)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()  # (M, 3, S, S)
    return Pool(images, torch.tensor(labels), torch.tensor(design), views, designs)


# ---------------------------------------------------------------- augmentations
def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image separable Gaussian blur: x (N, C, H, W), sigma (N,) in px (0 = unchanged)."""
    n, c, h, w = x.shape
    r = 4
    t = torch.arange(-r, r + 1, dtype=x.dtype)
    k = torch.exp(-t[None] ** 2 / (2 * sigma.clamp_min(1e-3)[:, None] ** 2))  # (N, 9)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*C, 9)
    y = F.pad(x.reshape(1, n * c, h, w), (r, r, r, r), mode="replicate")
    y = F.conv2d(y, k[:, None, None, :], groups=n * c)  # along W
    y = F.conv2d(y, k[:, None, :, None], groups=n * c)  # along H
    return y.reshape(n, c, h, w)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift ±2 px, down-up resample (p 0.3), blur σ 0-1.2, brightness/contrast ±10 %, noise σ ≤ 0.06.

    x: (N, 3, S, S) in [-1, 1]. No hue change: colour is part of an object's identity.
    """
    n, _, s, _ = x.shape
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx, dy = (u(2, n) * 5).long().clamp_max(4)
    x = torch.stack([padded[i, :, dy[i]:dy[i] + s, dx[i]:dx[i] + s] for i in range(n)])
    for i in torch.nonzero(u(n) < 0.3).flatten().tolist():
        low = int(24 + u(1).item() * 25)  # 24..48 px
        small = F.interpolate(x[i:i + 1], size=low, mode="bilinear", antialias=True, align_corners=False)
        x[i] = F.interpolate(small, size=s, mode="bilinear", align_corners=False)[0]
    x = gaussian_blur(x, u(n) * 1.2)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # contrast about the image mean, then brightness
    x01 = ((x - mean) * (0.9 + 0.2 * u(n, 1, 1, 1)) + mean + 1) / 2 * (0.9 + 0.2 * u(n, 1, 1, 1))
    x = x01 * 2 - 1 + torch.randn(x.shape, generator=gen) * (u(n, 1, 1, 1) * 0.06)
    return x.clamp(-1, 1)


def _batch(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, S, S) pool rows -> augmented float in [-1, 1], channels-last for the convolutions."""
    return augment(images.float() / 127.5 - 1.0, gen).contiguous(memory_format=torch.channels_last)


# ---------------------------------------------------------------- training loops
def _optimiser(model, cfg: JudgeTrainingConfig, steps: int):
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=1e-4)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, k / max(1, steps)))))
    return opt, sched


def _loop(model, cfg: JudgeTrainingConfig, steps: int, desc: str, batch_loss) -> None:
    """``steps`` AdamW steps (warm-up + cosine) of ``batch_loss(step) -> loss`` with a progress bar."""
    opt, sched, t0 = *_optimiser(model, cfg, steps), time.perf_counter()
    model.to(memory_format=torch.channels_last).train()  # NHWC convolutions: ~30 % faster on CPU
    loss = torch.tensor(float("nan"))
    bar = tqdm(range(steps), desc=desc, leave=False, disable=None)
    for step in bar:
        loss = batch_loss(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            logger.debug("%s step %d loss %.4f", desc, step, loss.item())
    model.eval()
    logger.info("%s: %d steps in %.1f s (final loss %.3f)", desc, steps, time.perf_counter() - t0, loss.item())


def train_attribute_judge(pool: Pool, cfg: JudgeTrainingConfig) -> AttributeJudge:
    """Cross-entropy on every head for random augmented pool views."""
    torch.manual_seed(cfg.seed)
    model, gen = AttributeJudge(cfg.widths), torch.Generator().manual_seed(cfg.seed)

    def batch_loss(_step):
        idx = torch.randint(len(pool.images), (cfg.batch_size,), generator=gen)
        logits = model(_batch(pool.images[idx], gen))  # name -> (B, classes)
        return sum(F.cross_entropy(logits[h], pool.labels[idx, k]) for k, h in enumerate(HEADS))

    _loop(model, cfg, cfg.attribute_steps, "Attribute judge", batch_loss)
    return model


def _take(rng: random.Random, candidates, upto: int, chosen: list[int]) -> list[int]:
    """``chosen`` topped up to ``upto`` designs with random ``candidates`` not already chosen."""
    taken = set(chosen)
    free = [d for d in candidates if d not in taken]
    return chosen + rng.sample(free, max(0, min(upto - len(chosen), len(free))))


def _identity_batch(pool: Pool, rng: random.Random, k: int) -> list[int]:
    """Pool rows of k designs × 2 views: rows 2i and 2i+1 are one design.

    Hard negatives: a quarter of the designs share a random anchor's class and colours (they differ
    only in shape variant or detail), a quarter more its class; the rest are random.
    """
    anchor = pool.designs[rng.randrange(len(pool.designs))]
    twins = [d for d, i in enumerate(pool.designs) if (i.cls, i.primary, i.secondary) == (
        anchor.cls, anchor.primary, anchor.secondary)]
    same = [d for d, i in enumerate(pool.designs) if i.cls == anchor.cls]
    designs = _take(rng, range(len(pool.designs)), k, _take(rng, same, k // 2, _take(rng, twins, k // 4, [])))
    return [row for d in designs for row in rng.sample(pool.views[d], 2)]


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent for z (2K, D) unit rows where rows 2i and 2i+1 are two views of one design."""
    sim = z @ z.T / temperature  # (2K, 2K)
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool), float("-inf"))
    partner = torch.arange(len(z)) ^ 1  # 0<->1, 2<->3, ...
    return F.cross_entropy(sim, partner)


def train_identity_judge(pool: Pool, cfg: JudgeTrainingConfig, init: AttributeJudge | None = None) -> IdentityJudge:
    """NT-Xent on K designs × 2 augmented views per batch, from the attribute judge's trunk if given."""
    torch.manual_seed(cfg.seed + 1)
    model = IdentityJudge(cfg.widths)
    if init is not None:
        model.trunk.load_state_dict(init.trunk.state_dict())
    gen, rng = torch.Generator().manual_seed(cfg.seed + 1), random.Random(cfg.seed + 1)

    def batch_loss(_step):
        rows = torch.tensor(_identity_batch(pool, rng, cfg.batch_size // 2))
        return nt_xent(model(_batch(pool.images[rows], gen)), cfg.temperature)

    _loop(model, cfg, cfg.identity_steps, "Identity judge", batch_loss)
    return model


# ---------------------------------------------------------------- held-out evaluation
def held_out_draw(n: int, seed: int, size: int = 64):
    """n renders: ⌈n/2⌉ random designs × 2 views in two different styles -> (images, scenes)."""
    rng = random.Random(seed)
    designs = training_designs()
    designs = rng.sample(designs, min((n + 1) // 2, len(designs)))  # distinct designs
    scenes = []
    for inst in designs:
        s0, s1 = rng.sample(STYLES, 2)
        scenes += [random_scene(rng, instance=inst, style=s0, **SCENE_KW),
                   random_scene(rng, instance=inst, style=s1, **SCENE_KW)]
    return [render(s, size) for s in scenes[:n]], scenes[:n]


def identity_metrics(z: torch.Tensor, designs: list) -> dict:
    """AUROC of cos(same design) vs cos(other design, same class), and top-1 retrieval accuracy."""
    sim = z @ z.T  # (M, M)
    same = torch.tensor([[a == b for b in designs] for a in designs])
    same_cls = torch.tensor([[a.cls == b.cls for b in designs] for a in designs])
    off = ~torch.eye(len(designs), dtype=torch.bool)
    pos, neg = sim[same & off], sim[same_cls & ~same]
    nearest = sim.masked_fill(~off, float("-inf")).argmax(dim=1)
    top1 = same[torch.arange(len(designs)), nearest].float().mean()
    return {"identity_auroc": auroc(pos, neg), "identity_top1": float(top1)}


def _encoders(folder_or_models, image_size: int | None):
    """(ToyAttributeEncoder, ToyIdentityEncoder) from a judges folder, two models, or two encoders."""
    if isinstance(folder_or_models, (str, Path)):
        folder = Path(folder_or_models)
        return ToyAttributeEncoder(folder / "attributes"), ToyIdentityEncoder(folder / "identity")
    if isinstance(folder_or_models, dict):
        folder_or_models = (folder_or_models["attributes"], folder_or_models["identity"])
    attr, ident = folder_or_models
    size = image_size or getattr(attr, "meta", {}).get("image_size", 64)
    if isinstance(attr, torch.nn.Module):
        attr = ToyAttributeEncoder.from_model(attr, size)
    if isinstance(ident, torch.nn.Module):
        ident = ToyIdentityEncoder.from_model(ident, size)
    return attr, ident


def evaluate_judges(folder_or_models, n: int, seed: int, image_size: int | None = None) -> dict:
    """Held-out figures on n fresh renders (seed ``seed``), on clean renders and blurred (σ = 1 px).

    ``{"n", "seed", "clean": {style, class, hat, tree, background, identity_auroc, identity_top1},
    "blur1": {...}}``; attribute figures are accuracies.
    """
    attr, ident = _encoders(folder_or_models, image_size)
    size = attr.image_size
    images, scenes = held_out_draw(n, seed, size)
    labels = torch.tensor([scene_labels(s) for s in scenes])  # (n, 5)
    report = {"n": len(images), "seed": seed}
    for name, blur in (("clean", 0.0), ("blur1", 1.0)):
        if blur:
            x = gaussian_blur(images_to_tensor(images, size), torch.full((len(images),), blur))
            images = [_tensor_to_pil(t) for t in x]
        probs = attr.predict(images)
        figures = {h: float((probs[h].argmax(1) == labels[:, k]).float().mean()) for k, h in enumerate(HEADS)}
        figures.update(identity_metrics(ident.embed(images), [s.instance for s in scenes]))
        report[name] = {k: round(v, 4) for k, v in figures.items()}
    return report


def _tensor_to_pil(t: torch.Tensor) -> Image.Image:
    """(3, S, S) in [-1, 1] -> PIL RGB."""
    return Image.fromarray(((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())


def _log_report(report: dict) -> None:
    for name in ("clean", "blur1"):
        logger.info("Toy judges held out (%s, n=%d, seed %d): %s", name, report["n"], report["seed"],
                    ", ".join(f"{k} {v:.3f}" for k, v in report[name].items()))


# ---------------------------------------------------------------- the whole job
def fit_judges(cfg: JudgeTrainingConfig) -> tuple[dict, dict]:
    """Train both judges and evaluate them on a fresh held-out draw.

    Returns ``({"attributes": (model, meta), "identity": (model, meta)}, report)``; ``save_judge`` writes each.
    """
    t0 = time.perf_counter()
    if cfg.batch_size < 4:
        raise JudgeError(f"batch_size {cfg.batch_size} is too small for contrastive training (need ≥ 4)")
    pool = render_pool(cfg)
    logger.info("Rendered %d judge training views in %.1f s", len(pool.images), time.perf_counter() - t0)
    attr = train_attribute_judge(pool, cfg)
    ident = train_identity_judge(pool, cfg, init=attr)
    del pool
    report = evaluate_judges((attr, ident), cfg.eval_samples, cfg.seed + HELD_OUT_SEED_OFFSET, cfg.image_size)
    report["train_seconds"] = round(time.perf_counter() - t0, 1)
    _log_report(report)
    training = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}
    judges = {}
    for model, keys in ((attr, list(HEADS)), (ident, ["identity_auroc", "identity_top1"])):
        held_out = {name: {k: report[name][k] for k in keys} for name in ("clean", "blur1")}
        judges[model.kind] = (model, {"image_size": cfg.image_size, "training": training,
                                      "held_out": {"n": report["n"], "seed": report["seed"], **held_out}})
    return judges, report


def train_judges(cfg: JudgeTrainingConfig, folder) -> dict:
    """Train both judges, evaluate them on a fresh held-out draw, save to folder/attributes and folder/identity."""
    judges, report = fit_judges(cfg)
    for kind, (model, meta) in judges.items():
        save_judge(model, Path(folder) / kind, meta)
    logger.info("Toy judges trained in %.1f s -> %s", report["train_seconds"], folder)
    return report
