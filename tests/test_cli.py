"""The main job's demo learns, Config fields become typed options, and the README's test command is the one CI
runs."""
import argparse
import dataclasses
import io
import pathlib
import re
from typing import Optional

import pytest

from hpcai import cli
from hpcai.apps import config_fields

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("precision", ["fp32", "mixed-bf16", "mixed-fp16"])
def test_demo_loss_falls_and_generalises(precision):
    out = io.StringIO()
    history, accuracy = cli.demo(epochs=20, precision=precision, verbose=0, out=out)
    assert history["loss"][-1] < 0.25 * history["loss"][0]
    assert accuracy > 0.9
    assert precision in out.getvalue() and "held-out accuracy" in out.getvalue()


def test_cli_rejects_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_cli_run_rejects_a_bad_setting_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "digits", "--epochs", "0"])
    assert exit_info.value.code == 2 and "hpcai run digits: epochs: expected" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["run", "digits", "--strategy", "allreduce"])
    assert "invalid choice: 'allreduce'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "digits", "--engines", "-1"])
    assert exit_info.value.code == 2 and "--engines: expected a number of engines >= 0" in capsys.readouterr().err


@dataclasses.dataclass
class Sample:
    rate: "float | None" = None  # a string annotation, as under `from __future__ import annotations`
    steps: int = 3
    verbose: "bool" = False
    mode: str = dataclasses.field(default="a", metadata={"choices": ["a", "b"]})
    scale: Optional[float] = 1.0  # typing's spelling, not a string
    name: str = " x "


def test_config_fields_type_and_parse_text_the_same_for_cli_and_panel():
    spec = {f.name: f for f in config_fields(Sample)}
    assert [(f.kind, f.optional) for f in spec.values()] == [
        (float, True), (int, False), (bool, False), (str, False), (float, True), (str, False)]
    assert spec["mode"].choices == ("a", "b") and spec["steps"].choices is None and spec["steps"].default == 3
    assert spec["rate"].parse(" 0.5 ") == 0.5 and spec["rate"].parse("auto") is None and spec["rate"].parse("") is None
    assert spec["scale"].parse("None") is None and spec["steps"].parse("7") == 7 and spec["name"].parse(" y ") == " y "
    assert spec["verbose"].parse("Yes") is True and spec["verbose"].parse("0") is False
    for name, text, message in [("rate", "fast", "rate: expected float or empty (auto), got 'fast'"),
                                ("steps", "2.5", "steps: expected int, got '2.5'"),
                                ("steps", "", "steps: expected int, got ''"),
                                ("verbose", "maybe", "verbose: expected true or false, got 'maybe'")]:
        with pytest.raises(ValueError) as info:
            spec[name].parse(text)
        assert str(info.value) == message
    with pytest.raises(TypeError, match="config_cls"):
        config_fields(int)

    parser = argparse.ArgumentParser()
    cli._config_options(parser, Sample)  # the CLI's options are these fields, parsed by them
    assert vars(parser.parse_args([])) == {}  # not given: the Config's default applies
    args = parser.parse_args(["--rate", "auto", "--steps", "4", "--verbose", "true", "--mode", "b"])
    assert vars(args) == {"rate": None, "steps": 4, "verbose": True, "mode": "b"}


def test_cli_run_reports_an_option_that_does_not_parse_as_the_panel_does(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["run", "digits", "--lr", "fast"])
    assert exit_info.value.code == 2
    assert "argument --lr: lr: expected float or empty (auto), got 'fast'" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
