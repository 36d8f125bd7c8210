"""The toy world's judges: small CNNs that play the parts of CLIP and DINO for 64 px samples.

* The **attribute judge** ("toy CLIP") reads a picture's style, class, hat, tree context and
  background (one trunk, five softmax heads). ``ToyAttributeEncoder.text_scores`` turns it into a
  CLIP-T analogue (how much of what a prompt says is drawn) and ``style_scores`` into a style
  similarity (how likely a sample is in the style the references are in).
* The **identity judge** ("toy DINO") embeds a picture as a 64-d unit vector that depends on the
  object's design (class, colours, shape variant, detail) and not on style, pose or context;
  ``ToyIdentityEncoder.subject_scores`` is the mean cosine to the subject's references.

Both are trained on renderer output by ``judge_training.train_judges`` (blurred, resampled and
noised, so they judge what a person would recognise in a blurry generated sample) and stored as
``model.safetensors`` (fp16) + ``toy_judge.json`` in one folder each. This module is core layer:
torch, numpy, PIL and safetensors only.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..images import images_to_tensor as pixels_to_tensor
from .render import BACKGROUNDS, CLASSES, STYLES

logger = logging.getLogger(__name__)

WEIGHTS_NAME, META_NAME = "model.safetensors", "toy_judge.json"
RERUN_HINT = "rerun `kedro run --pipelines pretrain` to train the toy judges again"
HEADS = {"style": len(STYLES), "class": len(CLASSES), "hat": 2, "tree": 2, "background": len(BACKGROUNDS)}
HEAD_LABELS = {"style": STYLES, "class": CLASSES, "hat": (False, True), "tree": (False, True),
               "background": tuple(BACKGROUNDS)}
DEFAULT_WIDTHS = (16, 32, 64, 128)
EMBED_DIM = 64


class JudgeError(ValueError):
    """A toy judge cannot be loaded or used as asked; the message says which file and what to do."""


# ---------------------------------------------------------------- networks
def _conv(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Trunk(nn.Module):
    """(N, 3, H, W) in [-1, 1] -> (N, widths[-1]) pooled features; 4 stride-2 stages (64 px -> 4 px)."""

    def __init__(self, widths=DEFAULT_WIDTHS):
        super().__init__()
        layers, cin = [], 3
        for k, w in enumerate(widths):
            layers.append(_conv(cin, w, 2))  # halve the resolution
            if k < len(widths) - 1:
                layers.append(_conv(w, w, 1))
            cin = w
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)  # (N, C)


class AttributeJudge(nn.Module):
    """Toy CLIP: trunk + one linear layer whose outputs are split into the HEADS' logits."""

    kind = "attributes"

    def __init__(self, widths=DEFAULT_WIDTHS):
        super().__init__()
        self.arch = {"widths": list(widths)}
        self.trunk = Trunk(widths)
        self.head = nn.Linear(widths[-1], sum(HEADS.values()))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.head(self.trunk(x))  # (N, 21)
        return dict(zip(HEADS, logits.split(list(HEADS.values()), dim=1)))  # name -> (N, classes)


class IdentityJudge(nn.Module):
    """Toy DINO: trunk + a two-layer projection to an L2-normalised (N, embed_dim) embedding."""

    kind = "identity"

    def __init__(self, widths=DEFAULT_WIDTHS, embed_dim: int = EMBED_DIM):
        super().__init__()
        self.arch = {"widths": list(widths), "embed_dim": embed_dim}
        self.trunk = Trunk(widths)
        self.head = nn.Sequential(nn.Linear(widths[-1], widths[-1]), nn.ReLU(inplace=True),
                                  nn.Linear(widths[-1], embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.trunk(x)), dim=1)  # (N, embed_dim), unit rows


MODELS = {AttributeJudge.kind: AttributeJudge, IdentityJudge.kind: IdentityJudge}


# ---------------------------------------------------------------- images in
def images_to_tensor(images, size: int, folder="<in memory>") -> torch.Tensor:
    """PIL images (all ``size``×``size``) -> (N, 3, size, size) float in [-1, 1]; never resizes."""
    images = [images] if isinstance(images, Image.Image) else list(images)
    for k, img in enumerate(images):
        if img.size != (size, size):
            raise JudgeError(f"image {k} is {img.size[0]}x{img.size[1]} px but the toy judge in {folder} "
                             f"expects {size}x{size} px; pass images of the size it was trained on")
    if not images:
        return torch.zeros(0, 3, size, size)
    return pixels_to_tensor(images)  # the VAE's own conversion: (N, 3, size, size) in [-1, 1]


