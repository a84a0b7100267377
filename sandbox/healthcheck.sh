#!/bin/sh
# Container health: the VNC server greets with an RFB banner and, when the
# exec endpoint is enabled, its /healthz answers. Python is there anyway for
# exec_server.py and gives us socket timeouts that plain sh lacks.
#
# `docker exec` (and so this check) gets the container's environment, secrets
# included: the image runs this script with its execute-only shell (nobody
# can read that process's environment), and python3 starts without them.
if [ -z "${SANDBOX_EXEC_ENABLED:-}" ]; then
    if [ -n "${SANDBOX_EXEC_TOKEN:-}" ]; then
        SANDBOX_EXEC_ENABLED=1
    else
        SANDBOX_EXEC_ENABLED=0
    fi
fi
export SANDBOX_EXEC_ENABLED
unset VNC_PASSWORD SANDBOX_EXEC_TOKEN
exec python3 - <<'PY'
import os
import socket
import sys
import urllib.request

port = int(os.environ.get("VNC_PORT") or 5900 + int(os.environ.get("DISPLAY_NUM") or 1))
try:
    with socket.create_connection(("127.0.0.1", port), timeout=3) as sock:
        banner = sock.recv(12)
except OSError as exc:
    sys.exit(f"VNC port {port}: {exc}")
if not banner.startswith(b"RFB "):
    sys.exit(f"VNC port {port} answered {banner!r}, not an RFB banner")

if os.environ.get("SANDBOX_EXEC_ENABLED") == "1":
    exec_port = os.environ.get("SANDBOX_EXEC_PORT") or "8700"
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{exec_port}/healthz", timeout=3) as reply:
            if reply.status != 200:
                sys.exit(f"exec endpoint /healthz answered {reply.status}")
    except OSError as exc:
        sys.exit(f"exec endpoint on {exec_port}: {exc}")
PY
