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
.venv/bin/ruff check schemas services sandbox tests bench scripts
echo "== mypy --strict (schemas, services, the sandbox's exec endpoint)"
PYTHON=.venv/bin/python scripts/typecheck.sh
echo "== pytest"
# Most tests wait on desktops, brokers and model replies rather than compute,
# so several workers overlap those waits (SELFAGENT_TEST_WORKERS=0: none).
WORKERS="${SELFAGENT_TEST_WORKERS:-3}"
PARALLEL=""
[ "$WORKERS" != "0" ] && PARALLEL="-n $WORKERS --dist loadgroup"
# Two more tries for a failing test (each listed as a rerun in the summary): a
# desktop test can lose a race against the load of the other workers.
RERUNS="${SELFAGENT_TEST_RERUNS:-2}"
# shellcheck disable=SC2086
exec .venv/bin/python -m pytest $PARALLEL --reruns "$RERUNS" --reruns-delay 2 --durations=15 "$@"
