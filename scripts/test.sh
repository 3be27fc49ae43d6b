#!/usr/bin/env bash
# Set up .venv with the dev extra and run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash scripts/setup.sh dev
export RECS_HOME="$REPO/var/test-home"
exec .venv/bin/python -m pytest -n 2 --dist loadgroup -q "$@"
