"""Giving memory back (msclip.memory): the text tower's mapped pages after the prompts, only where
the map is unchanged; shared libraries' unwritten pages, never a data file's; the C heap after a
phase."""

from __future__ import annotations

import sys
import zlib

import numpy as np
import pytest
import torch
from support.fused import fused_model

import msclip
from msclip import memory
from msclip.memory import mapped_file_regions, release_mapped, trim_heap

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self")


@pytest.fixture(scope="module")
def release_pt(tmp_path_factory):
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="fp32")
    return msclip.export_release_checkpoint(model, tmp_path_factory.mktemp("m") / "release.pt")


def _resident_kb(address: int) -> int:
    """Resident kB of the mapping that holds ``address``."""
    with open("/proc/self/smaps") as f:
        inside = False
        for line in f:
            head = line.split()
            if head and "-" in head[0] and ":" not in head[0]:
                lo, hi = (int(v, 16) for v in head[0].split("-"))
                inside = lo <= address < hi
            elif inside and line.startswith("Rss:"):
                return int(head[1])
    raise AssertionError("address not mapped")


def _encode(model):
    tok = msclip.get_tokenizer("msclip-tiny")(["a river", "a forest next to a lake"])
    with torch.inference_mode():
        x = torch.randn(2, 10, 32, 32, generator=torch.Generator().manual_seed(1))
        return model.encode_text(tok), model.encode_image(x)


def test_text_pages_are_dropped_and_read_back_unchanged(release_pt) -> None:
    model = msclip.create_model("msclip-tiny", release_pt, precision="fp32")
    text_before, image_before = _encode(model)
    w = model.clip.token_embedding.weight
    region = [r for r in mapped_file_regions() if r[0] <= w.data_ptr() < r[1]]
    assert region and region[0][2] == str(release_pt) and region[0][3] == 0  # clean private map
    resident = _resident_kb(w.data_ptr())
    released = model.release_text_pages()
    assert released > 0
    assert _resident_kb(w.data_ptr()) <= resident - 256  # the text tower's touched pages went
    trim_heap()
    text_after, image_after = _encode(model)  # the pages fault in again from the file
    assert torch.equal(text_after, text_before) and torch.equal(image_after, image_before)


def _needs_pagemap() -> None:
    if not memory._pagemap_reliable():
        pytest.skip("/proc/self/pagemap is not readable or not reliable here (smaps decides)")


def test_a_changed_tensor_is_never_released_and_the_rest_of_its_map_is(release_pt) -> None:
    """Pages are judged tensor by tensor (``/proc/self/pagemap``): the changed embedding keeps
    its values (dropping its pages would revert them to the file's), and the text tower's other,
    unchanged weights in the same map are still given back."""
    import mmap

    _needs_pagemap()
    model = msclip.create_model("msclip-tiny", release_pt, precision="fp32")
    w = model.clip.token_embedding.weight
    n = 2 * mmap.PAGESIZE // w.element_size()  # two pages' worth: at least one whole page
    assert w.numel() >= 3 * n
    with torch.no_grad():
        w.view(-1)[n : 2 * n] += 1.0  # the process now owns changed pages of the map
    changed = w.detach().clone()
    other = model.clip.transformer.resblocks[0].mlp.c_fc.weight
    whole = memory._whole_pages(other.data_ptr(), other.numel() * other.element_size())
    assert whole[1] > whole[0]  # it has whole pages to give back
    assert model.release_text_pages() >= whole[1] - whole[0]
    assert torch.equal(w, changed)
    assert memory._written_pages(*memory._whole_pages(w.data_ptr(), w.numel() * 4))
    assert not memory._written_pages(*whole)


def test_weights_in_anonymous_memory_are_left_alone() -> None:
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="fp32")  # random init, no file
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    assert model.release_text_pages() == 0
    assert release_mapped([torch.ones(1 << 16)]) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.clip.state_dict().items())


