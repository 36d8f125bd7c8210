"""Image metrics of the DreamBooth/ZipLoRA protocol: CLIP-I (style), DINO (subject), CLIP-T (text).

- style alignment: cosine of CLIP image embeddings, generated image vs the style image (Table 2);
- subject alignment: cosine of DINO ViT-S/16 [CLS] embeddings, generated vs each subject image;
- text alignment (CLIP-T): cosine of CLIP image and text embeddings of the image and its prompt,
  with the rare tokens removed ("a sks robot in zwx style" -> "a robot in style"; our reading of
  DreamBooth's protocol, which scores the prompt's content, not the identifier);
- harmonic mean of subject and style alignment (later work's single score).

Encoders are a hub id or a local folder, loaded with ``from_pretrained``. The embedded default
builds tiny *random* CLIP and ViT models offline (``build_seed``) and saves them, so the code path
runs without downloads; their numbers mean nothing, and the report says so
(``ImageEncoders.random``). An encoder that cannot be loaded is named in ``notes`` and its
metrics are left empty, never 0.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..config_utils import require

logger = logging.getLogger(__name__)
RANDOM_MARKER = "tiny_random_encoder.json"  # written beside the weights of a built random encoder
TOY_MARKER = "toy_judge.json"  # beside the weights of a toy-world judge (core/toy_world/judges.py)


@dataclass(frozen=True)
class EncoderConfig:
    name_or_path: str
    build_seed: int | None = 0  # build a tiny random encoder at the path when it is missing; null for real weights
    local_files_only: bool = False

    def __post_init__(self):
        require(bool(self.name_or_path), "evaluation encoder name_or_path must name a hub id or a folder.")


def _tiny_vision(**extra) -> dict:
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                image_size=32, patch_size=8, **extra)


def build_tiny_clip(folder: str | Path, seed: int = 0) -> Path:
    """A random CLIPModel (32-wide, 2 layers, 32 px) with tokenizer and PIL image processor, saved at ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from ..diffusion.miniature import miniature_tokenizer  # the miniature SDXL's offline byte-level CLIP tokenizer

    torch.manual_seed(seed)
    tok = miniature_tokenizer()
    n = len(tok)
    text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=n,
                max_position_embeddings=77, bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1)
    CLIPModel(CLIPConfig(text_config=text, vision_config=_tiny_vision(), projection_dim=32)).save_pretrained(folder)
    tok.save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return _mark(folder, "clip", seed)


def build_tiny_dino(folder: str | Path, seed: int = 0) -> Path:
    """A random ViTModel (DINO ViT-S/16's architecture family, 32 px) with its PIL image processor."""
    from transformers import ViTConfig, ViTImageProcessorPil, ViTModel

    torch.manual_seed(seed)
    ViTModel(ViTConfig(**_tiny_vision())).save_pretrained(folder)
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(folder)
    return _mark(folder, "dino", seed)


def _mark(folder, kind: str, seed: int) -> Path:
    (Path(folder) / RANDOM_MARKER).write_text(json.dumps({"kind": kind, "seed": seed, "random_weights": True}))
    logger.info("Built a tiny random %s encoder (seed %d) at %s", kind.upper(), seed, folder)
    return Path(folder)


