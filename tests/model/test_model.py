"""Model, factory and checkpoints: zero-init property, formats, strictness, hub, bands."""

from __future__ import annotations

import copy
import enum
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import msclip
from msclip.errors import CheckpointError, CheckpointMismatchError, WeightsNotFoundError
from msclip.pretrained import RELEASE_PREFIXES, read_checkpoint
from msclip.spectral import LLAMA3_MS_CLIP_BANDS


def _images(n=2, bands=10, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, bands, size, size, generator=g)


def _embed(model, x):
    with torch.inference_mode():
        return model.encode_image(x)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return msclip.create_model("msclip-tiny")


def test_factory_returns_model_preprocess_tokenizer(make_geotiff):
    model, pre, tok = msclip.create_model_and_transforms("msclip-tiny")
    assert model.bands == LLAMA3_MS_CLIP_BANDS and model.image_size == 32
    path, _ = make_geotiff(count=10)
    raster = msclip.read_raster(path)
    for x in (path, str(path), raster, raster.data):
        assert pre(x).shape == (10, 32, 32)
    assert torch.equal(pre(path), pre(raster.data))
    tokens = tok(["a satellite image of a forest"])
    assert tokens.shape == (1, 77)
    with torch.inference_mode():
        assert model.encode_text(tokens).shape == (1, 32)
    assert "Llama3-MS-CLIP-Base" in msclip.list_models()


def test_zero_init_reproduces_rgb_model(tmp_path):
    torch.manual_seed(1)
    rgb = msclip.create_model("msclip-tiny-rgb")
    path = msclip.save_checkpoint(rgb, tmp_path / "rgb.safetensors")
    ms = msclip.create_model("msclip-tiny", pretrained=path, bands=LLAMA3_MS_CLIP_BANDS)
    w = ms.patch_embed.weight
    assert torch.equal(w[:, 0], rgb.patch_embed.weight[:, 2])  # B02 <- blue
    assert torch.equal(w[:, 2], rgb.patch_embed.weight[:, 0])  # B04 <- red
    assert not w[:, 3:].any()
    x_rgb = _images(3, 3)
    for seed in range(3):  # whatever the other seven bands hold
        x_ms = _images(3, 10, seed=seed + 10)
        x_ms[:, 0], x_ms[:, 1], x_ms[:, 2] = x_rgb[:, 2], x_rgb[:, 1], x_rgb[:, 0]
        assert torch.allclose(_embed(ms, x_ms), _embed(rgb, x_rgb), atol=1e-5)
    # a plain OpenCLIP RGB state dict, without bands=: the same extension (as the README says)
    from safetensors.torch import save_file

    plain = tmp_path / "open_clip_rgb.safetensors"
    save_file({k: v.contiguous() for k, v in rgb.clip.state_dict().items()}, str(plain))
    again = msclip.create_model("msclip-tiny", pretrained=plain)
    assert torch.equal(again.patch_embed.weight, w)


def test_matches_open_clip_with_replaced_conv(tiny):
    """The release's construction: OpenCLIP model, conv1 replaced by a 10-channel conv."""
    from open_clip.model import CLIP

    ref = CLIP(**tiny.config.arch_cfg)
    ref.visual.conv1 = torch.nn.Conv2d(10, 64, 8, 8, bias=False)
    ref.load_state_dict(tiny.clip.state_dict())
    ref.eval()
    x = _images()
    with torch.inference_mode():
        assert torch.equal(ref.encode_image(x), tiny.encode_image(x))


def test_release_checkpoint_round_trip(tiny, tmp_path):
    path = msclip.export_release_checkpoint(tiny, tmp_path / "release.pt")
    raw = torch.load(path, weights_only=True)
    n = len(tiny.clip.state_dict())
    assert len(raw) == 3 * n + 1 and float(raw["temperature"]) == pytest.approx(0.07)
    for prefix in RELEASE_PREFIXES:
        assert f"{prefix}visual.conv1.weight" in raw
    loaded = msclip.create_model("msclip-tiny", pretrained=path)
    x = _images()
    assert torch.equal(_embed(loaded, x), _embed(tiny, x))
    assert read_checkpoint(path).format == "llama3-ms-clip-release"


