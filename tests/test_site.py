"""The site kit (``hpcai site``): one set of variables, written as a kernel spec, a hub fragment and exports.

What the kit writes is what the Slurm and hub tests run (tests/test_slurm.py, tests/test_hub.py); here:
the variables reach ``cluster_config`` unchanged, the hub fragment is valid configuration, bad input is named.
"""
import json
import os

import pytest

from hpcai import site
from hpcai.cli import main

pytest.importorskip("traitlets")


def test_site_environment_is_what_cluster_config_reads(monkeypatch, tmp_path):
    from hpcai.cluster_config import cluster_config
    env = site.site_environment("slurm", partition="gpu", account="proj42", walltime="00:30:00",
                                mpi_args="--mpi=pmix", controller_ip="10.0.0.5", threads=4, env={"UCX_TLS": "rc"})
    assert env["OMP_NUM_THREADS"] == "4" and env["UCX_TLS"] == "rc"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    kwargs = cluster_config(8)
    assert kwargs["engines"] == "slurm" and kwargs["controller_ip"] == "10.0.0.5"
    namespace = kwargs["config"].SlurmEngineSetLauncher.namespace
    assert namespace["mpi_args"] == "--mpi=pmix"
    assert {"#SBATCH --partition=gpu", "#SBATCH --account=proj42", "#SBATCH --time=00:30:00"} <= set(
        namespace["directives"].splitlines())


def test_hub_fragment_is_valid_configuration_with_the_profiles():
    pytest.importorskip("batchspawner")
    from traitlets.config import Config
    text = site.hub_config(site.site_environment("slurm", partition="debug"), partition="debug", account="proj42")
    c = Config()
    exec(compile(text, "jupyterhub_config.py", "exec"), {"c": c})
    assert c.JupyterHub.spawner_class == "wrapspawner.ProfilesSpawner"
    assert [p[0] for p in c.ProfilesSpawner.profiles] == ["1 core, 1 h", "4 cores, 2 h", "GPU"]
    assert all(p[2] == "batchspawner.SlurmSpawner" for p in c.ProfilesSpawner.profiles)
    assert c.Spawner.environment == {"HPCAI_LAUNCHER": "slurm", "HPCAI_QUEUE": "debug"}
    assert c.SlurmSpawner.req_partition == "debug" and c.SlurmSpawner.req_account == "proj42"


def test_kernel_spec_installs_under_a_prefix(tmp_path):
    pytest.importorskip("jupyter_client")
    where = site.install_kernel("hpcai-site", {"HPCAI_LAUNCHER": "slurm"}, prefix=str(tmp_path))
    spec = json.loads(open(os.path.join(where, "kernel.json")).read())
    assert spec["env"] == {"HPCAI_LAUNCHER": "slurm"} and spec["argv"][1:3] == ["-m", "ipykernel_launcher"]


def test_cli_prints_exports_and_names_bad_input(capsys):
    assert main(["site", "engines", "--partition", "debug", "--threads", "2", "--env", "A_B=c d"]) == 0
    out = capsys.readouterr().out
    assert "export HPCAI_LAUNCHER=slurm\n" in out and "export HPCAI_QUEUE=debug\n" in out
    assert "export A_B='c d'\n" in out and "export OMP_NUM_THREADS=2\n" in out
    for argv, named in ((["site", "engines", "--env", "novalue"], "env"),
                        (["site", "engines", "--threads", "0"], "threads"),
                        (["site", "kernel", "--name", "a b"], "name"),
                        (["site", "engines", "--partition", "a\nb"], "partition")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and named in capsys.readouterr().err, argv
