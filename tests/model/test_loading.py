"""Loading without a random initialisation or a second copy: meta-device builds, memory-mapped
checkpoints assigned as the weights, one-tensor-at-a-time precision conversion, the hash cache."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

import msclip
from msclip.pretrained import file_sha256, read_checkpoint


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="fp32")
    return (
        model,
        msclip.save_checkpoint(model, root / "tiny.safetensors"),
        msclip.export_release_checkpoint(model, root / "release.pt"),
    )


def _file_of(address: int) -> str | None:
    """The file mapped at ``address`` in this process (Linux), else ``None``."""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(v, 16) for v in parts[0].split("-"))
            if lo <= address < hi:
                return parts[5] if len(parts) > 5 else None
    return None


def test_loading_takes_no_random_numbers_and_equals_the_source(files) -> None:
    model, st_path, pt_path = files
    x = torch.randn(2, 10, 32, 32)
    state = torch.get_rng_state()
    loaded = [msclip.create_model(st_path, precision="fp32"),
              msclip.create_model("msclip-tiny", pt_path, precision="fp32")]  # fmt: skip
    assert torch.equal(torch.get_rng_state(), state)  # built on the meta device: no init
    with torch.inference_mode():
        ref = model.encode_image(x)
        for m in loaded:
            assert not any(p.is_meta for p in m.parameters())
            assert torch.equal(m.encode_image(x), ref)
            assert torch.equal(m.clip.attn_mask, model.clip.attn_mask)  # rebuilt buffer
            assert m.checkpoint_sha256 in (file_sha256(st_path), file_sha256(pt_path))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_fp32_weights_are_the_mapped_file_pages(files) -> None:
    _, st_path, pt_path = files
    for path in (st_path, pt_path):
        m = msclip.create_model("msclip-tiny", path, precision="fp32")
        w = m.clip.visual.transformer.resblocks[0].mlp.c_fc.weight
        assert _file_of(w.data_ptr()) == str(path)  # no copy: the weights are the file's pages
        assert read_checkpoint(path).mapped


def test_bf16_conversion_reads_each_tensor_once_and_keeps_the_source(files) -> None:
    model, _, pt_path = files
    m = msclip.create_model("msclip-tiny", pt_path, precision="bf16")
    assert m.dtype == torch.bfloat16 and m.precision == "bf16"
    ref = model.clip.state_dict()
    for k, v in m.clip.state_dict().items():
        if v.is_floating_point():
            assert v.dtype == torch.bfloat16, k
            assert torch.equal(v, ref[k].bfloat16()), k
    # the pages released after each conversion read back unchanged from the file
    from msclip.factory import _build, _config_for, get_model_entry
    from msclip.pretrained import load_weights

    ckpt = read_checkpoint(pt_path)
    target = _build(_config_for(get_model_entry("msclip-tiny"), None), meta=True)
    load_weights(target, ckpt, dtype=torch.bfloat16)
    for k, v in ref.items():
        assert torch.equal(ckpt.state_dict[k], v), k


def test_random_weights_keep_their_seeded_initialisation() -> None:
    torch.manual_seed(4)
    a = msclip.create_model("msclip-tiny", precision="fp32").clip.state_dict()
    torch.manual_seed(4)
    b = msclip.create_model("msclip-tiny", precision="fp32").clip.state_dict()
    torch.manual_seed(5)
    c = msclip.create_model("msclip-tiny", precision="fp32").clip.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["visual.proj"], c["visual.proj"])


def test_file_hash_is_cached_on_disk_and_follows_changes(tmp_path, monkeypatch) -> None:
    import msclip.pretrained as pretrained

    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = file_sha256(f)
    monkeypatch.setattr(pretrained, "_SHA_CACHE", {})  # a new process: read from the disk cache
    opened = []
    real_open = open

    def spy(path, *args, **kwargs):
        if str(path) == str(f):
            opened.append(path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", spy)
    assert file_sha256(f) == first and not opened  # not read again
    monkeypatch.setattr("builtins.open", real_open)
    f.write_bytes(b"b" * 1000)  # changed: another key, another hash
    second = file_sha256(f)
    assert second != first
    # rewritten in place, same size, its modification time put back (cp -p, rsync -t)
    before = f.stat()
    f.write_bytes(b"c" * 1000)
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert f.stat().st_mtime_ns == before.st_mtime_ns and f.stat().st_ino == before.st_ino
    assert file_sha256(f) == hashlib.sha256(b"c" * 1000).hexdigest()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/maps")
def test_converted_weights_are_cached_and_mapped_next_time(files, monkeypatch) -> None:
    import os
    from pathlib import Path

    from msclip import factory

    _, st_path, _ = files
    first = msclip.create_model(st_path, precision="bf16")
    cached = list((Path(os.environ["MSCLIP_CACHE_DIR"]) / "weights").glob("*.safetensors"))
    assert len(cached) == 1
    again = msclip.create_model(st_path, precision="bf16")
    w = again.clip.visual.transformer.resblocks[0].mlp.c_fc.weight
    assert w.dtype == torch.bfloat16 and _file_of(w.data_ptr()) == str(cached[0])
    for a, b in zip(first.clip.state_dict().values(), again.clip.state_dict().values()):
        assert torch.equal(a, b)
    # the provenance is the source file, not the cache
    assert again.checkpoint_path == str(st_path)
    assert again.checkpoint_sha256 == file_sha256(st_path) == first.checkpoint_sha256
    assert again.fingerprint() == first.fingerprint()
    monkeypatch.setenv(factory.WEIGHT_CACHE_ENV, "0")  # off: converted again, nothing written
    msclip.create_model("msclip-tiny", files[2], precision="bf16")
    assert len(list(cached[0].parent.glob("*.safetensors"))) == 1


def test_a_checkpoint_already_in_bf16_is_mapped_as_it_is_not_copied_to_the_cache(
    files, tmp_path
) -> None:
    """Weights saved in bf16 and loaded in bf16 need no conversion: the model's weights are the
    file's own pages and nothing is written to the converted-weights cache (a copy of the whole
    file was written there, and mapped instead of the file from then on)."""
    import copy
    import os
    from pathlib import Path

    model = files[0]
    bf16 = msclip.save_checkpoint(copy.deepcopy(model).to(torch.bfloat16),
                                  tmp_path / "bf16.safetensors", warn_precision=False)  # fmt: skip
    for _ in range(2):
        m = msclip.create_model(bf16, precision="bf16")
        w = m.clip.visual.transformer.resblocks[0].mlp.c_fc.weight
        assert w.dtype == torch.bfloat16 and _file_of(w.data_ptr()) == str(bf16)
    cache = Path(os.environ["MSCLIP_CACHE_DIR"]) / "weights"
    assert not cache.is_dir() or not list(cache.glob("*.safetensors"))
    ref = model.clip.state_dict()
    assert all(torch.equal(v, ref[k].bfloat16()) for k, v in m.clip.state_dict().items())


def test_a_converted_weights_file_whose_data_was_lost_is_converted_again(
    files, tmp_path, monkeypatch, caplog
) -> None:
    """A cache file with a valid header but zeroed data (blocks a crash lost after the rename) or
    another file's data is told from its record, converted again and replaced, never loaded."""
    import json
    import logging
    import struct

    monkeypatch.setenv("MSCLIP_CACHE_DIR", str(tmp_path / "cache"))
    _, st_path, _ = files
    ref = msclip.create_model(st_path, precision="bf16")
    (cache,) = (tmp_path / "cache" / "weights").glob("*.safetensors")
    raw = bytearray(cache.read_bytes())
    (head,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + head])
    assert "sample_sha256" in header["__metadata__"]
    good_copy = tmp_path / "good.safetensors"
    good_copy.write_bytes(bytes(raw))
    for damage in ("zeroed", "shifted"):
        data = raw[8 + head :]
        data = bytes(len(data)) if damage == "zeroed" else data[1:] + data[:1]
        cache.write_bytes(bytes(raw[: 8 + head]) + data)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            loaded = msclip.create_model(st_path, precision="bf16")
        assert "ignoring the converted-weights cache" in caplog.text
        assert "not what was written" in caplog.text
        for a, b in zip(ref.clip.state_dict().values(), loaded.clip.state_dict().values()):
            assert torch.equal(a, b)
        # replaced by a good conversion
        again = read_checkpoint(cache)
        assert again.metadata["sample_sha256"] == header["__metadata__"]["sample_sha256"]
        for k, v in read_checkpoint(good_copy).state_dict.items():
            assert torch.equal(again.state_dict[k], v)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        msclip.create_model(st_path, precision="bf16")
    assert "ignoring" not in caplog.text  # the good file is used as it is


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps")
def test_the_cache_check_reads_its_samples_without_the_memory_map(files, tmp_path, monkeypatch):
    """The samples are read with pread: touching the mapped tensors would fault a readahead
    window per sample into the process (~40 MB of Llama3-MS-CLIP-Base in a run's peak)."""
    from msclip import factory
    from msclip.memory import _file_mappings

    monkeypatch.setenv("MSCLIP_CACHE_DIR", str(tmp_path / "cache"))
    msclip.create_model(files[1], precision="bf16")
    (cache,) = (tmp_path / "cache" / "weights").glob("*.safetensors")
    mapped = read_checkpoint(cache)

    def resident() -> int:
        return sum(m[4] for m in _file_mappings() if m[3] == str(cache))

    before = resident()
    assert factory._file_sample_digest(cache) == mapped.metadata["sample_sha256"]
    assert resident() == before  # the check added no page to the process
    # reading the same samples through the map gives the same digest, and adds pages: what the
    # check must not do
    assert factory._sample_digest(mapped.state_dict) == mapped.metadata["sample_sha256"]
    assert resident() > before


