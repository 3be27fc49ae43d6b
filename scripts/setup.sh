#!/usr/bin/env bash
# Create or update .venv; re-running with an unchanged pyproject.toml installs nothing.
# Usage: scripts/setup.sh [extras]   (e.g. dev, bench, "dev,bench")
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
EXTRAS="${1:-}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
stamp=".venv/.recs-installed-$( (cat pyproject.toml; echo "$EXTRAS") | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  # The CPU build of torch first: left to the resolver, sentence-transformers pulls a
  # multi-GB CUDA build.
  .venv/bin/python -m pip install -q "torch==2.13.0" || .venv/bin/python -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  spec="."
  [ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
  .venv/bin/python -m pip install -q -e "$spec"
  rm -f .venv/.recs-installed-*
  touch "$stamp"
fi
