import os

import pandas as pd
import pytest

from kaggle_utils import io


def test_atomic_write_replaces_whole_file(tmp_path):
    p = tmp_path / "a" / "f.txt"
    io.write_text(p, "one")
    io.write_text(p, "two")
    assert p.read_text() == "two"
    assert [x.name for x in p.parent.iterdir()] == ["f.txt"]


def test_atomic_write_failure_keeps_old_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    io.write_bytes(p, b"old")
    with pytest.raises(RuntimeError):
        with io.atomic_write(p) as fh:
            fh.write(b"partial")
            raise RuntimeError("killed")
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_json_is_deterministic_and_csv_roundtrips(tmp_path):
    io.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    io.write_json(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    df = pd.DataFrame({"id_code": ["x", "y"], "diagnosis": [0, 4]})
    io.write_csv(tmp_path / "s.csv", df)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "s.csv"), df)


def test_sweep_temp_files(tmp_path):
    (tmp_path / ".x.png.abc.tmp").write_bytes(b"half")
    (tmp_path / "keep.png").write_bytes(b"ok")
    assert io.sweep_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["keep.png"]


def test_atomic_write_uses_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    os.umask(mask)
    p = io.write_text(tmp_path / "perm.txt", "x")
    assert (p.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_check_keys_suggests_the_nearest_key_and_lists_only_when_none_is_near():
    known = ["batch_size", "epochs", "lr", "weight_decay"]
    io.check_keys("fields", {"epochs": 1}, known)  # known keys pass
    with pytest.raises(ValueError) as err:
        io.check_keys("TrainConfig field(s)", {"epoch": 3, "bath_size": 8}, known)
    assert str(err.value) == ("unknown TrainConfig field(s) 'bath_size' (did you mean 'batch_size'?), "
                              "'epoch' (did you mean 'epochs'?)")
    with pytest.raises(ValueError, match=r"'learning_rate'; known: \['batch_size', 'epochs', 'lr', 'weight_decay'\]"):
        io.check_keys("fields", ["learning_rate"], known)
