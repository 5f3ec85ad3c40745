"""Compatibility with the published Llama3-MS-CLIP release, checked against facts written out here
(key names, statistics, the release's tiles and OpenCLIP's own forward), not against msclip's
constants: a change to one of those constants would otherwise pass with the code that reads it.
"""

from __future__ import annotations

import warnings

import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from torchvision import transforms

import msclip
from msclip.factory import _config_for, get_arch_config, get_model_entry
from msclip.spectral import get_stats

RELEASE_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
L2A_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
RELEASE_MEAN = (925.161, 1183.128, 1338.041, 1667.254, 2233.633, 2460.96, 2555.569, 2619.542,
                2406.497, 1841.645)  # fmt: skip
RELEASE_STD = (1205.586, 1223.713, 1399.638, 1403.298, 1378.513, 1434.924, 1491.141, 1454.089,
               1473.248, 1365.08)  # fmt: skip
# band descriptions of GDAL's SENTINEL2 driver, kept by gdal_translate in a GeoTIFF
GDAL_SENTINEL2 = [
    f"{b}, central wavelength {nm} nm"
    for b, nm in zip(
        ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B11", "B12"),
        (443, 490, 560, 665, 705, 740, 783, 842, 865, 945, 1610, 2190),
    )
]


def test_the_release_model_is_open_clip_vit_b16_with_the_published_statistics() -> None:
    import open_clip

    entry = get_model_entry("Llama3-MS-CLIP-Base")
    assert entry.arch == "ViT-B-16" and entry.bands == RELEASE_BANDS
    assert get_arch_config("ViT-B-16") == open_clip.get_model_config("ViT-B-16")
    assert entry.hub_id == "ibm-esa-geospatial/Llama3-MS-CLIP-base"
    assert entry.filenames == ("Llama3_MS_CLIP_weights.pt",)
    stats = get_stats(entry.stats)
    assert stats.divisor == 1.0  # raw digital numbers: no division by 10000, no offset
    assert tuple(stats.mean[b] for b in RELEASE_BANDS) == RELEASE_MEAN
    assert tuple(stats.std[b] for b in RELEASE_BANDS) == RELEASE_STD
    assert (stats.mean["B01"], stats.std["B01"]) == (794.311, 1164.883)
    assert (stats.mean["B09"], stats.std["B09"]) == (2703.298, 1660.395)
    config = _config_for(entry, None)
    assert (config.image_size, config.resize_mode, config.interpolation) == (224, "shortest",
                                                                             "bicubic")  # fmt: skip


def _open_clip_reference():
    """The release's construction: OpenCLIP's CLIP (here of the tiny architecture), its conv1
    replaced by a 10-input-channel convolution without bias, random weights."""
    from open_clip.model import CLIP

    cfg = get_arch_config("msclip-tiny")
    torch.manual_seed(7)
    ref = CLIP(**cfg)
    width, patch = cfg["vision_cfg"]["width"], cfg["vision_cfg"]["patch_size"]
    ref.visual.conv1 = torch.nn.Conv2d(10, width, patch, patch, bias=False)
    torch.nn.init.normal_(ref.visual.conv1.weight, std=0.05)
    return ref.eval()


def _release_file(ref, path, copies=None):
    """A state dict written as the release's: the one CLIP under three prefixes, spelt out, plus
    a scalar temperature."""
    sd = ref.state_dict()
    raw = {}
    for prefix in ("clip_base_model.model.", "text_encoder.model.", "image_encoder.model."):
        source = (copies or {}).get(prefix, sd)
        raw.update({prefix + k: v.clone() for k, v in source.items()})
    raw["temperature"] = torch.tensor(0.07)
    torch.save(raw, path)
    return raw


def _release_tile(path, data, descriptions=None):
    """A GeoTIFF as the release's example tiles: 12 bands in L2A order, int16, pixel-interleaved,
    a UTM CRS, no band descriptions unless given."""
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[2], height=data.shape[1],
                       count=12, dtype="int16", crs="EPSG:32632", interleave="pixel",
                       transform=from_origin(600000, 5000000, 10, 10)) as ds:  # fmt: skip
        ds.write(data)
        for i, text in enumerate(descriptions or [], 1):
            ds.set_band_description(i, text)
    return path


