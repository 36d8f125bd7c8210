"""Train one concept's LoRA outside ``kedro run`` — e.g. data-parallel on several GPUs:

    accelerate launch --num_processes 4 scripts/train_lora.py --concept subject --env sdxl
    python scripts/train_lora.py --concept style            # single process, same as the node

It runs the training node's function (``templates.lora_nodes.train_lora_node`` →
``core.lora_training.train_lora``, which runs under ``accelerate``) on the newest prepared data
from the Kedro catalog and, on the main process only, saves the LoRA, training log and loss
curve to the catalog as new versions — so later ``kedro run --pipelines merge`` picks them up.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", required=True, help="subject, style (or another training namespace)")
    parser.add_argument("--env", default=None, help="Kedro environment, e.g. sdxl")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project

    from ziplora_pipeline.kedro_glue.params import validate_parameters
    from ziplora_pipeline.templates.lora_nodes import train_lora_node

    bootstrap_project(ROOT)
    with KedroSession.create(project_path=ROOT, env=args.env) as session:
        context = session.load_context()
        catalog, params = context.catalog, context.params
        validate_parameters(params)
        lora, log, figure = train_lora_node(
            catalog[f"{args.concept}_images"].load(), catalog[f"{args.concept}_prompt"].load(),
            params[args.concept]["lora"], params["base_model"], catalog[f"{args.concept}_lora_checkpoints"].load())
        if int(os.environ.get("RANK", 0)) == 0:  # one writer
            catalog[f"{args.concept}_lora_weights"].save(lora)
            catalog[f"{args.concept}_training_log"].save(log)
            catalog[f"{args.concept}_loss_curve"].save(figure)
            logging.getLogger(__name__).info("Saved %s LoRA (%d steps) to the catalog", args.concept, log["steps"])


if __name__ == "__main__":
    main()
