"""The Python API on what scripts and notebooks pass it: other dtypes, single strings, odd shapes,
non-finite values, other band sets."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch

import msclip
from msclip.errors import (
    BandError,
    ClassNameError,
    GenericBandNamesWarning,
    InvalidEmbeddingsError,
    LayoutError,
    PrecisionError,
)

EXAMPLES = "benchmark_datasets/examples"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny").eval()


def test_sensor_names_the_input_bands(tiny):
    pre = tiny.preprocess(input_bands=["B2", "B3", "B4", "B5", "B6", "B7"], sensor="landsat89")
    assert pre.input_bands == ("OLI_B2", "OLI_B3", "OLI_B4", "OLI_B5", "OLI_B6", "OLI_B7")
    qualified = tiny.preprocess(input_bands=[f"landsat89:B{i}" for i in range(2, 8)])
    x = np.random.default_rng(0).integers(100, 4000, (6, 32, 32)).astype(np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(pre(x), qualified(x))


def test_bf16_tensors_are_accepted_where_float32_is(tiny):
    from msclip.index import SearchIndex
    from msclip.zero_shot import multilabel_predict

    x = torch.full((10, 32, 32), 1000.0, dtype=torch.bfloat16)
    assert tiny.preprocess()(x).dtype == torch.float32
    rows = torch.nn.functional.normalize(torch.randn(50, 32), dim=-1)
    index = SearchIndex(rows.numpy(), quantize=False)
    res = index.search(rows[:3].bfloat16(), 1)
    assert res.ids[:, 0].tolist() == [0, 1, 2]
    assert multilabel_predict(torch.randn(4, 3, dtype=torch.bfloat16)).shape == (4, 3)


def test_a_nan_row_is_refused_by_the_search_index():
    from msclip.index import SearchIndex

    rows = np.random.default_rng(1).standard_normal((20, 8)).astype(np.float32)
    rows[10, 3] = np.nan
    with pytest.raises(InvalidEmbeddingsError, match=r"rows \[10\] contain NaN"):
        SearchIndex(rows)


def test_one_string_is_one_item_not_its_characters(tiny):
    from msclip.encode import encode_images
    from msclip.io import list_images
    from msclip.zero_shot import build_classifier, encode_queries

    assert len(list_images(EXAMPLES)) == 16
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = encode_images(tiny, tiny.preprocess(), f"{EXAMPLES}/sea_01.tif")
    assert res.embeddings.shape == (1, 32) and not res.failures
    tok = msclip.get_tokenizer(tiny)
    assert encode_queries(tiny, tok, "a city").shape == (1, 32)
    with pytest.raises(ClassNameError, match="single string 'forest'"):
        build_classifier(tiny, tok, "forest", ["a photo of {c}"])


def test_pictures_of_16_bits_keep_their_values(tiny):
    from PIL import Image

    img = Image.fromarray(np.full((32, 32), 3000, np.uint16))
    with pytest.raises(BandError, match=r"read as 1 band .*input_bands="):
        tiny.preprocess()(img)  # one band without a name: refused, not made 8-bit RGB
    data, names, _, _ = tiny.preprocess(input_bands=["B08"]).load(img)
    assert names == ("B08",) and data.dtype == np.uint16 and int(data.max()) == 3000


def test_classify_takes_graph_tensors_and_refuses_nan():
    from msclip.zero_shot import classify, zero_shot_probs

    clf = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    feats = torch.randn(2, 8, requires_grad=True)
    assert len(classify(feats, clf, ["a", "b", "c"]).labels()) == 2
    with pytest.raises(ClassNameError, match="single string 'abc'"):
        classify(feats, clf, "abc")  # not the classes 'a', 'b', 'c'
    with pytest.raises(msclip.errors.DuplicateClassError, match="'a'"):
        classify(feats, clf, ["a", "b", "a"])
    with pytest.raises(InvalidEmbeddingsError, match=r"rows \[1\]"):
        classify(torch.stack([torch.ones(8), torch.full((8,), float("nan"))]), clf, ["a", "b", "c"])
    with pytest.raises(msclip.errors.DimensionMismatchError, match=r"\[N, 8\]"):
        zero_shot_probs(torch.randn(5, 4), clf)


def test_encode_image_names_the_shape_it_needs(tiny):
    with pytest.raises(LayoutError, match=r"batch axis"):
        tiny.encode_image(torch.zeros(10, 32, 32))
    with pytest.raises(BandError, match=r"permute\(0, 3, 1, 2\)"):
        tiny.encode_image(torch.zeros(2, 32, 32, 10))
    with pytest.raises(LayoutError, match="non-empty"):
        tiny.encode_image(torch.zeros(0, 10, 32, 32))
    with pytest.raises(LayoutError, match=r"64x48 pixels, but the image tower reads 32x32"):
        tiny.encode_image(torch.zeros(1, 10, 64, 48))
    assert tiny.encode_image(torch.zeros(1, 10, 32, 32)).shape == (1, 32)
    # raw digital numbers are not normalised images
    for dtype in (torch.uint16, torch.int32, torch.bool):
        with pytest.raises(LayoutError, match=r"preprocessed float tensors, got torch\.\w+"):
            tiny.encode_image(torch.ones(1, 10, 32, 32, dtype=dtype))


def test_open_clips_unpacking_is_named_with_its_fix(tiny, tmp_path):
    """``model, _, preprocess = create_model_and_transforms(...)`` (open_clip's idiom) takes the
    tokenizer for the transform: a path became token ids, which encode_image called raw digital
    numbers; an image or an array failed inside the tokenizer ('has no len()', 'string
    pattern on a bytes-like object')."""
    from PIL import Image

    torch.manual_seed(0)
    model, _, preprocess = msclip.create_model_and_transforms("msclip-tiny", pretrained=False)
    fix = r"returns \(model, preprocess, tokenizer\), where open_clip's .* model, preprocess, tok"
    with pytest.raises(LayoutError, match=rf"got token ids \(int64, shape \(1, 1, 77\)\).*{fix}"):
        model.encode_image(preprocess(str(tmp_path / "tile.tif"))[None])
    picture = Image.new("RGB", (32, 32))
    array = np.zeros((12, 32, 32), np.float32)
    for image, named in [
        (picture, "Image"),
        (array, "ndarray of ndarray"),
        (torch.zeros(3), "Tensor of Tensor"),
    ]:
        with pytest.raises(TypeError, match=rf"texts, got {named}; an image goes through .*{fix}"):
            preprocess(image)
    # texts in any sequence are still texts
    assert preprocess(np.array(["a forest", "sea"])).shape == (2, 77)
    assert torch.equal(preprocess(t for t in ["sea"]), preprocess("sea"))


def test_band_names_of_images_are_a_list_of_distinct_bands(tiny):
    x = torch.zeros(1, 3, 32, 32)
    with pytest.raises(BandError, match=r"single string 'B04'; write \['B04'\]"):
        tiny.encode_image(x[:, :1], bands="B04")  # not the bands 'B', '0', '4'
    with pytest.raises(BandError, match="'B04' appears twice"):
        tiny.encode_image(x, bands=["B04", "B03", "B04"])  # one of them was dropped unsaid
    with pytest.raises(BandError, match="'B04' appears twice"):
        tiny.forward_intermediates(x, bands=["B04", "B03", "B04"])
    assert tiny.encode_image(x, bands=["B04", "B03", "B02"]).shape == (1, 32)


def test_an_int_device_is_a_cuda_device():
    from msclip.errors import DeviceError
    from msclip.hardware import device_type

    assert device_type(0) == device_type(torch.device(0)) == "cuda"
    assert device_type(None) == device_type("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA GPU"):
            msclip.create_model("msclip-tiny", device=0)
        with pytest.raises(PrecisionError, match="GPU"):
            msclip.create_model("msclip-tiny", device=0, precision="int8")


def test_device_auto_is_the_gpu_torch_sees_else_the_cpu(monkeypatch):
    """device="auto" (any case), as every program's --device auto, in create_model,
    create_model_and_transforms, the encode helpers, the search index and training's config."""
    from msclip.encode import auto_batch_size, auto_workers
    from msclip.hardware import resolve_device
    from msclip.index.search import SearchIndex
    from msclip.train.config import TrainConfig

    for auto in ("auto", "AUTO", " Auto "):
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: True)
            assert resolve_device(auto) == "cuda"
        with monkeypatch.context() as m:
            m.setattr(torch.cuda, "is_available", lambda: False)
            assert resolve_device(auto) == "cpu"
            model = msclip.create_model("msclip-tiny", device=auto, precision="fp32")
            assert model.device == torch.device("cpu")
            model, _, _ = msclip.create_model_and_transforms("msclip-tiny", device=auto)
            assert model.device == torch.device("cpu")
            assert auto_batch_size(model, auto) == auto_batch_size(model, "cpu")
            assert auto_workers(auto) == auto_workers("cpu")
            assert SearchIndex(np.eye(3, 8, dtype=np.float32), device=auto).device == "auto"
            assert not [p for p in TrainConfig(device=auto).problems() if "device" in p]
    assert resolve_device("cuda:1") == "cuda:1" and resolve_device(None) is None


def test_casts_keep_the_model_identity_honest(tiny):
    """Narrowing a model's weights gives what loading in that precision gives (same checkpoint
    identity, precision in the fingerprint); widening them again does not restore the source
    weights, so the identity is taken anew; the precision and its reason follow the cast."""
    import copy

    model = copy.deepcopy(tiny)
    sha, fp = model.checkpoint_sha256, model.fingerprint()
    model.to(torch.bfloat16)
    assert model.checkpoint_sha256 == sha and model.precision == "bf16"
    assert model.precision_reason == "cast from fp32 to bf16 after it was built"
    model.float()
    assert model.precision == "fp32" and model.checkpoint_sha256 != sha
    assert model.fingerprint() != fp  # rounded weights: caches keyed on it must not hit
    wide = copy.deepcopy(tiny).double()
    assert wide.precision == "fp64" and wide.fingerprint() != fp
    assert copy.deepcopy(tiny).to("cpu").fingerprint() == fp  # a move is not a cast
    # a cast before the identity was ever read gives what loading in that precision gives
    torch.manual_seed(0)
    cast = msclip.create_model("msclip-tiny", precision="fp32").to(torch.bfloat16)
    torch.manual_seed(0)
    loaded = msclip.create_model("msclip-tiny", precision="bf16")
    assert cast.fingerprint() == loaded.fingerprint()
    # bf16 and fp16 hold other roundings: neither is the other's source
    torch.manual_seed(0)
    half = msclip.create_model("msclip-tiny", precision="fp32").half()
    assert copy.deepcopy(loaded).half().fingerprint() != half.fingerprint()
    # a cast made past the MSCLIP object (its clip module) counts too
    wide = copy.deepcopy(loaded)
    wide.clip.float()
    assert wide.precision == "fp32" and wide.fingerprint() != fp


def test_batch_sizes_and_workers_are_whole_numbers(tiny):
    from msclip.encode import encode_images

    for bad in ("4", 2.5, True):
        with pytest.raises(TypeError, match=r"batch_size must be a whole number, got"):
            encode_images(tiny, tiny.preprocess(), [np.ones((10, 32, 32))], batch_size=bad)
    with pytest.raises(TypeError, match=r"workers must be a whole number, got '1'"):
        encode_images(tiny, tiny.preprocess(), [np.ones((10, 32, 32))], 1, "1")


def test_four_unnamed_bands_of_an_array_warn(tiny):
    with pytest.warns(GenericBandNamesWarning, match="NAIP order"):
        tiny.preprocess().load(np.ones((4, 32, 32), np.uint16))


def test_saving_bf16_weights_says_so(tmp_path, caplog):
    m = msclip.create_model("msclip-tiny", precision="bf16")
    caplog.set_level(logging.WARNING, logger="msclip.pretrained")
    msclip.save_checkpoint(m, tmp_path / "m.safetensors")
    assert "saving bfloat16 weights" in caplog.text and "precision='fp32'" in caplog.text
    caplog.clear()
    msclip.save_checkpoint(msclip.create_model("msclip-tiny", precision="fp32"),
                           tmp_path / "f.safetensors")  # fmt: skip
    assert "saving" not in caplog.text
    msclip.export_release_checkpoint(m, tmp_path / "release.pt")  # the release layout too
    assert "saving bfloat16 weights" in caplog.text and "release.pt" in caplog.text


def test_create_model_refuses_what_it_cannot_do_before_building():
    from msclip.errors import DeviceError, UnknownModelError

    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="no usable CUDA GPU"):
            msclip.create_model("msclip-tiny", device="cuda")
    # a device torch does not know, or one of a backend this torch was built without
    for device in ("gpu", "cuda:x"):
        with pytest.raises(DeviceError, match="unknown device") as info:
            msclip.create_model("msclip-tiny", device=device)
        assert info.value.param == "device"
    if not torch.backends.mps.is_available():
        with pytest.raises(DeviceError, match="'mps' asked for, but torch cannot use it"):
            msclip.create_model("msclip-tiny", device="mps")
    with pytest.raises(TypeError, match="pretrained must be"):
        msclip.create_model("msclip-tiny", pretrained=1)
    with pytest.raises(UnknownModelError, match="needs a model name"):
        msclip.create_model(None, pretrained=False)


