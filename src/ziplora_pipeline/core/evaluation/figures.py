"""The stages' figures (matplotlib, Agg): LoRA loss curves, the ZipLoRA merge's curves and its analysis.

Kept out of the Kedro nodes so that a notebook draws the same figures from the same dicts; the nodes
return them and the catalog's ``FigureDataset`` saves them.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

MERGED = ("subject", "style")


def loss_figure(losses: list[float], title: str) -> plt.Figure:
    """Per-step loss with a moving average, as a matplotlib figure."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, alpha=0.4, label="per step")
    k = max(1, len(losses) // 10)
    if len(losses) >= k:
        smooth = [sum(losses[max(0, i - k + 1):i + 1]) / len(losses[max(0, i - k + 1):i + 1]) for i in range(len(losses))]
        ax.plot(range(1, len(losses) + 1), smooth, label=f"moving mean ({k})")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    return fig


def merge_figure(history: dict[str, list[float]]) -> plt.Figure:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5))
    steps = range(1, len(history["loss"]) + 1)
    for name in MERGED:
        axes[0].plot(steps, history[f"recon_{name}"], label=name)
    axes[0].set(title="reconstruction (relative)", xlabel="step", yscale="log")
    axes[0].legend()
    axes[1].plot(steps, history["overlap"])
    axes[1].set(title="overlap penalty", xlabel="step")
    axes[2].plot(steps, history["mean_abs_cos"])
    axes[2].set(title="mean |cos(m_c, m_s)|", xlabel="step", ylim=(0, 1.05))
    fig.tight_layout()
    return fig


def _unet_block(layer: str) -> str:
    """``down_blocks.1.attentions.0...to_q`` -> ``down_blocks.1``; ``mid_block...`` -> ``mid_block``."""
    parts = layer.split(".")
    return ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]


def _bars_by_block(ax, per_layer: dict[str, float], label: str | None = None) -> None:
    """One bar per layer (adapted linear layer), in UNet order, coloured and labelled by UNet block."""
    blocks = [_unet_block(k) for k in per_layer]
    order = list(dict.fromkeys(blocks))
    colours = {b: plt.cm.tab10(i % 10) for i, b in enumerate(order)}
    x = np.arange(len(per_layer))
    ax.bar(x, list(per_layer.values()), width=0.85, color=[colours[b] for b in blocks], label=label)
    centres = [x[[b == block for b in blocks]].mean() for block in order]
    ax.set_xticks(centres, [b.replace("_blocks.", " ").replace("_block", "") for b in order], rotation=30, ha="right")
    for boundary in np.flatnonzero([a != b for a, b in zip(blocks, blocks[1:])]):
        ax.axvline(boundary + 0.5, color="grey", linewidth=0.5)


def analysis_figure(report: dict) -> plt.Figure:
    """Per-layer bars grouped by UNet block (why the mergers matter where), the premises per layer group
    (column |cos| against its shuffled chance level), then the pruning curve."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4))
    _bars_by_block(axes[0], report["column_alignment"]["per_layer"])
    axes[0].set(title="|cos| of ΔW_c, ΔW_s columns, per layer", xlabel="UNet block (one bar per adapted layer)",
                ylabel="mean |cos| over columns", ylim=(0, 1))
    _bars_by_block(axes[1], report["merger_abs_cos"]["per_layer_after"], label="after ZipLoRA")
    axes[1].axhline(1.0, linestyle="--", color="black", linewidth=0.8, label="before (all ones)")
    axes[1].set(title="|cos(m_c, m_s)| per layer (Fig. 3b)", xlabel="UNet block (one bar per adapted layer)",
                ylabel="|cos(m_c, m_s)|", ylim=(0, 1.15))
    axes[1].legend(fontsize=8, loc="upper right", ncols=2)
    alignment = report["premises"]["column_alignment"]
    x = np.arange(len(alignment))
    axes[2].bar(x - 0.2, [a["aligned"] for a in alignment.values()], 0.4, label="matching columns")
    axes[2].bar(x + 0.2, [a["shuffled"] for a in alignment.values()], 0.4, label="style columns shuffled (chance)")
    axes[2].set_xticks(x, list(alignment), rotation=30, ha="right")
    axes[2].set(title="column alignment per layer group (Obs. 3)", ylabel="mean |cos|", ylim=(0, 1))
    axes[2].legend(fontsize=8)
    for name, pr in report["pruning_output_change"].items():
        fr = [int(k.split("_")[1].rstrip("pct")) for k in pr]
        axes[3].plot(fr, list(pr.values()), "o-", label=name)
    axes[3].axhline(0.25, linestyle="--", color="grey", linewidth=0.8, label="testbed target at 90 %")
    axes[3].set(title="output change when zeroing smallest |ΔW| (Obs. 2)", xlabel="% of entries zeroed (every layer)",
                ylabel="relative to the LoRA's effect")
    axes[3].legend(fontsize=8)
    fig.tight_layout()
    return fig
