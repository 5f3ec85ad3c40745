"""What every msclip program shares: exit codes, one-line errors with the flag of the parameter
at fault, a logging set-up undone on return, and argparse's own exits."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pytest

from msclip.cli import common
from msclip.cli.common import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    flag_hint,
    output_path,
    run_cli,
)
from msclip.errors import BandError, MSCLIPError, WeightsNotFoundError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="prog")
    p.add_argument("--n", type=common.positive_int, default=1)
    p.add_argument("--verbose", action="store_true")
    return p


def _run_raising(exc: BaseException):
    def run(args: argparse.Namespace) -> int:
        raise exc

    return run


def test_exit_codes(capsys):
    parse = _parser().parse_args
    assert run_cli(["--n", "3"], parse, lambda a: EXIT_OK) == 0
    assert run_cli(["--help"], parse, lambda a: EXIT_OK) == 0
    assert run_cli(["--n", "0"], parse, lambda a: EXIT_OK) == EXIT_USAGE  # argparse error
    assert "expected an integer >= 1" in capsys.readouterr().err
    assert run_cli(["--n", "abc"], parse, lambda a: EXIT_OK) == EXIT_USAGE  # not a number
    assert "argument --n: expected an integer >= 1, got 'abc'" in capsys.readouterr().err
    assert run_cli([], parse, _run_raising(UsageError("bad flag"))) == EXIT_USAGE
    assert capsys.readouterr().err == "error: bad flag\n"
    assert run_cli([], parse, _run_raising(KeyboardInterrupt())) == EXIT_INTERRUPTED
    status = run_cli([], parse, _run_raising(MSCLIPError("x")), error_status=lambda e: 1)
    assert status == 1
    capsys.readouterr()
    # a defect is told apart from a run whose inputs failed (1), traceback kept for the report
    assert run_cli([], parse, _run_raising(ZeroDivisionError("oops"))) == EXIT_INTERNAL == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: oops" in err
    assert err.rstrip().endswith("please report it with the command that was run")

    def broken_parse(argv):  # the same for a defect met while parsing
        raise AttributeError("no such field")

    assert run_cli([], broken_parse, lambda a: EXIT_OK) == EXIT_INTERNAL
    assert "AttributeError: no such field" in capsys.readouterr().err


def test_library_errors_get_the_flag_of_their_parameter(capsys):
    parse = _parser().parse_args
    err = BandError("cannot tell which bands a 5-band image holds", param="bands")
    assert run_cli([], parse, _run_raising(err)) == EXIT_USAGE
    assert capsys.readouterr().err.strip() == (
        "error: cannot tell which bands a 5-band image holds (command-line option: --bands)"
    )
    # a program's own table wins over the shared one
    assert flag_hint(err, {"bands": "--input-bands"}) == " (command-line option: --input-bands)"
    assert flag_hint(MSCLIPError("no parameter")) == ""


def test_an_os_error_is_one_line_not_a_traceback(capsys):
    parse = _parser().parse_args
    err = PermissionError(13, "Permission denied", "/ro/out.csv")
    assert run_cli([], parse, _run_raising(err)) == EXIT_USAGE
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and "Permission denied" in out and "Traceback" not in out

    def unreadable_config(argv):  # read while parsing (msclip-train --config run.yaml)
        raise PermissionError(13, "Permission denied", "run.yaml")

    assert run_cli([], unreadable_config, lambda a: EXIT_OK) == EXIT_USAGE
    assert capsys.readouterr().err == "error: [Errno 13] Permission denied: 'run.yaml'\n"


def test_logging_set_up_is_undone(capsys):
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger("py.warnings").handlers[:])

    def run(args):
        logging.getLogger("msclip.x").warning("careful")
        return EXIT_OK

    import warnings

    show = warnings.showwarning
    assert run_cli([], _parser().parse_args, run) == EXIT_OK
    assert "warning: careful" in capsys.readouterr().err
    assert (list(root.handlers), root.level) == before[:2]
    assert warnings.showwarning is show


def test_missing_published_weights_name_the_file_and_the_flag(capsys, tmp_path, monkeypatch):
    from msclip.cli.inference import main

    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.npy").write_bytes(b"")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    code = main(["--run-classification", "--images", str(images), "--class-names", "a", "b"])
    err = capsys.readouterr().err
    assert code == EXIT_USAGE
    assert "give its path (--ckpt-path /path/to/Llama3_MS_CLIP_weights.pt)" in err
    assert "pretrained=" not in err and "command-line option" not in err  # the flag, once


def test_output_path(tmp_path):
    assert str(output_path(None, "c.csv")) == "results/c.csv"
    assert output_path(str(tmp_path), "c.csv") == tmp_path / "c.csv"
    assert output_path(str(tmp_path / "x.csv"), "c.csv") == tmp_path / "x.csv"


def test_weights_error_is_a_library_error_without_flags():
    assert issubclass(WeightsNotFoundError, MSCLIPError)
    with pytest.raises(MSCLIPError) as err:
        raise WeightsNotFoundError("missing", param="pretrained")
    assert err.value.param == "pretrained" and flag_hint(err.value) == (
        " (command-line option: --ckpt-path)"
    )


def test_a_closed_output_ends_quietly(monkeypatch, capsys):
    import io

    from msclip.cli import scenes
    from msclip.cli.common import EXIT_PIPE_CLOSED

    class ClosedPipe(io.StringIO):
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("sys.stdout", ClosedPipe())
    assert scenes.main(["classes"]) == EXIT_PIPE_CLOSED
    assert capsys.readouterr().err == ""  # no "error: [Errno 32] Broken pipe"


def test_a_closed_pipe_in_a_real_process(tmp_path):
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "msclip.synthetic", "classes"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    proc.stdout.close()  # the reader goes away before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == ""


def test_a_program_started_with_stdout_or_stderr_closed_runs_to_its_own_status(tmp_path):
    """``>&-`` / ``2>&-`` (a daemon's or a scheduler's closed descriptor): Python leaves the
    stream None; the progress bar and the flush at exit raised AttributeError (status 1, and the
    traceback went into standard output when standard error was the closed one)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]

    def shell(redirect: str, *args: str) -> subprocess.CompletedProcess:
        line = f'exec "$0" -m msclip.synthetic "$@" {redirect}'
        return subprocess.run(
            ["sh", "-c", line, sys.executable, *args], capture_output=True, cwd=root, timeout=60
        )

    out = tmp_path / "tiles"
    done = shell("2>&-", "dataset", "--out", str(out), "--n-per-class", "1", "--size", "16",
                 "--classes", "forest")  # fmt: skip
    assert done.returncode == 0, done.stdout
    assert done.stdout.decode().splitlines() == [
        f"wrote 1 tile of 1 class, {out}/captions.csv and {out}/labels.csv"
    ]
    assert (out / "forest" / "forest_0000.tif").is_file()
    done = shell(">&-", "classes")
    assert (done.returncode, done.stderr) == (0, b"")
    done = shell("<&- >&- 2>&-", "classes")
    assert done.returncode == 0


