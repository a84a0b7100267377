#!/bin/sh
# Run selfagent locally (no Docker): set-up, then `selfagent up`.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
SELFAGENT_EXTRAS=local scripts/setup.sh
[ -f .env ] || { cp .env.example .env 2>/dev/null && echo "created .env from .env.example: set your LLM endpoint there"; } || true
exec .venv/bin/selfagent up "$@"
