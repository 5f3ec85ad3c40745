"""Tests of msclip.index.store: round trip, crash safety and resume, compatibility checks."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from msclip.index import store as store_mod
from msclip.index.store import (
    CorruptIndexError,
    DimensionMismatchError,
    DuplicateSourceError,
    IndexFormatError,
    IndexLockedError,
    IndexMismatchError,
    IndexNotFoundError,
    IndexStore,
    IndexWriter,
    InvalidEmbeddingsError,
    MetadataError,
    ModelInfoError,
    SourceRange,
)

DIM = 64
MODEL = {
    "name": "msclip-vit-b16",
    "checkpoint_sha256": "ab" * 32,
    "bands": ["B02", "B03", "B04", "B08"],
    "preprocessing": {"mean": [0.1, 0.2], "size": 224},
}


def unit_rows(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def scene_rows(n: int, name: str) -> pd.DataFrame:
    """Metadata of the kind a scene build stores: path, window, bounds, footprint."""
    i = np.arange(n)
    return pd.DataFrame(
        {
            "path": [f"/data/{name}.tif"] * n,
            "row": (i // 4 * 224).astype(np.int64),
            "col": (i % 4 * 224).astype(np.int64),
            "height": np.full(n, 224, dtype=np.int32),
            "width": np.full(n, 224, dtype=np.uint16),
            "minx": 500000.0 + i * 0.1,
            "cloud": np.where(i % 3 == 0, np.nan, i / 7.0),
            "valid": i % 2 == 0,
            "footprint": [f"POLYGON (({j} 50, {j + 1} 50, {j + 1} 51, {j} 51, {j} 50))" for j in i],
            "note": [None if j % 4 == 1 else f'tile "{j}", ünïcode' for j in i],
            "acquired": pd.to_datetime(["2021-06-01T10:30:00"] * n) + pd.to_timedelta(i, "s"),
        }
    )


@pytest.fixture
def index_path(tmp_path: Path) -> Path:
    return tmp_path / "tiles.index"


def test_round_trip(index_path: Path) -> None:
    a, b = unit_rows(30, 1), unit_rows(12, 2)
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(a, scene_rows(30, "a"), source="/data/a.tif")
        writer.add(b, scene_rows(12, "b"), source="/data/b.tif")
        writer.add(np.empty((0, DIM), np.float32), [], source="/data/empty.tif")
    store = IndexStore.open(index_path)

    assert store.count == len(store) == 42 and store.dim == DIM
    assert store.model_info == MODEL
    emb = store.embeddings
    assert isinstance(emb, np.memmap) and emb.dtype == np.float32 and emb.shape == (42, DIM)
    np.testing.assert_array_equal(emb, np.concatenate([a, b]))
    # the documented raw layout: readable without msclip
    raw = np.memmap(index_path / "embeddings.f32", dtype="<f4", mode="r", shape=(42, DIM))
    np.testing.assert_array_equal(raw, emb)

    expected = pd.concat([scene_rows(30, "a"), scene_rows(12, "b")], ignore_index=True)
    meta = store.metadata
    assert list(meta.index) == list(range(42))
    pd.testing.assert_frame_equal(meta.reset_index(drop=True), expected, check_index_type=False)
    assert meta["note"].isna().tolist() == expected["note"].isna().tolist()

    assert store.sources == [
        SourceRange("/data/a.tif", 0, 30),
        SourceRange("/data/b.tif", 30, 42),
        SourceRange("/data/empty.tif", 42, 42),
    ]
    info = store.info()
    assert info["count"] == 42 and info["dim"] == DIM and info["sources"] == 3
    assert info["model"] == MODEL
    assert info["bytes"]["embeddings"] == 42 * DIM * 4
    assert info["bytes"]["total"] >= info["bytes"]["embeddings"] + info["bytes"]["metadata"] > 0
    manifest = json.loads((index_path / "manifest.json").read_text())
    assert manifest["count"] == 42 and manifest["dim"] == DIM and manifest["dtype"] == "float32"


def test_rows_as_dicts_columns_or_none(index_path: Path) -> None:
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(unit_rows(2, 1), [{"path": "x", "n": 1}, {"path": "y", "n": 2}], source="s1")
        writer.add(unit_rows(2, 2), {"path": ["z", "w"], "n": [3, 4]}, source="s2")
        writer.add(unit_rows(1, 3), None, source="s3")
    meta = IndexStore.open(index_path).metadata
    assert meta["path"].tolist()[:4] == ["x", "y", "z", "w"]
    assert pd.isna(meta["path"].iloc[4])  # an add without columns leaves them missing
    assert meta["n"].iloc[:4].tolist() == [1, 2, 3, 4]


def test_commits_in_batches_and_tracks_done_sources(index_path: Path) -> None:
    writer = IndexWriter.open_or_create(index_path, DIM, MODEL, commit_rows=25)
    writer.add(unit_rows(10, 1), scene_rows(10, "a"), source="a")
    assert writer.is_done("a") and writer.count == 0 and writer.pending_rows == 10
    assert IndexStore.open(index_path).count == 0  # staged, not committed
    writer.add(unit_rows(20, 2), scene_rows(20, "b"), source="b")  # crosses commit_rows
    assert writer.count == 30 and writer.pending_rows == 0
    assert IndexStore.open(index_path).count == 30
    writer.add(unit_rows(5, 3), scene_rows(5, "c"), source=Path("c"))
    writer.close()
    store = IndexStore.open(index_path)
    assert store.count == 35 and store.info()["parts"] == 2
    assert [s.key for s in store.sources] == ["a", "b", "c"]


def _kill_mid_commit(index_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[np.ndarray, ...]:
    """Commit source a, then fail the manifest write of source b (a kill after the data write)."""
    a, b = unit_rows(8, 1), unit_rows(6, 2)
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(a, scene_rows(8, "a"), source="a")
    writer = IndexWriter.open_or_create(index_path, DIM, MODEL)
    writer.add(b, scene_rows(6, "b"), source="b")

    def killed(directory: Path, manifest: dict) -> None:
        raise KeyboardInterrupt("simulated kill before the manifest is replaced")

    monkeypatch.setattr(store_mod, "_write_manifest", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.commit()
    with pytest.raises(KeyboardInterrupt):
        writer.close()  # still cannot commit, but releases the lock
    monkeypatch.undo()
    return a, b


def test_killed_commit_leaves_last_committed_index(index_path: Path, monkeypatch) -> None:
    a, _ = _kill_mid_commit(index_path, monkeypatch)
    # the data of b reached the disk but no manifest names it
    assert (index_path / "embeddings.f32").stat().st_size == (8 + 6) * DIM * 4
    assert len(list((index_path / "meta").glob("part-*.jsonl"))) == 2

    store = IndexStore.open(index_path)
    assert store.count == 8 and [s.key for s in store.sources] == ["a"]
    np.testing.assert_array_equal(store.embeddings, a)
    assert len(store.metadata) == 8 and set(store.metadata["path"]) == {"/data/a.tif"}


def test_resume_after_kill_skips_done_sources(index_path: Path, monkeypatch, caplog) -> None:
    a, _ = _kill_mid_commit(index_path, monkeypatch)
    (index_path / "meta" / ".tmp-stray.part").write_bytes(b"half a part")
    with caplog.at_level(logging.WARNING, logger="msclip.index.store"):
        writer = IndexWriter.open_or_create(index_path, DIM, MODEL)
    assert "uncommitted" in caplog.text
    # recovery removed the uncommitted tail and the unreferenced files
    assert (index_path / "embeddings.f32").stat().st_size == 8 * DIM * 4
    assert sorted(p.name for p in (index_path / "meta").iterdir()) == ["part-000000.jsonl"]
    assert writer.is_done("a") and not writer.is_done("b")
    with pytest.raises(DuplicateSourceError, match="is_done"):
        writer.add(a, scene_rows(8, "a"), source="a")
    b2 = unit_rows(6, 22)  # a different encoding proves the stale b rows are not reused
    writer.add(b2, scene_rows(6, "b"), source="b")
    writer.close()

    store = IndexStore.open(index_path)
    assert store.count == 14
    np.testing.assert_array_equal(store.embeddings, np.concatenate([a, b2]))
    assert [(s.key, s.start, s.stop) for s in store.sources] == [("a", 0, 8), ("b", 8, 14)]
    assert store.metadata["path"].tolist() == ["/data/a.tif"] * 8 + ["/data/b.tif"] * 6


def _build_then_die(path: str, stage: str) -> None:
    """Child process: commit source a, then die inside the commit of source b."""
    eye = np.eye(DIM, dtype=np.float32)
    with IndexWriter.open_or_create(path, DIM, {"name": "m"}) as writer:
        writer.add(eye[:3], {"i": [0, 1, 2]}, source="a")
    writer = IndexWriter.open_or_create(path, DIM, {"name": "m"})
    writer.add(eye[3:9], {"i": list(range(3, 9))}, source="b")
    if stage == "after_embeddings":  # rows appended, metadata part not yet written
        store_mod.write_bytes = lambda *a: os._exit(7)
    else:  # rows and part written, manifest not replaced
        store_mod._write_manifest = lambda *a: os._exit(7)
    writer.commit()
    os._exit(0)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()")
@pytest.mark.parametrize("stage", ["after_embeddings", "after_part"])
def test_process_killed_mid_commit(index_path: Path, stage: str) -> None:
    """A real ``os._exit`` inside a commit (no cleanup code runs) leaves a valid index."""
    child = multiprocessing.get_context("fork").Process(
        target=_build_then_die, args=(str(index_path), stage)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 7

    eye = np.eye(DIM, dtype=np.float32)
    store = IndexStore.open(index_path)
    assert store.count == 3 and [s.key for s in store.sources] == ["a"]
    np.testing.assert_array_equal(store.embeddings, eye[:3])
    with IndexWriter.open_or_create(index_path, DIM, {"name": "m"}) as writer:  # lock was freed
        assert writer.is_done("a") and not writer.is_done("b")
        writer.add(eye[3:9], {"i": list(range(3, 9))}, source="b")
    store = IndexStore.open(index_path)
    np.testing.assert_array_equal(store.embeddings, eye[:9])
    assert store.metadata["i"].tolist() == list(range(9))


def test_stray_files_are_ignored_by_readers(index_path: Path) -> None:
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(unit_rows(4, 1), scene_rows(4, "a"), source="a")
    with open(index_path / "embeddings.f32", "ab") as fh:
        fh.write(b"\x7f" * 1000)  # a half-written row block
    (index_path / ".tmp-abc.part").write_text("{")
    (index_path / "meta" / "part-000001.jsonl").write_text("not json")
    store = IndexStore.open(index_path)
    assert store.count == 4 and len(store.metadata) == 4
    np.testing.assert_array_equal(store.embeddings, unit_rows(4, 1))


def test_model_mismatch_is_refused(index_path: Path) -> None:
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(unit_rows(3, 1), None, source="a")
    store = IndexStore.open(index_path)
    store.check_compatible(dict(MODEL))  # same description: accepted

    other = {
        **MODEL,
        "checkpoint_sha256": "cd" * 32,
        "preprocessing": {"mean": [0.1, 0.3], "size": 224},
    }
    with pytest.raises(IndexMismatchError) as err:
        store.check_compatible(other)
    assert err.value.fields == ("checkpoint_sha256", "preprocessing.mean")
    assert "checkpoint_sha256" in str(err.value) and "preprocessing.mean" in str(err.value)

    store.check_compatible(other, keys=["name", "bands"])  # only the compared keys matter
    with pytest.raises(IndexMismatchError) as err:
        store.check_compatible({"name": "msclip-vit-b16"}, keys=["name", "bands"])
    assert err.value.fields == ("bands",)

    with pytest.raises(IndexMismatchError, match="checkpoint_sha256"):
        IndexWriter.open_or_create(index_path, DIM, other)
    with pytest.raises(DimensionMismatchError, match="64-d"):
        IndexWriter.open_or_create(index_path, DIM * 2, MODEL)
    with pytest.raises(ModelInfoError):
        store.check_compatible({"name": object()})


def test_second_writer_is_locked_out(index_path: Path) -> None:
    writer = IndexWriter.open_or_create(index_path, DIM, MODEL)
    try:
        with pytest.raises(IndexLockedError, match="another process"):
            IndexWriter.open_or_create(index_path, DIM, MODEL)
    finally:
        writer.close()
    IndexWriter.open_or_create(index_path, DIM, MODEL).close()  # free again


def test_context_manager_commits_staged_sources_on_error(index_path: Path) -> None:
    writer = IndexWriter.open_or_create(index_path, DIM, MODEL)
    with pytest.raises(RuntimeError, match="encoder failed"), writer:
        writer.add(unit_rows(3, 1), None, source="a")
        raise RuntimeError("encoder failed on the next scene")
    assert [s.key for s in IndexStore.open(index_path).sources] == ["a"]


def test_bad_input_is_rejected(index_path: Path) -> None:
    writer = IndexWriter.open_or_create(index_path, DIM, MODEL)
    with pytest.raises(DimensionMismatchError, match="dimension 32"):
        writer.add(unit_rows(2, 1, dim=32), None)
    with pytest.raises(InvalidEmbeddingsError, match="2-D"):
        writer.add(unit_rows(1, 1)[0], None)
    with pytest.raises(InvalidEmbeddingsError, match="floating point"):
        writer.add(np.ones((2, DIM), dtype=np.int64), None)
    bad = unit_rows(3, 1)
    bad[1, 5] = np.nan
    with pytest.raises(InvalidEmbeddingsError, match=r"rows \[1\]"):
        writer.add(bad, None)
    with pytest.raises(MetadataError, match="3 metadata rows for 2"):
        writer.add(unit_rows(2, 1), [{"a": 1}] * 3)
    with pytest.raises(MetadataError, match="'shape'"):
        writer.add(unit_rows(2, 1), {"shape": [[1, 2], [3]]})
    writer.add(unit_rows(2, 1), None, source="a")
    with pytest.raises(DuplicateSourceError):
        writer.add(unit_rows(2, 1), None, source="a")
    writer.close()
    assert IndexStore.open(index_path).count == 2  # nothing of the rejected adds was kept


def test_open_errors(tmp_path: Path, index_path: Path) -> None:
    with pytest.raises(IndexNotFoundError):
        IndexStore.open(tmp_path / "nowhere")
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(IndexFormatError, match="not empty"):
        IndexWriter.open_or_create(foreign, DIM, MODEL)

    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(unit_rows(5, 1), None, source="a")
    manifest_path = index_path / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    with open(index_path / "embeddings.f32", "r+b") as fh:
        fh.truncate(3 * DIM * 4)
    with pytest.raises(CorruptIndexError, match="rebuild"):
        IndexStore.open(index_path)
    manifest["format_version"] = 99
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="upgrade"):
        IndexStore.open(index_path)


def _damage_manifest(**fields):
    def damage(index: Path) -> None:
        manifest = json.loads((index / "manifest.json").read_text())
        manifest.update(fields)
        (index / "manifest.json").write_text(json.dumps(manifest))

    return damage


def _overwrite(name: str, data: bytes | None = None):
    def damage(index: Path) -> None:
        path = next(index.glob(name))
        path.write_bytes(data if data is not None else b"\xff" * path.stat().st_size)

    return damage


@pytest.mark.parametrize(
    "damage",
    [
        _overwrite("manifest.json", b"\xff\xfe garbage"),  # bytes that are not UTF-8
        _overwrite("meta/part-*.jsonl"),  # same size, other bytes: passes the size check
        _damage_manifest(count=-1),
        _damage_manifest(count=3),  # not the sum of the parts' counts
        _damage_manifest(dim=-3),
        _damage_manifest(parts=None),
        _damage_manifest(model=[1, 2]),
        # the id names the search cache's files: never a path out of the index
        _damage_manifest(index_id="x/../../../../escaped"),
        _damage_manifest(index_id="a\x00b"),
        _damage_manifest(parts=[{"file": "meta/part-000000.jsonl", "start": 0, "count": 5}]),
    ],
)
def test_a_damaged_index_is_named_not_a_crash(index_path: Path, damage) -> None:
    """Bit rot or a hand-edited manifest: reading the index says it is damaged (one
    CorruptIndexError naming the file), never a UnicodeDecodeError, KeyError or TypeError."""
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(unit_rows(5, 1), {"i": list(range(5))}, source="a")
    damage(index_path)
    with pytest.raises(CorruptIndexError, match="rebuild"):
        store = IndexStore.open(index_path)
        store.metadata  # noqa: B018 - reads the parts
        store.sources  # noqa: B018
    with pytest.raises(CorruptIndexError, match="rebuild"):
        IndexWriter.open_or_create(index_path, DIM, MODEL)


def test_a_file_given_as_the_index_is_named(tmp_path: Path) -> None:
    """A file where the index folder should be (or above it) is named as such, and left as it was;
    not an OSError 'File exists' or 'Not a directory'."""
    from msclip.errors import OutputPathError

    file = tmp_path / "scenes.csv"
    file.write_text("a,b\n")
    for path, what in ((file, "is a file"), (file / "x.index", f"is under the file {file}")):
        with pytest.raises(OutputPathError, match=f"{what}, not an index folder"):
            IndexWriter.open_or_create(path, DIM, MODEL)
        with pytest.raises(IndexNotFoundError, match=f"{what}, not an index folder"):
            IndexStore.open(path)
    assert file.read_text() == "a,b\n"


def test_empty_index(index_path: Path) -> None:
    IndexWriter.open_or_create(index_path, DIM, MODEL).close()
    store = IndexStore.open(index_path)
    assert store.count == 0 and store.embeddings.shape == (0, DIM)
    assert len(store.metadata) == 0 and store.sources == []


def test_refused_folder_is_left_as_it_was(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"jpg")
    with pytest.raises(IndexFormatError, match="not empty"):
        IndexWriter.open_or_create(foreign, DIM, MODEL)
    assert sorted(p.name for p in foreign.iterdir()) == ["holiday.jpg"]  # no lock file left


def test_checkpoint_path_is_not_identity(index_path: Path) -> None:
    with IndexWriter.open_or_create(index_path, DIM, {**MODEL, "checkpoint_path": "/a/w.st"}):
        pass
    moved = {**MODEL, "checkpoint_path": "w.st"}  # same hash, another place
    IndexWriter.open_or_create(index_path, DIM, moved).close()
    IndexStore.open(index_path).check_compatible(moved)


def test_source_info_is_kept_with_the_key(index_path: Path) -> None:
    stamp = {"size": 10, "mtime_ns": 123}
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(unit_rows(2, 1), None, source="a", info=stamp)
        writer.add(unit_rows(1, 2), None, source="b")  # none: as in older indexes
        assert writer.source_info("a") == stamp  # staged
    assert [(s.key, s.info) for s in IndexStore.open(index_path).sources] == [
        ("a", stamp),
        ("b", None),
    ]
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        assert writer.source_info("a") == stamp and writer.source_info("b") is None
        with pytest.raises(MetadataError, match="JSON"):
            writer.add(unit_rows(1, 3), None, source="c", info={"t": object()})


def test_rows_of_another_kind_are_refused_when_added_not_at_commit(index_path: Path) -> None:
    """One part stores a column in one kind: a source whose column cannot join the staged ones
    (integers and strings) is refused by add, naming it, and the other sources still commit."""
    rows = unit_rows(4, 5)
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(rows[:1], [{"tile_id": 1}], source="scene_a.tif")
        with pytest.raises(MetadataError, match=r"column 'tile_id' of source 'scene_b.tif'"):
            writer.add(rows[1:2], [{"tile_id": "T32UQD"}], source="scene_b.tif")
        with pytest.raises(MetadataError, match="source must be a str or a path, got bytes"):
            writer.add(rows[1:2], None, source=b"scene_c.tif")
        writer.add(rows[2:3], [{"tile_id": 2.5}], source="scene_d.tif")  # numbers mix
        writer.add(rows[3:4], [{"tile_id": None}], source="scene_e.tif")  # missing joins any
        with pytest.raises(MetadataError, match=r"column 'tile_id' of source 'scene_f.tif'"):
            writer.add(rows[3:4], [{"tile_id": "T33"}], source="scene_f.tif")  # strings: no
        assert not writer.is_done("scene_b.tif")
    store = IndexStore.open(index_path)
    assert [s.key for s in store.sources] == ["scene_a.tif", "scene_d.tif", "scene_e.tif"]
    assert store.metadata["tile_id"].tolist()[:2] == [1.0, 2.5]


def test_integers_beyond_2_53_stay_exact_where_other_sources_lack_them(index_path: Path) -> None:
    """Within a part and across parts, a column some sources lack is nullable, not float64."""
    cell = 5764607523034234881  # an S2 cell id: not a float64
    rows = unit_rows(3, 6)
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(rows[:1], [{"cell": cell, "cloud": 0.5}], source="a")
        writer.add(rows[1:2], [{"other": "x"}], source="b")
    with IndexWriter.open_or_create(index_path, DIM, MODEL) as writer:
        writer.add(rows[2:3], [{"other": "y"}], source="c")  # a part without the column
    meta = IndexStore.open(index_path).metadata
    assert str(meta["cell"].dtype) == "Int64" and int(meta["cell"].iloc[0]) == cell
    assert meta["cloud"].dtype == np.float64  # floats stay plain, NaN where missing
    assert meta["cell"].isna().tolist() == [False, True, True]
