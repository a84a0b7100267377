#!/bin/sh
# Start a sandbox desktop: Xvnc (VNC password required) + an Xfce session.
# Runs the same way natively (local mode, CI) and as the container's entrypoint.
#
#   VNC_PASSWORD   required; the script refuses to start without it
#   DISPLAY_NUM    X display number                  (default 1)
#   VNC_PORT       VNC port                          (default 5900 + DISPLAY_NUM)
#   VNC_LISTEN     address the VNC server binds      (default 127.0.0.1)
#   SCREEN_WIDTH / SCREEN_HEIGHT                     (default 1280 x 720)
#   SANDBOX_HOME   home of the desktop session       (default $HOME)
#   SANDBOX_EXEC_TOKEN  when set, also start exec_server.py (shell + files);
#                  SANDBOX_EXEC_HOST / SANDBOX_EXEC_PORT as described there
#   SANDBOX_PYTHON the interpreter for exec_server.py (default python3; the
#                  image names its execute-only copy, see sandbox/Dockerfile)
#
# The two secrets never reach the desktop session: they leave the environment
# before the first child starts, the VNC password reaches Xvnc only as an open
# descriptor of a deleted file, and the token only the exec server's
# environment. In the image every process that holds one is non-dumpable, so
# the desktop user cannot read them from /proc (docs/architecture.md, "Secrets
# in the sandbox").
set -eu

vnc_password="${VNC_PASSWORD:-}"
exec_token="${SANDBOX_EXEC_TOKEN:-}"
unset VNC_PASSWORD SANDBOX_EXEC_TOKEN
if [ -z "$vnc_password" ]; then
    echo "sandbox: VNC_PASSWORD is not set; refusing to start an open VNC server" >&2
    exit 2
fi

DISPLAY_NUM="${DISPLAY_NUM:-1}"
VNC_PORT="${VNC_PORT:-$((5900 + DISPLAY_NUM))}"
VNC_LISTEN="${VNC_LISTEN:-127.0.0.1}"
SCREEN_WIDTH="${SCREEN_WIDTH:-1280}"
SCREEN_HEIGHT="${SCREEN_HEIGHT:-720}"
SANDBOX_HOME="${SANDBOX_HOME:-$HOME}"
HERE="$(cd "$(dirname "$0")" && pwd)"

export HOME="$SANDBOX_HOME"
cd "$HOME"
export DISPLAY=":$DISPLAY_NUM"
export XDG_CONFIG_HOME="$HOME/.config"
export XDG_CACHE_HOME="$HOME/.cache"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$HOME/.run}"
mkdir -p "$HOME/Desktop" "$XDG_CONFIG_HOME" "$XDG_CACHE_HOME" "$XDG_RUNTIME_DIR"
chmod 700 "$XDG_RUNTIME_DIR"

# Preseed Xfce so the first start shows a ready desktop instead of the
# panel-layout question, with compositing off (it only adds frame latency).
"$HERE/xfce-defaults.sh" "$XDG_CONFIG_HOME"

# Xvnc reads its password file at every connection, so it must stay
# readable to Xvnc; a path would be readable to the desktop user too. Instead
# Xvnc gets descriptor 7 of a file deleted right away, and reads it through
# /proc/self/fd/7 (which names its own descriptor, not the reader's).
# Leftover from earlier versions, which kept the file in the home.
rm -f "$XDG_RUNTIME_DIR/vncpasswd"
PASSWD_FILE="$(umask 077 && mktemp "$XDG_RUNTIME_DIR/.vncpasswd.XXXXXX")"
printf '%s\n' "$vnc_password" | vncpasswd -f > "$PASSWD_FILE"
exec 7<"$PASSWD_FILE"
rm -f "$PASSWD_FILE"
vnc_password=""

children=""
cleanup() {
    trap - INT TERM EXIT
    # shellcheck disable=SC2086
    [ -n "$children" ] && kill $children 2>/dev/null || true
    pkill -TERM -s 0 2>/dev/null || true
    wait 2>/dev/null || true
}
trap cleanup INT TERM EXIT

Xvnc "$DISPLAY" \
    -geometry "${SCREEN_WIDTH}x${SCREEN_HEIGHT}" -depth 24 \
    -rfbport "$VNC_PORT" -interface "$VNC_LISTEN" \
    -rfbauth /proc/self/fd/7 -SecurityTypes VncAuth \
    -AlwaysShared -AcceptSetDesktopSize=0 \
    -nolisten tcp -desktop selfagent 7<&7 &
children="$children $!"
exec 7<&-

i=0
until xdpyinfo -display "$DISPLAY" >/dev/null 2>&1; do
    i=$((i + 1))
    if [ "$i" -gt 100 ]; then
        echo "sandbox: X server did not come up" >&2
        exit 1
    fi
    sleep 0.1
done

# The exec server before the session: it holds the token from its first
# instruction (non-dumpable in the image), and no desktop program exists yet.
if [ -n "$exec_token" ] && [ -f "$HERE/exec_server.py" ]; then
    SANDBOX_EXEC_TOKEN="$exec_token" "${SANDBOX_PYTHON:-python3}" "$HERE/exec_server.py" &
    children="$children $!"
fi
exec_token=""

dbus-launch --exit-with-session startxfce4 >"$XDG_CACHE_HOME/xfce.log" 2>&1 &
children="$children $!"

echo "sandbox: desktop $DISPLAY ${SCREEN_WIDTH}x${SCREEN_HEIGHT}, VNC on $VNC_LISTEN:$VNC_PORT"
wait
