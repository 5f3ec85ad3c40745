"""How --model-name and --ckpt-path reach the loader: files given to the wrong flag, folders,
broken links, and checkpoints loaded into the default architecture."""

from __future__ import annotations

import argparse
import os

import pytest
import torch

import msclip
from msclip.cli.common import UsageError, check_checkpoint, model_from_args
from msclip.errors import CheckpointMismatchError


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A plain OpenCLIP state dict of msclip-tiny (no model description)."""
    torch.manual_seed(0)
    model = msclip.create_model("msclip-tiny", precision="fp32")
    path = tmp_path_factory.mktemp("plain") / "plain.pt"
    torch.save({"module." + k: v for k, v in model.clip.state_dict().items()}, path)  # DDP
    return path


def test_a_plain_checkpoint_given_as_model_name_says_which_flags_to_use(plain) -> None:
    with pytest.raises(UsageError) as err:
        model_from_args(str(plain), None, True, default_name="msclip-tiny")
    msg = str(err.value)
    assert f"--model-name msclip-tiny --ckpt-path {plain}" in msg
    loaded = model_from_args("msclip-tiny", plain, True, precision="fp32")  # what it says works
    assert loaded.checkpoint_path == str(plain)


def test_the_default_architecture_assumed_for_a_checkpoint_is_said(plain) -> None:
    with pytest.raises(CheckpointMismatchError) as err:
        model_from_args(None, plain, True, default_name="msclip-demo", precision="fp32")
    msg = str(err.value)
    assert "the default model msclip-demo was assumed" in msg and "--model-name" in msg


def test_the_kernel_hint_is_about_bands_only_when_the_bands_differ(plain, tmp_path) -> None:
    sd = torch.load(plain, weights_only=True)
    sd["module.visual.conv1.weight"] = torch.zeros(64, 10, 4, 4)  # other patch size, 10 bands
    other = tmp_path / "patch4.pt"
    torch.save(sd, other)
    with pytest.raises(CheckpointMismatchError) as err:
        msclip.create_model("msclip-tiny", other)
    assert "(64, 10, 4, 4)" in str(err.value) and "band count" not in str(err.value)


def test_a_folder_or_a_broken_link_is_named_as_such(plain, tmp_path) -> None:
    folder = tmp_path / "Llama3-MS-CLIP-base"  # huggingface-cli download --local-dir
    folder.mkdir()
    (folder / "Llama3_MS_CLIP_weights.pt").write_bytes(b"x")
    (folder / "README.md").write_text("readme")
    args = argparse.Namespace(ckpt_path=str(folder), model_name=None)
    with pytest.raises(UsageError) as err:
        check_checkpoint(args)
    msg = str(err.value)
    assert "is a folder" in msg and str(folder / "Llama3_MS_CLIP_weights.pt") in msg
    assert "README" not in msg and "--ckpt-path" in msg
    with pytest.raises(FileNotFoundError, match="is a folder"):
        msclip.create_model("msclip-tiny", folder)
    link = tmp_path / "weights.pt"  # a hub cache entry whose blob is gone
    os.symlink(tmp_path / "blobs" / "0a1b2c", link)
    with pytest.raises(UsageError, match=r"is a link to .*0a1b2c, which does not exist"):
        model_from_args("msclip-tiny", link, True)
    with pytest.raises(FileNotFoundError, match="which does not exist"):
        msclip.create_model(link)


def test_no_pretrained_with_a_checkpoint_file_as_model_name_is_refused(tmp_path, capsys) -> None:
    from msclip.cli.inference import main
    from msclip.pretrained import save_checkpoint

    ckpt = tmp_path / "tiny.safetensors"
    save_checkpoint(msclip.create_model("msclip-tiny", precision="fp32"), ckpt)
    # the file's weights were loaded whatever --no-pretrained said
    with pytest.raises(UsageError, match="--no-pretrained asks for random weights"):
        model_from_args(str(ckpt), None, False, seed=0)
    from support.train_tiles import write_class_tif

    images = tmp_path / "images"
    write_class_tif(images / "a.tif", 0, 0)
    out = tmp_path / "out.csv"
    argv = ["--run-classification", "--model-name", str(ckpt), "--no-pretrained", "--images",
            str(images), "--class-names", "forest", "river", "--save-path", str(out)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"--no-pretrained asks for random weights, but --model-name {ckpt}" in err
    assert not out.exists()
    assert model_from_args(str(ckpt), None, True).checkpoint_path == str(ckpt)  # as it says
