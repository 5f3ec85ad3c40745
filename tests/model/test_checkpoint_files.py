"""Checkpoint files as researchers bring them: misnamed formats, TorchScript archives, damaged
files, paths with ``~``, files without a model description, typos in model names."""

from __future__ import annotations

import shutil
import warnings

import pytest
import torch

import msclip
from msclip.errors import CheckpointError
from msclip.factory import describes_itself


@pytest.fixture(scope="module")
def tiny_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="fp32")
    st = msclip.save_checkpoint(model, root / "tiny.safetensors")
    plain = root / "plain.pt"
    torch.save(model.clip.state_dict(), plain)
    return model, st, plain


def _same_weights(a, b) -> bool:
    sa, sb = a.clip.state_dict(), b.clip.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_the_format_is_told_from_the_content_not_the_suffix(tiny_files, tmp_path) -> None:
    model, st, plain = tiny_files
    # an msclip safetensors file saved under a torch name: it still describes itself and loads
    for name in ("weights.pt", "weights.pth", "weights.bin"):
        misnamed = shutil.copy(st, tmp_path / name)
        assert describes_itself(misnamed), name
        assert _same_weights(msclip.create_model(misnamed, precision="fp32"), model), name
        loaded = msclip.create_model("msclip-tiny", misnamed, precision="fp32")
        assert _same_weights(loaded, model), name
    # whatever the first byte of the header length (0x80 is also the first byte of a pickle)
    from safetensors.torch import save_file

    sd = {"w": torch.zeros(2)}
    for pad in range(256):
        odd = tmp_path / "odd.pt"
        save_file(sd, str(odd), metadata={"pad": "x" * pad})
        if odd.read_bytes()[0] == 0x80:
            break
    assert msclip.pretrained.read_checkpoint(odd).state_dict.keys() == {"w"}
    # a torch file under a safetensors name: named as such, with the fix (not a header error)
    torch_named_st = shutil.copy(plain, tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match=r"is a torch checkpoint.*rename it to plain\.pt"):
        msclip.create_model("msclip-tiny", torch_named_st)


def test_empty_and_truncated_safetensors_say_so(tiny_files, tmp_path) -> None:
    _, st, _ = tiny_files
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty\.safetensors: the file is empty \(0 bytes\)"):
        msclip.create_model(empty)
    data = st.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"truncated .*\({len(data) // 2} bytes"):
        msclip.create_model("msclip-tiny", cut)


def test_a_torchscript_archive_is_refused_without_running_it(tmp_path) -> None:
    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    path = tmp_path / "ViT-B-16.pt"  # as OpenAI's original CLIP files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(Net()), str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not dispatched to torch.jit.load (torch warns then)
        with pytest.raises(CheckpointError) as err:
            msclip.create_model("msclip-tiny", path)
    msg = str(err.value)
    assert "TorchScript archive" in msg and "state_dict()" in msg
    assert "weights_only" not in msg  # never the advice to unpickle with full pickle


def test_paths_with_a_tilde_are_expanded(tiny_files, tmp_path, monkeypatch) -> None:
    model, st, _ = tiny_files
    monkeypatch.setenv("HOME", str(tmp_path))
    shutil.copy(st, tmp_path / "mine.safetensors")
    assert _same_weights(msclip.create_model("~/mine.safetensors", precision="fp32"), model)
    assert msclip.get_tokenizer("~/mine.safetensors")(["a river"]).shape == (1, 77)
    assert msclip.pretrained.read_checkpoint("~/mine.safetensors").format == "msclip"


def test_the_tokenizer_of_a_file_without_a_model_description(tiny_files) -> None:
    _, _, plain = tiny_files
    with pytest.raises(msclip.UnknownModelError, match=r"plain\.pt does not describe its arch"):
        msclip.get_tokenizer(plain)


def test_a_mistyped_model_name_gets_the_close_one(tiny_files) -> None:
    for typo, meant in [("Llama3-MS-CLIP-Bsae", "Llama3-MS-CLIP-Base"),
                        ("msclip_tiny", "msclip-tiny"), ("vit-b-61", "ViT-B-16")]:  # fmt: skip
        with pytest.raises(msclip.UnknownModelError, match=f"did you mean '{meant}'"):
            msclip.create_model(typo)
    with pytest.raises(FileNotFoundError, match="did you mean 'ViT-B-16'") as err:
        msclip.create_model("msclip-tiny", pretrained="VIT-B-16x")
    assert err.value.param == "pretrained"
    with pytest.raises(msclip.UnknownModelError) as err:
        msclip.create_model("resnet50")
    assert "did you mean" not in str(err.value)  # nothing close: the list alone


