"""The device of a training process, with the CUDA branches forced on the CPU: a CUDA device the
machine cannot give is refused with the option that asked for it, and under torchrun each process
makes its own GPU the current one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from support.train_tiles import pairs_table

from msclip.cli.train import main
from msclip.train.config import ConfigError
from msclip.train.distributed import init_distributed


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives the second of two processes on one machine."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1",
                       "LOCAL_WORLD_SIZE": "2"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)


def test_cuda_without_a_gpu_names_the_option(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="no usable CUDA GPU") as info:
            init_distributed(device=device)
        assert info.value.param == "device"
    assert init_distributed(device="auto").device == torch.device("cpu")
    with pytest.raises(ConfigError, match="unknown device 'gpu'") as info:  # not torch's error
        init_distributed(device="gpu")
    assert info.value.param == "device"


def test_more_processes_than_gpus_is_refused(monkeypatch, torchrun_env) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    for device in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"cuda:1 \(LOCAL_RANK 1\).* 1 CUDA device") as info:
            init_distributed(device=device)
        assert info.value.param == "device"


def test_each_process_makes_its_gpu_current_in_a_group_made_elsewhere(
    monkeypatch, torchrun_env
) -> None:
    """A process group created by the caller (dist.init_process_group before msclip's train):
    the process still computes on, and makes current, cuda:LOCAL_RANK (not cuda:0)."""
    current: list[torch.device] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: current.append(torch.device(d)))
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    ctx = init_distributed(device="cuda")
    assert ctx.device == torch.device("cuda:1") and not ctx.owns_group
    assert current == [torch.device("cuda:1")]


def test_cli_device_cuda_without_a_gpu_is_a_usage_error(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    code = main(["--train-data", pairs_table(tmp_path), "--model", "msclip-tiny",
                 "--output-dir", str(out), "--device", "cuda"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    assert "--device" in err and "no usable CUDA GPU" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"WORLD_SIZE": "2"},
            r"RANK is not set, but WORLD_SIZE=2 .*start every process with "
            r"torchrun",
        ),
        ({"WORLD_SIZE": "2", "RANK": "0"}, r"MASTER_ADDR is not set"),
        ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1"}, r"MASTER_PORT is not set"),
        ({"WORLD_SIZE": "two", "RANK": "0"}, r"WORLD_SIZE='two' is not a whole number"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, r"RANK='x' is not a whole number"),
        ({"WORLD_SIZE": "0"}, r"WORLD_SIZE=0 must be at least 1"),
        # a rank past the group would wait for its store until the timeout, deaf to SIGTERM
        (
            {"WORLD_SIZE": "2", "RANK": "5", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"},
            r"RANK=5 is not a process of a group of WORLD_SIZE=2 \(0 to 1\)",
        ),
        (
            {
                "WORLD_SIZE": "2",
                "RANK": "1",
                "LOCAL_RANK": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": "1",
            },
            r"LOCAL_RANK=2 is not a process of the 2 on this machine",
        ),
    ],
)
def test_a_partial_torchrun_environment_is_refused_before_the_rendezvous(
    monkeypatch, env, message
) -> None:
    """Processes started by hand (a batch script) with some of torchrun's variables: the one
    missing or wrong is named, before torch's rendezvous (a KeyError, a ValueError or a wait)."""
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR",
                "MASTER_PORT"):  # fmt: skip
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined"))
    with pytest.raises(ConfigError, match=message):
        init_distributed(device="cpu")


def test_several_gpu_processes_without_local_rank_are_refused(monkeypatch) -> None:
    """Processes started by hand with RANK and WORLD_SIZE but no LOCAL_RANK: with GPUs each
    would take cuda:0 (the default local rank), so the variable is asked for."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: pytest.fail("set"))
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: pytest.fail("joined"))
    monkeypatch.setattr("msclip.factory._check_device", lambda d: None)
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    for device in ("auto", "cuda"):
        with pytest.raises(ConfigError, match=r"LOCAL_RANK is not set: with 2 processes") as info:
            init_distributed(device=device)
        assert info.value.param == "device"