def test_vit_b16_release_layout():
    """Llama3-MS-CLIP-Base has the release's 302 entries per prefix and a 10-band conv1."""
    model = msclip.create_model("Llama3-MS-CLIP-Base")
    sd = model.clip.state_dict()
    assert len(sd) == 302
    assert tuple(sd["visual.conv1.weight"].shape) == (768, 10, 16, 16)
    assert "logit_scale" in sd and model.image_size == 224 and model.embed_dim == 512


@pytest.mark.parametrize("fmt", ["safetensors", "open_clip_pt", "open_clip_safetensors",
                                 "lightning", "ddp", "msclip_train",
                                 "msclip_state_dict"])  # fmt: skip
def test_checkpoint_formats_round_trip(tiny, tmp_path, fmt):
    sd = {k: v.clone() for k, v in tiny.clip.state_dict().items()}
    if fmt == "safetensors":
        path = msclip.save_checkpoint(tiny, tmp_path / "m.safetensors")
        loaded = msclip.create_model(path)  # self-describing: no model name needed
    else:
        path = tmp_path / ("m.safetensors" if fmt == "open_clip_safetensors" else "m.pt")
        if fmt == "open_clip_safetensors":
            save_file(sd, path)
        elif fmt == "open_clip_pt":
            torch.save(sd, path)
        elif fmt == "lightning":
            torch.save({"state_dict": sd, "epoch": 3}, path)
        elif fmt == "ddp":
            torch.save({f"module.{k}": v for k, v in sd.items()}, path)
        elif fmt == "msclip_state_dict":  # torch.save(model.state_dict()) of an MSCLIP
            torch.save(tiny.state_dict(), path)
        else:
            torch.save({"model": sd, "step": 10}, path)
        loaded = msclip.create_model("msclip-tiny", pretrained=path)
    x = _images()
    assert torch.equal(_embed(loaded, x), _embed(tiny, x))
    assert loaded.checkpoint_sha256 == msclip.pretrained.file_sha256(path)


def test_safetensors_metadata_records_bands_and_stats(tiny, tmp_path):
    from safetensors import safe_open

    path = msclip.save_checkpoint(tiny, tmp_path / "m.safetensors")
    with safe_open(path, "pt") as f:
        meta = f.metadata()
    assert eval(meta["bands"]) == list(LLAMA3_MS_CLIP_BANDS)  # JSON list of strings
    assert '"B02": 925.161' in meta["stats"]


def test_mismatch_names_keys_and_shapes(tiny, tmp_path):
    sd = {k: v.clone() for k, v in tiny.clip.state_dict().items()}
    sd.pop("ln_final.weight")
    sd["extra.weight"] = torch.zeros(1)
    sd["visual.conv1.weight"] = torch.zeros(64, 12, 8, 8)  # a 12-band checkpoint
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError) as err:
        msclip.create_model("msclip-tiny", pretrained=tmp_path / "bad.pt")
    msg = str(err.value)
    assert "ln_final.weight" in msg and "extra.weight" in msg
    assert "(64, 12, 8, 8)" in msg and "(64, 10, 8, 8)" in msg and "band count" in msg


def test_bad_downloads_and_damaged_metadata_are_named(tiny, tmp_path):
    lfs = tmp_path / "Llama3_MS_CLIP_weights.pt"  # a clone without git lfs
    lfs.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 604\n")
    with pytest.raises(CheckpointError, match=r"is a Git LFS pointer .*git lfs pull"):
        read_checkpoint(lfs)
    page = tmp_path / "weights.safetensors"  # a /blob/ address saved with wget
    page.write_text("\n<!DOCTYPE html>\n<html><head><title>weights</title></head></html>")
    with pytest.raises(CheckpointError, match=r"is a web page .* /resolve/ address"):
        read_checkpoint(page)
    # msclip metadata that is damaged: the field is named, not a JSON traceback
    sd = {k: v.contiguous() for k, v in tiny.clip.state_dict().items()}
    damages = [({"msclip_config": "{bad json"}, "msclip_config"),
               ({"msclip_config": "{}", "temperature": "nan?"}, "temperature")]  # fmt: skip
    for meta, field in damages:
        damaged = tmp_path / f"{field}.safetensors"
        save_file(sd, str(damaged), metadata=meta)
        with pytest.raises(CheckpointError, match=f"metadata field '{field}' is damaged"):
            msclip.create_model(damaged)
    incomplete = tmp_path / "incomplete.safetensors"
    save_file(sd, str(incomplete), metadata={"msclip_config": '{"arch": "msclip-tiny"}'})
    with pytest.raises(CheckpointError, match="model description is incomplete or damaged"):
        msclip.create_model(incomplete)


