#!/bin/sh
# mypy over everything that ships and everything that tests it:
#   --strict   schemas/ and services/ under their import names, and the
#              sandbox's exec endpoint (standard library only);
#   checked    the tests and benchmarks (less strict, see pyproject.toml).
# The package-dir mapping (selfagent -> services, selfagent.schemas -> schemas)
# is invisible to mypy, so present the same tree through symlinks.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
TREE="$ROOT/.cache/typecheck"
rm -rf "$TREE" && mkdir -p "$TREE/selfagent"
for entry in "$ROOT"/services/*; do
    ln -s "$entry" "$TREE/selfagent/$(basename "$entry")"
done
ln -s "$ROOT/schemas" "$TREE/selfagent/schemas"
cd "$ROOT"
PY="$(command -v "${PYTHON:-python}")"
case "$PY" in /*) ;; *) PY="$ROOT/$PY" ;; esac
MYPYPATH="$TREE" "$PY" -m mypy --config-file pyproject.toml -p selfagent "$@"
"$PY" -m mypy --config-file pyproject.toml sandbox/exec_server.py
# The tests of each service, under their import names, plus tests/ and bench/.
TESTS="$(cd "$TREE" && find -L selfagent -path '*/tests/*.py' | sort)"
# shellcheck disable=SC2086
(cd "$TREE" && MYPYPATH="$ROOT" "$PY" -m mypy --config-file "$ROOT/pyproject.toml" \
    --cache-dir "$ROOT/.mypy_cache" $TESTS)
MYPYPATH="$TREE" "$PY" -m mypy --config-file pyproject.toml tests bench
