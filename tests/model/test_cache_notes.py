"""What msclip says about its kept measurements (msclip.cache): a cache folder that cannot be
written (read-only, full) gives one warning per process and cache naming the folder, the reason
and the fix; a damaged file is measured again with one note naming it; nothing fails and the
results are those measured."""

from __future__ import annotations

import errno
import json
import logging
import os
import time

import pytest
from test_precision import ZEN4, machine  # noqa: F401  (the fixture)

import msclip
from msclip import architecture, factory, precision_check
from msclip.cache import CACHE_ENV
from msclip.factory import _config_for, get_model_entry


@pytest.fixture(autouse=True)
def _fresh_notes(monkeypatch, caplog):
    """A new process's notes, and its warnings captured."""
    monkeypatch.setattr(msclip.cache, "_NOTED", set())
    monkeypatch.setattr(precision_check, "_MEASURED", {})
    caplog.set_level(logging.WARNING)


def _config():
    return _config_for(get_model_entry("msclip-tiny"), None)


def _unwritable(monkeypatch, err: OSError) -> list:
    """Make msclip's JSON writer fail with ``err``; the calls are counted."""
    calls = []

    def fail(path, *args, **kwargs):
        calls.append(path)
        raise err

    monkeypatch.setattr(msclip.io, "write_json", fail)
    return calls


FAILURES = [
    PermissionError(errno.EACCES, os.strerror(errno.EACCES)),
    OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)),
]


@pytest.mark.parametrize("err", FAILURES, ids=["read-only", "full"])
def test_an_unwritable_bf16_verdict_warns_once_per_process(machine, monkeypatch, caplog, err):  # noqa: F811
    machine(ZEN4)
    monkeypatch.setattr(precision_check, "_measure", lambda config: {"image": 0.5, "text": 1.0})
    writes = _unwritable(monkeypatch, err)
    got = [precision_check.cpu_bf16_agreement(_config()) for _ in range(3)]
    # measured (and its write tried) once: the process keeps the verdict it could not write
    assert got == [{"image": 0.5, "text": 1.0}] * 3 and len(writes) == 1
    (record,) = caplog.records  # not one per call
    folder = precision_check._cache_file(_config().arch_cfg, 3).parent
    assert record.levelno == logging.WARNING
    assert str(folder) in record.getMessage() and err.strerror in record.getMessage()
    assert CACHE_ENV in record.getMessage() and "bf16" in record.getMessage()


@pytest.mark.parametrize("err", FAILURES, ids=["read-only", "full"])
def test_an_unwritable_fp32_product_choice_warns_once_per_process(monkeypatch, caplog, err):
    writes = _unwritable(monkeypatch, err)
    for _ in range(3):
        architecture._keep_fp32_gemm(64, 192, {"kernel": "torch"})
    assert len(writes) == 3
    (record,) = caplog.records
    folder = architecture._fp32_gemm_file(64, 192).parent
    assert record.levelno == logging.WARNING and str(folder) in record.getMessage()
    assert err.strerror in record.getMessage() and CACHE_ENV in record.getMessage()


def test_a_damaged_bf16_verdict_is_measured_again_with_one_note(machine, monkeypatch, caplog):  # noqa: F811
    machine(ZEN4)
    calls = []
    monkeypatch.setattr(
        precision_check, "_measure", lambda c: calls.append(1) or {"image": 0.9, "text": 1.0}
    )
    _unwritable(monkeypatch, PermissionError(errno.EACCES, "Permission denied"))
    path = precision_check._cache_file(_config().arch_cfg, len(_config().bands))
    path.parent.mkdir(parents=True, exist_ok=True)
    for damaged in ("{not json", '{"image": 0.9999, "text": NaN}'):
        path.write_text(damaged)
        monkeypatch.setattr(msclip.cache, "_NOTED", set())  # a new process
        monkeypatch.setattr(precision_check, "_MEASURED", {})
        caplog.clear()
        for _ in range(2):  # unwritable too: measured once in the process, noted once
            assert precision_check.cpu_bf16_agreement(_config()) == {"image": 0.9, "text": 1.0}
        notes = [r for r in caplog.records if "damaged" in r.getMessage()]
        assert len(notes) == 1 and str(path) in notes[0].getMessage(), caplog.text
    assert len(calls) == 2
    # no file yet is no damage: measured without a note
    path.unlink()
    monkeypatch.setattr(precision_check, "_MEASURED", {})
    caplog.clear()
    precision_check.cpu_bf16_agreement(_config())
    assert not [r for r in caplog.records if "damaged" in r.getMessage()]


def test_a_damaged_fp32_product_choice_is_measured_again_with_one_note(caplog) -> None:
    path = architecture._fp32_gemm_file(64, 192)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert architecture._kept_fp32_gemm(64, 192) is None and not caplog.records  # none yet
    for damaged in ("{not json", json.dumps(["onednn"]), json.dumps({"kernel": "cuda"})):
        path.write_text(damaged)
        msclip.cache._NOTED.clear()
        caplog.clear()
        assert architecture._kept_fp32_gemm(64, 192) is None
        assert architecture._kept_fp32_gemm(64, 192) is None
        (record,) = caplog.records
        assert str(path) in record.getMessage() and "damaged" in record.getMessage()
    path.write_text(json.dumps({"kernel": "onednn"}))
    caplog.clear()
    assert architecture._kept_fp32_gemm(64, 192) == "onednn" and not caplog.records


def test_pruning_the_weights_cache_spares_another_process_write_in_progress(tmp_path, monkeypatch):
    """The pruning's glob matches the temporary files of atomic writes: a young one is another
    process's conversion being written (removing it fails that process's rename), and is no
    cache entry to count; one over an hour old is a crashed writer's, removed."""
    monkeypatch.setattr(factory, "WEIGHT_CACHE_KEEP", 2)
    now = time.time()
    names = ["a", "b", "c", ".tmp-d.safetensors.k2j4", ".tmp-e.safetensors.x9q1"]
    ages = [30, 20, 10, 5, 7200]  # seconds
    paths = []
    for name, age in zip(names, ages):
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(b"x")
        os.utime(p, (now - age, now - age))
        paths.append(p)
    a, _, c, writing, _ = paths  # b: the least recently used; e: a crashed write
    factory._prune_weight_cache(tmp_path, keep=a)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.name, c.name, writing.name])