def test_a_wrapper_prefix_shared_by_every_key_is_dropped(tiny, tmp_path):
    # a Lightning module holding the model as self.model (and as self.model.clip, an MSCLIP)
    for prefix in ("model.", "model.clip.", "net.module."):
        path = tmp_path / f"{prefix.replace('.', '_')}.ckpt"
        torch.save({"state_dict": {prefix + k: v for k, v in tiny.clip.state_dict().items()},
                    "epoch": 3}, path)  # fmt: skip
        loaded = msclip.create_model("msclip-tiny", pretrained=path)
        assert torch.equal(_embed(loaded, _images()), _embed(tiny, _images())), prefix
    # keys of something else under one prefix are left as they are and named
    other = tmp_path / "other.pt"
    torch.save({"encoder.layer.0.weight": torch.zeros(2)}, other)
    with pytest.raises(CheckpointMismatchError, match=r"encoder\.layer\.0\.weight"):
        msclip.create_model("msclip-tiny", pretrained=other)


def test_refuses_to_unpickle_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"visual.conv1.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="never unpickles arbitrary objects") as err:
        read_checkpoint(tmp_path / "evil.pt")
    # torch's own advice to retry with weights_only=False is not passed on
    assert "weights_only" not in str(err.value) and "Re-running" not in str(err.value)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(CheckpointError):
        read_checkpoint(tmp_path / "garbage.safetensors")


_RAN: list[str] = []


def _ran(what):
    _RAN.append(what)
    return what


class _Hyper:
    """A hyper-parameter object whose unpickling would run code (``_ran``)."""

    def __reduce__(self):
        return (_ran, ("hyper-parameters",))


class _Weights(enum.Enum):  # as torchgeo's weight enums, kept by its trainers' hyper-parameters
    SENTINEL2 = "s2"


class _Extra(dict):
    pass


class _Many(list):
    pass


def test_objects_beside_the_weights_are_stood_in_for_without_running_code(tiny, tmp_path):
    # A Lightning checkpoint whose hyper-parameters hold objects (save_hyperparameters(args) keeps
    # a Namespace; torchgeo keeps its weight enums): torch's safe unpickler refuses the whole
    # file; msclip reads the weights and binds every such class name to an inert stand-in.
    import argparse
    import collections

    path = tmp_path / "lightning.ckpt"
    hyper = {"args": argparse.Namespace(lr=1e-4, bands=["B02"]), "weights": _Weights.SENTINEL2,
             "optimizer": torch.optim.AdamW, "hook": _Hyper(),
             "by_class": collections.defaultdict(list)}  # fmt: skip
    torch.save({"state_dict": {"model." + k: v for k, v in tiny.clip.state_dict().items()},
                "hyper_parameters": hyper, "epoch": 3}, path)  # fmt: skip
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    loaded = msclip.create_model("msclip-tiny", pretrained=path)
    assert torch.equal(_embed(loaded, _images()), _embed(tiny, _images()))
    assert read_checkpoint(path).mapped and _RAN == []  # no code of the file ran

    # a stand-in where the weights are is refused: a value of the state dict, ...
    for name, obj in {
        "in_state_dict": {"state_dict": {"visual.conv1.weight": _Hyper()}, "args": _Extra()},
        "as_value": {"visual.conv1.weight": _Hyper()},
        "module": torch.nn.Linear(2, 2),  # ... or a whole pickled module
        # items of a dict or list subclass cannot be set on a stand-in by the safe unpickler
        "dict_subclass": {"state_dict": tiny.clip.state_dict(), "args": _Extra(a=1)},
        "list_subclass": {"state_dict": tiny.clip.state_dict(), "args": _Many([1])},
    }.items():
        torch.save(obj, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match="never unpickles arbitrary objects") as err:
            read_checkpoint(tmp_path / f"{name}.pt")
        assert "weights_only" not in str(err.value), name
        if name.endswith("subclass"):  # the reason named is the one that stopped the reading
            assert ("_Extra" if name == "dict_subclass" else "_Many") in str(err.value)
    assert _RAN == []


