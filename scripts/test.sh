#!/usr/bin/env bash
# Set up .venv with the dev extra and run the whole test suite.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
bash scripts/setup.sh dev
# The browser tests drive Debian's Chromium (Playwright never downloads a browser here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo -n"; fi
  $SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; } \
    || echo "chromium could not be installed: the browser tests will be skipped" >&2
fi
export RECS_HOME="$REPO/var/test-home"
exec .venv/bin/python -m pytest -n 2 --dist loadgroup -q "$@"
