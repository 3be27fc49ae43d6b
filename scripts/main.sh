#!/usr/bin/env bash
# Set up .venv, materialize every asset on the bundled data, then start the recommend API
# (127.0.0.1:8000) and the Dagster UI (127.0.0.1:3000). Re-running reuses what is there.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash scripts/setup.sh
.venv/bin/python -m recs_assets.pipeline
API_PORT="${RECS_API_PORT:-8000}"
.venv/bin/python -m recs_serving --port "$API_PORT" --home "$RECS_HOME" &
API_PID=$!
trap 'kill $API_PID 2>/dev/null' EXIT
echo "[recs] API on http://127.0.0.1:$API_PORT (pages: /ui, docs: /schema/swagger), Dagster UI on http://127.0.0.1:3000"
.venv/bin/dagster dev -w workspace.yaml -h 127.0.0.1 -p 3000
