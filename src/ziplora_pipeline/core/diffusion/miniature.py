"""A miniature SDXL (or SD 1.5) with random weights, built offline and saved in diffusers format.

The project's embedded default: every component SDXL has (two CLIP text encoders with
tokenizers, a ``text_time``-conditioned UNet, a VAE, the SDXL scheduler), only tiny. It is
written with ``save_pretrained`` and then loaded through ``StableDiffusionXLPipeline.
from_pretrained`` exactly like real SDXL weights, so no code path differs between the two.
Outputs are noise (random weights); the point is that the whole pipeline runs on a CPU in
minutes and that every shape/format contract of the real model is exercised.
"""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MiniatureSpec:
    """Sizes of the miniature model. Defaults keep a LoRA step at 64 px well under a second."""

    seed: int = 0
    family: str = "sdxl"  # "sdxl", or "sd" for an SD-1.5-shaped model (one text encoder, no text_time)
    text_hidden: int = 32  # each CLIP encoder's width; UNet cross_attention_dim = 2 * this
    text_layers: int = 2
    projection_dim: int = 32  # text_encoder_2 pooled projection (SDXL: 1280)
    unet_channels: tuple[int, ...] = (32, 64)  # SDXL: (320, 640, 1280)
    time_embed_dim: int = 8  # addition_time_embed_dim (SDXL: 256)
    vae_channels: tuple[int, ...] = (8, 16, 16, 16)  # 4 levels -> 8x downsampling like SDXL (n levels: 2^(n-1))
    sample_size: int = 64  # pixels
    # Words the tokenizer keeps whole (BPE merges built for them, as CLIP's BPE does for common
    # words); anything else, e.g. the rare tokens "sks"/"zwx", stays one token per character.
    words: tuple[str, ...] = ()


