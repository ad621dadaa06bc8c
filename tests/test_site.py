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


def test_batch_job_states_from_the_schedulers_own_words(tmp_path, monkeypatch):
    """BatchJob reads scontrol's and qstat's output (fakes here; the real Slurm is in tests/test_slurm.py)."""
    from hpcai.cluster_batch import BatchJob
    answers = {"scontrol": "JobId=7 JobName=ipengine JobState=PENDING Reason=PartitionConfig Dependency=(null)",
               "qstat": "Job Id: 8.server\n    job_state = Q\n    comment = Not Running: Insufficient resources"}
    for name, text in answers.items():
        fake = tmp_path / name
        fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{text}\nEOF\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    slurm, pbs = BatchJob("slurm", 7), BatchJob("pbs", "8.server")
    assert slurm.state() == ("PENDING", "PartitionConfig") and not slurm.active()
    assert slurm.describe() == ("Slurm job 7 is PENDING (reason: PartitionConfig), which it never leaves: "
                                "the request cannot run there")
    assert pbs.state() == ("PENDING", "Not Running: Insufficient resources") and pbs.active()
    assert pbs.cancel_command() == ["qdel", "8.server"] and slurm.cancel_command() == ["scancel", "7"]
    (tmp_path / "scontrol").write_text("#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\n")
    assert slurm.state()[0] == "GONE" and not slurm.active() and "no longer in the queue" in slurm.describe()
    with pytest.raises(ValueError, match="kind: expected 'slurm' or 'pbs'"):
        BatchJob("lsf", 1)
