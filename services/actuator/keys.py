"""Key combos -> keysym chords for RFB KeyEvents.

Key names, aliases and keysyms are the shared table of :mod:`selfagent.keys`
(the one the planner normalises model key names with); this module reads the
combo syntax strictly and refuses what it does not know before anything is sent.
"""

from __future__ import annotations

from selfagent.errors import UnknownKey
from selfagent.keys import char_keysym, keysym, split_chord

__all__ = ["char_keysym", "keysym", "parse_combo"]


def parse_combo(combo: str) -> list[list[int]]:
    """Parse 'ctrl+alt+t' or a space-separated sequence 'ctrl+c Return'.

    Returns a list of chords; each chord is pressed in order and released in
    reverse. Raises UnknownKey before anything would be sent.
    """
    chords: list[list[int]] = []
    for chord in combo.split():
        names = split_chord(chord)
        if not names:
            raise UnknownKey(chord)
        chords.append([keysym(name) for name in names])
    if not chords:
        raise UnknownKey(combo)
    return chords