def test_ctrl_c_again_while_the_process_ends_ends_it_quietly():
    """A second Ctrl-C pressed while an interrupted program ends (its exit hooks running) printed
    "Exception ignored in atexit callback" and a traceback; it now ends the process at once."""
    import subprocess
    import sys

    code = (
        "import atexit, os, signal, time\n"
        "from msclip.cli.common import exit_process\n"
        "def hook():\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(5)\n"
        "atexit.register(hook)\n"
        "exit_process(130)\n"
    )
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=root, timeout=60)
    assert (done.returncode, done.stderr.decode()) == (130, "")


def test_sigterm_cleans_up_as_ctrl_c_does(tmp_path, capsys):
    import argparse
    import signal

    from msclip.cli.common import EXIT_TERMINATED, run_cli
    from msclip.io import atomic_write

    target = tmp_path / "map.tif"

    def run(args):
        def write(tmp):
            Path(tmp).write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGTERM)  # a scheduler stops the job mid-write

        atomic_write(target, write, ".tif")
        return 0

    before = signal.getsignal(signal.SIGTERM)
    code = run_cli([], lambda argv: argparse.Namespace(quiet=True, verbose=False), run)
    assert code == EXIT_TERMINATED and "terminated" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # neither the file nor its temporary left behind
    assert signal.getsignal(signal.SIGTERM) == before  # the handler does not outlive the run


def test_names_the_terminal_cannot_encode_are_escaped_not_a_traceback(monkeypatch):
    """PYTHONIOENCODING=ascii or a Latin-1 locale: a class or file name such as "forêt" (or a
    file name that is not UTF-8) is written escaped; the run neither stops half-way nor leaves
    the stream changed."""
    import io
    import sys

    buffer, err_buffer = io.BytesIO(), io.BytesIO()
    stdout = io.TextIOWrapper(buffer, encoding="ascii")
    stderr = io.TextIOWrapper(err_buffer, encoding="utf-8")  # a caller's strict stream
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)

    def run(args):
        print("forêt\t0.9")
        print("bad\udcff.tif")
        print("warning: bad\udcff.tif skipped", file=sys.stderr)
        print("done")
        return EXIT_OK

    assert run_cli([], _parser().parse_args, run) == EXIT_OK
    stdout.flush()
    assert buffer.getvalue().decode("ascii").splitlines() == [
        "for\\xeat\t0.9",
        "bad\\udcff.tif",
        "done",
    ]
    stderr.flush()
    assert err_buffer.getvalue() == b"warning: bad\\udcff.tif skipped\n"
    assert stdout.errors == stderr.errors == "strict"  # put back for the caller


