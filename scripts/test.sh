#!/bin/sh
# The whole test suite, set-up included: lint, types, schema freshness, then
# every test (real nats-server, real desktops, real Chromium, real Docker).
#
#   scripts/test.sh [pytest args]
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
scripts/setup.sh

echo "== ruff"
.venv/bin/ruff check schemas services tests bench
echo "== mypy --strict (schemas, services)"
PYTHON=.venv/bin/python scripts/typecheck.sh
echo "== pytest"
exec .venv/bin/python -m pytest "$@"
