#!/bin/sh
# Install what selfagent needs on a Debian/Ubuntu machine (idempotent):
# the desktop stack for the native sandbox, Chromium and noVNC for the web UI
# and browser tests, tesseract for OCR grounding, and a virtualenv with the
# project and its pinned dependencies.
set -eu
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

EXTRAS="${SELFAGENT_EXTRAS:-dev}"
APT_PACKAGES="tigervnc-standalone-server tigervnc-tools xfce4 xfce4-terminal mousepad thunar \
dbus-x11 xdotool x11-utils xauth fonts-dejavu-core procps novnc tesseract-ocr tesseract-ocr-eng \
python3-venv ca-certificates libglib2.0-bin"
# The browser tests drive Debian's Chromium; running the product does not need it.
[ "$EXTRAS" = "dev" ] && APT_PACKAGES="$APT_PACKAGES chromium"

missing=""
for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
        || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "setup: installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
echo "setup: done"
