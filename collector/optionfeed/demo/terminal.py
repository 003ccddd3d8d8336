"""Showing the demo's progress: a panel redrawn in place on a terminal, or plain lines elsewhere.

The panel is drawn with three ANSI sequences every terminal understands (cursor up, erase to the
end of the screen, hide/show the cursor), each line cut to the terminal's width so that nothing
wraps and the redraw stays in place. While it is up, log records that would go to the same
terminal are printed above it instead of through it.
"""

from __future__ import annotations

import logging
import shutil
import threading
from typing import Protocol, TextIO

from optionfeed.demo.progress import View, fit, panel_lines, progress_line

HIDE_CURSOR = "\x1b[?25l"
SHOW_CURSOR = "\x1b[?25h"
ERASE_DOWN = "\x1b[J"


def cursor_up(lines: int) -> str:
    return f"\r\x1b[{lines}A" if lines > 0 else "\r"


class Display(Protocol):
    def start(self) -> None: ...

    def update(self, view: View) -> None: ...

    def close(self) -> None: ...


class PlainProgress:
    """A progress line every ``every`` seconds (of the samples' clock), for pipes and logs."""

    def __init__(self, stream: TextIO, every: float) -> None:
        self.stream = stream
        self.every = every
        self._last: float | None = None

    def start(self) -> None:
        pass

    def update(self, view: View) -> None:
        if self._last is None:
            self._last = view.now.at
            return
        if view.now.at - self._last >= self.every - 1e-6:
            self._last = view.now.at
            self.stream.write(progress_line(view) + "\n")
            self.stream.flush()

    def close(self) -> None:
        pass


class _AbovePanel(logging.Handler):
    """Hands formatted records to the panel, which prints them above itself."""

    def __init__(self, panel: LivePanel, template: logging.Handler) -> None:
        super().__init__(template.level)
        self.panel = panel
        self.setFormatter(template.formatter)
        for f in template.filters:
            self.addFilter(f)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.panel.print_above(self.format(record))
        except Exception:
            self.handleError(record)


class LivePanel:
    """The live panel on a terminal (``stream`` must be one)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self._lines: list[str] = []
        self._drawn = 0
        self._lock = threading.Lock()
        self._swapped: list[tuple[logging.Handler, logging.Handler]] = []
        self._open = False

    def _width(self) -> int:
        return shutil.get_terminal_size((100, 24)).columns

    def start(self) -> None:
        root = logging.getLogger()
        for handler in list(root.handlers):
            stream = getattr(handler, "stream", None)
            if isinstance(handler, logging.StreamHandler) and _is_tty(stream):
                above = _AbovePanel(self, handler)
                root.removeHandler(handler)
                root.addHandler(above)
                self._swapped.append((handler, above))
        with self._lock:
            self._open = True
            self.stream.write(HIDE_CURSOR)
            self.stream.flush()

    def update(self, view: View) -> None:
        width = self._width()
        lines = [fit(line, width) for line in panel_lines(view)]
        with self._lock:
            self._lines = lines
            self._paint("")

    def print_above(self, text: str) -> None:
        with self._lock:
            if not self._open:
                self.stream.write(text + "\n")
                self.stream.flush()
                return
            self._paint(text + "\n")

    def _paint(self, above: str) -> None:
        # Erase the panel drawn last, print what goes above it, draw it again.
        out = cursor_up(self._drawn) + ERASE_DOWN + above
        out += "".join(line + "\n" for line in self._lines)
        self._drawn = len(self._lines)
        self.stream.write(out)
        self.stream.flush()

    def close(self) -> None:
        """Take the panel off the screen (the summary follows) and give logging back."""
        with self._lock:
            if self._open:
                self._lines = []
                self._paint("")
                self.stream.write(SHOW_CURSOR)
                self.stream.flush()
                self._open = False
        root = logging.getLogger()
        for original, above in self._swapped:
            root.removeHandler(above)
            root.addHandler(original)
        self._swapped.clear()


def _is_tty(stream: object) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False
