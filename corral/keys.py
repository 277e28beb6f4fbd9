"""Key names for the desktop's `key` action, checked without a display (X keysym names).

Shared by the request checks at submission (corral/steps/gui.py) and the gui service itself.
"""

from __future__ import annotations

import re

from Xlib import XK

# xdotool's own modifier aliases, accepted as they are.
KEY_ALIASES = frozenset({"ctrl", "control", "alt", "shift", "super", "meta", "win", "cmd"})


def key_problem(keys: str) -> str:
    """What is wrong with `keys` ('ctrl+shift+t Return'), or '' when every name is known."""
    combos = keys.split()
    if not combos:
        return "keys is empty (e.g. 'Return', 'ctrl+c', 'ctrl+shift+t')"
    for combo in combos:
        for name in combo.split("+"):
            if not name:
                return f"malformed key combination {combo!r}"
            if name.lower() in KEY_ALIASES:
                continue
            if XK.string_to_keysym(name) == 0 and not re.fullmatch(r"0x[0-9a-fA-F]+", name):
                return (
                    f"unknown key {name!r} in {combo!r}: use X keysym names such as Return, "
                    "Escape, Tab, BackSpace, Left, F5, a, A, ctrl, alt, shift, super"
                )
    return ""
