"""Peak memory of a whole ``kedro run`` against its largest single stage (issue 9), on an SDXL-shaped model.

Every node loads its own pipeline. If a node's models outlived it (accelerate's wrapped ``forward``
holds a reference cycle), the next node's peak would include them and a whole run would need the sum
of its stages. ``MemoryHooks`` releases them after every node and logs each node's peak: the process's
resident-set high-water mark (Linux VmHWM, reset before each node) and, on CUDA, peak GPU memory.

This script, in a scratch copy of the project (the repo's catalog is never touched):
1. builds the ``large`` model of ``benchmarks/train_step.py`` (SDXL block widths, UNet 744M parameters,
   random weights, 128 px) at ``data/02_intermediate/bench_sdxl``;
2. runs the whole default pipeline with ``--env bench`` (conf/bench: every stage, a few steps each),
   with the release (the project's default) and, as the baseline, without it (``ZIPLORA_NO_RELEASE=1``);
3. reruns the nodes with the largest peaks, each alone in a fresh process (``kedro run --nodes X``),
   which is what "the largest single stage" means;
4. prints run peak / largest stage alone, for both runs.

    python benchmarks/run_memory.py            # ~20-30 min on 2 cores
    python benchmarks/run_memory.py --quick    # small stand-in model, a few minutes (code path only)

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("benchmarks.run_memory")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from scratch_project import copy_project  # noqa: E402
from scratch_project import kedro as run_kedro  # noqa: E402
from train_step import MODELS, QUICK_MODELS  # noqa: E402  (the same large spec as the step benchmarks)

PEAK = re.compile(r"(\S+): peak memory resident \(CPU\) ([\d.]+) GB.*?\(([\d.]+) GB resident at its start\)")


def scratch_project(root: Path, spec: dict) -> Path:
    """A scratch project (``scratch_project.copy_project``, samples at 128 px) with the bench model built in it."""
    from ziplora_pipeline.core.diffusion.miniature import MiniatureSpec, write_miniature_sdxl

    copy_project(root, sample_size=128)
    write_miniature_sdxl(root / "data" / "02_intermediate" / "bench_sdxl", MiniatureSpec(**spec))
    return root


def kedro(project: Path, *args: str, release: bool = True) -> tuple[dict[str, float], dict[str, float], float]:
    """Run kedro; return ({node: peak resident GB}, {node: resident GB at its start}, wall seconds)."""
    out, seconds = run_kedro(project, "run", "--env", "bench", *args,
                             env=None if release else {"ZIPLORA_NO_RELEASE": "1"})
    peaks = {m[1]: float(m[2]) for m in PEAK.finditer(out)}
    starts = {m[1]: float(m[3]) for m in PEAK.finditer(out)}
    if not peaks:
        raise SystemExit("No per-node peak memory in the log: is MemoryHooks registered and /proc readable?\n" + out[-3000:])
    return peaks, starts, seconds


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small stand-in model (checks the code path only)")
    p.add_argument("--alone", type=int, default=3, help="how many of the largest nodes to rerun alone")
    p.add_argument("--no-baseline", action="store_true", help="skip the whole run without the release")
    p.add_argument("--keep", action="store_true", help="keep the scratch project (its path is logged)")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    spec = (QUICK_MODELS if args.quick else MODELS)["large"][0]
    work = Path(tempfile.mkdtemp(prefix="run_memory_"))
    try:
        t0 = time.perf_counter()
        project = scratch_project(work / "project", spec)
        logger.info("scratch project at %s (model built in %.0f s)", project, time.perf_counter() - t0)
        runs = {}
        for name, release in (("release", True), ("no_release", False))[: 1 if args.no_baseline else 2]:
            peaks, starts, seconds = kedro(project, release=release)
            runs[name] = {"peaks_gb": peaks, "start_gb": starts, "seconds": seconds, "run_peak_gb": max(peaks.values()),
                          "run_peak_node": max(peaks, key=peaks.get)}
            logger.info("whole run (%s): %.0f s, peak resident %.2f GB in %s", name, seconds,
                        runs[name]["run_peak_gb"], runs[name]["run_peak_node"])
        top = sorted(runs["release"]["peaks_gb"], key=runs["release"]["peaks_gb"].get, reverse=True)[: args.alone]
        alone, alone_start = {}, {}
        for node in top:
            peaks, starts, seconds = kedro(project, "--nodes", node)
            alone[node], alone_start[node] = peaks[node], starts[node]
            whole = runs["release"]
            logger.info("%s alone: peak resident %.2f GB, %.2f GB above its start (in the whole run: %.2f GB, %.2f GB "
                        "above its start), %.0f s", node, alone[node], alone[node] - starts[node],
                        whole["peaks_gb"][node], whole["peaks_gb"][node] - whole["start_gb"][node], seconds)
        largest = max(alone.values())
        result = {"model": "quick" if args.quick else "large", "spec": spec, "alone_gb": alone,
                  "alone_start_gb": alone_start,
                  "largest_stage_alone_gb": largest, "largest_stage": max(alone, key=alone.get), "runs": runs,
                  **{f"ratio_{n}": r["run_peak_gb"] / largest for n, r in runs.items()}}
        logger.info("run peak / largest stage alone: %s (target <= 1.1)",
                    ", ".join(f"{result[f'ratio_{n}']:.3f} ({n})" for n in runs))
        print(json.dumps(result))
    finally:
        if args.keep:
            logger.info("kept %s", work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