def test_the_converted_weights_cache_is_bounded_and_never_fails_a_load(
    files, tmp_path, monkeypatch, caplog
) -> None:
    from msclip import factory, pretrained

    monkeypatch.setenv("MSCLIP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(factory, "WEIGHT_CACHE_KEEP", 2)
    import copy

    model = copy.deepcopy(files[0])  # the module's model stays as it is
    sources = []
    for i in range(3):  # three checkpoints (an epoch sweep): the least recently used goes
        with torch.no_grad():
            model.clip.logit_scale.fill_(float(i))
        sources.append(msclip.save_checkpoint(model, tmp_path / f"epoch{i}.safetensors"))
        msclip.create_model(sources[-1], precision="bf16")
    folder = tmp_path / "cache" / "weights"
    assert len(list(folder.glob("*.safetensors"))) == 2

    # a full disk while writing the cache: the model loads all the same, with one warning
    class DiskFull(Exception):  # safetensors raises its own error type, not OSError
        pass

    def full(*args, **kwargs):
        raise DiskFull("No space left on device")

    monkeypatch.setattr(pretrained, "save_checkpoint", full)
    loaded = msclip.create_model(sources[0], precision="bf16")
    assert loaded.clip.logit_scale.item() == 0.0
    assert "cannot keep the converted weights" in caplog.text and "No space left" in caplog.text


def test_a_read_only_converted_weights_cache_warns_once(files, monkeypatch, caplog) -> None:
    import errno
    import logging
    import tempfile

    _, st_path, _ = files
    ref = msclip.create_model(st_path, precision="bf16")
    monkeypatch.setenv("MSCLIP_CACHE_DIR", str(Path(os.environ["MSCLIP_CACHE_DIR"]) / "other"))
    for code in (errno.EACCES, errno.EROFS):  # no permission, a read-only file system

        def denied(*args, code=code, **kwargs):
            raise OSError(code, os.strerror(code))

        monkeypatch.setattr(tempfile, "mkstemp", denied)
        monkeypatch.setattr(msclip.cache, "_NOTED", set())  # a new process
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for _ in range(2):
                loaded = msclip.create_model(st_path, precision="bf16")
                for a, b in zip(loaded.clip.state_dict().values(), ref.clip.state_dict().values()):
                    assert torch.equal(a, b)
        # one warning per process (not per load) naming the folder, the reason and the fix
        (text,) = [r.getMessage() for r in caplog.records if "weights" in r.getMessage()]
        assert "converted weights" in text and os.strerror(code) in text
        assert str(Path(os.environ["MSCLIP_CACHE_DIR"]) / "weights") in text
        assert "MSCLIP_CACHE_DIR" in text and "MSCLIP_WEIGHT_CACHE=0" in text
