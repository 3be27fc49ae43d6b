# Sourced by the other scripts: one venv in the repo, all state under RECS_HOME.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
export RECS_HOME="${RECS_HOME:-$REPO/var}"
export DAGSTER_HOME="$RECS_HOME/dagster"
export RECS_DAGSTER_STORAGE="$DAGSTER_HOME/storage"
export RECS_DAGSTER_LOGS="$DAGSTER_HOME/logs"
export NUMBA_CACHE_DIR="${NUMBA_CACHE_DIR:-$RECS_HOME/numba-cache}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export DAGSTER_DISABLE_TELEMETRY=1
mkdir -p "$RECS_HOME" "$DAGSTER_HOME" "$RECS_DAGSTER_STORAGE" "$RECS_DAGSTER_LOGS" "$RECS_HOME/inbox"
# The embedded instance (sqlite, no service) unless RECS_DAGSTER_YAML names another, e.g.
# deploy/dagster.production.yaml (PostgreSQL, run queue, run monitoring; see README "Scaling out").
# Through a temp file and a rename: several workers starting at once must not race on it.
_yaml_tmp="$DAGSTER_HOME/.dagster.yaml.$$"
cp "${RECS_DAGSTER_YAML:-$REPO/dagster.yaml}" "$_yaml_tmp"
mv -f "$_yaml_tmp" "$DAGSTER_HOME/dagster.yaml"
unset _yaml_tmp