def test_the_hub_cache_searched_is_the_one_named(tiny_files, tmp_path, monkeypatch) -> None:
    from huggingface_hub import constants

    from msclip.errors import WeightsNotFoundError
    from msclip.pretrained import MODELS, resolve_weights

    hub = tmp_path / "hf_home" / "hub"  # HF_HOME=.../hf_home when huggingface_hub was imported
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    entry = MODELS["Llama3-MS-CLIP-Base"]
    with pytest.raises(WeightsNotFoundError) as err:
        resolve_weights(entry)
    assert f"not in the hub cache ({hub})" in str(err.value)
    # the file where the message says: found there, offline
    repo = hub / ("models--" + entry.hub_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    shutil.copy(tiny_files[2], snapshot / entry.filenames[0])
    assert resolve_weights(entry) == snapshot / entry.filenames[0]


def test_a_damaged_model_description_is_named_with_the_file(tiny_files, tmp_path) -> None:
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    _, st, _ = tiny_files
    with safe_open(str(st), "pt") as f:
        meta, sd = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    damages = {"stats": None, "arch_cfg": None, "bands": "B02"}
    for field, value in damages.items():
        config = json.loads(meta["msclip_config"])
        config[field] = value
        path = tmp_path / f"{field}.safetensors"
        save_file(sd, str(path), metadata={**meta, "msclip_config": json.dumps(config)})
        for load in (msclip.create_model, msclip.get_tokenizer):
            with pytest.raises(CheckpointError, match=rf"{field}\.safetensors: its msclip model"):
                load(path)
    config = json.loads(meta["msclip_config"])
    config["bands"][0] = "B99"
    path = tmp_path / "band.safetensors"
    save_file(sd, str(path), metadata={**meta, "msclip_config": json.dumps(config)})
    with pytest.raises(CheckpointError, match=r"band\.safetensors: .* does not know .*'B99'"):
        msclip.create_model(path)


def test_a_missing_release_file_is_named_with_where_it_is_published(tmp_path):
    """A missing checkpoint whose file name only one registered model publishes is named with the
    download command; a name several repositories share (OpenCLIP's) is not guessed at."""
    from msclip.heads.runconfig import FinetuneRunConfig
    from msclip.pretrained import missing_checkpoint_message

    missing = tmp_path / "Llama3_MS_CLIP_weights.pt"
    assert missing_checkpoint_message(missing) == (
        f"checkpoint file not found: {missing}; it holds the weights of Llama3-MS-CLIP-Base: "
        "download it with huggingface-cli download ibm-esa-geospatial/Llama3-MS-CLIP-base "
        "Llama3_MS_CLIP_weights.pt"
    )
    shared = tmp_path / "open_clip_model.safetensors"
    assert missing_checkpoint_message(shared) == f"checkpoint file not found: {shared}"
    with pytest.raises(Exception, match="huggingface-cli download ibm-esa-geospatial"):
        FinetuneRunConfig(folders=str(tmp_path), ckpt_path=str(missing)).validate()


def test_integer_and_valueless_tensors_are_named_not_torch_errors(tiny_files, tmp_path) -> None:
    """A state dict whose weight is stored as integers (a quantised one) or has no values (saved
    from a model built on the meta device) is refused with the weight's name and the fix, for the
    meta-device build of create_model and for a materialised model alike (torch's own error named
    neither the file nor the reason)."""
    from safetensors.torch import save_file

    from msclip.errors import CheckpointMismatchError
    from msclip.pretrained import load_weights, read_checkpoint

    model, _, _ = tiny_files
    sd = {k: v.clone() for k, v in model.clip.state_dict().items()}
    sd["ln_final.weight"] = sd["ln_final.weight"].to(torch.int8)
    torch.save(sd, tmp_path / "int.pt")
    save_file(sd, str(tmp_path / "int.safetensors"))
    for name in ("int.pt", "int.safetensors"):
        for precision in ("fp32", "bf16"):
            with pytest.raises(CheckpointMismatchError, match=r"ln_final\.weight: checkpoint int8"):
                msclip.create_model("msclip-tiny", tmp_path / name, precision=precision)
    sd = {k: v.clone() for k, v in model.clip.state_dict().items()}
    sd["ln_final.weight"] = torch.empty(sd["ln_final.weight"].shape, device="meta")
    torch.save(sd, tmp_path / "meta.pt")
    with pytest.raises(CheckpointError, match=r"meta\.pt holds 1 tensor\(s\) without values.*"
                       r"ln_final\.weight; save the weights again"):  # fmt: skip
        msclip.create_model("msclip-tiny", tmp_path / "meta.pt", precision="fp32")
    target = msclip.create_model("msclip-tiny", precision="fp32")  # materialised, random weights
    before = target.clip.ln_final.weight.detach().clone()
    for name in ("meta.pt", "int.pt"):
        with pytest.raises(CheckpointError, match=r"ln_final\.weight"):
            load_weights(target, read_checkpoint(tmp_path / name))
    assert torch.equal(target.clip.ln_final.weight, before)  # nothing half-loaded


def test_a_loop_of_links_is_named_as_such_not_as_a_missing_target(tmp_path) -> None:
    """A link in a loop of symbolic links was reported as a link whose target does not exist (a
    cleaned cache, download again), though its target exists; a dangling link still is."""
    from msclip.errors import WeightsNotFoundError

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    a.symlink_to(b)
    b.symlink_to(a)
    loop = r"a\.pt is a link to .*b\.pt in a loop of symbolic links .*point the link at the"
    for load in (lambda: msclip.create_model(a), lambda: msclip.create_model("msclip-tiny", a)):
        with pytest.raises(WeightsNotFoundError, match=loop):
            load()
    gone = tmp_path / "gone.pt"
    gone.symlink_to(tmp_path / "blob")
    with pytest.raises(WeightsNotFoundError, match=r"blob, which does not exist"):
        msclip.create_model("msclip-tiny", gone)


def test_weights_are_never_loaded_onto_the_meta_device_or_saved_from_it(tiny_files, tmp_path):
    """device='meta' keeps no values: with weights asked for it is refused (the weights were read,
    then dropped in silence), without them it builds the architecture alone; a model with weights
    on the meta device is refused by save_checkpoint and export_release_checkpoint by name, where
    torch failed naming neither the weights nor the file."""
    from msclip.errors import DeviceError

    _, st, plain = tiny_files
    for load in (lambda: msclip.create_model(st, device="meta"),
                 lambda: msclip.create_model("msclip-tiny", plain, device="meta")):  # fmt: skip
        with pytest.raises(DeviceError, match=r"device 'meta' holds no values: the weights of"):
            load()
    shell = msclip.create_model("msclip-tiny", device="meta", precision="fp32")
    assert all(p.is_meta for p in shell.parameters())
    for save in (msclip.save_checkpoint, msclip.export_release_checkpoint):
        with pytest.raises(CheckpointError, match=r"weights .* are on the meta device"):
            save(shell, tmp_path / "empty.safetensors")
    assert not list(tmp_path.iterdir())  # nothing written, no temporary file left


def test_a_checkpoint_of_more_bands_names_both_ways_to_load_it(tmp_path) -> None:
    """A file whose patch kernel reads other bands than the model's names its bands and the two
    ways out; the second, bands=..., loads it into the model's bands."""
    from msclip.errors import CheckpointMismatchError

    l2a = ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12"]
    torch.manual_seed(0)
    twelve = msclip.create_model("msclip-tiny", bands=l2a, precision="fp32")
    path = msclip.save_checkpoint(twelve, tmp_path / "l2a.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"It reads \['B01', .*create the model "
                       r"from the file alone .* or pass bands=\.\.\."):  # fmt: skip
        msclip.create_model("msclip-tiny", path, precision="fp32")
    ten = msclip.get_model_entry("msclip-tiny").bands
    model = msclip.create_model("msclip-tiny", path, bands=ten, precision="fp32")
    kernel = twelve.clip.visual.conv1.weight
    assert torch.equal(model.clip.visual.conv1.weight, kernel[:, [l2a.index(b) for b in ten]])