class ClipEncoder:
    def __init__(self, folder: str, device, local_files_only: bool = False):
        from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

        kw = {"local_files_only": local_files_only}
        self.model = CLIPModel.from_pretrained(folder, **kw).to(device).eval()
        # backend="pil": transformers' default image processors need torchvision, which we do not depend on.
        self.processor = AutoImageProcessor.from_pretrained(folder, backend="pil", **kw)
        self.tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
        self.device = device

    @torch.no_grad()
    def images(self, images: list) -> torch.Tensor:
        """(N, D) unit vectors."""
        px = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return F.normalize(self.model.get_image_features(pixel_values=px).pooler_output.float(), dim=-1)

    @torch.no_grad()
    def texts(self, texts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(texts, padding=True, truncation=True, max_length=77, return_tensors="pt").to(self.device)
        return F.normalize(self.model.get_text_features(**ids).pooler_output.float(), dim=-1)

    def style_scores(self, images: list, style_refs: list) -> torch.Tensor:
        """CLIP-I: (N,) mean cosine of each image's embedding to the style images' (Table 2)."""
        return (self.images(images) @ self.images(style_refs).T).mean(-1)

    def text_scores(self, images: list, prompts: list[str]) -> torch.Tensor:
        """CLIP-T: (N,) cosine of each image's embedding to its prompt's."""
        return (self.images(images) * self.texts(prompts)).sum(-1)

    def object_drawn(self, images: list, prompts: list[str], reference_prompt: str) -> torch.Tensor:
        """(N,): 1 where an image is closer to its own (neutral) prompt than to the style image's prompt, else 0:
        did the generator draw what was asked, or copy the style image's content? (Ours: a two-way CLIP
        zero-shot test of content leakage.)"""
        emb = self.images(images)
        own = (emb * self.texts(prompts)).sum(-1)
        ref = emb @ self.texts([reference_prompt])[0]
        return (own > ref).float()


class DinoEncoder:
    def __init__(self, folder: str, device, local_files_only: bool = False):
        from transformers import AutoImageProcessor, AutoModel

        self.model = AutoModel.from_pretrained(folder, local_files_only=local_files_only).to(device).eval()
        self.processor = AutoImageProcessor.from_pretrained(folder, backend="pil", local_files_only=local_files_only)
        self.device = device

    @torch.no_grad()
    def images(self, images: list) -> torch.Tensor:
        """[CLS] token of the last layer, (N, D) unit vectors (DreamBooth's DINO metric)."""
        px = self.processor(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return F.normalize(self.model(pixel_values=px).last_hidden_state[:, 0].float(), dim=-1)

    def subject_scores(self, images: list, subject_refs: list) -> torch.Tensor:
        """DINO: (N,) mean cosine of each image's [CLS] embedding to the subject images'."""
        return (self.images(images) @ self.images(subject_refs).T).mean(-1)


@dataclass
class ImageEncoders:
    """The two encoders; either may be the toy world's judge of that role (``toy``), same methods."""

    clip: ClipEncoder | None = None  # style_scores, text_scores, object_drawn
    dino: DinoEncoder | None = None  # subject_scores
    second: object | None = None  # the second judge (core/evaluation/second_judge.py): subject_scores, style_scores
    random: list[str] = field(default_factory=list)  # which of them are tiny random stand-ins
    toy: list[str] = field(default_factory=list)  # which of them are the toy world's trained judges
    notes: list[str] = field(default_factory=list)  # what could not be loaded, and what that skips


_BUILDERS = {"clip": build_tiny_clip, "dino": build_tiny_dino}
_CLASSES = {"clip": ClipEncoder, "dino": DinoEncoder}
_SKIPS = {"clip": "clip_style, clip_text", "dino": "dino_subject"}


def load_encoders(cfgs: dict[str, EncoderConfig], device) -> ImageEncoders:
    """Load (building random stand-ins where configured and missing) the CLIP and DINO encoders."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    out = ImageEncoders()
    for kind, cfg in cfgs.items():
        path = Path(cfg.name_or_path)
        try:
            if cfg.build_seed is not None and not path.exists():
                _BUILDERS[kind](path, cfg.build_seed)
            if (path / TOY_MARKER).is_file():  # the toy world's judge for this role (core/toy_world/judges.py)
                setattr(out, kind, _toy_class(kind)(cfg.name_or_path, device))
                out.toy.append(kind)
            else:
                setattr(out, kind, _CLASSES[kind](cfg.name_or_path, device, cfg.local_files_only))
        except Exception as err:  # noqa: BLE001 - hub/OS/format errors alike: report, skip these metrics
            note = (f"The {kind.upper()} encoder {cfg.name_or_path!r} could not be loaded "
                    f"({type(err).__name__}: {str(err).splitlines()[0][:200]}); {_SKIPS[kind]} and harmonic are "
                    "skipped (left empty).")
            logger.warning(note)
            out.notes.append(note)
            continue
        if (path / RANDOM_MARKER).is_file():
            out.random.append(kind)
    return out


def _toy_class(kind: str):
    from ..toy_world.judges import ToyAttributeEncoder, ToyIdentityEncoder

    return {"clip": ToyAttributeEncoder, "dino": ToyIdentityEncoder}[kind]


def neutral_prompt(prompt: str, tokens: tuple[str, ...]) -> str:
    """The prompt without its rare identifier tokens, for CLIP-T."""
    return " ".join(w for w in prompt.split() if w not in tokens)


def harmonic(a: float | None, b: float | None) -> float | None:
    """2ab / (a + b) for positive a, b; None otherwise (a harmonic mean of non-positive scores is meaningless)."""
    if a is None or b is None or a <= 0 or b <= 0:
        return None
    return 2 * a * b / (a + b)


def image_scores(encoders: ImageEncoders, images: list, prompts: list[str], subject_refs: list, style_refs: list,
                 tokens: tuple[str, ...], style_prompt: str | None = None) -> dict[str, list[float] | None]:
    """Per-image scores (lists of N floats, None where the encoder is missing): clip_style, dino_subject,
    clip_text; object_drawn (with ``style_prompt``, the style image's prompt: was the prompted object drawn
    rather than the style image's?); lite_subject, lite_style from the second judge. Per image, so that
    intervals can be taken over seeds."""
    out: dict[str, list[float] | None] = {"clip_style": None, "dino_subject": None, "clip_text": None,
                                          "object_drawn": None, "lite_subject": None, "lite_style": None}
    neutral = [neutral_prompt(p, tokens) for p in prompts]
    if encoders.clip is not None:
        out["clip_style"] = encoders.clip.style_scores(images, style_refs).tolist()
        out["clip_text"] = encoders.clip.text_scores(images, neutral).tolist()
        if style_prompt is not None:
            out["object_drawn"] = encoders.clip.object_drawn(images, neutral,
                                                             neutral_prompt(style_prompt, tokens)).tolist()
    if encoders.dino is not None:
        out["dino_subject"] = encoders.dino.subject_scores(images, subject_refs).tolist()
    if encoders.second is not None:
        out["lite_subject"] = encoders.second.subject_scores(images, subject_refs).tolist()
        out["lite_style"] = encoders.second.style_scores(images, style_refs).tolist()
    return out


def _nanmean(values: list[float] | None) -> float | None:
    kept = [v for v in values or [] if v == v]  # NaN: the prompt names nothing the judge scores
    return sum(kept) / len(kept) if kept else None


def alignment(encoders: ImageEncoders, images: list, prompts: list[str], subject_refs: list, style_refs: list,
              tokens: tuple[str, ...]) -> dict[str, float | None]:
    """Mean scores over ``images`` (with their ``prompts``): clip_style, dino_subject, clip_text, harmonic."""
    scores = image_scores(encoders, images, prompts, subject_refs, style_refs, tokens)
    out = {k: _nanmean(v) for k, v in scores.items()}
    out["harmonic"] = harmonic(out["dino_subject"], out["clip_style"])
    return out
