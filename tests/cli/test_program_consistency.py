"""The six msclip programs agree where they share something: ``--version``, the exit statuses
at the end of every ``--help``, a help line for every flag, and flags that mean the same thing."""

from __future__ import annotations

import argparse
import importlib

import pytest

import msclip
from msclip.cli import common

#: program -> (module, function building its parser)
PROGRAMS = {
    "msclip-inference": ("msclip.cli.inference", "build_parser"),
    "msclip-evaluation": ("msclip.cli.evaluation", "build_parser"),
    "msclip-train": ("msclip.cli.train", "build_arg_parser"),
    "msclip-index": ("msclip.cli.index", "build_parser"),
    "msclip-scenes": ("msclip.cli.scenes", "build_parser"),
    "msclip-finetune": ("msclip.cli.finetune", "build_parser"),
}


def _parsers() -> list[argparse.ArgumentParser]:
    """Every program's parser, every subcommand's and ``msclip-finetune grid``'s."""
    out = []
    for module, builder in PROGRAMS.values():
        out.append(getattr(importlib.import_module(module), builder)())
    from msclip.cli.finetune import build_grid_parser

    out.append(build_grid_parser())
    todo = list(out)
    while todo:
        for action in todo.pop()._actions:
            if isinstance(action, argparse._SubParsersAction):
                out.extend(action.choices.values())
                todo.extend(action.choices.values())
    return out


@pytest.mark.parametrize("prog", sorted(PROGRAMS))
def test_every_program_prints_its_version(prog, capsys):
    main = importlib.import_module(PROGRAMS[prog][0]).main
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"{prog} (msclip) {msclip.__version__}\n"


def test_every_subcommand_prints_its_programs_version(capsys):
    """``--version`` after a subcommand (``msclip-index search --version``) prints the version,
    as after the program's name, instead of asking for the subcommand's arguments."""
    for p in _parsers():
        prog = p.prog.split()[0]
        with pytest.raises(SystemExit) as done:
            p.parse_args(["--version"])
        assert done.value.code == 0, p.prog
        assert capsys.readouterr().out == f"{prog} (msclip) {msclip.__version__}\n", p.prog
    for prog, argv in (("msclip-index", ["search", "--version"]),
                       ("msclip-scenes", ["scene", "--version"])):  # fmt: skip
        main = importlib.import_module(PROGRAMS[prog][0]).main
        assert main(argv) == 0, argv
        assert capsys.readouterr().out == f"{prog} (msclip) {msclip.__version__}\n"


