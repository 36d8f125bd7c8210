"""ZipLoRA core on tiny modules: Eq. 2 in low-rank form vs the dense formula, penalties, export."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ziplora_pipeline.core.lora.factors import LoraFactors
from ziplora_pipeline.core.merging.export import factors_to_lora_file, merged_factors
from ziplora_pipeline.core.merging.ziplora_layer import (ZipLoRALinear, attach_ziplora, detach_ziplora, mean_abs_cosine,
                                                         merger_state_dict, overlap_penalty, set_mergers)

IN, OUT = 12, 10


def _factors(rank: int, scale: float, seed: int, dtype=torch.float64) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(rank, IN, generator=g, dtype=dtype), torch.randn(OUT, rank, generator=g, dtype=dtype), scale)


def _layer(loras: dict[str, LoraFactors]) -> ZipLoRALinear:
    torch.manual_seed(0)
    base = nn.Linear(IN, OUT).double().requires_grad_(False)
    layer = ZipLoRALinear(base, loras).double()
    with torch.no_grad():
        for m in layer.mergers.values():
            m.copy_(torch.rand(IN, dtype=torch.float64) * 2)
    return layer


def _dense(layer: ZipLoRALinear, loras: dict[str, LoraFactors], x: torch.Tensor) -> torch.Tensor:
    """Paper Eq. 2 literally: ΔW_m = Σ m_i ⊗ ΔW_i with (m ⊗ ΔW)[:, j] = m_j ΔW[:, j]."""
    delta = sum(layer.mergers[n].double()[None, :] * f.delta().double() for n, f in loras.items())
    return layer.base(x) + x @ delta.T


@pytest.mark.parametrize("ranks", [(3, 5), (4, 4, 2)])
def test_low_rank_forward_and_merger_grads_equal_dense_formula(ranks):
    """Values and merger gradients agree with the dense formula to 1e-10 (float64), k = 2 and 3 LoRAs."""
    loras = {f"lora{i}": _factors(r, 0.5 + i, seed=i) for i, r in enumerate(ranks)}
    x = torch.randn(7, 3, IN, dtype=torch.float64)
    layer = _layer(loras)
    y = layer(x)
    y_dense = _dense(layer, loras, x)
    torch.testing.assert_close(y, y_dense, atol=1e-10, rtol=0)
    w = torch.randn_like(y)
    g_low = torch.autograd.grad((y * w).sum(), list(layer.mergers.values()))
    g_dense = torch.autograd.grad((_dense(layer, loras, x) * w).sum(), list(layer.mergers.values()))
    for a, b in zip(g_low, g_dense):
        torch.testing.assert_close(a, b, atol=1e-9, rtol=0)


def test_merger_scaling_is_fp32_under_a_bf16_layer():
    """With a bf16 UNet layer, a merger step far below bf16's resolution at 1.0 (2^-7) still moves the output:
    A·diag(m) is an fp32 product (casting m to bf16 first, as before, rounds 1 + 1e-3 to exactly 1)."""
    loras = {"subject": _factors(4, 1.0, 1, torch.float32), "style": _factors(4, 1.0, 2, torch.float32)}  # a LoRA file
    layer = ZipLoRALinear(nn.Linear(IN, OUT).to(torch.bfloat16), loras)
    assert layer.A.dtype == layer.B.dtype == layer.mergers["subject"].dtype == torch.float32
    assert torch.tensor(1 + 1e-3).to(torch.bfloat16).item() == 1.0  # what the old cast did to the merger
    x = torch.randn(16, IN, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    with torch.no_grad():
        before = layer(x)
        layer.mergers["subject"].add_(1e-3)
        after = layer(x)
    assert after.dtype == torch.bfloat16 and not torch.equal(before, after)
    g = torch.autograd.grad(layer(x).float().sum(), layer.mergers["subject"])[0]
    assert g.dtype == torch.float32 and g.abs().sum() > 0


def test_one_hot_mergers_give_each_lora_alone_exactly():
    loras = {"subject": _factors(3, 2.0, 1), "style": _factors(5, 0.25, 2)}
    layer = _layer(loras)
    x = torch.randn(4, IN, dtype=torch.float64)
    for name, f in loras.items():
        with set_mergers({"l": layer}, {name: 1.0}):
            y = layer(x)
        expected = layer.base(x) + nn.functional.linear(nn.functional.linear(x, f.A), f.B * f.scale)
        torch.testing.assert_close(y, expected, atol=1e-12, rtol=0)  # float64; zero rows add exact zeros
    assert all(torch.all(m != 1) for m in layer.mergers.values()), "mergers restored after the context"


def test_overlap_forms_at_ones_and_orthogonal():
    loras = {"a": _factors(2, 1.0, 1), "b": _factors(2, 1.0, 2), "c": _factors(2, 1.0, 3)}
    layer = ZipLoRALinear(nn.Linear(IN, OUT).double(), loras)
    pairs = 3  # k = 3 LoRAs -> 3 pairs
    assert overlap_penalty([layer], "cosine").item() == pytest.approx(pairs)
    assert overlap_penalty([layer], "mean_product").item() == pytest.approx(pairs)
    assert overlap_penalty([layer], "dot").item() == pytest.approx(pairs * IN)  # the literal form's scale
    with torch.no_grad():  # disjoint column supports: zero overlap in every form
        layer.mergers["a"].copy_((torch.arange(IN) % 3 == 0).float())
        layer.mergers["b"].copy_((torch.arange(IN) % 3 == 1).float())
        layer.mergers["c"].copy_((torch.arange(IN) % 3 == 2).float())
    for form in ("cosine", "mean_product", "dot"):
        assert overlap_penalty([layer], form).item() == pytest.approx(0.0)
    assert mean_abs_cosine([layer]) == pytest.approx(0.0)


def test_export_is_exactly_the_merged_layer():
    """A_m = [A_c diag(m_c); A_s diag(m_s)], B_m = [s_c B_c | s_s B_s]: B_m A_m = Σ m_i ⊗ ΔW_i."""
    loras = {"subject": _factors(3, 2.0, 1), "style": _factors(5, 0.25, 2)}
    layer = _layer(loras)
    mergers = {f"l.{n}": m.detach() for n, m in layer.mergers.items()}
    f = merged_factors({n: {"l": v} for n, v in loras.items()}, mergers)["l"]
    assert f.rank == 8 and f.scale == 1.0
    x = torch.randn(5, IN, dtype=torch.float64)
    torch.testing.assert_close(layer.base(x) + x @ f.delta().double().T, _dense(layer, loras, x), atol=1e-10, rtol=0)
    # strengths scale each part independently (paper's control of stylisation)
    half = merged_factors({n: {"l": v} for n, v in loras.items()}, mergers, {"style": 0.0})["l"]
    sub_only = mergers["l.subject"][None, :] * loras["subject"].delta()
    torch.testing.assert_close(half.delta().double(), sub_only, atol=1e-10, rtol=0)


def test_lora_file_metadata_carries_per_layer_ranks():
    factors = {"a.to_q": LoraFactors(torch.randn(8, IN), torch.randn(OUT, 8), 1.0),
               "a.to_k": LoraFactors(torch.randn(8, IN), torch.randn(OUT, 8), 1.0),
               "b.to_q": LoraFactors(torch.randn(4, IN), torch.randn(OUT, 4), 1.0)}  # only one LoRA adapts b
    cfg = factors_to_lora_file(factors).adapter_config()
    assert cfg["r"] == 8 and cfg["lora_alpha"] == 8
    assert cfg["rank_pattern"] == {"b.to_q": 4} and cfg["alpha_pattern"] == {"b.to_q": 4}


def test_attach_detach_restores_module_tree():
    net = nn.Sequential(nn.Linear(IN, IN), nn.ReLU(), nn.Sequential(nn.Linear(IN, OUT)))
    originals = {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    loras = {"s": {"0": _factors(2, 1.0, 1, torch.float32), "2.0": LoraFactors(torch.randn(2, IN), torch.randn(OUT, 2), 1.0)},
             "t": {"2.0": LoraFactors(torch.randn(3, IN), torch.randn(OUT, 3), 1.0)}}
    loras["s"]["0"] = LoraFactors(torch.randn(2, IN), torch.randn(IN, 2), 1.0)
    wrappers = attach_ziplora(net, loras)
    assert isinstance(net[0], ZipLoRALinear) and isinstance(net[2][0], ZipLoRALinear)
    assert wrappers["0"].names == ["s"] and wrappers["2.0"].names == ["s", "t"]  # one-LoRA layer: one merger
    assert set(merger_state_dict(wrappers)) == {"0.s", "2.0.s", "2.0.t"}
    assert [p for p in net.parameters() if p.requires_grad] == [p for w in wrappers.values() for p in w.mergers.values()]
    detach_ziplora(net, wrappers)
    assert {n: m for n, m in net.named_modules() if isinstance(m, nn.Linear)} == originals
