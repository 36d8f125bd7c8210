"""Wall time of the default ``kedro run`` (the issue's limit: 5 minutes on the 2-core CPU machine).

In a scratch copy of the project (conf, sample data, the committed toy-world model and judges; the repo's
catalog is never touched) it runs ``kedro run`` ``--repeats`` times and reports each run's seconds and the
per-stage seconds read from its log (``Trained ... LoRA ... in X s``, the merge, generation), then median and
min. The test suite runs the same job with fewer LoRA steps (tests/e2e/test_full_job.py), so this is where the
default's time is measured. Run it on a quiet machine: anything beside it slows it more than proportionally.

    python benchmarks/job_time.py              # one run, ~4 min on 2 cores
    python benchmarks/job_time.py --repeats 3

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

logger = logging.getLogger("benchmarks.job_time")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scratch_project import copy_project, kedro  # noqa: E402

BUDGET_S = 300


def run_once(project: Path) -> dict:
    out, seconds = kedro(project, "run", env={"COLUMNS": "400"})
    text = re.sub(r"\s+", " ", out)  # rich wraps long log lines
    stages = {f"{c}_lora": float(s) for c, s in re.findall(r"Trained (\w+) LoRA: .*? in ([\d.]+) s", text)}
    if m := re.search(r"ZipLoRA merge: \d+ steps in ([\d.]+) s", text):
        stages["ziplora_merge"] = float(m.group(1))
    return {"seconds": round(seconds, 1), "stages": stages}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    runs = []
    with tempfile.TemporaryDirectory(prefix="job_time_") as work:
        for k in range(args.repeats):
            project = copy_project(Path(work) / f"run{k}", models=("toy_sdxl", "toy_judges"))  # a fresh catalog
            runs.append(run_once(project))
            logger.info("run %d: %.0f s %s", k + 1, runs[-1]["seconds"], runs[-1]["stages"])
    secs = [r["seconds"] for r in runs]
    print(json.dumps({"runs": runs, "median_s": statistics.median(secs), "min_s": min(secs), "budget_s": BUDGET_S,
                      "within_budget": statistics.median(secs) < BUDGET_S, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
