#!/usr/bin/env bash
# Screenshots for the README: the newest MLflow run's page and the Kedro-Viz graph, in headless Chromium.
#
#   apt-get install -y chromium          # Debian's package (/usr/bin/chromium)
#   kedro run && bash scripts/take_screenshots.sh
#
# Writes docs/mlflow_run.png, docs/mlflow_model.png (the newest registered ZipLoRA version) and docs/kedro_viz.png.
# Run from the project root after a `kedro run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
PORT_MLFLOW=${PORT_MLFLOW:-5055}
PORT_VIZ=${PORT_VIZ:-5056}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT

shot() {  # shot URL OUT WIDTH HEIGHT
  # The background-networking flags keep Chromium from calling out (this machine's network is closed).
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run --hide-scrollbars \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$(mktemp -d)" --window-size="$3,$4" --virtual-time-budget=15000 \
    --screenshot="$2" "$1" 2>/dev/null
}

wait_for() { for _ in $(seq 60); do curl -sf "$1" >/dev/null && return 0; sleep 1; done; echo "no answer from $1" >&2; exit 1; }

# 1. MLflow: the newest run of the project's experiment
run_path=$(python - <<'PY'
from mlflow.tracking import MlflowClient
from ziplora_pipeline.settings import project_root
client = MlflowClient(tracking_uri=f"sqlite:///{project_root()}/mlflow.db")
exp = client.get_experiment_by_name("ziplora_pipeline")
[run] = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
print(f"experiments/{exp.experiment_id}/runs/{run.info.run_id}")
PY
)
mlflow ui --backend-store-uri "sqlite:///$PWD/mlflow.db" --port "$PORT_MLFLOW" >/tmp/mlflow_ui.log 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$PORT_MLFLOW/health"
shot "http://127.0.0.1:$PORT_MLFLOW/#/$run_path" docs/mlflow_run.png 1400 1000
model_path=$(python - <<'PY'
from mlflow.tracking import MlflowClient
from ziplora_pipeline.settings import project_root
client = MlflowClient(tracking_uri=f"sqlite:///{project_root()}/mlflow.db")
[model] = client.search_registered_models(order_by=["last_updated_timestamp DESC"], max_results=1)
version = client.get_model_version_by_alias(model.name, "newest")
print(f"models/{model.name}/versions/{version.version}")
PY
)
shot "http://127.0.0.1:$PORT_MLFLOW/#/$model_path" docs/mlflow_model.png 1400 1000

# 2. Kedro-Viz: the static export, served locally
rm -rf build && kedro viz build >/tmp/kedro_viz_build.log 2>&1
python -m http.server "$PORT_VIZ" --directory build >/tmp/kedro_viz_http.log 2>&1 &
pids+=($!)
wait_for "http://127.0.0.1:$PORT_VIZ/"
shot "http://127.0.0.1:$PORT_VIZ/" docs/kedro_viz.png 1600 1000
echo "wrote docs/mlflow_run.png docs/mlflow_model.png docs/kedro_viz.png"
