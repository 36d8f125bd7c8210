"""ZipLoRA (Shah et al. 2023): per-column merger vectors between k LoRAs, in low-rank form.

Paper Eq. 2, for one linear layer with LoRA deltas ΔW_i = s_i B_i A_i (out, in):

    ΔW_m = Σ_i m_i ⊗ ΔW_i,   m_i ∈ R^in, (m ⊗ ΔW)[:, j] = m_j ΔW[:, j]

and since m ⊗ ΔW = s B (A diag(m)), the merged layer is

    y = W0 x + Σ_i s_i B_i A_i (m_i ⊙ x)            (never forms a dense (out, in) ΔW)

so the merged result is exactly a standard LoRA of rank Σ r_i:
A_m = [A_1 diag(m_1); …; A_k diag(m_k)], B_m = [s_1 B_1 | … | s_k B_k] (scale folded, alpha = rank).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..lora.factors import LoraFactors, in_features, low_rank_branch


class ZipLoRALinear(nn.Module):
    """A frozen linear layer plus k frozen LoRAs, each gated per input column by a trainable merger.

    Wraps (does not copy) ``base``; like peft's LoraLayer the adapters sit side by side, keyed
    by name ("subject", "style"). A layer adapted by only some LoRAs holds only those.

    Forward uses m ⊗ ΔW = s B (A diag(m)): the mergers scale A's columns, the k scaled A's are
    stacked into one (Σr, in) matrix and the k B's into one (out, Σr) matrix, so a step costs
    one rank-Σr LoRA forward — no dense ΔW and no per-adapter copy of the activations.
    ``base`` may also be a 1×1 Conv2d (a linear map per pixel: its input channels are the columns).
    """

    def __init__(self, base: nn.Module, factors: dict[str, LoraFactors]):
        super().__init__()
        self.base = base
        self.names = list(factors)
        self.ranks = [f.rank for f in factors.values()]
        device = base.weight.device
        # Frozen buffers, not parameters: A (Σr, in) and s·B (out, Σr), scales folded in, kept in fp32 whatever the
        # UNet's dtype (a few MB per layer): the merger scaling A·diag(m) is then an fp32 product. With a bf16 UNet
        # casting m itself to bf16 would round a step of lr 0.01 to 0 or to one ulp near 1.0 (2^-7).
        A = torch.cat([f.A.to(torch.promote_types(f.A.dtype, torch.float32)) for f in factors.values()])
        B = torch.cat([f.B.to(torch.promote_types(f.B.dtype, torch.float32)) * f.scale for f in factors.values()], 1)
        self.register_buffer("A", A.to(device), persistent=False)
        self.register_buffer("B", B.to(device), persistent=False)
        # Mergers in fp32 (master weights) even for a half-precision UNet; init 1 = direct merge.
        self.mergers = nn.ParameterDict({n: nn.Parameter(torch.ones(in_features(base), device=device)) for n in factors})

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x (..., in) -> (..., out); 1×1 conv: (N, in, H, W)
        m = torch.cat([self.mergers[n].expand(r, -1) for n, r in zip(self.names, self.ranks)])  # (Σr, in), fp32
        scaled_A = (self.A * m).to(x.dtype)  # [A_1 diag(m_1); …; A_k diag(m_k)] in fp32, then the activations' dtype
        return self.base(x) + low_rank_branch(self.base, x, scaled_A, self.B.to(x.dtype))  # via (..., Σr)


def attach_ziplora(unet: nn.Module, loras: dict[str, dict[str, LoraFactors]]) -> dict[str, ZipLoRALinear]:
    """Replace every layer any LoRA adapts (Linear, 1×1 Conv2d) by a ``ZipLoRALinear``; freeze all but the mergers.

    Args:
        loras: {adapter name: {module path: factors}} (paths as in ``unet.named_modules()``).
    Returns:
        {module path: wrapper}. ``detach_ziplora`` restores the original layers.
    """
    unet.requires_grad_(False)
    paths = sorted(set(itertools.chain.from_iterable(loras.values())))
    wrappers = {}
    for path in paths:
        wrapper = ZipLoRALinear(unet.get_submodule(path), {n: f[path] for n, f in loras.items() if path in f})
        replace_module(unet, path, wrapper)
        wrappers[path] = wrapper
    return wrappers


def detach_ziplora(unet: nn.Module, wrappers: dict[str, ZipLoRALinear]) -> None:
    """Put the original linear layers back."""
    for path, wrapper in wrappers.items():
        replace_module(unet, path, wrapper.base)


def replace_module(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` (as in ``root.named_modules()``) in place of what is there."""
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if child.isdigit():
        parent[int(child)] = module
    else:
        setattr(parent, child, module)