def test_offline_without_weights_names_file_and_flag(tmp_path):
    with pytest.raises(WeightsNotFoundError) as err:
        msclip.create_model("Llama3-MS-CLIP-Base", pretrained=True, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert "Llama3_MS_CLIP_weights.pt" in msg and "ibm-esa-geospatial/Llama3-MS-CLIP-base" in msg
    # the library names the parameter; command-line programs add the flag (--ckpt-path)
    assert "pretrained='/path/to/Llama3_MS_CLIP_weights.pt'" in msg and "--" not in msg
    assert err.value.param == "pretrained"
    with pytest.raises(WeightsNotFoundError, match=r"nope\.pt") as err:
        msclip.create_model("msclip-tiny", pretrained=tmp_path / "nope.pt")
    assert err.value.param == "pretrained"


def test_an_unreachable_hub_fails_at_once_without_retries(tmp_path, monkeypatch):
    import time

    import huggingface_hub.constants

    from msclip.cli.common import error_line

    # no HF_HUB_OFFLINE: the hub client alone retried five times with back-off (~30 s)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    t0 = time.perf_counter()
    with pytest.raises(WeightsNotFoundError, match=r"hub\.invalid does not resolve") as err:
        msclip.create_model("Llama3-MS-CLIP-Base", pretrained=True, cache_dir=str(tmp_path))
    assert time.perf_counter() - t0 < 10
    # a program writes the parameter as its flag, once
    line = error_line(err.value)
    assert "(--ckpt-path /path/to/Llama3_MS_CLIP_weights.pt)" in line
    assert "pretrained=" not in line and "command-line option" not in line


def test_hub_cache_is_used_offline(tiny, tmp_path, monkeypatch):
    """Weights already in the Hugging Face cache load with HF_HUB_OFFLINE=1."""
    entry = msclip.pretrained.ModelEntry(
        "tiny-hub", "msclip-tiny", LLAMA3_MS_CLIP_BANDS, "llama3-ms-clip",
        hub_id="example-org/tiny-msclip", filenames=("weights.pt",),
    )  # fmt: skip
    monkeypatch.setitem(msclip.pretrained.MODELS, "tiny-hub", entry)
    commit = "0" * 40
    repo = tmp_path / "models--example-org--tiny-msclip"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    msclip.export_release_checkpoint(tiny, snap / "weights.pt")
    loaded = msclip.create_model("tiny-hub", pretrained=True, cache_dir=str(tmp_path))
    x = _images()
    assert torch.equal(_embed(loaded, x), _embed(tiny, x))
    # without HF_HUB_OFFLINE too: the cache is looked at before the network
    monkeypatch.delenv("HF_HUB_OFFLINE")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "https://hub.invalid")
    again = msclip.create_model("tiny-hub", pretrained=True, cache_dir=str(tmp_path))
    assert torch.equal(_embed(again, x), _embed(tiny, x))


def test_band_adaptation_in_the_model(tiny, make_geotiff):
    path, data = make_geotiff(count=10, size=(32, 32))
    pre = tiny.preprocess()
    ref = _embed(tiny, pre(path)[None])
    # The same bands stored in another order and named in the file: identical embedding.
    order = [9, 3, 0, 7, 1, 5, 2, 8, 4, 6]
    shuffled, _ = make_geotiff(name="shuffled.tif", count=10, size=(32, 32),
                               descriptions=[LLAMA3_MS_CLIP_BANDS[i] for i in order])  # fmt: skip
    msclip.write_geotiff(shuffled, data[order], bands=[LLAMA3_MS_CLIP_BANDS[i] for i in order])
    assert torch.equal(_embed(tiny, pre(shuffled)[None]), ref)
    # encode_image(bands=...) on a permuted normalised tensor: identical too.
    x = pre(path)[None]
    with torch.inference_mode():
        permuted = tiny.encode_image(x[:, order], bands=[LLAMA3_MS_CLIP_BANDS[i] for i in order])
    assert torch.equal(_embed(tiny, x), permuted)
    # A 12-band L2A file gives exactly the 10-band result (B01 and B09 left out).
    l2a = np.zeros((12, 32, 32), dtype=np.uint16)
    l2a[[1, 2, 3, 4, 5, 6, 7, 8, 10, 11]] = data
    l2a[[0, 9]] = 777
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(_embed(tiny, pre(l2a)[None]), ref)


