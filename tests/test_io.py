"""hanet_fast._io: atomic writes that never follow links, and run folders claimed by one process."""

import fcntl
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

from hanet_fast import _io


def test_a_write_replaces_a_link_and_leaves_its_target_alone(tmp_path):
    keep = tmp_path / "keep.txt"
    keep.write_text("mine")
    link = tmp_path / "out.json"
    link.symlink_to(keep)
    _io.write_json(link, {"a": 1})
    assert keep.read_text() == "mine"
    assert not link.is_symlink() and json.loads(link.read_text()) == {"a": 1}


def test_a_dangling_link_is_replaced_not_followed(tmp_path):
    (tmp_path / "v").mkdir()
    link = tmp_path / "pred.png"
    link.symlink_to(tmp_path / "v" / "new.png")
    _io.save_image(np.zeros((4, 5), np.uint8), link)
    assert not (tmp_path / "v" / "new.png").exists()
    assert not link.is_symlink() and Image.open(link).size == (5, 4)


def test_without_overwrite_an_existing_file_or_link_is_kept(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(FileExistsError):
        _io.write_text(path, "new", overwrite=False)
    assert path.read_text() == "old"
    link = tmp_path / "b.txt"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        _io.write_text(link, "new", overwrite=False)
    assert not (tmp_path / "nowhere").exists()
    _io.write_text(tmp_path / "c.txt", "new", overwrite=False)
    assert sorted(os.listdir(tmp_path)) == ["a.txt", "b.txt", "c.txt"]  # no temporary left


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        with _io.atomic_open(path, "w") as f:
            f.write("partial")
            raise TypeError("writer failed")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.json"]


def test_helpers_write_what_they_are_given(tmp_path):
    _io.torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["w"], torch.arange(3))
    _io.save_npz(tmp_path / "a.npz", x=np.ones(2))
    assert np.load(tmp_path / "a.npz")["x"].tolist() == [1, 1]
    _io.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    _io.write_text(tmp_path / "sub" / "t.txt", "é")  # the folder is created
    assert (tmp_path / "sub" / "t.txt").read_text(encoding="utf-8") == "é"


def test_writing_onto_a_folder_fails_and_keeps_it(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OSError):
        _io.write_text(tmp_path / "d", "x")
    assert (tmp_path / "d").is_dir()


def test_folder_problem_names_loops_dangling_links_and_files(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert "symbolic link loop" in _io.folder_problem(str(loop))
    assert "symbolic link loop" in _io.folder_problem(str(loop / "sub"))
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "missing")
    assert "does not exist" in _io.folder_problem(str(dangling))
    (tmp_path / "f").write_text("")
    assert "is a file" in _io.folder_problem(str(tmp_path / "f" / "sub"))
    assert _io.folder_problem(str(tmp_path / "new" / "deeper")) is None


def test_a_claimed_run_folder_refuses_a_second_claim_until_released(tmp_path):
    run = tmp_path / "run"
    with _io.claim_run_folder(run) as claim:
        assert claim.created and (run / _io.LOCK_NAME).exists()
        with pytest.raises(_io.FolderInUseError, match="in use by another run"):
            _io.claim_run_folder(run, reuse=True)
    assert not (run / _io.LOCK_NAME).exists()
    (run / "metrics.json").write_text("{}")
    with pytest.raises(_io.FolderInUseError, match="already holds files"):
        _io.claim_run_folder(run)
    _io.claim_run_folder(run, reuse=True).release()


def test_of_two_processes_claiming_one_folder_exactly_one_wins(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from hanet_fast import _io
        try:
            claim = _io.claim_run_folder({str(tmp_path / "run")!r})
        except _io.FolderInUseError as e:
            print("lost", e); sys.exit(3)
        print("won"); sys.stdout.flush(); time.sleep(3)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
             for _ in range(2)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 3], outs
    # The loser names the winner's process, unless it looked before the winner wrote its id.
    assert any(re.search(r"in use by another run \((process \d+ on|a process that has not yet named itself)", o)
               or "already holds files" in o for o in outs), outs


def test_a_claim_racing_a_holder_that_has_not_yet_written_its_id_is_refused_with_a_named_reason(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fd = os.open(run / _io.LOCK_NAME, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # locked, but empty: the holder's id is not written yet
        with pytest.raises(_io.FolderInUseError, match=r"in use by another run \(a process that has not yet"):
            _io.claim_run_folder(run, reuse=True)
    finally:
        os.close(fd)
    _io.claim_run_folder(run, reuse=True).release()


def test_a_crashed_claim_leaves_no_stale_lock(tmp_path):
    run = tmp_path / "run"
    subprocess.run([sys.executable, "-c", f"import os; from hanet_fast import _io; "
                    f"_io.claim_run_folder({str(run)!r}); os._exit(9)"], check=False, cwd=os.getcwd())
    assert (run / _io.LOCK_NAME).exists()  # left behind, but no longer locked
    _io.claim_run_folder(run).release()


def test_a_symlink_loop_as_run_folder_is_named(tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(ValueError, match="symbolic link loop"):
        _io.claim_run_folder(loop)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(done.stdout)
    (tmp_path / f".x.json.tmp{dead}.0").write_text("partial")
    (tmp_path / f".x.json.tmp{os.getpid()}.0").write_text("writing")
    assert _io.remove_stale_temporaries(tmp_path / "x.json") == [str(tmp_path / f".x.json.tmp{dead}.0")]
