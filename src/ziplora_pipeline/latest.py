"""``python -m ziplora_pipeline.latest <dataset>``: the newest saved version's file of a catalog dataset, so a user
reaches the newest export without walking timestamp folders; the versioned path stays the source of truth.

    python -m ziplora_pipeline.latest ziplora_weights
    # data/06_models/ziplora/ziplora.safetensors/2026-12-03T11.44.41.783Z/ziplora.safetensors
    python -m ziplora_pipeline.latest robot_x_sketch.ziplora_weights --env grid

Run it in the project folder (as ``kedro``). Prints the path relative to the project (absolute with ``--absolute``).
"""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from pathlib import Path


def newest_path(name: str, project: Path, env: str | None = None) -> Path:
    """The file (or folder) the newest saved version of catalog dataset ``name`` lives in."""
    from kedro.framework.session import KedroSession
    from kedro.framework.startup import bootstrap_project
    from kedro.io.core import DatasetError

    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=env) as session:
        catalog = session.load_context().catalog
        try:
            dataset = catalog.get(name)
        except Exception:  # noqa: BLE001 - kedro raises its own DatasetNotFoundError
            dataset = None
        if dataset is None:
            close = difflib.get_close_matches(name, list(catalog.keys()), n=3)
            raise SystemExit(f"No catalog dataset '{name}'." + (f" Did you mean {close}?" if close else ""))
        try:
            path = dataset._get_load_path() if getattr(dataset, "_version", None) else dataset._filepath
        except DatasetError:
            raise SystemExit(f"'{name}' has no saved version yet: run the stage that makes it (e.g. `kedro run "
                             "--pipelines merge` for the merged LoRAs).") from None
        except AttributeError:
            raise SystemExit(f"'{name}' is not a file dataset ({type(dataset).__name__}).") from None
    return Path(str(path))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ziplora_pipeline.latest", description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="a catalog entry, e.g. ziplora_weights, ziplora_kohya_weights, ziplora_model_card")
    p.add_argument("--env", default=None, help="the Kedro environment (as `kedro run --env`)")
    p.add_argument("--absolute", action="store_true")
    args = p.parse_args(argv)
    logging.disable(logging.WARNING)  # only the path on stdout (Kedro's rich handler writes its INFO lines there)
    project = Path.cwd().resolve()
    path = newest_path(args.dataset, project, args.env)
    if not args.absolute and path.is_absolute():
        try:
            path = path.relative_to(project)
        except ValueError:
            pass
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