def test_forward_features_and_text_trim(tiny):
    feats = tiny.forward_features(_images(), layers=[0, -1])
    assert [f.shape for f in feats] == [(2, 16, 64), (2, 16, 64)]
    tok = msclip.get_tokenizer(tiny)(["forest", "a satellite image of a river crossing farmland"])
    with torch.inference_mode():
        full = tiny.encode_text(tok)
        trimmed = tiny.encode_text(tok, trim=True)
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_bf16_precision_runs():
    model = msclip.create_model("msclip-tiny", precision="bf16")
    assert model.dtype == torch.bfloat16
    with torch.inference_mode():
        assert model.encode_image(_images()).dtype == torch.bfloat16


def test_unknown_model():
    with pytest.raises(msclip.UnknownModelError, match="registered models"):
        msclip.create_model("ViT-Z-99")


def test_checkpoint_bands_are_checked_and_remapped(tmp_path):
    torch.manual_seed(2)
    l2a = msclip.create_model("msclip-tiny", bands=msclip.spectral.S2_L2A_BANDS)
    path = msclip.save_checkpoint(l2a, tmp_path / "l2a.safetensors")
    # Same band count, other bands: refused rather than silently misread.
    other = tuple(reversed(LLAMA3_MS_CLIP_BANDS))  # the model's bands in another channel order
    with pytest.raises(CheckpointMismatchError, match="band count differs"):
        msclip.create_model("msclip-tiny", pretrained=path)  # 12-band kernel, 10-band model
    with pytest.raises(CheckpointMismatchError, match="made for bands"):
        msclip.create_model(
            "msclip-tiny", pretrained=msclip.save_checkpoint(
                msclip.create_model("msclip-tiny", bands=other), tmp_path / "o.safetensors"),
        )  # fmt: skip
    # Asking for the 10-band set remaps the kernel by band identity.
    ten = msclip.create_model(path, bands=LLAMA3_MS_CLIP_BANDS)
    src = l2a.patch_embed.weight
    for i, b in enumerate(LLAMA3_MS_CLIP_BANDS):
        assert torch.equal(ten.patch_embed.weight[:, i], src[:, l2a.bands.index(b)])


def test_fingerprint_is_the_one_model_identity(tiny):
    from msclip.text_cache import model_cache_key

    info = tiny.describe()
    assert info["fingerprint"] == tiny.fingerprint() and len(tiny.fingerprint()) == 32
    assert model_cache_key(tiny) == tiny.fingerprint()  # the text cache keys on it
    assert info["precision"] == "fp32" and info["bands"] == list(tiny.bands)
    # same weights -> same fingerprint; other weights, precision or bands -> another one
    twin = copy.deepcopy(tiny)
    twin.checkpoint_sha256 = None
    assert twin.fingerprint() == copy.deepcopy(tiny).fingerprint()
    with torch.no_grad():
        twin.clip.visual.proj.add_(1.0)
    twin.checkpoint_sha256 = None
    assert twin.fingerprint() != tiny.fingerprint()
    bf16 = copy.deepcopy(tiny).to(torch.bfloat16)
    assert bf16.fingerprint() != tiny.fingerprint()
    assert bf16.fingerprint(precision=False) == tiny.fingerprint(precision=False)
    assert bf16.describe()["precision"] == "bf16"


def test_weights_trained_in_place_get_a_new_identity(tiny, tmp_path):
    """A model loaded from a file and then trained in memory (optimizer steps) is not the file
    any more: its identity, and every cache keyed on it, changes; inference does not."""
    path = msclip.save_checkpoint(tiny, tmp_path / "m.safetensors")
    model = msclip.create_model(path, precision="fp32")
    first, fp = model.checkpoint_sha256, model.fingerprint()
    assert not first.startswith("weights:") and model.checkpoint_path == str(path)
    x = torch.randn(2, len(model.bands), 32, 32)
    with torch.inference_mode():
        model.encode_image(x)
    assert model.checkpoint_sha256 == first and model.fingerprint() == fp
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.encode_image(x).sum().backward()
    opt.step()
    assert model.checkpoint_sha256.startswith("weights:") and model.fingerprint() != fp
    assert model.checkpoint_path is None
    again = model.fingerprint()
    assert model.fingerprint() == again  # computed once per change


