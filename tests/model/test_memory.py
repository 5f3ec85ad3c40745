"""Giving memory back (msclip.memory): the text tower's mapped pages after the prompts, only where
the map is unchanged; the C heap after a phase."""

from __future__ import annotations

import sys

import pytest
import torch

import msclip
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


def test_a_changed_map_is_never_released(release_pt) -> None:
    model = msclip.create_model("msclip-tiny", release_pt, precision="fp32")
    w = model.clip.token_embedding.weight
    with torch.no_grad():
        w[:8] += 1.0  # the process now owns changed pages of the map
    changed = w.detach().clone()
    assert model.release_text_pages() == 0
    assert torch.equal(w, changed)  # dropping them would have reverted the change


def test_weights_in_anonymous_memory_are_left_alone() -> None:
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="fp32")  # random init, no file
    before = {k: v.clone() for k, v in model.clip.state_dict().items()}
    assert model.release_text_pages() == 0
    assert release_mapped([torch.ones(1 << 16)]) == 0
    assert all(torch.equal(v, before[k]) for k, v in model.clip.state_dict().items())


def test_bf16_text_pages_of_the_converted_cache_are_dropped_too(release_pt) -> None:
    msclip.create_model("msclip-tiny", release_pt, precision="bf16")  # writes the converted cache
    model = msclip.create_model("msclip-tiny", release_pt, precision="bf16")  # maps it
    assert model.dtype == torch.bfloat16
    text_before, image_before = _encode(model)
    assert model.release_text_pages() > 0
    text_after, image_after = _encode(model)
    assert torch.equal(text_after, text_before) and torch.equal(image_after, image_before)
