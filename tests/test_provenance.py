"""hanet_fast._provenance.code_fingerprint: equal for byte-identical sources, different otherwise."""

from __future__ import annotations

import shutil

from hanet_fast._provenance import code_fingerprint


def _tree(root):
    (root / "hanet_fast" / "nn").mkdir(parents=True)
    (root / "hanet_fast" / "nn" / "hanet.py").write_text("x = 1\n")
    (root / "csrc").mkdir()
    (root / "csrc" / "ops.cpp").write_text("int f();\n")
    (root / "setup.py").write_text("setup()\n")
    return root


def test_the_fingerprint_follows_the_sources_and_nothing_else(tmp_path):
    a = _tree(tmp_path / "a")
    before = code_fingerprint(str(a))
    assert len(before) == 12 and code_fingerprint(str(a)) == before
    shutil.copytree(a, tmp_path / "b")
    assert code_fingerprint(str(tmp_path / "b")) == before  # another checkout of the same code
    (a / "hanet_fast" / "nn" / "__pycache__").mkdir()
    (a / "hanet_fast" / "nn" / "__pycache__" / "hanet.cpython-311.pyc").write_bytes(b"\0")
    (a / "hanet_fast" / "_C.so").write_bytes(b"\0")
    (a / "README.md").write_text("docs\n")
    assert code_fingerprint(str(a)) == before  # build outputs and docs are not code
    (a / "csrc" / "ops.cpp").write_text("int g();\n")
    assert code_fingerprint(str(a)) != before
    (a / "csrc" / "ops.cpp").write_text("int f();\n")
    (a / "hanet_fast" / "nn" / "hanet.py").rename(a / "hanet_fast" / "nn" / "gate.py")
    assert code_fingerprint(str(a)) != before  # same bytes under another name
