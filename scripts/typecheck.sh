#!/bin/sh
# mypy --strict over schemas/ and services/ under their import names.
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
MYPYPATH="$TREE" exec "${PYTHON:-python}" -m mypy --config-file pyproject.toml -p selfagent "$@"
