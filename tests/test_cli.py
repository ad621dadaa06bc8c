"""The main job's demo learns, and the README's test command is the one CI runs."""
import io
import pathlib
import re

import pytest

from hpcai import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16x3"])
def test_demo_loss_falls(precision):
    out = io.StringIO()
    losses, accuracy = cli.demo(epochs=12, matmul_precision=precision, out=out)
    assert losses[-1] < 0.5 * losses[0]
    assert accuracy > 0.85
    assert "loss" in out.getvalue() and precision in out.getvalue()


def test_cli_rejects_unknown_precision(capsys):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.+?)\n```", readme)
    test_cmd = next(c for c in commands if "pytest" in c)
    assert test_cmd in (ROOT / ".ci" / "run").read_text()
