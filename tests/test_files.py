"""tl_helpers.files: atomic writes leave the old file or the new one, never a half-written one."""

from __future__ import annotations

import pytest
import torch

from tl_helpers.files import atomic_write


def test_text_bytes_and_tensors_round_trip(tmp_path):
    assert atomic_write(tmp_path / "a" / "b.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert atomic_write(tmp_path / "c.bin", b"\x00\x01").read_bytes() == b"\x00\x01"
    saved = torch.load(atomic_write(tmp_path / "d.pt", {"w": torch.arange(3)}), weights_only=True)
    assert saved["w"].tolist() == [0, 1, 2]
    assert not list(tmp_path.glob("**/*.tmp"))


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_write(tmp_path / "results.json", "old")

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot save this")

    with pytest.raises(RuntimeError, match="cannot save"):
        atomic_write(path, {"x": Unpicklable()})
    assert path.read_text() == "old" and not list(tmp_path.glob("*.tmp"))
