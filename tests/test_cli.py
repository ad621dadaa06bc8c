"""The main job's demo learns, and the README's test command is the one CI runs."""
import io
import pathlib
import re

import pytest

from hpcai import cli

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


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