def test_the_seed_of_random_weights_is_described_until_they_change(tmp_path):
    """The programs record the seed of the random weights they draw (``--no-pretrained --seed``)
    in the model's description; it is information, not identity, and weights that change or
    come from a file are no longer that draw."""
    from msclip.cli.common import model_from_args

    model = model_from_args("msclip-tiny", None, False, seed=5, precision="fp32")
    info = model.describe()
    assert info["init_seed"] == 5
    torch.manual_seed(5)
    assert msclip.create_model("msclip-tiny", precision="fp32").fingerprint() == info["fingerprint"]
    shipped = model_from_args("msclip-demo", None, True, seed=5, precision="fp32")
    assert "init_seed" not in shipped.describe()  # published weights
    with torch.no_grad():
        model.clip.visual.proj.add_(1.0)
    assert "init_seed" not in model.describe()  # changed in place
    again = model_from_args("msclip-tiny", None, False, seed=5, precision="fp32")
    again.load_state_dict(model.state_dict())
    assert again.init_seed is None
    # a checkpoint named by --model-name has its own weights: --no-pretrained contradicts it
    from msclip.errors import UsageError

    demo = msclip.create_model("msclip-demo", True, precision="fp32")
    demo_file = Path(demo.checkpoint_path)
    with pytest.raises(UsageError, match="--no-pretrained asks for random weights"):
        model_from_args(str(demo_file), None, False, seed=5, precision="fp32")
    from_file = model_from_args(str(demo_file), None, True, seed=5, precision="fp32")
    assert from_file.init_seed is None and "init_seed" not in from_file.describe()
    assert from_file.fingerprint() == demo.fingerprint()


def test_create_model_draws_random_weights_from_a_seed_and_keeps_it():
    """``create_model(..., seed=N)``: the same weights as ``torch.manual_seed(N)`` before the
    call, in any precision, with the seed described; refused where the weights come from a
    file, and a seed that is not an integer is a TypeError."""
    a = msclip.create_model("msclip-tiny", seed=7, precision="fp32")
    torch.manual_seed(7)
    b = msclip.create_model("msclip-tiny", precision="fp32")
    assert a.init_seed == 7 and a.describe()["init_seed"] == 7 and b.init_seed is None
    assert a.fingerprint() == b.fingerprint()
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    for precision in ("bf16", "int8"):
        c = msclip.create_model("msclip-tiny", seed=7, precision=precision)
        assert c.init_seed == 7 and c.checkpoint_sha256 == a.checkpoint_sha256, precision
    import numpy as np

    assert msclip.create_model("msclip-tiny", seed=np.int64(7)).init_seed == 7  # a numpy seed
    model, _, _ = msclip.create_model_and_transforms("msclip-tiny", seed=7, precision="fp32")
    assert model.fingerprint() == a.fingerprint() and model.init_seed == 7
    with pytest.raises(ValueError, match=r"seed=7 draws random weights.*published weights of"):
        msclip.create_model("msclip-demo", True, seed=7)
    # refused before the weights are looked for (no download of what would not be used)
    with pytest.raises(ValueError, match="leave seed out"):
        msclip.create_model("ViT-B-16", True, seed=1)
    with pytest.raises(ValueError, match=r"from /no/such/file\.safetensors"):
        msclip.create_model("/no/such/file.safetensors", seed=1)
    demo_file = msclip.create_model("msclip-demo", True, precision="fp32").checkpoint_path
    with pytest.raises(ValueError, match=f"from {demo_file}"):
        msclip.create_model(demo_file, seed=7)
    for bad in (True, 1.5, "7"):
        with pytest.raises(TypeError, match="seed must be an integer"):
            msclip.create_model("msclip-tiny", seed=bad)