def test_pages_are_judged_by_pagemap_and_by_smaps_only_where_it_is_unreadable(
    release_pt, monkeypatch
) -> None:
    """Releasing reads the list of mappings (``/proc/self/maps``) and each mapped tensor's page
    entries, never ``smaps`` (15-70 ms each, several per run); where ``pagemap`` cannot be read,
    ``smaps`` is read once and a map with a written page is left whole."""
    import mmap

    _needs_pagemap()
    reads = []
    real = memory.mapped_file_regions
    monkeypatch.setattr(memory, "mapped_file_regions", lambda: reads.append(1) or real())
    mapped = msclip.create_model("msclip-tiny", release_pt, precision="fp32")
    torch.manual_seed(0)
    anonymous = msclip.create_model("msclip-tiny", precision="fp32")
    assert anonymous.release_text_pages() == 0
    assert mapped.release_text_pages() > 0 and not reads
    # inside means wholly inside one map
    t = torch.ones(4)
    p = t.data_ptr()
    assert memory._inside([(p - 64, p - 8), (p, p + 16)], t)
    assert not memory._inside([(p - 64, p - 8), (p, p + 15)], t)  # its end past the map's
    assert not memory._inside([(p + 1, p + 64)], t) and not memory._inside([], t)

    monkeypatch.setattr(memory, "_written_pages", lambda first, last: None)
    fresh = msclip.create_model("msclip-tiny", release_pt, precision="fp32")
    assert fresh.release_text_pages() > 0 and len(reads) == 1
    w = fresh.clip.token_embedding.weight
    with torch.no_grad():
        w.view(-1)[: 2 * mmap.PAGESIZE // 4] += 1.0
    changed = w.detach().clone()
    assert fresh.release_text_pages() == 0 and len(reads) == 2  # the map has a written page
    assert torch.equal(w, changed)


def test_a_pagemap_that_answers_zeros_is_not_trusted(monkeypatch) -> None:
    """An emulated ``/proc`` whose ``pagemap`` reads every page as absent would let written pages
    pass for the file's: the check of a page just written turns it off (``smaps`` then decides)."""
    _needs_pagemap()  # Linux: a written page reads present and anonymous
    monkeypatch.setattr(memory, "_pagemap_entries", lambda first, n: np.zeros(n, dtype=np.uint64))
    memory._pagemap_reliable.cache_clear()
    try:
        assert not memory._pagemap_reliable()
        assert memory._written_pages(0, 4 * 4096) is None
    finally:
        memory._pagemap_reliable.cache_clear()


def test_bf16_text_pages_of_the_converted_cache_are_dropped_too(release_pt) -> None:
    msclip.create_model("msclip-tiny", release_pt, precision="bf16")  # writes the converted cache
    model = msclip.create_model("msclip-tiny", release_pt, precision="bf16")  # maps it
    assert model.dtype == torch.bfloat16
    text_before, image_before = _encode(model)
    assert model.release_text_pages() > 0
    text_after, image_after = _encode(model)
    assert torch.equal(text_after, text_before) and torch.equal(image_after, image_before)


def _library_copy(folder, name: str):
    """zlib copied to ``folder/name`` and loaded from there: (its handle, its path)."""
    import ctypes
    import shutil
    from ctypes.util import find_library

    found = find_library("z")
    if found is None:
        pytest.skip("no zlib to load")
    ctypes.CDLL(found)
    with open("/proc/self/maps") as maps:
        paths = [line.split()[-1] for line in maps if "/" in line]
    source = next((p for p in paths if p.rsplit("/", 1)[-1].startswith("libz.so")), None)
    if source is None:
        pytest.skip("zlib's file not found")
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(source, path)
    return ctypes.CDLL(str(path)), path


def test_library_pages_are_dropped_and_the_library_still_works(tmp_path) -> None:
    import ctypes

    lib, path = _library_copy(tmp_path / "nvidia" / "cu13" / "lib", "libcublasLt.so.13")
    data = b"multispectral" * 1000
    bound = lib.compressBound(len(data))
    assert bound > len(data)
    mine = [r for r in memory._file_mappings() if r[3] == str(path)]
    assert mine and any(r[4] > 0 and "w" not in r[2] for r in mine)  # resident code pages
    written = [r for r in mine if "w" in r[2] or r[5]]  # relocated data: never dropped
    assert memory.release_library_pages("cuda") == 0  # a GPU program keeps its libraries
    assert all(r[4] > 0 for r in memory._file_mappings() if r[3] == str(path) and "x" in r[2])
    released = memory.release_library_pages()
    assert released >= sum(r[4] for r in mine if "w" not in r[2] and not r[5])
    after = {(r[0], r[1]): r for r in memory._file_mappings() if r[3] == str(path)}
    for lo, hi, perms, _, _, anon in mine:
        if "w" not in perms and not anon:
            assert after[(lo, hi)][4] == 0  # dropped from this process's resident set
    for lo, hi, _, _, _, anon in written:
        assert after[(lo, hi)][5] == anon  # written pages kept
    # the code faults in again from the file and behaves as before
    out = ctypes.create_string_buffer(bound)
    n = ctypes.c_ulong(bound)
    assert lib.compress(out, ctypes.byref(n), data, len(data)) == 0 and 0 < n.value < len(data)
    assert zlib.decompress(out.raw[: n.value]) == data


def test_only_shared_libraries_are_released(tmp_path, release_pt) -> None:
    for lib in ("/env/site-packages/nvidia/cu13/lib/libcublasLt.so.13", "/usr/lib/libc.so.6",
                "/env/torch/lib/libtorch_cpu.so", "/opt/conda/lib/libnvrtc-builtins.so.13.0",
                "/env/torch/_C.cpython-311-x86_64-linux-gnu.so"):  # fmt: skip
        assert memory._is_shared_library(lib), lib
    for other in ("/data/release.pt", "/data/m.safetensors", "/idx/embeddings.npy",
                  "/data/notes.so.txt", "/data/so"):  # fmt: skip
        assert not memory._is_shared_library(other), other
    # a mapped weight file (clean, read-only here) and a mapped array keep their pages
    model = msclip.create_model("msclip-tiny", release_pt, precision="fp32")
    _encode(model)
    arr_path = tmp_path / "rows.npy"
    np.save(arr_path, np.arange(1 << 20, dtype=np.float32))
    rows = np.load(arr_path, mmap_mode="r")
    assert float(rows.sum()) > 0
    memory.release_library_pages()
    resident = {r[3]: r[4] for r in memory._file_mappings() if r[4] > 0}
    assert resident.get(str(arr_path), 0) > 0 and resident.get(str(release_pt), 0) > 0


def test_all_weight_pages_are_dropped_at_the_end_and_read_back_unchanged(release_pt) -> None:
    model = msclip.create_model("msclip-tiny", release_pt, precision="fp32")
    text_before, image_before = _encode(model)
    w = model.clip.visual.transformer.resblocks[0].mlp.c_fc.weight  # an image-tower weight
    resident = _resident_kb(w.data_ptr())
    released = model.release_weight_pages()
    assert released > model.release_text_pages() >= 0  # the image tower's pages too
    assert _resident_kb(w.data_ptr()) <= resident - 512
    text_after, image_after = _encode(model)
    assert torch.equal(text_after, text_before) and torch.equal(image_after, image_before)


def test_packed_image_weights_replace_their_mapped_pages(release_pt) -> None:
    """The CPU image tower (bf16, or fp32 as ``auto`` runs it without native bf16) reads
    oneDNN-packed copies of its linear weights: the pages of the mapped file (the converted cache
    in bf16) that they came from are dropped, so memory holds one copy."""
    from msclip import architecture

    fused_model("msclip-tiny", release_pt)  # in bf16: writes the converted cache
    model = fused_model("msclip-tiny", release_pt)  # maps it (or, in fp32, the file itself)
    blocks = model.clip.visual.transformer.resblocks
    weights = [w for b in blocks for w in (b.attn.in_proj_weight, b.mlp.c_fc.weight)]
    x = torch.randn(2, 10, 32, 32, generator=torch.Generator().manual_seed(1))
    _encode(model)  # every page read in (the text tower's too), the copies made
    architecture.drop_packed(weights)  # packed again below, from the pages read in now
    with torch.inference_mode():
        for w in weights:
            w.float().sum()
        resident = _resident_kb(weights[0].data_ptr())
        image_before = model.encode_image(x)
    assert all(id(w) in architecture._PACKED for w in weights)
    dropped = sum(w.numel() * w.element_size() for w in weights) // 1024 - 8 * len(weights)
    assert _resident_kb(weights[0].data_ptr()) <= resident - dropped
    with torch.inference_mode():
        assert torch.equal(model.encode_image(x), image_before)


def test_steady_heap_sets_glibcs_thresholds_and_is_a_no_op_without_them(monkeypatch) -> None:
    calls: list[tuple[int, int]] = []

    class Libc:
        def mallopt(self, param: int, value: int) -> int:
            calls.append((param, value))
            return 1

    monkeypatch.setattr(memory, "_libc", Libc)
    assert memory.steady_heap() is True
    # blocks up to glibc's largest mmap threshold from the heap, one arena for every thread made
    # later, and no automatic trimming below a GB: the memory a call frees stays for the next
    # until trim_heap
    assert calls == [(-3, 32 << 20), (-8, 1), (-1, 1 << 30)]
    monkeypatch.setattr(memory, "_libc", lambda: None)  # not glibc
    assert memory.steady_heap() is False


def test_a_steady_heap_keeps_freed_memory_until_it_is_trimmed() -> None:
    """In a child process (the setting is process-wide): a freed 24 MB block stays resident for
    the next call with the steady heap, and goes with trim_heap; glibc's default gives it back
    at once (the next call would fault it in again)."""
    import subprocess

    code = (
        "import sys, torch\n"
        "from msclip import memory\n"
        "def anon():\n"
        "    with open('/proc/self/status') as f:\n"
        "        return next(int(l.split()[1]) for l in f if l.startswith('RssAnon'))\n"
        "if sys.argv[1] == 'steady': assert memory.steady_heap()\n"
        "before = anon(); block = torch.ones(6 << 20); used = anon()\n"
        "del block; freed = anon(); memory.trim_heap(); trimmed = anon()\n"
        "print(used - before, used - freed, used - trimmed)\n"
    )
    mb = 1024  # kB
    drops = {}
    for mode in ("default", "steady"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                             check=True)  # fmt: skip
        grown, at_free, at_trim = map(int, out.stdout.split())
        assert grown > 20 * mb  # the block was resident
        drops[mode] = (at_free, at_trim)
    assert drops["default"][0] > 20 * mb  # given back when freed
    assert drops["steady"][0] < 4 * mb < 20 * mb < drops["steady"][1], drops  # kept, then trimmed


def test_a_steady_heap_gives_threads_made_later_the_one_heap() -> None:
    """In a child process: with the steady heap, a thread made later allocates from the
    process's one heap (glibc's ``malloc_info`` lists one), where what the model and the next
    batch allocate can reuse what it frees; with the thresholds alone it takes an arena of its
    own, which keeps what it frees."""
    import subprocess

    code = (
        "import ctypes, re, sys, tempfile, threading, torch\n"
        "from msclip import memory\n"
        "if sys.argv[1] == 'steady': assert memory.steady_heap()\n"
        "else:\n"
        "    libc = memory._libc(); libc.mallopt(-3, 32 << 20); libc.mallopt(-1, 1 << 30)\n"
        "def read():\n"
        "    block = torch.ones(6 << 20); del block\n"
        "t = threading.Thread(target=read); t.start(); t.join()\n"
        "libc = ctypes.CDLL(None); libc.fopen.restype = ctypes.c_void_p\n"
        "with tempfile.NamedTemporaryFile(suffix='.xml') as out:\n"
        "    f = libc.fopen(out.name.encode(), b'w')\n"
        "    libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))\n"
        "    print(len(re.findall('<heap nr=', open(out.name).read())))\n"
    )
    heaps = {}
    for mode in ("thresholds", "steady"):
        out = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                             check=True)  # fmt: skip
        heaps[mode] = int(out.stdout)
    assert heaps["steady"] == 1 < heaps["thresholds"], heaps
