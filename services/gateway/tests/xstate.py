"""What the X server of a test desktop says is held down: keys and pointer buttons.

Asked of the X server itself (libX11 through ctypes: XQueryKeymap and
XQueryPointer), so a test sees what the desktop's programs would see, not
what some client believes it sent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass

BUTTON_MASKS = {1: 1 << 8, 2: 1 << 9, 3: 1 << 10}


@dataclass(frozen=True)
class Held:
    keycodes: frozenset[int]
    buttons: frozenset[int]


def _xlib() -> ctypes.CDLL:
    name = ctypes.util.find_library("X11") or "libX11.so.6"
    lib = ctypes.CDLL(name)
    lib.XOpenDisplay.restype = ctypes.c_void_p
    lib.XOpenDisplay.argtypes = [ctypes.c_char_p]
    lib.XCloseDisplay.argtypes = [ctypes.c_void_p]
    lib.XQueryKeymap.argtypes = [ctypes.c_void_p, ctypes.c_char * 32]
    lib.XKeysymToKeycode.restype = ctypes.c_ubyte
    lib.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    lib.XDefaultRootWindow.restype = ctypes.c_ulong
    lib.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    lib.XQueryPointer.argtypes = [
        ctypes.c_void_p,
        ctypes.c_ulong,
        *[ctypes.POINTER(ctypes.c_ulong)] * 2,
        *[ctypes.POINTER(ctypes.c_int)] * 4,
        ctypes.POINTER(ctypes.c_uint),
    ]
    return lib


class XState:
    def __init__(self, display: str) -> None:
        self.lib = _xlib()
        self.dpy = self.lib.XOpenDisplay(display.encode())
        if not self.dpy:
            raise RuntimeError(f"cannot open X display {display}")

    def keycode(self, keysym: int) -> int:
        return int(self.lib.XKeysymToKeycode(self.dpy, keysym))

    def held(self) -> Held:
        keymap = (ctypes.c_char * 32)()
        self.lib.XQueryKeymap(self.dpy, keymap)
        raw = bytes(keymap)
        keycodes = frozenset(
            byte * 8 + bit for byte in range(32) for bit in range(8) if raw[byte] & (1 << bit)
        )
        root, child = ctypes.c_ulong(), ctypes.c_ulong()
        ints = [ctypes.c_int() for _ in range(4)]
        mask = ctypes.c_uint()
        self.lib.XQueryPointer(
            self.dpy,
            self.lib.XDefaultRootWindow(self.dpy),
            ctypes.byref(root),
            ctypes.byref(child),
            *[ctypes.byref(i) for i in ints],
            ctypes.byref(mask),
        )
        buttons = frozenset(b for b, bit in BUTTON_MASKS.items() if mask.value & bit)
        return Held(keycodes, buttons)

    def close(self) -> None:
        if self.dpy:
            self.lib.XCloseDisplay(self.dpy)
            self.dpy = None