def test_a_model_name_of_another_type_is_a_type_error():
    # not turned into a string and reported as an unknown model, nor an AttributeError
    for bad in (3, ["msclip-tiny"]):
        with pytest.raises(TypeError, match=r"name must be a model name \(list_models\(\)\)"):
            msclip.create_model(bad)
        with pytest.raises(TypeError, match="name must be"):
            msclip.create_model_and_transforms(bad)
        with pytest.raises(TypeError, match="or an MSCLIP model, got"):
            msclip.get_tokenizer(bad)
        with pytest.raises(TypeError, match="name must be a model name"):
            msclip.get_model_entry(bad)


def test_layout_errors_say_what_is_wrong(tiny):
    with pytest.raises(LayoutError, match="4 band names were given, but neither end axis"):
        tiny.preprocess(input_bands=["B02", "B03", "B04", "B08"]).load(np.ones((12, 40, 40)))
    with pytest.raises(LayoutError, match="no end axis of a band count with a default"):
        tiny.preprocess().load(np.ones((5, 40, 41)))
    with pytest.raises(LayoutError, match="first or the last axis"):
        tiny.preprocess().load(np.ones((4, 40, 4)))


def test_items_that_are_not_images_are_failures_named_by_shape(tiny):
    from msclip.encode import encode_images

    good = np.full((10, 32, 32), 500, np.uint16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = encode_images(tiny, tiny.preprocess(), [good, None, np.ones((10, 32, 32), bool)])
    assert res.embeddings.shape == (1, 32)
    assert [f.name for f in res.failures] == ["None", "ndarray[10, 32, 32] bool"]
    assert all("ImageTypeError" in f.reason for f in res.failures)


def test_encode_text_refuses_tokens_it_cannot_read(tiny):
    """Tokens of another tokenizer (a longer context, ids past the vocabulary), without their
    batch axis or as floats: named with the fix, not a tensor-size or index error."""
    from msclip.errors import LayoutError

    tok = msclip.get_tokenizer(tiny)
    good = tok(["a forest"])
    n = tiny.context_length
    with pytest.raises(LayoutError, match=rf"hold {n + 5} positions, .* at most {n}"):
        tiny.encode_text(torch.zeros(1, n + 5, dtype=torch.long))
    with pytest.raises(LayoutError, match=r"add the batch axis: tokens\[None\]"):
        tiny.encode_text(good[0])
    with pytest.raises(LayoutError, match=r"must be integer token ids, got torch\.float32"):
        tiny.encode_text(good.float())
    bad = good.clone()
    bad[0, 1] = 10**6
    with pytest.raises(LayoutError, match="outside this model's vocabulary"):
        tiny.encode_text(bad)
    with pytest.raises(TypeError, match="get_tokenizer"):
        tiny.encode_text(good.tolist())
    short = good[:, :4].clone()
    short[0, 3] = good.max()  # a shorter context (its end-of-text token): read as it is
    with torch.no_grad():
        torch.testing.assert_close(tiny.encode_text(short), tiny.encode_text(short, trim=True),
                                   atol=1e-5, rtol=0)  # fmt: skip


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_weights_edited_through_data_are_used_once_said(precision):
    """A write through .data is invisible to torch's version counters: the bf16 path's packed
    copies and the model's identity would stay those of the old weights until
    model.weights_edited() is called; then the model computes as one built with the edit."""
    x = torch.randn(2, 10, 32, 32)

    def edited(m):
        m.clip.visual.transformer.resblocks[0].mlp.c_fc.weight.data.mul_(0.5)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bf16 on a CPU without native bf16 warns
        m = msclip.create_model("msclip-tiny", seed=0, precision=precision)
        fresh = msclip.create_model("msclip-tiny", seed=0, precision=precision)
    edited(fresh)
    with torch.no_grad():
        m.encode_image(x)  # the bf16 path packs the weights here
        before = m.checkpoint_sha256
        edited(m)
        m.weights_edited()
        assert torch.equal(m.encode_image(x), fresh.encode_image(x))
    assert m.checkpoint_sha256 != before
    fresh.weights_edited()  # its identity, taken when it was made, is of the old weights too
    assert m.checkpoint_sha256 == fresh.checkpoint_sha256


def test_wrong_types_and_values_are_msclip_errors_of_the_builtin_kind(tiny):
    """``except msclip.MSCLIPError`` catches what the public API raises on bad arguments, and
    ``except TypeError`` / ``except ValueError`` still do (plain builtins escaped the first)."""
    from msclip.errors import ImageTypeError, InputTypeError, InvalidArgumentError

    def raised(call) -> BaseException:
        with pytest.raises(msclip.MSCLIPError) as info:
            call()
        return info.value

    images = torch.zeros(1, len(tiny.bands), tiny.image_size, tiny.image_size)
    wrong_type = [
        lambda: msclip.create_model(123),
        lambda: msclip.create_model("msclip-tiny", pretrained=1.5),
        lambda: msclip.create_model("msclip-tiny", seed="7"),
        lambda: tiny.encode_text("a forest"),
        lambda: msclip.read_raster(np.zeros((3, 8, 8))),
    ]
    for call in wrong_type:
        assert isinstance(raised(call), (InputTypeError, TypeError))
    assert isinstance(raised(lambda: tiny.encode_image(images.numpy())), ImageTypeError)
    wrong_value = [
        lambda: msclip.create_model("msclip-tiny", seed=2**70),
        lambda: msclip.create_model("msclip-tiny", pretrained=True, seed=1),
        lambda: tiny.forward_intermediates(images, pool="max"),
        lambda: tiny.forward_features(images, layers=[99]),
        lambda: tiny.block_indices([99]),
        lambda: msclip.SpectralPreprocess(["B04"], {"B04": 0.1}, {"B04": 0.1}, resize_mode="x"),
        lambda: msclip.SpectralPreprocess(["B04"], {"B04": 0.1}, {"B04": 0.1}, interpolation="x"),
    ]
    for call in wrong_value:
        err = raised(call)
        assert isinstance(err, InvalidArgumentError) and isinstance(err, ValueError), err
    assert isinstance(raised(lambda: tiny.forward_intermediates(images[..., :-1])), LayoutError)


def test_an_open_rasterio_dataset_is_read_as_its_file(tiny, make_geotiff):
    """``preprocess(rasterio.open(path))`` gives what ``preprocess(path)`` gives; it was refused
    with advice to use preprocess(), the call just made."""
    import rasterio

    path, _ = make_geotiff(count=10)
    with rasterio.open(path) as ds:
        assert torch.equal(tiny.preprocess()(ds), tiny.preprocess()(path))


def test_a_meta_tensor_is_refused_as_holding_no_values(tiny):
    from msclip.errors import ImageTypeError

    with pytest.raises(ImageTypeError, match=r"meta device .* holds no values"):
        tiny.preprocess()(torch.empty(10, 32, 32, device="meta"))
