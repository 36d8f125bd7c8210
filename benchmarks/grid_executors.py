"""Wall time of the grid job through Dagster: the in-process executor against dagster-dask on a local
dask.distributed cluster (a scheduler and ``--workers`` workers, each its own process), same grid, interleaved.

In scratch copies of the project (the committed toy-world model and judges, the sample data; a fresh catalog and
Dagster instance per run, so every run trains and merges everything) it runs ``dagster job execute -j local__grid``
``--repeats`` times with each executor, alternating, and reports seconds per run, median and min, and the ratio
dask / in-process of the medians. On one small machine the dask run pays per op what the multiprocess executor pays
(a worker loads the Kedro project per op, and each op's inputs travel through Dagster's io manager); what it buys is
the same job on many machines, which one machine cannot show.

    python benchmarks/grid_executors.py                    # robot x sketch, 1 repeat each (~6 min on 2 cores)
    python benchmarks/grid_executors.py --repeats 2 --lora-steps 50

Logs go to stderr; the last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("benchmarks.grid_executors")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from scratch_project import copy_project  # noqa: E402

from ziplora_pipeline.kedro_glue.dask_cluster import dagster_env, dask_cluster, dask_dagster_yml  # noqa: E402


def run_once(work: Path, executor: str, workers: int, params: str) -> float:
    project = copy_project(work / "project", models=("toy_sdxl", "toy_judges"))
    (project / "conf/local/parameters.yml").write_text(params)
    home = work / "dagster_home"
    home.mkdir()
    env = dagster_env(home)
    cmd = [str(Path(sys.executable).with_name("dagster")), "job", "execute", "-m", "ziplora_pipeline.definitions",
           "-j", "local__grid"]

    def execute() -> float:
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              check=False)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{executor} run failed ({proc.returncode}):\n{proc.stdout[-5000:]}")
        return seconds

    if executor == "in_process":
        (project / "conf/local/dagster.yml").write_text("jobs:\n  grid:\n    executor: in_process\n")
        return execute()
    with dask_cluster(project, work / "logs", env, workers=workers) as cluster:  # started before the clock
        (project / "conf/local/dagster.yml").write_text(dask_dagster_yml(cluster.address))
        return execute()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--lora-steps", type=int, default=30, help="subject and style LoRA steps (default 30)")
    p.add_argument("--merge-steps", type=int, default=20)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
    params = (f"grid:\n  seeds: [100, 101]\nsubject:\n  lora: {{steps: {args.lora_steps}}}\n"
              f"style:\n  lora: {{steps: {args.lora_steps}}}\nmerge:\n  steps: {args.merge_steps}\n")
    seconds: dict[str, list[float]] = {"in_process": [], "dask": []}
    with tempfile.TemporaryDirectory(prefix="grid_executors_") as work:
        for k in range(args.repeats):
            for executor in ("in_process", "dask"):  # interleaved: a slow phase of the machine hits both
                seconds[executor].append(round(run_once(Path(work) / f"{executor}{k}", executor, args.workers,
                                                        params), 1))
                logger.info("repeat %d %s: %.0f s", k + 1, executor, seconds[executor][-1])
    med = {k: statistics.median(v) for k, v in seconds.items()}
    print(json.dumps({"grid": "robot x sketch", "lora_steps": args.lora_steps, "merge_steps": args.merge_steps,
                      "workers": args.workers, "seconds": seconds, "median_s": med,
                      "min_s": {k: min(v) for k, v in seconds.items()},
                      "ratio_dask_over_in_process": round(med["dask"] / med["in_process"], 2),
                      "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
