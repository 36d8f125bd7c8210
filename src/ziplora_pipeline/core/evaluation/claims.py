"""The paper's three claims as the verdict (ZipLoRA §5), judged on held-out prompts and seeds.

(a) **merge**: on "a sks robot in zwx style" the merged model keeps the subject and the style (subject, style,
    prompt scores and the harmonic mean of subject and style);
(b) **each concept alone**: on "a sks robot" the merge still draws the subject (its subject score as a fraction
    of the subject LoRA's own) *without* painting it in the style (its style score there should stay at the
    subject LoRA's level: ``alone_subject_style`` minus the subject LoRA's); on "a <unseen object> in zwx
    style" it still draws the style (style score as a fraction of the style LoRA's) *and the prompted object*
    (``object``: the share of images in which the judge finds the prompted object rather than the style
    image's) — a direct merge fails these (paper Fig. 6);
(c) **recontextualisation**: the same scores as (a) on new scenes and attributes;
(d) **strength**: subject and style along ZipLoRA's style strength 1.0 / 0.7 / 0.4, and the best harmonic mean
    along that curve as its one figure of merit.

Every figure is a mean over seeds with a 95 % percentile-bootstrap interval (the seed is the unit: a seed's
score is its mean over the group's prompts); differences and ratios between two methods are paired by seed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .verdict import bootstrap, by_seed

# judged axis -> per-image score key (core/evaluation/image_metrics.py). subject2/style2: the second judge (EfficientNet).
CLAIM_AXES = {"subject": "dino_subject", "style": "clip_style", "prompt": "clip_text", "object": "object_drawn",
              "subject2": "lite_subject", "style2": "lite_style"}
LOWER_IS_BETTER = {"alone_subject_style"}  # painting "a sks robot" in the style is a failure of claim (b)


def summarise_axes(per_image: dict[str, list[float] | None], seeds: list[int]) -> dict:
    """``{axis: {mean, lo, hi, n, by_seed}}`` for every axis of CLAIM_AXES with scores."""
    out = {}
    for axis, key in CLAIM_AXES.items():
        values = per_image.get(key)
        if values is None or all(v is None or (isinstance(v, float) and math.isnan(v)) for v in values):
            continue
        seed_means = by_seed(values, seeds)
        out[axis] = {**bootstrap(np.array(list(seed_means.values()))), "by_seed": seed_means}
    return out


def _paired(a: dict, b: dict, op, n: int = 2000, seed: int = 0) -> dict | None:
    """``op(mean_a, mean_b)`` over seeds both have, with a bootstrap interval resampling seeds jointly."""
    # seeds as strings: a summary read back from JSON has string keys, a fresh one int keys
    sa, sb = ({str(k): v for k, v in x["by_seed"].items()} for x in (a, b))
    common = sorted(set(sa) & set(sb))
    if not common:
        return None
    va = np.array([sa[s] for s in common])
    vb = np.array([sb[s] for s in common])
    idx = np.random.default_rng(seed).integers(0, len(common), (n, len(common)))
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = op(va[idx].mean(1), vb[idx].mean(1))
        value = float(op(va.mean(), vb.mean()))
    draws = draws[np.isfinite(draws)]
    if not math.isfinite(value) or draws.size == 0:
        return None
    return {"mean": value, "lo": float(np.percentile(draws, 2.5)), "hi": float(np.percentile(draws, 97.5)),
            "n": len(common)}


def ratio(a: dict, b: dict) -> dict | None:
    """mean(a) / mean(b), paired by seed (None when b's mean is not positive: no ceiling to divide by)."""
    if b.get("mean") is None or b["mean"] <= 0:
        return None
    return _paired(a, b, lambda x, y: x / y)


def difference(a: dict, b: dict) -> dict | None:
    return _paired(a, b, lambda x, y: x - y)


def _harmonic(subject: float | None, style: float | None) -> float | None:
    if subject is None or style is None or subject <= 0 or style <= 0:
        return None
    return 2 * subject * style / (subject + style)


def _mean(groups: dict, group: str, axis: str) -> float | None:
    return ((groups.get(group) or {}).get(axis) or {}).get("mean")


def claim_rows(judged_groups: dict[str, dict[str, dict]], subject_ref: str = "subject_lora",
               style_ref: str = "style_lora") -> dict[str, dict]:
    """``{method: {claim figure: {mean, lo, hi} | None}}`` for claims (a)-(c); ``judged_groups`` is
    ``{method: {group: summarise_axes(...)}}``. The (b) figures need the two single LoRAs as references."""
    refs = judged_groups.get(subject_ref, {}), judged_groups.get(style_ref, {})
    rows = {}
    for method, groups in judged_groups.items():
        row: dict = {}
        for group, claim in (("merge", "merge"), ("recontext", "recontext")):
            for axis in ("subject", "style", "prompt"):
                row[f"{claim}_{axis}"] = (groups.get(group) or {}).get(axis)
            row[f"{claim}_harmonic"] = {"mean": _harmonic(_mean(groups, group, "subject"), _mean(groups, group, "style"))}
        sub, sty = groups.get("subject") or {}, groups.get("style") or {}
        ref_sub, ref_sty = refs[0].get("subject") or {}, refs[1].get("style") or {}
        row["alone_subject_frac"] = ratio(sub["subject"], ref_sub["subject"]) if "subject" in sub and "subject" in ref_sub else None
        row["alone_subject_style"] = (difference(sub["style"], ref_sub["style"])
                                      if "style" in sub and "style" in ref_sub else None)
        row["alone_style_frac"] = ratio(sty["style"], ref_sty["style"]) if "style" in sty and "style" in ref_sty else None
        row["alone_object"] = sty.get("object")
        rows[method] = row
    return rows


CLAIM_COLUMNS = {  # column -> what it means (the report's legend)
    "merge_subject": "(a) subject score, merge prompts", "merge_style": "(a) style score, merge prompts",
    "merge_prompt": "(a) prompt score, merge prompts", "merge_harmonic": "(a) harmonic mean of subject and style",
    "alone_subject_frac": "(b) subject score on the subject prompt, as a fraction of the subject LoRA's",
    "alone_subject_style": "(b) style score on the subject prompt minus the subject LoRA's (0 = not stylised; lower is better)",
    "alone_style_frac": "(b) style score on the style prompt (an unseen object), as a fraction of the style LoRA's",
    "alone_object": "(b) share of style-prompt images showing the prompted object, not the style image's",
    "recontext_subject": "(c) subject score, recontextualisation prompts", "recontext_style": "(c) style score",
    "recontext_prompt": "(c) prompt score", "recontext_harmonic": "(c) harmonic mean",
}


def claims_frame(rows: dict[str, dict]) -> pd.DataFrame:
    """One row per method, one column per claim figure (mean; the interval in a ``<column>_95ci`` column for
    the (b) figures, whose intervals are the new part of the verdict)."""
    records = []
    for method, row in rows.items():
        rec = {"method": method}
        for col in CLAIM_COLUMNS:
            stats = row.get(col) or {}
            rec[col] = stats.get("mean")
            if col.startswith("alone_"):
                rec[f"{col}_95ci"] = f"[{stats['lo']:.2f}, {stats['hi']:.2f}]" if stats.get("lo") is not None else None
        records.append(rec)
    return pd.DataFrame(records)


def strength_curve(judged: dict[str, dict], strengths: dict[str, float]) -> dict:
    """Claim (d): ``{"points": [{method, style_scale, subject, style, harmonic}], "best": point}`` over the
    methods of one merge at several style strengths (``strengths``: method -> style scale), judged on the
    merge and recontext groups (``judged``: the verdict's per-method summary)."""
    points = []
    for method, scale in sorted(strengths.items(), key=lambda kv: -kv[1]):
        s = judged.get(method) or {}
        subject, style = (s.get("subject") or {}).get("mean"), (s.get("style") or {}).get("mean")
        points.append({"method": method, "style_scale": scale, "subject": subject, "style": style,
                       "harmonic": _harmonic(subject, style)})
    scored = [p for p in points if p["harmonic"] is not None]
    return {"points": points, "best": max(scored, key=lambda p: p["harmonic"]) if scored else None}


def _word(d: dict, lower_is_better: bool) -> str:
    if d["lo"] > 0:
        return "worse" if lower_is_better else "better"
    if d["hi"] < 0:
        return "better" if lower_is_better else "worse"
    return "no different (within seed noise)"


def claims_verdict(judged_groups: dict[str, dict[str, dict]], method: str, baseline: str) -> list[str]:
    """One line per claim: ``method`` minus ``baseline`` on each of its figures, paired by seed."""
    if method not in judged_groups or baseline not in judged_groups:
        return [f"{method} vs {baseline}: not compared (one of them is switched off or was not judged)."]
    a, b = judged_groups[method], judged_groups[baseline]
    figures = {
        "(a) merge prompts": [("merge", ax, ax) for ax in ("subject", "style", "prompt")],
        "(b) each concept alone": [("subject", "subject", "subject on 'subject alone'"),
                                   ("subject", "style", "style on 'subject alone' (lower is better)"),
                                   ("style", "style", "style on 'style alone'"),
                                   ("style", "object", "prompted object drawn on 'style alone'")],
        "(c) recontextualisation": [("recontext", ax, ax) for ax in ("subject", "style", "prompt")],
    }
    lines = []
    for claim, items in figures.items():
        parts = []
        for group, axis, label in items:
            sa, sb = (a.get(group) or {}).get(axis), (b.get(group) or {}).get(axis)
            d = difference(sa, sb) if sa and sb else None
            if d is not None:
                lower = group == "subject" and axis == "style"
                parts.append(f"{label} {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]: {_word(d, lower)}")
        if parts:
            lines.append(f"{claim}, {method} minus {baseline}: " + "; ".join(parts) + ".")
    return lines


def judge_agreement(judged: dict[str, dict], pairs: tuple[tuple[str, str], ...] = (("subject", "subject2"),
                                                                                   ("style", "style2"))) -> dict:
    """Per axis, Spearman's rank correlation between two judges' method means (``judged``: method -> axes):
    1 = they order the methods the same way."""
    out = {}
    for first, second in pairs:
        methods = [m for m, s in judged.items() if (s.get(first) or {}).get("mean") is not None
                   and (s.get(second) or {}).get("mean") is not None]
        if len(methods) < 3:
            continue
        x = pd.Series([judged[m][first]["mean"] for m in methods]).rank()
        y = pd.Series([judged[m][second]["mean"] for m in methods]).rank()
        out[first] = {"spearman": float(x.corr(y)), "methods": len(methods)}
    return out


def judges_verdict(judged: dict[str, dict], method: str, baseline: str,
                   pairs: tuple[tuple[str, str], ...] = (("subject", "subject2"), ("style", "style2")),
                   names: tuple[str, str] = ("first judge", "EfficientNet")) -> list[str]:
    """Per axis: the ``method`` − ``baseline`` verdict by each judge, and whether they agree."""
    lines = []
    if method not in judged or baseline not in judged:
        return lines
    for first, second in pairs:
        words = []
        for axis in (first, second):
            sa, sb = judged[method].get(axis), judged[baseline].get(axis)
            d = difference(sa, sb) if sa and sb else None
            words.append(None if d is None else (_word(d, False), d))
        if None in words:
            continue
        (w1, d1), (w2, d2) = words
        agree = "the judges agree" if w1 == w2 else "**the judges disagree**"
        lines.append(f"{first}, {method} minus {baseline}: {names[0]} {d1['mean']:+.3f} [{d1['lo']:+.3f}, "
                     f"{d1['hi']:+.3f}] {w1}; {names[1]} {d2['mean']:+.3f} [{d2['lo']:+.3f}, {d2['hi']:+.3f}] {w2}: "
                     f"{agree}.")
    return lines


# ---- the claims over a grid of pairs: the pair is the unit (issue 19's headline) ------------------------------
MIN_PAIRS = 3  # fewer pairs: means only, no interval and no verdict


def _over_pairs(values: list[float]) -> dict:
    """Mean over pairs with its 95 % bootstrap interval over pairs (none below MIN_PAIRS)."""
    values = [v for v in values if v is not None and math.isfinite(v)]
    if len(values) < MIN_PAIRS:
        return {"mean": float(np.mean(values)) if values else None, "lo": None, "hi": None, "n": len(values)}
    return bootstrap(np.array(values))


def _pair_word(d: dict, lower_is_better: bool) -> str:
    if d.get("lo") is None:
        return f"not tested (fewer than {MIN_PAIRS} pairs)" if d.get("mean") is not None else "—"
    return _word(d, lower_is_better).replace("seed noise", "the spread over pairs")


def _fig(row: dict, method: str, col: str) -> float | None:
    return ((row.get("claims") or {}).get(method, {}).get(col) or {}).get("mean")


def grid_claims(pairs: list[dict], method: str = "ziplora", baseline: str = "direct_merge",
                strengths: dict[str, float] | None = None) -> dict:
    """Claims (a)-(d) over a grid's pairs, each pair's figure its mean over seeds, intervals over pairs.

    Args:
        pairs: per pair ``{"pair", "claims": {method: claim_rows figures}, "judged": {method: summarise_axes of
            the merge and recontext groups}}`` (the grid's ``judge`` node).
        strengths: {method: style strength} of the ZipLoRA strength curve (claim (d)), 1.0 for ``method``.
    Returns:
        ``{"pairs", "figures": {column: {method, baseline, difference, verdict, n}}, "judges": {...},
        "strength": {...}}``.
    """
    out: dict = {"pairs": len(pairs), "method": method, "baseline": baseline, "min_pairs": MIN_PAIRS, "figures": {}}
    for col in CLAIM_COLUMNS:
        a = [_fig(r, method, col) for r in pairs]
        b = [_fig(r, baseline, col) for r in pairs]
        d = _over_pairs([x - y for x, y in zip(a, b) if x is not None and y is not None])
        out["figures"][col] = {"method": _over_pairs(a), "baseline": _over_pairs(b), "difference": d,
                               "verdict": _pair_word(d, col in LOWER_IS_BETTER)}
    # both judges: ZipLoRA − direct merge on the merge and recontext images by each, and the rank agreement of
    # their scores over every (pair, method) cell
    judges = {}
    for first, second in (("subject", "subject2"), ("style", "style2")):
        entry = {}
        for axis in (first, second):
            diffs = []
            for r in pairs:
                j = r.get("judged") or {}
                x, y = ((j.get(method) or {}).get(axis) or {}).get("mean"), ((j.get(baseline) or {}).get(axis) or {}).get("mean")
                if x is not None and y is not None:
                    diffs.append(x - y)
            if diffs:
                d = _over_pairs(diffs)
                entry[axis] = {**d, "verdict": _pair_word(d, False)}
        cells = [(s[first]["mean"], s[second]["mean"]) for r in pairs for s in (r.get("judged") or {}).values()
                 if (s.get(first) or {}).get("mean") is not None and (s.get(second) or {}).get("mean") is not None]
        x, y = pd.Series([c[0] for c in cells]).rank(), pd.Series([c[1] for c in cells]).rank()
        if len(cells) >= 3 and x.nunique() > 1 and y.nunique() > 1:  # a constant judge has no ranking
            entry["spearman"] = {"value": float(x.corr(y)), "cells": len(cells)}
        if first in entry and second in entry:
            entry["agree"] = entry[first]["verdict"] == entry[second]["verdict"]
        if entry:
            judges[first] = entry
    out["judges"] = judges
    # (d): the strength curve, per strength over pairs, and the best harmonic mean along it
    strengths = strengths or {method: 1.0}
    points = []
    for name, scale in sorted(strengths.items(), key=lambda kv: -kv[1]):
        per = {k: [] for k in ("subject", "style", "harmonic")}
        for r in pairs:
            s = (r.get("judged") or {}).get(name) or {}
            sub, sty = (s.get("subject") or {}).get("mean"), (s.get("style") or {}).get("mean")
            if sub is None or sty is None:
                continue
            per["subject"].append(sub)
            per["style"].append(sty)
            h = _harmonic(sub, sty)
            if h is not None:
                per["harmonic"].append(h)
        points.append({"method": name, "style_scale": scale, **{k: _over_pairs(v) for k, v in per.items()}})
    scored = [p for p in points if p["harmonic"]["mean"] is not None]
    out["strength"] = {"points": points,
                       "best": max(scored, key=lambda p: p["harmonic"]["mean"]) if scored else None}
    return out


def _ci(s: dict | None, signed: bool = False) -> str:
    if not s or s.get("mean") is None:
        return "—"
    f = "{:+.3f}" if signed else "{:.3f}"
    mean = f.format(s["mean"])
    return mean if s.get("lo") is None else f"{mean} [{f.format(s['lo'])}, {f.format(s['hi'])}]"


def grid_claims_markdown(claims: dict, pairs: list[dict], seeds: int, judge_names: tuple[str, str]) -> str:
    """The grid report's claims section (``grid_claims``' output) and the per-pair rows."""
    n, m, b = claims["pairs"], claims["method"], claims["baseline"]
    lines = [f"## The paper's claims over {n} pair{'s' * (n != 1)}: {m} vs {b}", "",
             f"Each pair's figure is its mean over {seeds} seeds on held-out prompts; the mean is over pairs and the "
             f"interval a 95 % bootstrap over pairs, the difference paired by pair.", ""]
    if n < claims["min_pairs"]:
        lines += [f"**This grid has {n} pair{'s' * (n != 1)}: intervals over pairs need at least "
                  f"{claims['min_pairs']}, so none is printed and no verdict is drawn.** `kedro run --env grid` runs "
                  "the 3 × 3 toy-world grid.", ""]
    lines += [f"| figure | {m} | {b} | {m} − {b} | verdict |", "|---|---|---|---|---|"]
    for col, fig in claims["figures"].items():
        lines.append(f"| {CLAIM_COLUMNS[col]} | {_ci(fig['method'])} | {_ci(fig['baseline'])} | "
                     f"{_ci(fig['difference'], True)} | {fig['verdict']} |")
    lines += ["", "### (d) Strength control (merge and recontext prompts)", "",
              "| method | style strength | subject | style | harmonic |", "|---|---|---|---|---|"]
    for p in claims["strength"]["points"]:
        lines.append(f"| {p['method']} | {p['style_scale']:g} | {_ci(p['subject'])} | {_ci(p['style'])} | "
                     f"{_ci(p['harmonic'])} |")
    best = claims["strength"]["best"]
    if best is not None:
        lines += ["", f"Best harmonic mean along the curve: {_ci(best['harmonic'])} at style strength "
                      f"{best['style_scale']:g}."]
    lines += ["", f"### Both judges ({judge_names[0]} and {judge_names[1]}), merge and recontext prompts", ""]
    for first, entry in claims["judges"].items():
        second = f"{first}2"
        parts = [f"{judge_names[i]} {_ci(entry[ax], True)}: {entry[ax]['verdict']}"
                 for i, ax in enumerate((first, second)) if ax in entry]
        agree = "" if "agree" not in entry else ("; the judges agree" if entry["agree"] else "; **the judges disagree**")
        rank = (f"; rank agreement over {entry['spearman']['cells']} pair × method cells: Spearman "
                f"{entry['spearman']['value']:+.2f}" if "spearman" in entry else "")
        lines.append(f"- {first}, {m} − {b}: " + "; ".join(parts) + agree + rank + ".")
    if not claims["judges"]:
        lines.append("- The second judge is switched off (evaluation.second_judge.enabled).")
    cols = ("merge_subject", "merge_style", "alone_subject_frac", "alone_subject_style", "alone_style_frac",
            "alone_object")
    lines += ["", "### Per pair", "", "| pair | " + " | ".join(f"{c} {m} / {b}" for c in cols) + " |",
              "|---|" + "---|" * len(cols)]
    for r in pairs:
        cells = []
        for c in cols:
            x, y = _fig(r, m, c), _fig(r, b, c)
            cells.append("— / —" if x is None and y is None else
                         f"{'—' if x is None else f'{x:.3f}'} / {'—' if y is None else f'{y:.3f}'}")
        lines.append(f"| {r['pair']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_markdown(comparisons: dict[str, dict]) -> str:
    """A section per further method of the grid (``grid.methods`` beyond ZipLoRA and the direct merge): its claim
    figures against each baseline (``{"<m> vs <b>": grid_claims(...)}``), intervals over pairs as above."""
    lines = []
    for title, claims in comparisons.items():
        m, b = claims["method"], claims["baseline"]
        lines += [f"## {title}", "", f"| figure | {m} | {b} | {m} − {b} | verdict |", "|---|---|---|---|---|"]
        for col, fig in claims["figures"].items():
            lines.append(f"| {CLAIM_COLUMNS[col]} | {_ci(fig['method'])} | {_ci(fig['baseline'])} | "
                         f"{_ci(fig['difference'], True)} | {fig['verdict']} |")
        lines.append("")
    return "\n".join(lines)