def test_every_help_ends_with_the_exit_statuses_of_its_program(capsys):
    parsers = _parsers()
    assert len(parsers) == 16  # 6 programs, grid, 4 index and 5 scenes subcommands
    for p in parsers:
        text = " ".join(p.format_help().split())
        assert "exit status: 0 success" in text, p.prog
        assert "; 2 bad flags or input" in text and "130 interrupted" in text, p.prog
        assert ("; 1 " in text) is (not p.prog.startswith("msclip-scenes")), p.prog
    # the program's own meaning of 1, rendered whole (not cut off)
    from msclip.cli.evaluation import main

    assert main(["--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "1 the run finished, but a dataset failed or unreadable samples were left out" in out
    assert out.endswith("see docs/inference.md, 'Bad input and exit status'.")


def test_every_flag_has_a_help_line():
    missing = [
        f"{p.prog} {a.option_strings[0]}"
        for p in _parsers()
        for a in p._actions
        if a.option_strings and not a.help
    ]
    assert missing == []


def test_the_finetune_help_names_its_grid_command():
    from msclip.cli.finetune import build_parser

    assert "msclip-finetune grid --help" in " ".join(build_parser().format_help().split())


def test_the_epilog_of_an_unknown_program_is_the_general_one():
    assert "; 1 the run finished, but some inputs failed" in common.exit_status_epilog("other")


def test_device_auto_is_the_default_device_in_every_program(monkeypatch):
    """``--device auto`` is the default of msclip-train and msclip-finetune; the programs that
    load a model through the shared flags took it for a device name and refused it."""
    import torch

    from msclip.cli import evaluation, finetune, index, inference

    run = ["--run-classification", "--images", "x.tif", "--class-names", "a", "b"]
    for args in (
        inference.parse_args([*run, "--device", "auto"]),
        evaluation.build_parser().parse_args(["--device", "AUTO"]),
        index.build_parser().parse_args(["search", "ix", "--device", "auto"]),
    ):
        assert args.device is None  # the run's choice: a GPU where torch sees one, else the CPU
    assert inference.parse_args([*run, "--device", "cpu"]).device == "cpu"
    from msclip.heads.runs import load_run_model

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = finetune.parse_args(["--model-name", "msclip-demo", "--device", "auto"]).cfg
    assert load_run_model(cfg).device.type == "cpu"


def _pairs(folder) -> str:
    """A table of four 12-band tiles and their captions."""
    from support.train_tiles import write_class_tif

    rows = ["image,caption"]
    for i in range(4):
        write_class_tif(folder / f"{i}.tif", i % 2, i)
        rows.append(f"{folder / f'{i}.tif'},class {i % 2}")
    pairs = folder / "pairs.csv"
    pairs.write_text("\n".join(rows) + "\n")
    return str(pairs)


def test_msclip_train_takes_quiet_and_verbose_as_the_other_programs_do(tmp_path, capsys):
    from msclip.cli.train import _parse, main

    assert _parse(["-q"]).cfg.progress is False and _parse(["--verbose"]).verbose
    pairs = _pairs(tmp_path)
    run = str(tmp_path / "run")
    argv = ["--train-data", str(pairs), "--val-data", str(pairs), "--model", "msclip-tiny",
            "--batch-size", "4", "--max-steps", "1", "--output-dir", run]  # fmt: skip
    assert main([*argv, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("trained 1 step; final loss ")
    # no log lines, progress bars or warnings about settings (the B01 band left out is one)
    assert err == ""


def test_msclip_train_takes_workers_and_names_its_spelling_of_other_programs_flags(capsys):
    from msclip.cli.train import _parse, main

    assert _parse(["--workers", "3"]).cfg.num_workers == 3  # as every other program spells it
    assert _parse(["--num-workers", "2"]).cfg.num_workers == 2
    assert main(["--train-data", "t.csv", "--model-name", "msclip-tiny", "--ckpt-path=w.pt"]) == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --model-name msclip-tiny --ckpt-path=w.pt" in err
    assert "(--model-name: --model names the architecture here, and --init its weights; " in err
    assert "--ckpt-path: --init takes the checkpoint file here)" in err


def test_msclip_train_names_its_spelling_of_open_clips_training_flags(capsys):
    # open_clip's users try its flags first; they were refused without a word on the way here
    from msclip.cli.train import main

    argv = ["--train-data", "t.csv", "--lock-text", "--csv-img-key", "filepath", "--wd", "0.1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--lock-text: --trainable visual trains the image tower alone" in err
    assert "--csv-img-key: --image-column names the image column here" in err
    assert "--wd: --weight-decay here" in err
    assert main(["--train-data", "t.csv", "--lock-image"]) == 2
    assert "--frozen-patterns 'visual.*' freezes the image tower" in capsys.readouterr().err


def test_a_bare_resume_continues_the_run_in_the_output_folder_in_train_as_in_finetune():
    from msclip.cli.finetune import parse_args
    from msclip.cli.train import _parse

    assert parse_args(["--resume"]).cfg.resume is True
    assert _parse(["--resume"]).cfg.resume == "latest"
    assert _parse(["--resume", "--epochs", "2"]).cfg.resume == "latest"
    assert _parse(["--resume", "runs/a/step_1.pt"]).cfg.resume == "runs/a/step_1.pt"
    assert _parse([]).cfg.resume is None


def test_input_band_names_are_input_bands_in_every_program_that_reads_files():
    """msclip-train and msclip-finetune name the bands of unnamed input files --input-bands;
    msclip-inference and msclip-index took only --bands, which msclip-finetune refused."""
    from msclip.cli import index, inference

    run = ["--run-classification", "--images", "x.tif", "--class-names", "a", "b"]
    args = inference.parse_args([*run, "--input-bands", "B04", "B03", "B02"])
    assert args.bands == ["B04", "B03", "B02"]
    args = index.parse_args(["build", "ix", "--images", "x.tif", "--input-bands", "B04"])
    assert args.bands == ["B04"]
    from msclip.cli.finetune import parse_args

    assert parse_args(["--bands", "B04", "B03"]).cfg.input_bands == ["B04", "B03"]


def test_an_output_folder_msclip_train_cannot_write_is_a_usage_error(tmp_path, capsys):
    """Status 2, as in every msclip program (it was 1, the status of a run that failed)."""
    from msclip.cli.train import main

    pairs = _pairs(tmp_path)
    (tmp_path / "a_file").write_text("x")
    argv = ["--train-data", pairs, "--model", "msclip-tiny", "--batch-size", "4", "--max-steps",
            "1", "--output-dir", str(tmp_path / "a_file" / "run"), "--quiet"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "a_file is a file" in err and "(command-line option: --output-dir)" in err


def test_every_subcommand_help_says_what_the_subcommand_does():
    subcommands = [p for p in _parsers() if " " in p.prog]
    assert {p.prog for p in subcommands if not p.description} == set()
    from msclip.cli.scenes import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["classes"].format_help()
    assert "List the classes, their synonyms and spectral sources." in text


def test_msclip_scenes_takes_output_dir_as_train_and_finetune_spell_it():
    from msclip.cli.scenes import parse_args

    for command in ("examples", "dataset", "dense", "scene"):
        assert str(parse_args([command, "--output-dir", "o"]).out) == "o"
        assert str(parse_args([command, "--out", "o"]).out) == "o"


def test_the_seed_help_names_random_subsets_only_where_the_program_draws_them():
    from msclip.cli import evaluation, index, inference

    def seed_help(p: argparse.ArgumentParser) -> str:
        return next(a.help for a in p._actions if "--seed" in a.option_strings)

    assert "random subsets" in seed_help(evaluation.build_parser())  # --max-samples
    search = index.build_parser()._subparsers._group_actions[0].choices["search"]
    for p in (inference.build_parser(), search):
        assert seed_help(p) == (
            "random seed of the run (random weights with --no-pretrained; default 0)"
        )


def test_band_names_split_at_commas_in_every_program():
    """``--bands B02,B03,B04,B08`` is four bands in the programs whose flags come from a run
    configuration (msclip-finetune, msclip-train) as in msclip-inference: one value was the one
    band B02 (a band name is read from a value's first word)."""
    from msclip.cli import finetune, inference
    from msclip.cli.train import build_arg_parser

    want = ["B02", "B03", "B04", "B08"]
    run = ["--run-classification", "--images", "x.tif", "--class-names", "a", "b"]
    assert inference.parse_args([*run, "--bands", "B02,B03,B04,B08"]).bands == want
    cfg = finetune.parse_args(["--model-name", "msclip-demo", "--bands", "B02,B03,B04,B08"]).cfg
    assert cfg.input_bands == want
    args = build_arg_parser().parse_args(["--input-bands", "B02,B03", "B04 B08", "--bands", "B02"])
    assert args.input_bands == want and args.bands == ["B02"]
