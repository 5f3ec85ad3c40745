"""The durable writer when the target is in the way or the disk fails: one clear error naming
the target, the old file kept, no temporary file left."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest

from msclip.errors import OutputPathError
from msclip.io import TMP_PREFIX, GeoTiffStripWriter, atomic_write, write_text


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.startswith(TMP_PREFIX)]


def test_a_folder_in_the_place_of_the_target_is_named(tmp_path):
    (tmp_path / "out.csv").mkdir()
    with pytest.raises(OutputPathError, match=r"cannot write .*out\.csv: it is a folder"):
        write_text(tmp_path / "out.csv", "x")
    assert not _leftovers(tmp_path)


def test_a_full_disk_while_writing_names_the_target_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")

    def full(tmp):
        Path(tmp).write_text("par")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputPathError, match=r"cannot write .*table\.csv: No space left") as err:
        atomic_write(target, full)
    assert TMP_PREFIX not in str(err.value)
    assert target.read_text() == "old" and not _leftovers(tmp_path)


def test_a_full_disk_at_the_sync_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "r.json"
    target.write_text("old")

    def no_space(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("msclip.io.writers._fsync_file", no_space)
    with pytest.raises(OutputPathError, match=r"r\.json: No space left"):
        write_text(target, "new")
    assert target.read_text() == "old" and not _leftovers(tmp_path)


def test_other_errors_of_the_writer_pass_unchanged(tmp_path):
    def offline(tmp):
        raise ConnectionError("network unreachable")

    with pytest.raises(ConnectionError, match="network unreachable"):
        atomic_write(tmp_path / "w.bin", offline)
    assert not _leftovers(tmp_path)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
@pytest.mark.parametrize("cog", [False, True])
def test_strip_writer_leaves_nothing_when_the_rename_fails(tmp_path, cog):
    (tmp_path / "map.tif").mkdir()  # a folder where the map should go
    writer = GeoTiffStripWriter(tmp_path / "map.tif", 32, 32, 1, "uint8", block_size=16, cog=cog)
    writer.write(np.zeros((1, 32, 32), np.uint8))
    with pytest.raises(OutputPathError, match="it is a folder"):
        writer.close()
    assert not _leftovers(tmp_path)


def test_files_written_together_replace_none_until_all_are_written(tmp_path):
    """A table and its record: a failure writing the second keeps both old files as they were."""
    from msclip.io import atomic_write_all

    table, record = tmp_path / "t.csv", tmp_path / "t.csv.json"
    table.write_text("old table")
    record.write_text("old record")

    def full(tmp):
        Path(tmp).write_text("par")
        raise OSError(errno.ENOSPC, "No space left on device")

    items = [
        (table, lambda tmp: Path(tmp).write_text("new table"), ".csv"),
        (record, full, ".json"),
    ]
    with pytest.raises(OutputPathError, match=r"cannot write .*t\.csv\.json: No space left"):
        atomic_write_all(items)
    assert table.read_text() == "old table" and record.read_text() == "old record"
    assert not _leftovers(tmp_path)
    items[1] = (record, lambda tmp: Path(tmp).write_text("new record"), ".json")
    assert atomic_write_all(items) == [table, record]
    assert table.read_text() == "new table" and record.read_text() == "new record"
    assert not _leftovers(tmp_path)


def test_a_failed_rename_among_files_written_together_leaves_no_old_companion(
    tmp_path, monkeypatch
):
    """Should the second rename fail after the first replaced its file, the old second file is
    removed: it would describe a table it did not come with."""
    import msclip.io.writers as writers
    from msclip.io import atomic_write_all

    table, record = tmp_path / "t.csv", tmp_path / "t.csv.json"
    table.write_text("old table")
    record.write_text("old record")
    real = writers.commit
    calls = []

    def commit(tmp, target):
        calls.append(target)
        if len(calls) == 2:
            raise OutputPathError(f"cannot write {target}: Read-only file system")
        return real(tmp, target)

    monkeypatch.setattr(writers, "commit", commit)
    with pytest.raises(OutputPathError, match="Read-only"):
        atomic_write_all([(table, lambda tmp: Path(tmp).write_text("new"), ".csv"),
                          (record, lambda tmp: Path(tmp).write_text("new"), ".json")])  # fmt: skip
    assert table.read_text() == "new" and not record.exists() and not _leftovers(tmp_path)


def test_a_target_named_at_the_file_system_limit_is_written(tmp_path):
    """The temporary file's name stays within 255 bytes when the target's own name is that
    long (it once carried the whole name plus a prefix and a random part)."""
    for name in ("t" * 251 + ".csv", "t" + "é" * 125 + ".csv"):  # 255 bytes each
        target = tmp_path / name
        assert len(os.fsencode(target.name)) == 255
        write_text(target, "x")
        assert target.read_text() == "x" and not _leftovers(tmp_path)


# -- Table: a result table written as pandas writes a DataFrame -----------------------------------
_TABLE = {
    "Image": ["a,b.tif", 'q"uote.tif', "new\nline.tif", "plain.tif", "ü.tif", "bad-\udcff.tif"],
    "Rank": [1, 2, np.int64(3), 4, 5, 6],
    "p": np.array([0.1, np.nan, 1.0, 1e-9, np.inf, 0.5], np.float32),
    "v": [0.5, None, float("nan"), 2 / 3, -0.0, 1e300],
    "flag": [True, False, np.bool_(True), True, False, True],
    "Class": ["forest", "", "sea", "", "x", "y"],
}


@pytest.mark.parametrize("float_format", ["%.8g", None])
def test_a_table_is_written_as_pandas_writes_its_dataframe(tmp_path, float_format):
    import pandas as pd

    from msclip.io import Table, write_csv

    want, got = tmp_path / "pandas.csv", tmp_path / "table.csv"
    # text as Python strings (pandas 3 with pyarrow would store them as Arrow strings, which
    # cannot hold the undecodable file name)
    frame = pd.DataFrame({c: pd.Series(v, dtype=object) if c in ("Image", "Class") else v
                          for c, v in _TABLE.items()})  # fmt: skip
    write_csv(frame, want, float_format=float_format)
    write_csv(Table(_TABLE), got, float_format=float_format)
    assert got.read_bytes() == want.read_bytes()
    rows = [[_TABLE[c][i] for c in _TABLE] for i in range(6)]
    Table.from_rows(list(_TABLE), rows).to_csv(got, float_format=float_format,
                                               errors="surrogateescape")  # fmt: skip
    assert got.read_bytes() == want.read_bytes()
    # no rows: the header alone, as pandas writes it
    write_csv(pd.DataFrame({c: [] for c in _TABLE}), want)
    write_csv(Table.from_rows(list(_TABLE), []), got)
    assert got.read_bytes() == want.read_bytes()


def test_a_table_refuses_columns_and_rows_of_other_lengths():
    from msclip.io import Table

    table = Table({"Image": ["a", "b"]})
    with pytest.raises(ValueError, match="'p' has 3 values for 2 rows"):
        table["p"] = [1.0, 2.0, 3.0]
    with pytest.raises(ValueError, match="every row must hold 2 values"):
        Table.from_rows(["Image", "p"], [["a", 1.0], ["b"]])
    assert table.columns == ["Image"] and len(table) == 2 and table["Image"] == ["a", "b"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork and flock are POSIX")
def test_a_lock_is_not_held_by_a_child_that_outlives_its_holder(tmp_path):
    """A flock belongs to the open file, which a fork shares: a DataLoader worker of a training
    run killed by SIGKILL kept the run's lock for seconds after it, and a resume started then
    was refused as a second run writing to the folder."""
    import fcntl

    from msclip.io.writers import lock_exclusive

    lock = tmp_path / ".lock"
    fh = open(lock, "a+b")  # noqa: SIM115 - the lock is held while it is open
    assert lock_exclusive(fh) is True
    release, ready = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # the child (a worker) waits until told to end
        os.write(ready[1], b"x")
        os.read(release[0], 1)
        os._exit(0)
    try:
        os.read(ready[0], 1)
        fh.close()  # the holder ends; its child lives on
        other = open(lock, "a+b")  # noqa: SIM115
        try:
            fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # free again
        finally:
            other.close()
    finally:
        os.write(release[1], b"x")
        os.waitpid(pid, 0)
        for fd in (*release, *ready):
            os.close(fd)
