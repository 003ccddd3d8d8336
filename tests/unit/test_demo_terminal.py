"""The demo's displays: the panel redrawn in place with logs above it, and plain lines."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterator

import pytest

from optionfeed.demo.progress import Sample, View, panel_lines
from optionfeed.demo.terminal import (
    ERASE_DOWN,
    HIDE_CURSOR,
    SHOW_CURSOR,
    LivePanel,
    PlainProgress,
    cursor_up,
)


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def view_at(at: float, messages: float = 0.0) -> View:
    sample = Sample(at=at, messages=messages, capacity=100)
    return View("demo", sample, Sample(at=0.0), elapsed=at, duration=None, status="recording")


def test_plain_progress_prints_a_line_every_interval_and_not_before() -> None:
    out = io.StringIO()
    progress = PlainProgress(out, every=5.0)
    for at in (0.0, 2.0, 4.9, 5.0, 7.0, 10.1, 10.5):
        progress.update(view_at(at, messages=at * 10))
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] + ":" + line.split(":")[1][:3] for line in lines] == [
        "demo 0:05",
        "demo 0:10",
    ]
    assert lines[0].startswith("demo 0:05: 10 msg/s")


@pytest.fixture
def tty_logging() -> Iterator[tuple[FakeTerminal, logging.Handler]]:
    """The root logger writing to a terminal, as `optionfeed` sets it up; restored afterwards."""
    root = logging.getLogger()
    saved = list(root.handlers), root.level
    for handler in saved[0]:
        root.removeHandler(handler)
    terminal = FakeTerminal()
    handler = logging.StreamHandler(terminal)
    handler.setFormatter(logging.Formatter("LOG %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield terminal, handler
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])


def test_the_panel_redraws_in_place_and_log_records_appear_above_it(
    tty_logging: tuple[FakeTerminal, logging.Handler], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    terminal, original = tty_logging
    panel = LivePanel(terminal)
    panel.start()
    assert original not in logging.getLogger().handlers
    first = view_at(1.0)
    height = len(panel_lines(first))
    panel.update(first)
    drawn = terminal.getvalue()
    assert drawn == HIDE_CURSOR + cursor_up(0) + ERASE_DOWN + "".join(
        line + "\n" for line in panel_lines(first)
    )

    terminal.seek(0)
    terminal.truncate()
    logging.getLogger("optionfeed.test").info("a record while the panel is up")
    # Erase the panel, print the record, draw the panel again below it.
    assert terminal.getvalue() == (
        cursor_up(height)
        + ERASE_DOWN
        + "LOG a record while the panel is up\n"
        + "".join(line + "\n" for line in panel_lines(first))
    )

    terminal.seek(0)
    terminal.truncate()
    panel.close()
    assert terminal.getvalue() == cursor_up(height) + ERASE_DOWN + SHOW_CURSOR
    handlers = logging.getLogger().handlers
    assert original in handlers
    assert not [h for h in handlers if type(h).__name__ == "_AbovePanel"]
    logging.getLogger("optionfeed.test").info("after")
    assert terminal.getvalue().endswith("LOG after\n")


def test_panel_lines_are_cut_to_the_terminal_width(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    terminal = FakeTerminal()
    panel = LivePanel(terminal)
    panel.start()
    panel.update(view_at(3.0))
    panel.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", terminal.getvalue())
    assert text.splitlines()
    assert max(len(line) for line in text.splitlines()) <= 40


def test_a_panel_leaves_logging_alone_when_logs_do_not_go_to_a_terminal() -> None:
    root = logging.getLogger()
    piped = logging.StreamHandler(io.StringIO())
    root.addHandler(piped)
    try:
        panel = LivePanel(FakeTerminal())
        panel.start()
        assert piped in root.handlers
        panel.close()
        assert piped in root.handlers
    finally:
        root.removeHandler(piped)
