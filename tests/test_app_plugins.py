"""An application from another package, through the ``hpcai.apps`` entry point: in APPS, the CLI, the panel,
a workflow; a broken one is reported and left out. Each case runs in a fresh interpreter that sees a small
installed package (a folder with its ``.dist-info``) on its path."""
import json
import os
import subprocess
import sys
import textwrap

import pytest

PLUGIN = textwrap.dedent('''
    """A lab's own application, shipped as a package of its own."""
    import dataclasses

    import numpy as np

    from hpcai import nn
    from hpcai.apps import App, Result


    @dataclasses.dataclass
    class Config:
        steps: int = 3
        output_dir: str | None = None

        def validate(self):
            if not isinstance(self.steps, int) or self.steps < 1:
                raise ValueError(f"steps: expected a positive integer, got {self.steps!r}")
            return self


    def run(config=None, verbose=1, comm=None, progress=None, **overrides):
        config = dataclasses.replace(config or Config(), **overrides).validate()
        return Result({"steps": config.steps, "ranks": 1 if comm is None else comm.size}, {})


    APP = App("labapp", Config, run, "A lab's own application", lambda config: nn.Linear(2, 1, rng=0),
              lambda config, n, rng: rng.standard_normal((n, 2)))
''')


@pytest.fixture
def site(tmp_path):
    """A folder holding the package ``labapp`` and its metadata, as pip would install it."""
    (tmp_path / "labapp").mkdir()
    (tmp_path / "labapp" / "__init__.py").write_text(PLUGIN)
    info = tmp_path / "labapp-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: labapp\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[hpcai.apps]\nlabapp = labapp:APP\n")
    return tmp_path


def python(site, code, *args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *(["-c", code] if code else []), *args], env=env, text=True,
                          capture_output=True, timeout=120)


def test_an_installed_application_joins_apps_the_cli_and_a_workflow(site):
    done = python(site, "from hpcai.apps import APPS; print(sorted(APPS))")
    assert done.returncode == 0, done.stderr
    assert "labapp" in done.stdout and "digits" in done.stdout
    done = python(site, None, "-m", "hpcai", "run", "labapp", "--steps", "5", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["metrics"] == {"steps": 5, "ranks": 1}
    spec = {"modules": {"lab": {"app": "labapp", "params": {"steps": 2}}}}
    done = python(site, f"from hpcai.workflow import run_workflow; print(run_workflow({spec!r}).values)")
    assert done.returncode == 0, done.stderr
    assert "'steps': 2" in done.stdout


def test_an_installed_application_appears_in_the_panel(site):
    pytest.importorskip("ipywidgets")
    done = python(site, "from hpcai.ui import Panel; p = Panel(app='labapp'); "
                        "print([v for _, v in p.app.options]); print(sorted(p.values())); p.close()")
    assert done.returncode == 0, done.stderr
    options, fields = done.stdout.strip().splitlines()[:2]
    assert "labapp" in options and "steps" in fields


def test_a_broken_plugin_is_reported_and_left_out(site):
    (site / "labapp-0.1.dist-info" / "entry_points.txt").write_text(
        "[hpcai.apps]\nlabapp = labapp:APP\nghost = no_such_package:APP\ndigits = labapp:APP\n")
    done = python(site, "from hpcai.apps import APPS; print(sorted(APPS))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['alloy_surrogate', 'cbed', 'climate_sr', 'digits', 'labapp']"
    assert "application 'ghost' from entry point 'no_such_package:APP' (hpcai.apps) left out: " \
           "ModuleNotFoundError" in done.stderr
    assert "'digits' is taken by hpcai.apps.digits" in done.stderr
