"""The comparison report: one table, one chart, the contact sheets, and the paper's figures beside ours."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .judges import METRICS, headline  # noqa: E402
from .verdict import AXES  # noqa: E402

# ZipLoRA paper (Shah et al. 2023), Table 2: mean cosine similarities over 4 subjects × 8 styles on SDXL.
PAPER_TABLE2 = pd.DataFrame([
    ("ZipLoRA", 0.699, 0.420, 0.303),
    ("Joint training", 0.680, 0.378, 0.296),
    ("Direct merge", 0.702, 0.357, 0.275),
], columns=["method (paper)", "style: CLIP-I vs style image", "subject: DINO vs subject images", "text: CLIP-T"])
PAPER_COST = "ZipLoRA merge 560 s and 21 GB on one A100; joint training 3540 s (paper §5)."
PEFT_NOTE = ("PEFT baselines: `ties_svd` / `dare_ties_svd` sparsify each LoRA's full ΔW = B·A and refactor the sum "
             "by SVD; plain `ties` / `dare_ties` (off by default) merge the A and the B factors separately, which "
             "for two independently trained LoRAs mixes unrelated factor bases, so they are weaker than they need be.")


def markdown_table(frame: pd.DataFrame) -> str:
    """GitHub markdown; empty cells where a figure does not apply (NaN -> None -> blank)."""
    return frame.astype(object).where(frame.notna(), None).to_markdown(index=False, floatfmt=".3f", missingval="")


DIAGNOSTIC = ("subject_fidelity", "style_fidelity")  # the merge's own objective (Eq. 3): not evidence


def metrics_chart(frame: pd.DataFrame, note: str = "", leave_out: tuple[str, ...] = ()) -> plt.Figure:
    """Grouped bars per method in two panels: the image metrics (encoders/judges the merge never saw) on top,
    the output-fidelity diagnostic below. Columns in ``leave_out`` (e.g. from random encoders) and values that
    were not measured (NaN) are not drawn at all; every measured value has a tick at its height, so a
    measured 0 shows as a tick on the axis rather than as a missing bar."""
    measured = [m for m in METRICS if m not in leave_out and frame[m].notna().any()]
    panels = [(title, cols) for title, cols in (
        ("Image metrics (held-out encoders/judges)", [m for m in measured if m not in DIAGNOSTIC]),
        ("Diagnostic: output fidelity (the merge's own objective, Eq. 3)", [m for m in measured if m in DIAGNOSTIC]),
    ) if cols] or [("No metric was measured", [])]
    x = np.arange(len(frame))
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8, 0.9 * len(frame) + 2), 3.4 * len(panels)),
                             sharex=True, squeeze=False)
    for ax, (title, cols) in zip(axes[:, 0], panels):
        width = 0.8 / max(len(cols), 1)
        for i, m in enumerate(cols):
            xs = x + (i - (len(cols) - 1) / 2) * width
            values = frame[m].to_numpy(dtype=float)
            ax.bar(xs, values, width, label=m)  # NaN: no bar
            ok = ~np.isnan(values)
            ax.scatter(xs[ok], values[ok], marker="_", s=(width * 40) ** 2, color="black", linewidths=1, zorder=3)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.set(ylabel="score (higher is better)", title=title)
        if cols:
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    axes[-1, 0].set_xticks(x, frame["method"], rotation=35, ha="right")
    if note:
        fig.suptitle(note, fontsize=9)
    fig.tight_layout()
    return fig


def judged_chart(judged: dict[str, dict]) -> plt.Figure:
    """Subject, style and prompt scores per method, with 95 % bootstrap intervals over seeds as error bars."""
    methods = list(judged)
    axes = [a for a in AXES if any(a in judged[m] for m in methods)]
    x = np.arange(len(methods))
    width = 0.8 / max(len(axes), 1)
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(methods) + 2), 4.5))
    for i, axis in enumerate(axes):
        stats = [judged[m].get(axis, {}) for m in methods]
        mean = np.array([s.get("mean", np.nan) for s in stats], dtype=float)
        err = np.array([[m - s.get("lo", m), s.get("hi", m) - m] for m, s in zip(mean, stats)]).T
        ax.bar(x + (i - (len(axes) - 1) / 2) * width, mean, width, yerr=err, capsize=2, label=axis)
    ax.set_xticks(x, methods, rotation=35, ha="right")
    ax.set(ylabel="judged score (higher is better)", ylim=(0, 1.05),
           title="Judged on held-out prompts and seeds (error bars: 95 % bootstrap CI over seeds)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _encoder_section(random: list[str], notes: list[str], encoders: dict[str, str]) -> list[str]:
    lines = ["## Image metrics: where they come from", ""]
    lines += [f"- {kind.upper()}: `{name}`" for kind, name in encoders.items()]
    if random:
        lines += ["", f"**Warning: the {' and '.join(k.upper() for k in random)} encoder(s) are tiny models with random "
                      "weights**, built offline so that the code path runs (the embedded default). Their scores "
                      "(`clip_style`, `dino_subject`, `clip_text`, `harmonic`) **mean nothing**; only the output "
                      "fidelity columns carry information here. Configure real encoders (`conf/sdxl`: "
                      "openai/clip-vit-large-patch14, facebook/dino-vits16) for meaningful image metrics."]
    lines += [f"\n**Skipped:** {n}" for n in notes]
    return lines


def _judged_section(judged: pd.DataFrame | None, verdict: str | None, chart: str | None, toy: list[str]) -> list[str]:
    if judged is None:
        return ["## Judged scores", "", "Not available: the image encoders are random stand-ins or were not loaded "
                "(see below). Only the diagnostic output fidelity is reported.", ""]
    who = ("the toy world's judges (trained on its renderer, never on this run's LoRAs or merge)" if toy
           else "the configured encoders")
    return ["## Judged scores (our Table 2)", "",
            f"Scores of the generated images of the merge and recontextualisation prompts, judged by {who}: "
            "**subject** = identity similarity to the subject's reference views (DINO's role), **style** = the style "
            "judge's score for the reference style image's style (CLIP-I's role), **prompt** = how well the prompt's "
            "class and context attributes are met (CLIP-T's role). Prompts and seeds are disjoint from everything "
            "the LoRAs and the merge were fitted on. Mean over seeds, with 95 % percentile-bootstrap intervals "
            "over seeds. The subject and style LoRAs alone are the ceilings of their own axis.", "",
            f"**{verdict}**", "", judged.to_markdown(index=False, floatfmt=".3f", missingval=""), "",
            f"![judged scores]({chart})", ""]


def claims_section(judged_groups: dict, judged: dict, compare: tuple[str, str], strengths: dict[str, float],
                   first_judge: str = "first judge") -> list[str]:
    """The paper's three claims (+ strength control) as markdown: verdict lines, the table, the strength curve,
    and whether the second judge orders the methods as the first does (core/evaluation/claims.py)."""
    from .claims import (CLAIM_COLUMNS, claim_rows, claims_frame, claims_verdict, judge_agreement, judges_verdict,
                         strength_curve)

    lines = ["## The paper's three claims (held-out prompts and seeds)", "",
             "This is one subject × style pair, its intervals over seeds. The headline over pairs (intervals over "
             "pairs, at least 3 × 3) is the grid's: `kedro run --env grid` writes it to "
             "`data/08_reporting/grid/<key>/table.md`.", "",
             *[f"- {line}" for line in claims_verdict(judged_groups, *compare)], ""]
    frame = claims_frame(claim_rows(judged_groups))
    lines += [frame.to_markdown(index=False, floatfmt=".3f", missingval=""), "",
              *[f"- `{c}`: {meaning}" for c, meaning in CLAIM_COLUMNS.items()], ""]
    curve = strength_curve(judged, strengths)
    if curve["points"]:
        pts = "; ".join(f"{p['style_scale']:g}: subject {_fmt(p['subject'])}, style {_fmt(p['style'])}, harmonic "
                        f"{_fmt(p['harmonic'])}" for p in curve["points"])
        best = curve["best"]
        lines += [f"**(d) strength control** (merge and recontext prompts, style strength → scores): {pts}. Best "
                  f"harmonic mean along the curve: " + (f"{best['harmonic']:.3f} at {best['style_scale']:g}."
                                                         if best else "none (a score is not positive)."), ""]
    agreement = judge_agreement(judged)
    verdicts = judges_verdict(judged, *compare, names=(first_judge, "EfficientNet"))
    if agreement or verdicts:
        lines += ["**A second judge the project did not train** (ImageNet EfficientNet-Lite0, pooled features: "
                  "subject = cosine to the subject's views, style = cosine to the style image; it has no prompt "
                  "score). Spearman rank correlation of the method means with the first judge's: "
                  + ", ".join(f"{axis} {a['spearman']:+.2f} over {a['methods']} methods" for axis, a in agreement.items())
                  + ".", "", *[f"- {line}" for line in verdicts], ""]
    return lines


def premises_section(premises: dict | None) -> list[str]:
    """The paper's two premises on this run's LoRAs, per layer group (core/merging/premises.py)."""
    if not premises:
        return []
    table = pd.DataFrame(premises["table"])
    return ["## The paper's premises on these LoRAs", "",
            "ZipLoRA rests on two observations about SDXL LoRAs (§3): zeroing the 80–90 % smallest |ΔW| entries "
            "barely changes the output, and matching columns of two LoRAs are often aligned. `*_prune_Npct`: the "
            "output change when each layer of the group keeps only its largest (100 − N) % entries, relative to the "
            f"group's own effect ({premises['draws']} held-out draws of each LoRA's own concept; 0 = no change, "
            "1 = as if the group's LoRA were removed). `*_weight_90pct`: the share of ‖ΔW‖ in those 90 % smallest "
            "entries; a ΔW of i.i.d. Gaussian entries gives 0.749 (the dense reference, ours), a sparse one much "
            "less. `col_cos`: mean |cos| of matching columns of ΔW_subject and "
            "ΔW_style; `col_cos_shuffled`: the same with the style columns shuffled (the chance level).", "",
            table.to_markdown(index=False, floatfmt=".3f", missingval=""), ""]


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def render_report(frame: pd.DataFrame, *, compare: tuple[str, str], sheets: list[str], chart: str,
                  random_encoders: list[str], encoder_notes: list[str], encoders: dict[str, str],
                  run: dict, judged: pd.DataFrame | None = None, verdict: str | None = None,
                  judged_chart: str | None = None, toy_judges: list[str] = (), claims: list[str] = (),
                  premises: list[str] = ()) -> str:
    """The markdown report; ``sheets`` and the charts are file names in the report's folder."""
    lines = [
        "# ZipLoRA comparison report", "",
        f"Generated {run.get('generated', '?')} · base model `{run.get('base_model', '?')}` · "
        f"{run.get('steps', '?')} denoising steps at {run.get('resolution', '?')} px · "
        f"seeds {run.get('seeds', '?')}", "",
        *_judged_section(judged, verdict, judged_chart, list(toy_judges)),
        *claims,
        *premises,
        "## All figures (this run)", "",
        f"*Diagnostic, not a verdict:* {headline(frame, *compare)} Output fidelity "
        "F_c = 1 − ‖ε_method − ε_{L_c}‖ / ‖ε_base − ε_{L_c}‖ is the quantity ZipLoRA's Eq. 3 optimises, measured on "
        "noise/timestep draws of the reference images that the merge never used (`evaluation.fidelity_seed`): "
        "1 = identical to the concept's LoRA, 0 = no better than the base model. Image metrics are the judged "
        f"means above, over the prompt groups {run.get('image_groups', '?')}. Cost: `merge_seconds` is the merge "
        "(ZipLoRA: learning the mergers; joint: training the joint LoRA; PEFT: add_weighted_adapter; K-LoRA: its "
        "per-layer top-k scores), `peak_mb` its peak memory (`memory_kind` says which: on CPU the growth of the "
        "process' peak resident set, an upper bound; on CUDA allocated tensor memory), `file_mb` the LoRA file "
        "(K-LoRA: both LoRAs).", "",
        PEFT_NOTE, "",
        markdown_table(frame), "",
        f"![methods × metrics]({chart})", "",
        "## For reference: the paper's Table 2 (not this run)", "",
        "Figures from Shah et al., *ZipLoRA*, Table 2 (SDXL, real CLIP/DINO encoders, 4 subjects × 8 styles). "
        "They are **the paper's numbers, not ours**.", "",
        PAPER_TABLE2.to_markdown(index=False, floatfmt=".3f"), "",
        f"Paper's cost figures: {PAPER_COST}", "",
        *_encoder_section(random_encoders, encoder_notes, encoders), "",
        "## Contact sheets", "",
        "Rows: prompts (group and text); columns: methods; the same seed for every cell of a sheet.", "",
    ]
    lines += [f"![{s}]({s})\n" for s in sheets]
    return "\n".join(lines)


