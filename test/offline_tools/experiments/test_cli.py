"""The experiments' command line: options -> typed settings, usage errors."""

from __future__ import annotations

import argparse

import pytest

from offline_tools.experiments.cli import add_arguments, main, parse_args, settings_from_args


def test_options_become_settings() -> None:
    args = parse_args(["--device", "cpu", "--table", "t.json", "--out", "o", "--quick", "--window", "4"])
    settings = settings_from_args(args)
    assert settings.device == "cpu" and settings.window_size == 4 and settings.threads == 1
    assert settings.fig6_phases_s == (1.5, 1.5, 1.5) and settings.statistic == "p95"
    args = parse_args(["--device", "cpu", "--fps", "30", "--margin", "1.2", "--lut-source", "table"])
    settings = settings_from_args(args)
    assert settings.fps == 30.0 and settings.margin == 1.2 and settings.lut_source == "table"


def test_add_arguments_on_another_parser() -> None:
    parser = argparse.ArgumentParser(prog="dofa-levels experiments")
    add_arguments(parser)
    args = parser.parse_args(["--only", "fig6", "fig8"])
    assert args.only == ["fig6", "fig8"] and args.device == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["--only", "fig9"])


def test_table_and_out_are_required(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--device", "cpu"]) == 2
    assert "--table and --out are required" in capsys.readouterr().err