def merger_parameters(wrappers: dict[str, ZipLoRALinear]) -> list[nn.Parameter]:
    return [p for w in wrappers.values() for p in w.mergers.values()]


class set_mergers:  # noqa: N801 - used as a context manager, like torch.no_grad
    """Temporarily set every merger of adapter ``name`` to a constant (restored on exit).

    Mergers (1, 0) make the merged UNet exactly the subject LoRA's (the other term is 0·x),
    which is how the reconstruction targets (D ⊕ L_i) of Eq. 3 are computed.
    """

    def __init__(self, wrappers: dict[str, ZipLoRALinear], values: dict[str, float]):
        self.wrappers, self.values, self.saved = wrappers, values, []

    def __enter__(self):
        with torch.no_grad():
            for w in self.wrappers.values():
                for name, m in w.mergers.items():
                    self.saved.append((m, m.detach().clone()))
                    m.fill_(self.values.get(name, 0.0))
        return self

    def __exit__(self, *exc):
        with torch.no_grad():
            for m, value in self.saved:
                m.copy_(value)
        self.saved.clear()


# ---- overlap penalty (third term of Eq. 3) ----------------------------------------------------

def _pairs(wrappers: Iterable[ZipLoRALinear]) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """All merger pairs (i < j) of all layers, stacked per vector length: {in: ((P, in), (P, in))}.

    Batching the per-layer terms into a few stacked ops keeps the penalty's cost independent of
    the number of layers (hundreds on SDXL) instead of one small kernel per layer.
    """
    groups: dict[int, tuple[list, list]] = {}
    for w in wrappers:
        for i, j in itertools.combinations(w.names, 2):
            a, b = groups.setdefault(in_features(w.base), ([], []))
            a.append(w.mergers[i])
            b.append(w.mergers[j])
    return {n: (torch.stack(a), torch.stack(b)) for n, (a, b) in groups.items()}


def overlap_terms(a: torch.Tensor, b: torch.Tensor, form: str) -> torch.Tensor:
    """Per-pair overlap of stacked merger vectors a, b (P, in) -> (P,).

    cosine: |cos(a, b)| — scale-free, 1 at the all-ones start (ZIPLORA.md: behaves as intended);
    mean_product: mean_j |a_j b_j| — the unofficial implementation's form;
    dot: |Σ_j a_j b_j| — the paper taken literally (starts at in_features per layer).
    """
    if form == "cosine":
        return F.cosine_similarity(a, b, dim=1).abs()
    if form == "mean_product":
        return (a * b).abs().mean(dim=1)
    if form == "dot":
        return (a * b).sum(dim=1).abs()
    raise ValueError(f"Unknown overlap form {form!r}: use cosine, mean_product or dot.")


def overlap_penalty(wrappers: Iterable[ZipLoRALinear], form: str = "cosine") -> torch.Tensor:
    """Σ_layers Σ_{i<j} overlap(m_i, m_j); layers adapted by one LoRA contribute nothing."""
    terms = [overlap_terms(a, b, form).sum() for a, b in _pairs(wrappers).values()]
    return torch.stack(terms).sum() if terms else torch.zeros(())


@torch.no_grad()
def mean_abs_cosine(wrappers: Iterable[ZipLoRALinear]) -> float:
    """Mean over layers and pairs of |cos(m_i, m_j)|: 1 at the start, 0 when fully disjoint."""
    cos = [F.cosine_similarity(a, b, dim=1).abs() for a, b in _pairs(wrappers).values()]
    return torch.cat(cos).mean().item() if cos else 0.0


def merger_state_dict(wrappers: dict[str, ZipLoRALinear]) -> dict[str, torch.Tensor]:
    """``{"<module path>.<adapter>": m (in,)}`` — the merger file's layout."""
    return {f"{path}.{name}": m.detach().float().cpu().clone()
            for path, w in wrappers.items() for name, m in w.mergers.items()}


def load_merger_state_dict(wrappers: dict[str, ZipLoRALinear], state: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for path, w in wrappers.items():
            for name, m in w.mergers.items():
                m.copy_(state[f"{path}.{name}"])
