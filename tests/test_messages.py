"""hanet_fast._messages.one_line: how every error quotes another error, in one line."""

from __future__ import annotations

from hanet_fast._messages import one_line


def test_worker_tracebacks_keep_the_original_message_only():
    worker = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                        '  File "x.py", line 1, in <module>\nhanet_fast.data.DatasetError: scene 3: broken label\n')
    assert one_line(worker) == "scene 3: broken label"
    plain = ValueError("Caught in worker.\nOriginal Traceback (most recent call last):\nValueError: bad crop size\n")
    assert one_line(plain) == "bad crop size"


def test_lines_are_joined_spaces_collapsed_and_long_text_cut():
    assert one_line(ValueError("missing:\n  a.weight\n\n  b.bias")) == "missing:; a.weight; b.bias"
    assert one_line("many    spaces\there") == "many spaces here"
    cut = one_line(OSError("x" * 500), 200, with_type=True)
    assert cut == "OSError: " + "x" * 197 + "..." and len(cut) == len("OSError: ") + 200


def test_the_type_is_named_when_asked_or_when_the_message_is_empty():
    assert one_line(RuntimeError("boom"), with_type=True) == "RuntimeError: boom"
    assert one_line(RuntimeError("boom")) == "boom"
    assert one_line(TimeoutError()) == "TimeoutError"