def _byte_vocab() -> dict[str, int]:
    """CLIP's byte-level alphabet as a vocabulary, with no merges.

    transformers 5 no longer exports ``bytes_to_unicode``; this re-derives the same table
    (GPT-2's printable mapping of the 256 byte values). With an empty merges file BPE leaves
    every word as characters, which is all a random-weight model needs.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, n = printable[:], 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    symbols = [chr(c) for c in chars]
    tokens = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}


def miniature_tokenizer(words: tuple[str, ...] = ()):
    """An offline CLIP tokenizer: the byte-level alphabet plus one whole-word token per ``words``.

    For each word the BPE merges join its characters left to right ("r o" -> "ro", "ro b" ->
    "rob", ...), so it encodes as a single token, like frequent words in CLIP's real vocabulary.
    BPE applies the lowest-ranked merge present, so one word's merge can pre-empt another's chain
    ("h o" of "house" inside "photo"): words that do not come out whole are moved to the front of
    the merge list until all do. The special tokens stay the last two ids (the text encoders'
    bos/eos ids depend on it).
    """
    order = sorted(dict.fromkeys(w for w in words if len(w) > 1), key=lambda w: (-len(w), w))
    for _ in range(len(order) + 1):
        tok = _bpe_tokenizer(order)
        broken = [w for w in order if len(tok(w).input_ids) != 3]  # bos, the word, eos
        if not broken:
            return tok
        order = broken + [w for w in order if w not in broken]
    raise RuntimeError(f"Could not give whole-word tokens to {broken}.")


def _bpe_tokenizer(words: list[str]):
    from transformers import CLIPTokenizer

    vocab = {k: i for k, i in _byte_vocab().items() if not k.startswith("<|")}
    merges = []
    for word in words:
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for symbol in symbols[1:]:
            if current + symbol not in vocab:
                vocab[current + symbol] = len(vocab)
                merges.append((current, symbol))
            current += symbol
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    # transformers 5's CLIPTokenizer takes the vocabulary itself (no vocab file needed).
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)


def build_miniature_sdxl(spec: MiniatureSpec = MiniatureSpec()):
    """Return a ``StableDiffusionXLPipeline`` with random weights (deterministic in ``spec.seed``).

    With ``spec.family == "sd"`` a ``StableDiffusionPipeline`` shaped like SD 1.5 instead.
    """
    if spec.family == "sd":
        return build_miniature_sd15(spec)
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(spec.seed)
    tokenizer = miniature_tokenizer(tuple(spec.words))
    vocab = len(tokenizer)
    text_cfg = dict(
        hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 2, num_hidden_layers=spec.text_layers,
        num_attention_heads=4, vocab_size=vocab, max_position_embeddings=77,
        bos_token_id=vocab - 2, eos_token_id=vocab - 1, pad_token_id=vocab - 1, hidden_act="quick_gelu",
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text_cfg, projection_dim=spec.projection_dim))
    n = len(spec.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=spec.sample_size // 2 ** (len(spec.vae_channels) - 1),  # latent size
        block_out_channels=spec.unet_channels,
        layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        transformer_layers_per_block=tuple(range(1, n + 1)),  # SDXL: (1, 2, 10)
        attention_head_dim=tuple(c // 16 for c in spec.unet_channels),  # SDXL: (5, 10, 20)
        cross_attention_dim=2 * spec.text_hidden,  # both encoders' hidden states concatenated
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=spec.time_embed_dim,
        # 6 time ids (orig h/w, crop top/left, target h/w) each embedded + pooled text (SDXL: 2816)
        projection_class_embeddings_input_dim=6 * spec.time_embed_dim + spec.projection_dim,
    )
    vae = AutoencoderKL(
        block_out_channels=spec.vae_channels,
        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=spec.sample_size,
        scaling_factor=0.13025,  # SDXL VAE's
    )
    # The SDXL base scheduler config (scheduler/scheduler_config.json of SDXL 1.0).
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
        prediction_type="epsilon", timestep_spacing="leading", steps_offset=1, interpolation_type="linear",
        use_karras_sigmas=False,
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
    )


def build_miniature_sd15(spec: MiniatureSpec):
    """SD-1.5-shaped miniature: one CLIP text encoder, a UNet without ``text_time``, PNDM scheduler."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(spec.seed)
    vocab = len(_byte_vocab())
    text_encoder = CLIPTextModel(CLIPTextConfig(
        hidden_size=spec.text_hidden, intermediate_size=spec.text_hidden * 2, num_hidden_layers=spec.text_layers,
        num_attention_heads=4, vocab_size=vocab, max_position_embeddings=77, bos_token_id=vocab - 2,
        eos_token_id=vocab - 1, pad_token_id=vocab - 1, hidden_act="quick_gelu"))
    n = len(spec.unet_channels)
    unet = UNet2DConditionModel(  # SD 1.5: cross-attention in every block but the last, 8 heads
        sample_size=spec.sample_size // 2 ** (len(spec.vae_channels) - 1), block_out_channels=spec.unet_channels,
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        attention_head_dim=4, cross_attention_dim=spec.text_hidden, norm_num_groups=8,
    )
    vae = AutoencoderKL(block_out_channels=spec.vae_channels, latent_channels=4, norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * len(spec.vae_channels),
                        up_block_types=("UpDecoderBlock2D",) * len(spec.vae_channels),
                        sample_size=spec.sample_size, scaling_factor=0.18215)  # SD 1.5 VAE's
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False)
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=miniature_tokenizer(), unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def write_miniature_sdxl(folder: str | Path, spec: MiniatureSpec = MiniatureSpec()) -> Path:
    """Build the miniature SDXL and save it in diffusers format at ``folder`` (atomically).

    Written to a sibling temporary folder and renamed, so an interrupted build never leaves a
    half-written model that a later run would try to load.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    pipe = build_miniature_sdxl(spec)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{folder.name}.") as tmp:
        pipe.save_pretrained(tmp)
        (Path(tmp) / "miniature_spec.json").write_text(json.dumps(spec.__dict__, default=list, indent=2))
        Path(tmp).rename(folder)
    logger.info("Built miniature %s (seed %d) at %s", spec.family.upper(), spec.seed, folder)
    return folder


def build_sdxl_from_configs(device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A full-size SDXL-architecture pipeline (UNet 2.6B, both text encoders, VAE) with random weights.

    Built from SDXL 1.0's own configs, shipped in ``core/diffusion/configs/sdxl/`` so that nothing is
    downloaded; modules are created directly on ``device`` (no 10 GB fp32 detour through the
    CPU). For speed and memory checks only: the tokenizer is the offline byte-level one.
    """
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = Path(__file__).parent / "configs" / "sdxl"
    cfg = {name: json.loads((folder / f"{name}.json").read_text())
           for name in ("unet", "vae", "text_encoder", "text_encoder_2", "scheduler")}
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(cfg["unet"]).to(dtype)
        vae = AutoencoderKL.from_config(cfg["vae"]).to(dtype)
        te = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])).to(dtype)
        te2 = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"])).to(dtype)
    tok = miniature_tokenizer()
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok,
                                     unet=unet, scheduler=EulerDiscreteScheduler.from_config(cfg["scheduler"]))