# ---------------------------------------------------------------- save / load
def _state_fp16(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with float tensors in fp16 (BatchNorm's step counter is not needed)."""
    out = {}
    for name, t in model.state_dict().items():
        if not name.endswith("num_batches_tracked"):
            out[name] = t.detach().to("cpu", torch.float16 if t.is_floating_point() else t.dtype).contiguous()
    return out


def save_judge(model: nn.Module, folder, meta: dict) -> Path:
    """Write ``folder/model.safetensors`` (fp16) + ``folder/toy_judge.json`` atomically.

    ``meta`` must hold ``image_size``; kind and architecture come from the model. The files are
    written to a temporary sibling folder that then replaces ``folder`` (an old folder is moved
    aside first and deleted only once the new one is in place).
    """
    folder = Path(folder)
    if "image_size" not in meta:
        raise JudgeError(f"save_judge({folder}): meta needs the image_size the judge was trained at")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp, old = folder.with_name(f".{folder.name}.tmp-{tag}"), folder.with_name(f".{folder.name}.old-{tag}")
    try:
        tmp.mkdir()
        save_file(_state_fp16(model), str(tmp / WEIGHTS_NAME), metadata={"kind": model.kind})
        os.chmod(tmp / WEIGHTS_NAME, 0o644)  # safetensors creates it owner-only
        record = {"kind": model.kind, "architecture": model.arch, **meta}
        (tmp / META_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        if folder.exists():
            folder.rename(old)
        tmp.rename(folder)
    except BaseException:
        if old.exists() and not folder.exists():
            old.rename(folder)  # put the previous judge back
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    logger.info("Saved the %s judge to %s", model.kind, folder)
    return folder


def read_meta(folder) -> dict:
    """The judge's ``toy_judge.json``; JudgeError naming the file when missing or unreadable."""
    path = Path(folder) / META_NAME
    try:
        meta = json.loads(path.read_text())
        if meta.get("kind") not in MODELS or not isinstance(meta.get("image_size"), int):
            raise ValueError("no valid 'kind' / 'image_size'")
    except (OSError, ValueError) as err:
        raise JudgeError(f"toy judge description {path} is missing or corrupt ({err}); {RERUN_HINT}") from err
    return meta


def load_judge(folder, device="cpu") -> nn.Module:
    """The judge stored in ``folder`` in eval mode, fp32, on ``device``; ``model.meta`` holds its json."""
    meta = read_meta(folder)
    path = Path(folder) / WEIGHTS_NAME
    model = MODELS[meta["kind"]](**meta.get("architecture", {}))
    try:
        state = load_file(str(path))
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        missing = set(_state_fp16(model)) - set(state)
        if missing:
            raise ValueError(f"{len(missing)} tensors missing, e.g. {sorted(missing)[0]}")
    except (OSError, SafetensorError, RuntimeError, ValueError) as err:
        raise JudgeError(f"toy judge weights {path} are missing or corrupt ({err}); {RERUN_HINT}") from err
    model.meta, model.folder = meta, str(folder)
    return model.float().to(device).eval()


# ---------------------------------------------------------------- prompts
_PHRASES = {"hat": r"\bwearing an? hat\b", "tree": r"\bnext to an? tree\b"}
_BACKGROUND = re.compile(r"\bon an? (\w+) background\b")


def parse_prompt(prompt: str) -> dict:
    """What a prompt asks for: ``{"class": "robot"|None, "hat": bool, "tree": bool, "background": str|None}``.

    The class is the first CLASSES word outside the "next to a tree" phrase; the background is
    named by "on a <colour> background" (None unless the colour is one of BACKGROUNDS).
    """
    text = prompt.lower()
    out = {name: re.search(rx, text) is not None for name, rx in _PHRASES.items()}
    bg = _BACKGROUND.search(text)
    out["background"] = bg.group(1) if bg and bg.group(1) in BACKGROUNDS else None
    rest = re.sub(_PHRASES["tree"], " ", text)
    found = [(m.start(), c) for c in CLASSES for m in [re.search(rf"\b{c}\b", rest)] if m]
    out["class"] = min(found)[1] if found else None
    return out


def _prompt_targets(prompt: str) -> list[tuple[str, int]]:
    """(head, label index) pairs for the attributes a prompt mentions."""
    p = parse_prompt(prompt)
    targets = [("class", CLASSES.index(p["class"]))] if p["class"] else []
    targets += [(name, 1) for name in ("hat", "tree") if p[name]]
    if p["background"]:
        targets.append(("background", list(BACKGROUNDS).index(p["background"])))
    return targets


# ---------------------------------------------------------------- encoders
class _Encoder:
    """Loads a judge of one kind from a folder (or wraps a model) and feeds it images in chunks."""

    kind = ""
    chunk = 256

    def __init__(self, folder, device="cpu"):
        self._bind(load_judge(folder, device), device)

    @classmethod
    def from_model(cls, model: nn.Module, image_size: int, device="cpu"):
        """Wrap an in-memory judge (e.g. straight after training) without saving it."""
        enc = cls.__new__(cls)
        model.meta = {**getattr(model, "meta", {}), "image_size": image_size}
        model.folder = getattr(model, "folder", "<in memory>")
        enc._bind(model.to(device).eval(), device)
        return enc

    def _bind(self, model: nn.Module, device) -> None:
        if model.kind != self.kind:
            raise JudgeError(f"{model.folder} holds a {model.kind} judge, not an {self.kind} judge")
        self.model, self.device = model, device
        self.image_size, self.folder = model.meta["image_size"], model.folder

    @torch.no_grad()
    def _run(self, images):
        x = images_to_tensor(images, self.image_size, self.folder)  # (N, 3, S, S)
        chunks = [x[i:i + self.chunk] for i in range(0, len(x), self.chunk)] or [x]  # [x]: no images
        outs = [self.model(c.to(self.device)) for c in chunks]
        if isinstance(outs[0], dict):
            return {k: torch.cat([o[k] for o in outs]).cpu() for k in outs[0]}
        return torch.cat(outs).cpu()


class ToyAttributeEncoder(_Encoder):
    """Toy CLIP: per-attribute probabilities, prompt scores (CLIP-T) and style scores."""

    kind = AttributeJudge.kind

    def predict(self, images) -> dict[str, torch.Tensor]:
        """Softmax probabilities per head: style (N,6), class (N,6), hat (N,2), tree (N,2), background (N,5)."""
        return {k: v.softmax(dim=1) for k, v in self._run(images).items()}

    def style_scores(self, images, style_refs) -> torch.Tensor:
        """(N,): probability each image is in the style the refs are judged to be in (argmax of mean ref probs)."""
        style = int(self.predict(style_refs)["style"].mean(dim=0).argmax())
        return self.predict(images)["style"][:, style]

    def text_scores(self, images, prompts: list[str]) -> torch.Tensor:
        """(N,): mean judged probability of the attributes each prompt mentions (NaN: mentions none).

        ``prompts`` has one prompt per image, or a single prompt for all of them.
        """
        probs = self.predict(images)
        n = len(probs["style"])
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if len(prompts) not in (1, n):
            raise JudgeError(f"text_scores: {len(prompts)} prompts for {n} images; pass one per image or one")
        scores = torch.full((n,), float("nan"))
        for i in range(n):
            targets = _prompt_targets(prompts[i if len(prompts) == n else 0])
            if targets:
                scores[i] = torch.stack([probs[head][i, label] for head, label in targets]).mean()
        return scores


    def object_drawn(self, images, prompts: list[str], reference_prompt: str | None = None) -> torch.Tensor:
        """(N,): 1 where the class head names the class each prompt asks for, else 0 (NaN: the prompt names no
        class). ``reference_prompt`` (the style image's) is not needed: the class head names the class outright."""
        called = self.predict(images)["class"].argmax(dim=1).tolist()
        asked = [parse_prompt(p)["class"] for p in prompts]
        return torch.tensor([float("nan") if a is None else float(CLASSES[c] == a) for c, a in zip(called, asked)])


class ToyIdentityEncoder(_Encoder):
    """Toy DINO: style-, pose- and context-invariant embeddings of an object's design."""

    kind = IdentityJudge.kind

    def embed(self, images) -> torch.Tensor:
        """(N, 64) unit vectors."""
        return self._run(images)

    def subject_scores(self, images, subject_refs) -> torch.Tensor:
        """(N,): mean cosine similarity of each image to the subject's reference images."""
        return (self.embed(images) @ self.embed(subject_refs).T).mean(dim=1)
