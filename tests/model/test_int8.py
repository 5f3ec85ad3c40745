"""precision="int8": the image tower's linear layers run in int8 and agree with fp32 within the
documented bounds on a small trained model (benchmarks/int8.py measures a larger set)."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

import msclip
from msclip.errors import PrecisionError
from msclip.quantize import Int8Attention, PerImageLinear

# Documented bounds (docs/inference.md): measured 0.99999 mean / 0.99993 min cosine and 100 %
# equal labels on 560 generated tiles.
MIN_COSINE, MEAN_COSINE, LABEL_AGREEMENT = 0.999, 0.9995, 0.95


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    from msclip.synthetic import CLASSES, class_slug, generate_dataset

    root = tmp_path_factory.mktemp("int8")
    generate_dataset(root, n_per_class=2, size=64, seed=11)
    return [p for c in CLASSES for p in sorted((root / class_slug(c)).glob("*.tif"))]


def test_int8_image_tower_agrees_with_fp32(tiles) -> None:
    from msclip.encode import encode_images
    from msclip.synthetic import CLASSES
    from msclip.synthetic.demo import USER_CLASS_NAMES
    from msclip.zero_shot import build_classifier, load_templates

    out = {}
    for precision in ("fp32", "int8"):
        model = msclip.create_model("msclip-demo", pretrained=True, precision=precision)
        names = [USER_CLASS_NAMES[c] for c in CLASSES]
        classifier = build_classifier(model, msclip.get_tokenizer(model), names, load_templates())
        res = encode_images(model, model.preprocess(), tiles, batch_size=16)
        labels = (torch.from_numpy(res.embeddings) @ classifier.T).argmax(1).numpy()
        out[precision] = (model, res.embeddings, labels)
    q, e8, l8 = out["int8"]
    _, e32, l32 = out["fp32"]
    assert q.precision == "int8" and q.describe()["precision"] == "int8"
    assert q.fingerprint() != out["fp32"][0].fingerprint()
    blocks = q.clip.visual.transformer.resblocks
    assert all(isinstance(b.attn, Int8Attention) for b in blocks)
    assert isinstance(blocks[0].mlp.c_fc, PerImageLinear)
    assert "quantized.dynamic" in type(blocks[0].mlp.c_fc.inner).__module__
    assert next(q.clip.transformer.parameters()).dtype == torch.float32  # text tower untouched
    cos = (e8 * e32).sum(1)
    assert cos.min() >= MIN_COSINE and cos.mean() >= MEAN_COSINE
    assert np.mean(l8 == l32) >= LABEL_AGREEMENT
    assert not np.allclose(e8, e32, atol=1e-7)  # it did run in int8


def test_int8_embedding_of_an_image_does_not_depend_on_its_batch(tiles) -> None:
    """Activations are quantised image by image: the embeddings of batch 1 and of batches of
    other sizes and mates agree to float rounding (one range per batch moved them by ~1e-2)."""
    from msclip.encode import encode_images

    model = msclip.create_model("msclip-demo", pretrained=True, precision="int8")
    pre = model.preprocess()
    alone = encode_images(model, pre, tiles, batch_size=1).embeddings
    for size in (3, 16):
        batched = encode_images(model, pre, tiles, batch_size=size).embeddings
        np.testing.assert_allclose(batched, alone, atol=2e-5, rtol=0)
    mixed = encode_images(model, pre, [tiles[0], *tiles[::-1][:6]], batch_size=7).embeddings
    np.testing.assert_allclose(mixed[0], alone[0], atol=2e-5, rtol=0)


def test_int8_model_encodes_with_gradients_on_and_keeps_its_dtype() -> None:
    """The plain call (autograd on, as in a notebook) works, and a cast the int8 layers cannot
    follow is refused instead of leaving a model that fails at its next call."""
    model = msclip.create_model("msclip-tiny", precision="int8")
    x = torch.randn(2, len(model.bands), 32, 32)
    with torch.no_grad():
        ref = model.encode_image(x)
    assert torch.is_grad_enabled()
    assert torch.equal(model.encode_image(x), ref)
    image_features = model(x, msclip.get_tokenizer(model)(["a river"]))[0]  # normalised
    assert torch.allclose(image_features, torch.nn.functional.normalize(ref, dim=-1), atol=1e-6)
    for cast in (lambda m: m.to(torch.bfloat16), lambda m: m.half(), lambda m: m.double()):
        with pytest.raises(PrecisionError, match=r"int8 model .* cannot be cast"):
            cast(model)
    assert model.to("cpu").precision == "int8" and model.dtype == torch.float32
    cast = msclip.create_model("msclip-tiny", precision="int8")
    cast.clip.to(torch.bfloat16)  # past the MSCLIP object: refused where it would fail
    with pytest.raises(PrecisionError, match="int8 model's other weights were cast"):
        cast.encode_image(x)
    with torch.no_grad():
        assert torch.equal(model.encode_image(x), ref)


def test_int8_is_cpu_only_and_not_saved(tmp_path) -> None:
    model = msclip.create_model("msclip-tiny", precision="int8")
    with pytest.raises(PrecisionError, match="float model"):
        msclip.save_checkpoint(model, tmp_path / "x.safetensors")
    with pytest.raises(PrecisionError, match="GPU"):
        msclip.create_model("msclip-tiny", device="cuda", precision="int8")


def test_a_head_with_lora_adapters_is_refused_on_an_int8_encoder() -> None:
    """Adapters merge into the float attention weights an int8 encoder no longer has: one clear
    refusal (the merged weights file loads in int8), not an AttributeError in the merge."""
    from types import SimpleNamespace

    from msclip.heads.checkpoint import bind_head

    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="int8")
    head = SimpleNamespace(
        path="head.safetensors",
        encoder={"fingerprint": model.fingerprint(precision=False),
                 "adapters": {"file": "adapters.safetensors", "sha256": "0" * 64}},
    )  # fmt: skip
    with pytest.raises(PrecisionError, match=r"merges LoRA adapters .* --merge-lora"):
        bind_head(head, model)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/pagemap")
def test_quantising_gives_back_the_mapped_pages_of_the_float_weights(tmp_path) -> None:
    """The float weights an int8 tower was made from were read from the checkpoint's memory map
    and are never used again: their pages are dropped (they stayed resident beside the int8
    copies: 0.33 GB for Llama3-MS-CLIP-Base), and the tower computes what one quantised from
    weights in anonymous memory computes."""
    from msclip import memory
    from msclip.quantize import quantize_image_tower

    if not memory._pagemap_reliable():
        pytest.skip("/proc/self/pagemap is not readable or not reliable here")
    torch.manual_seed(0)
    path = msclip.save_checkpoint(
        msclip.create_model("msclip-tiny", precision="fp32"), tmp_path / "tiny.safetensors"
    )
    mapped = msclip.create_model(path, precision="fp32")
    anonymous = copy.deepcopy(mapped)  # the same weights, in anonymous memory

    def linear_weights(model) -> list[torch.Tensor]:
        return [w for b in model.clip.visual.transformer.resblocks
                for w in (b.attn.in_proj_weight, b.attn.out_proj.weight, b.mlp.c_fc.weight,
                          b.mlp.c_proj.weight)]  # fmt: skip

    floats, kept = linear_weights(mapped), linear_weights(anonymous)
    values = [w.detach().clone() for w in kept]

    def resident_pages(w: torch.Tensor) -> int:
        first, last = memory._whole_pages(w.data_ptr(), w.numel() * w.element_size())
        entries = memory._pagemap_entries(first, (last - first) // memory.mmap.PAGESIZE)
        return int(((entries & np.uint64(memory._PM_PRESENT)) != 0).sum())

    for w in floats:
        w.detach().sum()  # read in, as quantising reads them
    assert all(resident_pages(w) > 0 for w in floats)  # each spans whole pages of the map
    quantize_image_tower(mapped.eval())
    assert sum(resident_pages(w) for w in floats) == 0
    quantize_image_tower(anonymous.eval())
    assert all(torch.equal(w, v) for w, v in zip(kept, values, strict=True))  # left alone
    x = torch.randn(3, 10, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        assert torch.equal(mapped.encode_image(x), anonymous.encode_image(x))