def test_failure_summary_says_a_shared_reason_once() -> None:
    from types import SimpleNamespace as F

    from msclip.cli.common import failure_summary

    fails = [F(name=f"b{i}.tif", reason=f"BandError: GeoTIFF b{i}.tif: 1 band") for i in range(9)]
    fails.insert(3, F(name="x.npy", reason="RasterReadError: image file is empty: x.npy"))
    text, rest = failure_summary(fails, others=3)
    assert rest == 0
    assert text == (
        "b0.tif (BandError: GeoTIFF b0.tif: 1 band), and the same for b1.tif, b2.tif, b3.tif "
        "and 5 more; x.npy (RasterReadError: image file is empty: x.npy)"
    )
    # distinct reasons beyond the limit are counted by input, not shown
    many = [F(name=f"f{i}", reason=f"error {i}") for i in range(4)] + fails
    text, rest = failure_summary(many, limit=4)
    assert text.count("error") == 4 and rest == 10
    # reasons given with library argument forms are worded as the programs' flags
    text, _ = failure_summary([F(name="a.tif", reason="name them (bands=['B02', 'B03'])")])
    assert "--bands B02 B03" in text


def test_tables_align_wide_characters_by_display_width(capsys):
    """Class names and queries in CJK scripts take two terminal columns per character; the
    printed tables pad them by display width (tabulate's wide-character mode)."""
    from wcwidth import wcswidth

    from msclip.cli.common import print_table

    print_table([["河流", 0.5], ["a river", 0.25]], ["Query", "Similarity"], 20, 2)
    lines = capsys.readouterr().out.splitlines()
    assert len({wcswidth(line) for line in lines[:4]}) == 1, lines


def test_seeds_outside_what_the_generators_take_are_usage_errors(tmp_path, capsys):
    """A --seed numpy or torch would refuse (negative, 2**64 and more) is the flag's error, in
    the programs and the run configurations, not an internal error after loading."""
    import msclip
    from msclip.cli.common import seed_int
    from msclip.cli.inference import main
    from msclip.errors import ConfigError
    from msclip.heads.runconfig import FinetuneRunConfig
    from msclip.train.config import TrainConfig

    assert seed_int("0") == 0 and seed_int(str(2**63 - 1)) == 2**63 - 1
    for bad in ("-1", str(2**64), "1.5"):
        with pytest.raises(argparse.ArgumentTypeError, match="integer in"):
            seed_int(bad)
    code = main(["--run-classification", "--images", str(tmp_path), "--class-names", "a", "b",
                 "--seed", str(2**64)])  # fmt: skip
    assert code == 2 and "argument --seed: expected an integer in" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="seed must be in"):
        FinetuneRunConfig(folders=str(tmp_path), model_name="msclip-tiny", seed=-1).validate()
    with pytest.raises(ConfigError, match="seed must be in"):
        TrainConfig(train_data=str(tmp_path / "t.csv"), seed=-1).validate()
    with pytest.raises(ValueError, match="torch's generator"):
        msclip.create_model("msclip-tiny", seed=2**64)


def test_exit_process_ends_idle_executor_threads_waits_for_the_others_and_runs_atexit(tmp_path):
    """A program's exit with msclip's reading threads (idle ``ThreadPoolExecutor`` workers)
    alive: joining every non-daemon thread before threading's own exit hooks waited for them
    forever (the classification CLI hung at its end); a thread finishing its work is still
    waited for, and the ``atexit`` callbacks and the status come after."""
    import subprocess
    import sys

    script = tmp_path / "leave.py"
    script.write_text(
        "import atexit, threading, time\n"
        "import msclip.encode as engine\n"
        "from msclip.cli.common import exit_process\n"
        "pool = engine._reading_pool(2)\n"
        "assert len(engine.read_items(lambda i: {'i': i}, [0, 1, 2], pool)) == 3\n"
        "def work():\n"
        "    time.sleep(0.3)\n"
        "    print('work done', flush=True)\n"
        "threading.Thread(target=work).start()\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "print('leaving', flush=True)\n"
        "exit_process(3)\n"
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "leaving\nwork done\natexit ran\n", done.stderr
