"""One line of text from an exception: how every command and library error quotes another error."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(err: BaseException | str, limit: int | None = None, *, with_type: bool = False) -> str:
    """``err``'s message as one line.

    An exception re-raised from a DataLoader worker carries the worker's traceback in its
    message: only the original exception's own message is kept. The lines of a multi-line
    message (e.g. lists of mismatching checkpoint keys) are joined with ``; ``, runs of
    whitespace become one space, and text beyond ``limit`` characters is cut with ``...``.
    ``with_type`` prefixes the exception's class name (``OSError: ...``); an empty message
    gives the class name alone."""
    text = str(err)
    if "Original Traceback" in text:
        last = [line for line in text.splitlines() if line.strip()][-1]
        head, sep, rest = last.partition(": ")  # "package.module.SomeError: message" -> "message"
        text = rest if sep and " " not in head else last
    text = "; ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())
    if limit is not None and len(text) > limit:
        text = text[:limit - 3] + "..."
    if isinstance(err, BaseException) and (with_type or not text):
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text
