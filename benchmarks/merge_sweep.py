"""Merge defaults chosen on judged images: overlap form × λ × optimisation budget over the grid's pairs.

Issue 19, item 4. Every setting is a JSON object of ``merge.*`` keys over the run's parameters. For each setting
and each pair of the grid (``--env grid``: 3 subjects × 3 styles) it learns the ZipLoRA mergers with the merge
stage's own node (``zip_merge``), generates the pair's claim prompts (the grid's: merge, subject alone, style alone
on an unseen object, recontext) on ``--seeds`` and judges them with the grid's judges; the direct merge and the
two source LoRAs (claim (b)'s references) are generated and judged once per pair and seed set. The verdict per
setting is the grid's (``core.claims.grid_claims``): ZipLoRA − direct merge on claims (a) and (b), paired by pair
with 95 % intervals over pairs.

The settings are ranked by ``net``: the number of (a)/(b) figures on which ZipLoRA is better than the direct
merge beyond the interval, minus those on which it is worse; ties by the (a) harmonic-mean difference.
The sweep's own best figure is a selected one: confirm it with ``--seeds`` and ``--merge-seed`` the sweep did not
use (``--tag confirm``).

Resumable: every (setting, pair) result is one JSON line in ``--out``; a rerun skips what is there. Reads the grid's
concept LoRAs from the catalog (run ``kedro run --env grid`` first); writes nothing into the catalog or MLflow.

    python benchmarks/merge_sweep.py                                   # the default sweep (see SETTINGS)
    python benchmarks/merge_sweep.py --settings '{"overlap": "dot", "lambda_overlap": 0.01}' --seeds 400 401
    python benchmarks/merge_sweep.py --table                           # only print the table of what is there
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
logger = logging.getLogger("merge_sweep")

# the sweep: overlap form × λ at the paper's budget, then the two other budgets for the paper's setting
SETTINGS = [
    {"overlap": "cosine", "lambda_overlap": 0.01},
    {"overlap": "cosine", "lambda_overlap": 0.1},
    {"overlap": "cosine", "lambda_overlap": 1.0},
    {"overlap": "cosine", "lambda_overlap": 5.0},
    {"overlap": "mean_product", "lambda_overlap": 0.01},
    {"overlap": "mean_product", "lambda_overlap": 1.0},
    {"overlap": "dot", "lambda_overlap": 0.01},
    {"overlap": "dot", "lambda_overlap": 1.0},
    {"overlap": "cosine", "lambda_overlap": 0.01, "learning_rate": 0.03},
    {"overlap": "cosine", "lambda_overlap": 0.01, "steps": 300},
]
FIGURES = ("merge_subject", "merge_style", "merge_prompt", "merge_harmonic", "alone_subject_frac",
           "alone_subject_style", "alone_style_frac", "alone_object")


def key(setting: dict) -> str:
    return json.dumps(setting, sort_keys=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=None, help="JSON objects of merge.* overrides (default: SETTINGS)")
    p.add_argument("--env", default="grid", help="the Kedro environment whose grid and catalog are used")
    p.add_argument("--seeds", nargs="+", type=int, default=[300, 301, 302, 303],
                   help="sampling seeds (disjoint from the grid report's 100-103 and the confirmation's)")
    p.add_argument("--merge-seed", type=int, default=0, help="merge.seed (the teacher draws)")
    p.add_argument("--tag", default="sweep", help="sweep | confirm: which table a result belongs to")
    p.add_argument("--out", default=str(ROOT / "docs/testbed/merge_sweep.jsonl"))
    p.add_argument("--table", action="store_true", help="print the table of --out and stop")
    p.add_argument("--reference", default=json.dumps(SETTINGS[0]),
                   help="the setting every confirmed one is compared with (default: the paper's, cosine form)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    settings = [json.loads(s) for s in args.settings] if args.settings else SETTINGS
    out = Path(args.out)
    done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    if not args.table:
        run(args, settings, out, done)
        done = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    print(table(done, json.loads(args.reference)))
    return 0


def run(args, settings: list[dict], out: Path, done: list[dict]) -> None:
    os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from tqdm.auto import tqdm

    from ziplora_pipeline.core.config_utils import from_dict
    from ziplora_pipeline.core.diffusion.base_model import BaseModelConfig, load_base_pipeline, resolve_device
    from ziplora_pipeline.core.evaluation.generation import GenerationConfig, PromptItem
    from ziplora_pipeline.core.evaluation.grid import (REFERENCE_GROUPS, REFERENCES, GridConfig, generate_methods,
                                                       judge_method, pair_name, pair_prompts)
    from ziplora_pipeline.core.evaluation.judges import EvaluationConfig, load_judges
    from ziplora_pipeline.core.merging.build import build_methods
    from ziplora_pipeline.core.merging.method import MethodAssets
    from ziplora_pipeline.core.merging.registry import parse_methods
    from ziplora_pipeline.pipelines.merge.nodes import build_context, zip_merge

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
    cfg = from_dict(GridConfig, params["grid"], "grid")
    ev = from_dict(EvaluationConfig, params["evaluation"], "evaluation")
    base = params["base_model"]
    concepts = cfg.concepts()
    pairs = cfg.pair_list()
    device = resolve_device(from_dict(BaseModelConfig, base, "base_model").device)
    encoders = load_judges(ev, device)
    pipe = load_base_pipeline(from_dict(BaseModelConfig, base, "base_model"), for_inference=True)
    gen = GenerationConfig(seeds=tuple(args.seeds), num_inference_steps=cfg.num_inference_steps,
                           guidance_scale=cfg.guidance_scale, resolution=cfg.resolution, batch_size=cfg.batch_size)
    loaded: dict = {}

    def concept(name: str) -> dict:
        if name not in loaded:
            loaded[name] = {what: catalog.load(f"{name}.{what}") for what in ("lora_weights", "images", "prompt")}
        return loaded[name]

    have = {(r["kind"], r.get("setting"), r["pair"], tuple(r["seeds"]), r.get("merge_seed")) for r in done}
    jobs = [("baseline", None, s, t) for s, t in pairs] + [("setting", key(st), s, t) for st in settings
                                                             for s, t in pairs]
    todo = [j for j in jobs if (j[0], j[1], pair_name(j[2], j[3]), tuple(args.seeds),
                                None if j[0] == "baseline" else args.merge_seed) not in have]
    logger.info("%d of %d jobs to run (%d settings × %d pairs + baselines), seeds %s, merge seed %d", len(todo),
                len(jobs), len(settings), len(pairs), args.seeds, args.merge_seed)
    for kind, setting, s, t in tqdm(todo, desc="merge sweep", unit="job"):
        sub, sty = concept(s), concept(t)
        prompts = pair_prompts(cfg, concepts[s][1], concepts[t][1])
        items = [PromptItem(g, i, p) for g, i, p in prompts]
        groups_all = tuple(dict.fromkeys(g for g, _, _ in prompts))
        # 4 held-out draws (the merge log's diagnostic, not the verdict) instead of 16: a quarter of that cost
        merge_params = {**params["merge"], "heldout_draws": 4, **(json.loads(setting) if setting else {}),
                        "seed": args.merge_seed}
        record: dict = {"kind": kind, "setting": setting, "pair": pair_name(s, t), "seeds": list(args.seeds),
                        "tag": args.tag, "merge_seed": None if kind == "baseline" else args.merge_seed}
        entries = params["merge"]["methods"]  # the methods as the one-pair job defines them (merge.methods)
        if kind == "baseline":
            mergers, log = None, {}
            specs = parse_methods({"direct_merge": entries["direct_merge"], **REFERENCES})
            methods = {"direct_merge": groups_all, **REFERENCE_GROUPS}
        else:
            mergers, log, fig = zip_merge(sub["lora_weights"], sty["lora_weights"], sub["images"], sub["prompt"],
                                          sty["images"], sty["prompt"], merge_params, base)
            import matplotlib.pyplot as plt

            plt.close(fig)
            specs, methods = parse_methods({"ziplora": entries["ziplora"]}), {"ziplora": groups_all}
            record.update(merge_seconds=round(log["seconds"], 2), steps=log["steps"],
                          mean_abs_cos=log["heldout_final"].get("mean_abs_cos"))
        ctx = build_context(sub["lora_weights"], sty["lora_weights"], mergers, {"ziplora": log}, sub["prompt"],
                            sty["prompt"], base)
        files, _ = build_methods(specs, ctx)
        assets = MethodAssets(files, {"subject": sub["lora_weights"], "style": sty["lora_weights"]})
        images = generate_methods(pipe, specs, methods, assets, items, gen, record["pair"])
        record["judged_groups"], record["judged"] = {}, {}
        for method, groups in methods.items():
            record["judged_groups"][method], both = judge_method(
                encoders, images, method, groups, prompts, args.seeds, list(sub["images"].values()),
                list(sty["images"].values()), (sub["prompt"]["token"], sty["prompt"]["token"]), sty["prompt"]["prompt"])
            if both is not None:
                record["judged"][method] = both
        with out.open("a") as f:  # one line per finished job: an interrupted sweep resumes from here
            f.write(json.dumps(record) + "\n")


def verdicts(records: list[dict]) -> list[dict]:
    """Per (tag, setting, seeds, merge seed): the grid verdict over the pairs that have both a result and a
    baseline on the same seeds."""
    from ziplora_pipeline.core.evaluation.claims import claim_rows, grid_claims

    baselines = {(r["pair"], tuple(r["seeds"])): r for r in records if r["kind"] == "baseline"}
    groups: dict = {}
    for r in records:
        if r["kind"] == "setting" and (r["pair"], tuple(r["seeds"])) in baselines:
            groups.setdefault((r["tag"], r["setting"], tuple(r["seeds"]), r["merge_seed"]), []).append(r)
    rows = []
    for (tag, setting, seeds, merge_seed), results in groups.items():
        pairs = []
        for r in sorted(results, key=lambda r: r["pair"]):
            b = baselines[(r["pair"], seeds)]
            judged_groups = {**b["judged_groups"], **r["judged_groups"]}
            claims = {m: v for m, v in claim_rows(judged_groups).items() if m in ("ziplora", "direct_merge")}
            pairs.append({"pair": r["pair"], "claims": claims, "judged": {**b["judged"], **r["judged"]}})
        verdict = grid_claims(pairs)
        figs = verdict["figures"]
        words = [figs[c]["verdict"] for c in FIGURES if c != "merge_harmonic"]  # harmonic: from subject and style
        net = sum(w == "better" for w in words) - sum(w == "worse" for w in words)
        rows.append({"tag": tag, "setting": json.loads(setting), "seeds": list(seeds), "merge_seed": merge_seed,
                     "pairs": verdict["pairs"], "net": net, "figures": figs, "judges": verdict["judges"],
                     "merge_seconds": sum(r.get("merge_seconds", 0) for r in results) / len(results),
                     "mean_abs_cos": sum(r.get("mean_abs_cos") or 0 for r in results) / len(results)})
    return sorted(rows, key=lambda r: (r["tag"], -r["net"],
                                       -(r["figures"]["merge_harmonic"]["difference"]["mean"] or -9)))


def versus(records: list[dict], a: dict, b: dict, tag: str = "confirm") -> dict | None:
    """Setting ``a`` − setting ``b`` (both ZipLoRA) on the ``tag`` results they share, paired by pair: the same
    grid verdict with ``b`` in the direct merge's place (claim (b)'s references from the baselines)."""
    from ziplora_pipeline.core.evaluation.claims import claim_rows, grid_claims

    ka, kb = key(a), key(b)
    runs = {(r["setting"], r["pair"], tuple(r["seeds"]), r["merge_seed"]): r for r in records
            if r["kind"] == "setting" and r["tag"] == tag}
    baselines = {(r["pair"], tuple(r["seeds"])): r for r in records if r["kind"] == "baseline"}
    pairs = []
    for (k, pair, seeds, merge_seed), ra in sorted(runs.items()):
        rb = runs.get((kb, pair, seeds, merge_seed))
        if k != ka or rb is None or (pair, seeds) not in baselines:
            continue
        refs = baselines[(pair, seeds)]["judged_groups"]
        groups = {"subject_lora": refs["subject_lora"], "style_lora": refs["style_lora"],
                  "ziplora": ra["judged_groups"]["ziplora"], "direct_merge": rb["judged_groups"]["ziplora"]}
        claims = {m: v for m, v in claim_rows(groups).items() if m in ("ziplora", "direct_merge")}
        pairs.append({"pair": pair, "claims": claims,
                      "judged": {"ziplora": ra["judged"]["ziplora"], "direct_merge": rb["judged"]["ziplora"]}})
    return grid_claims(pairs) if pairs else None


def table(records: list[dict], reference: dict | None = None) -> str:
    """The sweep table (Markdown): one row per setting, ZipLoRA − direct merge per figure over pairs."""
    def cell(f: dict) -> str:
        d = f["difference"]
        if d["mean"] is None:
            return "—"
        mark = {"better": " ▲", "worse": " ▼"}.get(f["verdict"], "")
        return f"{d['mean']:+.3f}{mark}" if d["lo"] is None else f"{d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{mark}"

    lines = []
    for tag in dict.fromkeys(r["tag"] for r in verdicts(records)):
        rows = [r for r in verdicts(records) if r["tag"] == tag]
        lines += [f"### {tag}: ZipLoRA − direct merge over pairs (95 % interval over pairs; ▲ better, ▼ worse)", "",
                  "| setting | seeds | merge seed | pairs | net | " + " | ".join(FIGURES) +
                  " | subject2 | style2 | mean abs cos | merge s |", "|---" * (len(FIGURES) + 9) + "|"]
        for r in rows:
            s = ", ".join(f"{k}={v}" for k, v in r["setting"].items())
            j = r["judges"]
            second = [f"{j[a][f'{a}2']['mean']:+.3f} ({j[a][f'{a}2']['verdict']})" if f"{a}2" in j.get(a, {}) else "—"
                      for a in ("subject", "style")]
            lines.append(f"| {s} | {r['seeds'][0]}-{r['seeds'][-1]} | {r['merge_seed']} | {r['pairs']} | {r['net']:+d} | "
                         + " | ".join(cell(r["figures"][c]) for c in FIGURES) + " | " + " | ".join(second)
                         + f" | {r['mean_abs_cos']:.3f} | {r['merge_seconds']:.1f} |")
        lines.append("")
        if tag == "confirm" and reference is not None:  # each confirmed setting against the reference setting
            for r in rows:
                if r["setting"] == reference:
                    continue
                v = versus(records, r["setting"], reference)
                if v is None:
                    continue
                s = ", ".join(f"{k}={val}" for k, val in r["setting"].items())
                ref = ", ".join(f"{k}={val}" for k, val in reference.items())
                lines += [f"{s} − {ref} (both ZipLoRA, paired by pair over {v['pairs']} pairs): "
                          + "; ".join(f"{c} {cell(v['figures'][c])}" for c in FIGURES), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