REPORT_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;line-height:1.45}
table{border-collapse:collapse;font-size:.85em;display:block;overflow-x:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:right;white-space:nowrap}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%;image-rendering:pixelated}
code{background:#f3f3f3;padding:0 .2em}"""


def report_html(markdown_text: str, images: dict[str, bytes], title: str = "ZipLoRA report") -> str:
    """One self-contained HTML page: ``markdown_text`` rendered (tables included) with every image that the
    markdown links by file name embedded as a ``data:`` URI.

    Why: MLflow's artifact viewer shows a Markdown file's relative image links as broken images and cuts wide
    tables; an HTML artifact is displayed as it is. markdown-it-py (rich's renderer) turns the markdown into HTML.
    """
    import base64
    import html
    import re

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)

    def embed(match: re.Match) -> str:
        name = html.unescape(match.group(1))
        data = images.get(name)
        if data is None:
            return match.group(0)
        return f'src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}"'

    body = re.sub(r'src="([^"]+)"', embed, body)
    return (f"<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{REPORT_CSS}</style></head>\n<body>\n{body}</body></html>\n")


def png_bytes(content) -> bytes:
    """A PIL image or a matplotlib figure as PNG bytes (figures at 100 dpi, tight, then closed)."""
    import io

    buf = io.BytesIO()
    if hasattr(content, "savefig"):
        content.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        plt.close(content)
    else:
        content.save(buf, format="PNG")
    return buf.getvalue()
