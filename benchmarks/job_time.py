"""Wall time of the default ``kedro run`` (the issue's limit: 5 minutes on the 2-core CPU machine).

In a scratch copy of the project (conf, sample data, the committed toy-world model and judges; the repo's
catalog is never touched) it runs ``kedro run`` ``--repeats`` times and reports each run's seconds and the
per-stage seconds read from its log (``Trained ... LoRA ... in X s``, the merge, generation), then median and
min. The test suite runs the same job with fewer LoRA steps (tests/test_full_job.py), so this is where the
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
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("benchmarks.job_time")
ROOT = Path(__file__).resolve().parents[1]
BUDGET_S = 300


def scratch_project(root: Path) -> Path:
    """conf (without local), pyproject, sample data and the committed toy model and judges."""
    sys.path.insert(0, str(ROOT / "src"))
    from ziplora_pipeline.sample_data import write_sample_data

    shutil.copytree(ROOT / "conf", root / "conf", ignore=shutil.ignore_patterns("local"))
    (root / "conf" / "local").mkdir()
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    (root / "src").mkdir()
    write_sample_data(root / "data" / "01_raw")
    for folder in ("toy_sdxl", "toy_judges"):
        shutil.copytree(ROOT / "data" / "06_models" / folder, root / "data" / "06_models" / folder)
    return root


def run_once(project: Path) -> dict:
    kedro = Path(sys.executable).with_name("kedro")
    cmd = [str(kedro)] if kedro.exists() else [sys.executable, "-m", "kedro"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(HF_HUB_OFFLINE="1", KEDRO_DISABLE_TELEMETRY="1", DO_NOT_TRACK="1", COLUMNS="400")
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, "run"], cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, check=False)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"kedro run exited {proc.returncode}:\n{proc.stdout[-6000:]}")
    text = re.sub(r"\s+", " ", proc.stdout)  # rich wraps long log lines
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
            project = scratch_project(Path(work) / f"run{k}")  # each run from a fresh catalog
            runs.append(run_once(project))
            logger.info("run %d: %.0f s %s", k + 1, runs[-1]["seconds"], runs[-1]["stages"])
    secs = [r["seconds"] for r in runs]
    print(json.dumps({"runs": runs, "median_s": statistics.median(secs), "min_s": min(secs), "budget_s": BUDGET_S,
                      "within_budget": statistics.median(secs) < BUDGET_S, "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
