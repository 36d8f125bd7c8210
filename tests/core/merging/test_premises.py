"""The paper's two premises (core/merging/premises.py) on tiny hand-built ΔW with a known answer."""

import pytest
import torch

from ziplora_pipeline.core.lora.factors import LoraFactors
from ziplora_pipeline.core.merging.premises import (column_alignment_by_group, group_layers, layer_group,
                                                    premises_table, sparsity_by_group)

SELF = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
CROSS = "up_blocks.0.attentions.1.transformer_blocks.0.attn2.to_v"
N = 16  # layer width


def _tiny_unet(paths):
    """A module tree whose named Linear layers sit at ``paths`` (as in a diffusers UNet)."""
    root = torch.nn.Module()
    for path in paths:
        *parents, leaf = path.split(".")
        node = root
        for name in parents:
            if not hasattr(node, name):
                node.add_module(name, torch.nn.Module())
            node = getattr(node, name)
        node.add_module(leaf, torch.nn.Linear(N, N, bias=False))
    torch.manual_seed(0)
    for p in root.parameters():
        torch.nn.init.normal_(p)
    return root


def _predict(paths, x):
    modules = lambda unet: dict(unet.named_modules())  # noqa: E731
    return lambda unet: torch.cat([modules(unet)[p](x) for p in paths], dim=1)  # (B, N · layers)


def _sparse_factors(seed) -> LoraFactors:
    """ΔW nonzero only in a 2 × 2 block: 4 of 256 entries (1.6 %)."""
    g = torch.Generator().manual_seed(seed)
    A = torch.zeros(2, N)
    A[:, :2] = torch.randn(2, 2, generator=g) + 3
    B = torch.zeros(N, 2)
    B[:2] = torch.randn(2, 2, generator=g) + 3
    return LoraFactors(A, B, 1.0)


def _dense_factors(seed, rank=8) -> LoraFactors:
    g = torch.Generator().manual_seed(seed)
    return LoraFactors(torch.randn(rank, N, generator=g), torch.randn(N, rank, generator=g), 0.5)


def test_layer_groups():
    assert layer_group(SELF) == "down/self"
    assert layer_group(CROSS) == "up/cross"
    assert layer_group("mid_block.attentions.0.transformer_blocks.0.attn1.to_out.0") == "mid/self"
    assert layer_group("up_blocks.1.resnets.0.conv_shortcut") == "up/other"
    assert list(group_layers([SELF, CROSS])) == ["down/self", "up/cross", "all"]


def test_sparse_delta_survives_pruning_and_dense_does_not():
    paths = [SELF, CROSS]
    unet, x = _tiny_unet(paths), torch.randn(32, N, generator=torch.Generator().manual_seed(1))
    predict = _predict(paths, x)
    before = {p: m.weight.clone() for p, m in unet.named_modules() if isinstance(m, torch.nn.Linear)}
    sparse = sparsity_by_group(unet, {SELF: _sparse_factors(0), CROSS: _sparse_factors(1)}, predict)
    for group in ("down/self", "up/cross", "all"):  # 90 % zeroed keeps all 4 nonzero entries: exactly no change
        assert sparse[group]["prune_90pct"] < 1e-6, sparse
    dense = sparsity_by_group(unet, {SELF: _dense_factors(0), CROSS: _dense_factors(1)}, predict)
    assert dense["all"]["prune_90pct"] > 0.5, dense  # a full-rank-ish ΔW loses most of its effect
    assert dense["all"]["prune_50pct"] < dense["all"]["prune_80pct"] < dense["all"]["prune_90pct"]
    assert sparse["down/self"]["layers"] == 1 and sparse["all"]["layers"] == 2
    for p, m in unet.named_modules():  # every weight restored exactly
        if isinstance(m, torch.nn.Linear):
            assert torch.equal(m.weight, before[p])


def test_group_pruning_touches_only_that_group():
    """Pruning the dense cross layer while the self layer is sparse: the self group is unchanged, the
    cross group's figure equals its own pruning alone."""
    paths = [SELF, CROSS]
    unet, x = _tiny_unet(paths), torch.randn(32, N, generator=torch.Generator().manual_seed(1))
    mixed = sparsity_by_group(unet, {SELF: _sparse_factors(0), CROSS: _dense_factors(1)}, _predict(paths, x))
    alone = sparsity_by_group(unet, {CROSS: _dense_factors(1)}, _predict(paths, x))
    assert mixed["down/self"]["prune_90pct"] < 1e-6
    assert abs(mixed["up/cross"]["prune_90pct"] - alone["up/cross"]["prune_90pct"]) < 1e-5


def test_alignment_against_its_shuffled_chance_level():
    a = {SELF: _dense_factors(0), CROSS: _dense_factors(2)}
    # aligned: the style ΔW is the subject's with each column rescaled (same directions) -> |cos| = 1
    scales = torch.linspace(0.5, 2, N)
    aligned = {p: LoraFactors(f.A * scales, -f.B, f.scale) for p, f in a.items()}
    res = column_alignment_by_group(a, aligned)
    assert abs(res["all"]["aligned"] - 1) < 1e-5
    assert res["all"]["shuffled"] < 0.6 and res["all"]["excess"] > 0.4
    # unrelated: independent random ΔW -> aligned is at the shuffled level
    other = {SELF: _dense_factors(5), CROSS: _dense_factors(6)}
    res = column_alignment_by_group(a, other, shuffles=32)
    assert abs(res["all"]["aligned"] - res["all"]["shuffled"]) < 0.1
    rows = premises_table(res, {"subject": {"all": {"prune_90pct": 0.3, "layers": 2}}})
    assert rows[-1]["group"] == "all" and rows[-1]["subject_prune_90pct"] == 0.3 and rows[-1]["layers"] == 2
    # a group only one LoRA adapts (e.g. a 1×1 conv in one file): its row has that LoRA's figures alone
    rows = premises_table(res, {"subject": {"all": {"prune_90pct": 0.3, "layers": 2}},
                                "style": {"up/other": {"prune_90pct": 0.1, "layers": 1}}})
    other = next(r for r in rows if r["group"] == "up/other")
    assert other == {"group": "up/other", "layers": 1, "style_prune_90pct": 0.1}


def test_weight_share_of_the_smallest_entries_against_the_gaussian_reference():
    from ziplora_pipeline.core.merging.premises import gaussian_pruned, weight_pruned

    # closed form of the dense reference: the 90 % smallest of i.i.d. normal entries hold 56.1 % of the energy
    assert gaussian_pruned(0.9) == pytest.approx(0.749, abs=1e-3) and gaussian_pruned(0.5) == pytest.approx(0.267, abs=1e-3)
    g = torch.Generator().manual_seed(0)
    wide = {"x": LoraFactors(torch.randn(64, 512, generator=g), torch.randn(512, 64, generator=g), 1.0)}
    assert weight_pruned(wide, ["x"], 0.9) == pytest.approx(gaussian_pruned(0.9), abs=0.02)  # rank 64: near-normal
    assert weight_pruned({"x": _sparse_factors(0)}, ["x"], 0.9) == 0.0  # 4 nonzero entries of 256 all kept