def test_empty_and_truncated_checkpoints_are_named(tiny, tmp_path):
    from msclip.errors import CheckpointError

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.pt: the file is empty \(0 bytes\)"):
        msclip.create_model("msclip-tiny", pretrained=empty)
    whole = tmp_path / "whole.pt"
    torch.save(tiny.clip.state_dict(), whole)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt: .*corrupted"):
        msclip.create_model("msclip-tiny", pretrained=cut)


def test_truncated_training_checkpoint_points_to_an_earlier_one(tmp_path):
    from msclip.errors import CheckpointError
    from msclip.train.checkpoint import FORMAT, load_train_checkpoint

    good = tmp_path / "step_10.pt"
    torch.save({"format": FORMAT, "x": torch.zeros(3)}, good)
    bad = tmp_path / "step_20.pt"
    bad.write_bytes(good.read_bytes()[:40])
    with pytest.raises(CheckpointError, match=r"step_20.pt: .*resume=.*step_10.pt"):
        load_train_checkpoint(bad)


def test_a_training_checkpoint_describes_its_architecture(tiny, tmp_path):
    import json

    from msclip.cli.common import model_from_args
    from msclip.factory import describes_itself

    path = tmp_path / "step_5.pt"
    torch.save({"model": tiny.clip.state_dict(), "step": 5,
                "msclip_config": json.dumps(tiny.config.to_dict())}, path)  # fmt: skip
    assert describes_itself(path)
    loaded = model_from_args(None, path, True, default_name="Llama3-MS-CLIP-Base")
    x = _images()
    assert torch.equal(_embed(loaded, x), _embed(tiny, x))
    plain = tmp_path / "plain.pt"
    torch.save(tiny.clip.state_dict(), plain)
    assert not describes_itself(plain)


def test_a_checkpoint_without_msclip_config_is_told_without_unpickling(tiny, tmp_path, monkeypatch):
    """A release checkpoint (a zip whose pickle never names msclip_config) is told from an
    msclip training checkpoint by its pickle's bytes; the ~400 tensor records are not unpickled."""
    from msclip.factory import describes_itself

    plain = tmp_path / "release.pt"
    torch.save({"state_dict": tiny.clip.state_dict()}, plain)
    calls = []
    real = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    assert not describes_itself(plain)
    assert calls == []
    named = tmp_path / "named.pt"  # the key's bytes elsewhere (a value): unpickled to know
    torch.save({"note": "no msclip_config here", "w": torch.zeros(2)}, named)
    assert not describes_itself(named)
    assert len(calls) == 1


def test_a_file_that_is_not_a_checkpoint_is_named(tmp_path):
    from msclip.cli.common import model_from_args
    from msclip.errors import CheckpointError
    from msclip.train.checkpoint import load_train_checkpoint

    junk = tmp_path / "junk.pt"
    junk.write_text("hi\n")
    loads = (
        lambda: load_train_checkpoint(junk),
        lambda: msclip.create_model("msclip-tiny", pretrained=junk),
        lambda: model_from_args(None, junk, True, default_name="msclip-tiny"),
    )
    for load in loads:
        with pytest.raises(CheckpointError, match=r"junk\.pt: the file is not a torch checkpoint"):
            load()


def test_forward_refuses_a_logit_scale_whose_exp_is_not_finite(tiny):
    """A finite inverse temperature is returned as OpenCLIP returns it (a model trained with a
    --max-logit-scale above 100 keeps its own); weights whose logit_scale makes it infinite
    (1e6, infinity) or NaN gave infinite logits and a NaN softmax without a word: refused."""
    model = copy.deepcopy(tiny)
    x, tokens = _images(2), msclip.get_tokenizer(model)(["sea", "forest"])
    for fine in (2.0, 6.0):  # exp(6) = 403: above CLIP's 100, yet a trained value
        with torch.no_grad():
            model.clip.logit_scale.fill_(fine)
        img, txt, scale = model(x, tokens)
        assert torch.equal(scale, model.clip.logit_scale.exp())
        assert torch.isfinite((scale * img @ txt.T).softmax(-1)).all()
    for bad in (1e6, float("inf"), float("nan")):
        with torch.no_grad():
            model.clip.logit_scale.fill_(bad)
        with pytest.raises(CheckpointError, match=r"logit_scale is .*damaged.*msclip\.zero_shot"):
            model(x, tokens)
