"""What is on the screen: screenshots, cursor, screen size and windows, through python-xlib.

One X connection, used by one thread at a time (Xlib is not thread-safe), so every public
method takes the lock; the gRPC servicer calls them from worker threads.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

from PIL import Image
from Xlib import X, Xatom, display, error
from Xlib.xobject.drawable import Window as XWindow


@dataclass(frozen=True)
class Shot:
    png: bytes
    width: int
    height: int
    # Screen coordinates = screenshot coordinates * scale.
    scale: float


@dataclass(frozen=True)
class WindowInfo:
    id: int
    title: str
    x: int
    y: int
    width: int
    height: int


class Screen:
    def __init__(self, display_name: str) -> None:
        self._display = display.Display(display_name)
        self._root = self._display.screen().root
        self._lock = threading.Lock()
        self._atoms = {
            name: self._display.intern_atom(name)
            for name in ("_NET_CLIENT_LIST", "_NET_WM_NAME", "UTF8_STRING", "_NET_ACTIVE_WINDOW")
        }

    def close(self) -> None:
        with self._lock:
            self._display.close()

    def size(self) -> tuple[int, int]:
        with self._lock:
            geometry = self._root.get_geometry()
            return int(geometry.width), int(geometry.height)

    def cursor(self) -> tuple[int, int]:
        with self._lock:
            pointer = self._root.query_pointer()
            return int(pointer.root_x), int(pointer.root_y)

    def screenshot(self, max_width: int = 0, max_height: int = 0) -> Shot:
        with self._lock:
            geometry = self._root.get_geometry()
            width, height = int(geometry.width), int(geometry.height)
            raw = self._root.get_image(0, 0, width, height, X.ZPixmap, 0xFFFFFFFF)
        image = Image.frombytes("RGB", (width, height), raw.data, "raw", "BGRX")
        scale = 1.0
        if (max_width and width > max_width) or (max_height and height > max_height):
            factor = min(
                max_width / width if max_width else 1.0,
                max_height / height if max_height else 1.0,
            )
            new_size = (max(1, round(width * factor)), max(1, round(height * factor)))
            image = image.resize(new_size, Image.Resampling.LANCZOS)
            scale = width / new_size[0]
        out = io.BytesIO()
        # Fast compression: screenshots are taken often and thrown away soon.
        image.save(out, format="PNG", compress_level=1)
        return Shot(out.getvalue(), image.width, image.height, scale)

    def windows(self) -> list[WindowInfo]:
        """Managed top-level windows (EWMH client list), else the root's mapped children."""
        with self._lock:
            found: list[WindowInfo] = []
            for window in self._client_windows():
                try:
                    attrs = window.get_attributes()
                    if attrs.map_state != X.IsViewable:
                        continue
                    geometry = window.get_geometry()
                    origin = window.translate_coords(self._root, 0, 0)
                    found.append(
                        WindowInfo(
                            id=int(window.id),
                            title=self._title(window),
                            x=-int(origin.x),
                            y=-int(origin.y),
                            width=int(geometry.width),
                            height=int(geometry.height),
                        )
                    )
                except error.XError:
                    continue  # it went away while we looked
            return found

    def window_exists(self, window_id: int) -> bool:
        with self._lock:
            try:
                self._display.create_resource_object("window", window_id).get_attributes()
            except (error.XError, error.BadWindow):
                return False
            return True

    def _client_windows(self) -> list[XWindow]:
        prop = self._root.get_full_property(self._atoms["_NET_CLIENT_LIST"], Xatom.WINDOW)
        if prop is not None and len(prop.value):
            return [self._display.create_resource_object("window", wid) for wid in prop.value]
        return list(self._root.query_tree().children)

    def _title(self, window: XWindow) -> str:
        prop = window.get_full_property(self._atoms["_NET_WM_NAME"], self._atoms["UTF8_STRING"])
        if prop is not None and prop.value:
            value = prop.value
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        name = window.get_wm_name()
        if isinstance(name, bytes):
            return name.decode("latin-1")
        return name or ""