def _published_pipeline(chw12: np.ndarray, size: int) -> torch.Tensor:
    """The release's preprocessing: drop B01 and B09, float32 digital numbers, bicubic resize of
    the shorter side on the tensor, centre crop, per-band normalisation."""
    image = torch.from_numpy(np.delete(chw12, [0, 9], axis=0).astype(np.float32))
    return transforms.Compose([
        transforms.Resize(size=[size], interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(size),
        transforms.Normalize(mean=RELEASE_MEAN, std=RELEASE_STD),
    ])(image)  # fmt: skip


def test_a_release_file_in_fp32_gives_open_clips_own_outputs_bit_for_bit(tmp_path, monkeypatch):
    """``precision='fp32'`` (``--precision fp32``) on a file in the release's layout: image and
    text embeddings equal to OpenCLIP's forward on the same weights, whatever ``auto`` would
    pick on this machine; from a release tile through the published preprocessing too."""
    monkeypatch.delenv("MSCLIP_PRECISION", raising=False)
    ref = _open_clip_reference()
    raw = _release_file(ref, tmp_path / "Llama3_MS_CLIP_weights.pt")
    assert len(raw) == 3 * len(ref.state_dict()) + 1
    model = msclip.create_model("msclip-tiny", pretrained=tmp_path / "Llama3_MS_CLIP_weights.pt",
                                precision="fp32")  # fmt: skip
    assert model.precision == "fp32" and model.dtype == torch.float32
    assert model.bands == RELEASE_BANDS
    x = torch.randn(3, 10, 32, 32, generator=torch.Generator().manual_seed(1))
    tokens = msclip.get_tokenizer(model)(["a forest", "a river seen from a satellite", ""])
    with torch.inference_mode():
        assert torch.equal(model.encode_image(x), ref.encode_image(x))
        assert torch.equal(model.encode_text(tokens), ref.encode_text(tokens))
        assert torch.equal(model.encode_image(x, normalize=True), ref.encode_image(x, True))

    # a release tile: 12 bands, B01 and B09 dropped, 40x56 resized and cropped to 32
    data = np.random.default_rng(2).integers(1, 9000, (12, 40, 56)).astype(np.int16)
    tile = _release_tile(tmp_path / "tile.tif", data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # B01 outside the model's range
        ours = model.preprocess()(tile)
    expected = _published_pipeline(data, 32)
    assert torch.equal(ours, expected)
    with torch.inference_mode():
        assert torch.equal(model.encode_image(ours[None]), ref.encode_image(expected[None]))

    # written back: the release's three prefixes and temperature, the same tensors
    back = torch.load(msclip.export_release_checkpoint(model, tmp_path / "back.pt"),
                      weights_only=True)  # fmt: skip
    assert back.keys() == raw.keys() and all(torch.equal(back[k], raw[k]) for k in raw)


def test_the_clip_base_model_copy_is_the_one_read(tmp_path) -> None:
    """The release's weights are those under ``clip_base_model.model.``; a file whose other two
    copies differ (a user's edit of the original code's wrappers) is read from that one."""
    ref = _open_clip_reference()
    other = {k: torch.zeros_like(v) for k, v in ref.state_dict().items()}
    _release_file(ref, tmp_path / "r.pt", {"text_encoder.model.": other,
                                           "image_encoder.model.": other})  # fmt: skip
    model = msclip.create_model("msclip-tiny", pretrained=tmp_path / "r.pt", precision="fp32")
    x = torch.randn(2, 10, 32, 32)
    with torch.inference_mode():
        assert torch.equal(model.encode_image(x), ref.encode_image(x))


def test_release_tiles_read_the_same_with_gdal_descriptions_and_fill_is_kept_as_data(tmp_path):
    """The checks of band names and of undeclared fill change no embedding of the release's
    inputs: a tile with GDAL's SENTINEL2 descriptions ('B4, central wavelength 665 nm') or the
    release's band names reads as the undescribed tile, and pixels of 0 in every band (a scene's
    edge, which the release reads as data) are warned about, not filled."""
    data = np.random.default_rng(3).integers(1, 9000, (12, 32, 32)).astype(np.int16)
    data[:, :, :6] = 0  # a scene's edge, no nodata declared
    model = msclip.create_model("msclip-tiny", precision="fp32")
    pre = model.preprocess()
    expected = _published_pipeline(data, 32)
    for i, names in enumerate([None, GDAL_SENTINEL2, list(L2A_BANDS)]):
        tile = _release_tile(tmp_path / f"t{i}.tif", data, names)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            assert msclip.read_raster(tile).bands == L2A_BANDS
            assert torch.equal(pre(tile), expected), names
        kinds = {type(w.message).__name__ for w in seen}
        assert "UndeclaredNodataWarning" in kinds
        assert not kinds & {"DescribedBandsWarning", "GenericBandNamesWarning", "NodataFillWarning"}
    # the release's band names given by the caller, as separate names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        named = pre.process(data, list(L2A_BANDS))
    assert torch.equal(named, expected)


def test_the_release_layout_reads_converted_to_safetensors_and_under_wrappers(tmp_path) -> None:
    """The release's state dict converted to safetensors (as msclip's refusal of pickled objects
    advises), or saved under a DistributedDataParallel ``module.`` or a Lightning ``model.``
    prefix, is the release layout still: each was refused as an OpenCLIP state dict missing all
    its keys."""
    from safetensors.torch import save_file

    from msclip.pretrained import read_checkpoint

    ref = _open_clip_reference()
    raw = _release_file(ref, tmp_path / "r.pt")
    save_file({k: v.contiguous() for k, v in raw.items()}, str(tmp_path / "r.safetensors"))
    torch.save({"module." + k: v for k, v in raw.items()}, tmp_path / "ddp.pt")
    torch.save({"state_dict": {"model." + k: v for k, v in raw.items()}}, tmp_path / "pl.ckpt")
    x = torch.randn(2, 10, 32, 32)
    with torch.inference_mode():
        want = ref.encode_image(x)
    for name in ("r.safetensors", "ddp.pt", "pl.ckpt"):
        ckpt = read_checkpoint(tmp_path / name)
        assert ckpt.format == "llama3-ms-clip-release", name
        assert ckpt.temperature == float(torch.tensor(0.07)), name
        assert ckpt.state_dict.keys() == ref.state_dict().keys(), name
        model = msclip.create_model("msclip-tiny", pretrained=tmp_path / name, precision="fp32")
        with torch.inference_mode():
            assert torch.equal(model.encode_image(x), want), name
