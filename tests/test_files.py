import os
import stat
from pathlib import Path

import pytest
import torch

from lmrnn import files
from lmrnn.errors import UserError


@pytest.fixture
def umask():
    """Set the process umask for one test, restoring the caller's afterwards."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failed_write_keeps_the_previous_file_and_no_temporary(tmp_path):
    """A full disk in the middle of a save: one clear error, the old file intact, no debris."""
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the old weights")

    def half_then_full_disk(tmp):
        tmp.write_bytes(b"the new")
        raise OSError(28, "No space left on device")

    with pytest.raises(UserError, match="cannot write .*model.safetensors \\(No space left on device\\); the previous"):
        files.write_atomically(target, half_then_full_disk)
    assert target.read_bytes() == b"the old weights"
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_the_data_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """write, fsync the file, rename, fsync the folder: in that order, each on the right path."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")), Path(os.readlink(f"/proc/self/fd/{fd}")).exists()))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", Path(src), Path(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "summary.json"
    files.write_atomically(target, lambda tmp: events.append(("write", tmp)) or tmp.write_text("{}"))
    tmp = files.temporary_name(target)
    assert events == [("write", tmp), ("fsync", tmp, True), ("replace", tmp, target), ("fsync", tmp_path, True)]
    assert target.read_text() == "{}"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077])
def test_files_get_the_mode_the_umask_gives_an_ordinary_file(tmp_path, umask, mask):
    """safetensors (and torch.save on some systems) create their files 0600: a colleague could
    list a run but not read its weights."""
    from safetensors.torch import save_file

    umask(mask)
    written = {"weights": tmp_path / "model.safetensors", "state": tmp_path / "train_state.pt",
               "text": tmp_path / "config.yaml"}
    files.write_atomically(written["weights"], lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
    files.write_atomically(written["state"], lambda tmp: torch.save({"step": 1}, tmp))
    files.atomic_write(written["text"], "format: 7\n")
    assert {name: oct(mode(path)) for name, path in written.items()} == {name: oct(0o666 & ~mask) for name in written}
