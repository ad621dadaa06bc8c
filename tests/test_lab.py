"""``hpcai lab`` serves JupyterLab on 127.0.0.1 behind a token and stops cleanly; ``hpcai bench`` runs scripts.

The lab tests start a real server (about 10 s each): a request without the token is refused, one with it
served, a kernel started through the REST API (without the token in its environment), and Ctrl-C (SIGINT, with
a terminal as stdin, as in a shell) stops the server and its kernel: every process it started is checked by
PID afterwards. Without a terminal (a new session, stdin from /dev/null: nohup, a batch script, a container)
SIGINT or SIGTERM leaves nothing either, not even the engines a kernel started.
"""
import os
import pathlib
import secrets
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from browser import free_port
from hpcai import cli, lab

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _get(url, **headers):
    """Status code of a GET (urllib: no extra dependency)."""
    import urllib.error
    import urllib.request
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_lab_token_loopback_and_clean_ctrl_c(tmp_path):
    pytest.importorskip("jupyterlab")
    psutil = pytest.importorskip("psutil")
    import json
    import pty
    import urllib.request

    import procs
    port, token = free_port(), secrets.token_hex(16)
    args = ["--no-browser", "--port", str(port), "--token", token, "--notebook-dir", str(tmp_path)]
    args += ["--allow-root"] if os.geteuid() == 0 else []
    main, child = pty.openpty()  # stdin a terminal, as when typed in a shell: Ctrl-C is the server's own stop
    log = open(tmp_path / "lab.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "hpcai", "lab", *args], stdin=child, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp_path)
    os.close(child)
    started = []
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_answering(base, proc, tmp_path / "lab.log")
        assert _get(base + "/api/status") == 403
        assert _get(base + "/api/status", Authorization=f"token {wrong(token)}") == 403
        assert _get(base + "/api/status", Authorization=f"token {token}") == 200
        assert _get(f"{base}/api/status?token={token}") == 200
        server = _server(psutil, proc.pid)  # hpcai lab's child, which it watches
        assert server.cmdline()[1:3] == ["-c", lab.LAB_MAIN] and token not in " ".join(server.cmdline())
        connections = getattr(server, "net_connections", None) or server.connections  # psutil < 6: connections
        listening = {c.laddr.ip for c in connections("inet") if c.status == psutil.CONN_LISTEN}
        assert listening == {"127.0.0.1"}
        request = urllib.request.Request(base + "/api/kernels", data=json.dumps({"name": "python3"}).encode(),
                                         headers={"Authorization": f"token {token}"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 201
        deadline = time.monotonic() + 30
        while not server.children() and time.monotonic() < deadline:
            time.sleep(0.1)
        started = [psutil.Process(proc.pid), server, *server.children(recursive=True)]
        assert len(started) > 1, "no kernel process appeared"
        for p in started[2:]:  # the token stays in the server: kernels (and what they start) do not inherit it
            try:
                environ, cmdline = p.environ(), " ".join(p.cmdline())
            except psutil.NoSuchProcess:  # a short-lived helper of the kernel's start, gone already (or a zombie)
                continue
            assert "JUPYTER_TOKEN" not in environ and token not in cmdline, procs.describe(p)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
        log.seek(0)
        text = log.read()
        assert f"http://127.0.0.1:{port}/lab?token={token}" in text and "Shutting down" in text
        assert "Kernel shutdown" in text  # the kernel was shut down by the server, not orphaned
    finally:
        left = procs.collect(lambda: started or [proc.pid], grace=10)  # waits, then kills what is left
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
        log.close()
    assert not left, f"processes left behind (killed now): {left}"


def _server(psutil, pid, timeout=30):
    """The JupyterLab server ``hpcai lab`` (PID ``pid``) started."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(pid).children():
            if child.cmdline()[1:3] == ["-c", lab.LAB_MAIN]:
                return child
        time.sleep(0.1)
    raise AssertionError("hpcai lab started no JupyterLab server")


ENGINES_IN_A_KERNEL = ("from hpcai.cluster import Engines\n"
                       "engines = Engines(2, timeout=120)\n"
                       "engines.start_sync()\n"
                       "print(sorted(engines.pids))")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_lab_without_a_terminal_leaves_no_process_on_a_signal(tmp_path, sig):
    """As under nohup or in a batch script: a session of its own, stdin /dev/null. A kernel starts 2 MPI
    engines (controller, mpiexec, engines, their guard); after the signal none of them may survive."""
    pytest.importorskip("jupyterlab")
    pytest.importorskip("psutil")
    import json
    import urllib.request

    import jupyter_client
    import procs
    port, token, mark = free_port(), secrets.token_hex(16), secrets.token_hex(8)
    env = {**os.environ, "HPCAI_LAB_TEST": mark, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "IPYTHONDIR": str(tmp_path / "ipython"), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    log = open(tmp_path / "lab.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "hpcai", "lab", "--no-browser", "--port", str(port), "--token",
                             token, "--notebook-dir", str(tmp_path)], stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, cwd=tmp_path, env=env, start_new_session=True)
    ours = lambda: procs.with_env("HPCAI_LAB_TEST", mark)  # noqa: E731 - everything started from it carries it
    pids, client = [], None
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_answering(base, proc, tmp_path / "lab.log")
        request = urllib.request.Request(base + "/api/kernels", data=json.dumps({"name": "python3"}).encode(),
                                         headers={"Authorization": f"token {token}"}, method="POST")
        with urllib.request.urlopen(request, timeout=30) as r:
            kernel = json.load(r)["id"]
        client = jupyter_client.BlockingKernelClient(
            connection_file=str(tmp_path / "runtime" / f"kernel-{kernel}.json"))
        client.load_connection_file()
        client.start_channels(stdin=False, hb=False)  # no heartbeat: a busy machine would call it dead
        reply = client.execute_interactive(ENGINES_IN_A_KERNEL, timeout=120, allow_stdin=False,
                                           output_hook=lambda msg: None)
        assert reply["content"]["status"] == "ok", reply["content"]
        started = ours()
        assert len(started) >= 6, [procs.describe(p) for p in started]  # server, kernel, controller, mpiexec, 2 engines
        pids = [p.pid for p in started]
        start = time.monotonic()
        proc.send_signal(sig)
        proc.wait(timeout=45)
        left = procs.collect(ours, grace=2)
        assert not left, f"processes left behind {time.monotonic() - start:.0f} s after {sig.name} (killed now): {left}"
        assert time.monotonic() - start < 40
    finally:
        if client is not None:
            client.stop_channels()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        procs.kill(procs.living(pids) + ours())
        log.close()


# a server that leaves processes behind however it stops: a child in a session of its own, one that ignores
# SIGTERM, and a daemon (double fork) orphaned at once; it exits on SIGTERM without ending any of them
LEAVES_PROCESSES = """
import os, signal, subprocess, sys, time
sleep = [sys.executable, "-c", "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN "
         "if sys.argv[1] == 'stubborn' else signal.SIG_DFL); time.sleep(300)"]
subprocess.Popen(sleep + ["own-session"], start_new_session=True)
subprocess.Popen(sleep + ["stubborn"])
if os.fork() == 0:
    subprocess.Popen(sleep + ["daemon"], start_new_session=True)
    os._exit(0)
os.wait()
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
open(sys.argv[1], "w").close()
time.sleep(300)
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=["SIGINT", "SIGTERM", "SIGHUP"])
def test_supervise_ends_what_the_server_left_behind(tmp_path, sig):
    pytest.importorskip("psutil")
    import procs
    mark, ready = secrets.token_hex(8), tmp_path / "ready"
    code = (f"import sys; from hpcai.lab import supervise; "
            f"sys.exit(supervise([sys.executable, '-c', {LEAVES_PROCESSES!r}, {str(ready)!r}], tree_grace=1))")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL, start_new_session=True,
                            env={**os.environ, "HPCAI_LAB_TEST": mark})
    ours = lambda: procs.with_env("HPCAI_LAB_TEST", mark)  # noqa: E731
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.1)
        time.sleep(1.5)  # the supervisor has seen the tree
        assert len(ours()) == 5  # supervisor, server, and the three it leaves behind
        start = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 0  # the server's own exit code
        assert time.monotonic() - start < 10
        left = procs.collect(ours, grace=1)
        assert not left, f"left behind (killed now): {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        procs.kill(ours())


def test_lab_is_root_friendly_serves_the_current_copy_and_opens_the_quickstart(tmp_path, monkeypatch, capsys):
    pytest.importorskip("jupyterlab")
    copy = tmp_path / "copy"
    (copy / "notebooks").mkdir(parents=True)
    (copy / "notebooks" / lab.QUICKSTART).write_text("{}")
    (copy / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    (copy / "sub").mkdir()
    monkeypatch.chdir(copy / "sub")  # anywhere inside a copy of the repository: that copy's notebooks
    command, _, url = lab.lab_command(token="t", browser=False)
    assert f"--ServerApp.root_dir={copy / 'notebooks'}" in command
    assert url == f"http://127.0.0.1:8888/lab/tree/{lab.QUICKSTART}?token=t"
    assert f"--ServerApp.default_url=/lab/tree/{lab.QUICKSTART}" in command
    monkeypatch.chdir(tmp_path)  # not in a copy: the source tree hpcai runs from
    command, _, _ = lab.lab_command(token="t", browser=False)
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in command
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\n')
    (tmp_path / "notebooks").mkdir()
    command, _, _ = lab.lab_command(token="t", browser=False)  # another project's notebooks are not ours
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in command
    monkeypatch.setattr(cli.os, "geteuid", lambda: 0)  # root, as in a container: no --allow-root needed
    command, _, _ = lab.lab_command(notebook_dir=str(tmp_path), token="t", browser=False)
    assert "--allow-root" in command and "--ServerApp.default_url=/lab" in command
    monkeypatch.setattr(cli.os, "geteuid", lambda: 1000)
    assert "--allow-root" not in lab.lab_command(token="t", browser=False)[0]


def test_the_help_examples_parse(capsys):
    examples = [line.split("#")[0].split() for line in cli.__doc__.splitlines() if line.strip().startswith("hpcai ")]
    assert len(examples) >= 8
    parser = cli.build_parser()
    for words in examples:
        argv = words[1:words.index("--")] if "--" in words else words[1:]
        parser.parse_args(argv)  # SystemExit (an ambiguous or unknown option) fails the test
    args = parser.parse_args(["run", "climate_sr", "--days", "2", "--output-dir", "results/"])
    assert args.output_dir == "results/" and args.days == 2.0


def test_gitignore_keeps_the_panels_results_out():
    assert "hpcai-results/" in (ROOT / ".gitignore").read_text().split()


def _wait_answering(base: str, proc, log, seconds: float = 60) -> None:
    """Wait until the server at ``base`` answers (any status); fails with its log if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while _get_or_none(base + "/api/status") is None:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"JupyterLab did not answer within {seconds:g} s"
        time.sleep(0.2)


def _get_or_none(url):
    try:
        return _get(url)
    except OSError:
        return None


def wrong(token):
    return token[::-1] if token[::-1] != token else token + "x"


@pytest.mark.parametrize("ip", ["not an address", "127.0.0.1.5", "", "http://127.0.0.1"])
def test_lab_rejects_a_bad_ip(ip, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["lab", "--ip", ip, "--no-browser"])
    assert e.value.code == 2 and "--ip: expected an IP address" in capsys.readouterr().err


def test_lab_never_runs_without_a_token(capsys):
    with pytest.raises(SystemExit):
        cli.main(["lab", "--token", " ", "--no-browser"])
    assert "--token" in capsys.readouterr().err
    pytest.importorskip("jupyterlab")
    command, env, url = lab.lab_command(browser=False)
    assert len(env["JUPYTER_TOKEN"]) >= 24 and url.endswith(env["JUPYTER_TOKEN"])
    assert url.startswith(f"http://127.0.0.1:8888/lab/tree/{lab.QUICKSTART}?token=")  # opens on the quickstart
    assert not any(env["JUPYTER_TOKEN"] in a for a in command)
    assert command[:3] == [sys.executable, "-c", lab.LAB_MAIN] and "--ServerApp.ip=127.0.0.1" in command
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in command  # the source tree's notebooks by default


def test_lab_warns_off_loopback(capsys):
    pytest.importorskip("jupyterlab")
    command, _, url = lab.lab_command(ip="0.0.0.0", port=9999, token="t0k3n", browser=False)
    assert "--ServerApp.ip=0.0.0.0" in command and url.endswith(f":9999/lab/tree/{lab.QUICKSTART}?token=t0k3n")
    assert "warning" in capsys.readouterr().err
    lab.lab_command(ip="::1", token="t0k3n")
    assert capsys.readouterr().err == ""


def test_lab_names_the_extra_when_jupyterlab_is_missing(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "jupyterlab", None)  # find_spec answers None, as when not installed
    with pytest.raises(SystemExit) as e:
        cli.main(["lab", "--no-browser"])
    assert e.value.code == 2 and "pip install 'hpcai[notebook]'" in capsys.readouterr().err


def test_bench_lists_the_source_trees_scripts(capsys):
    assert cli.main(["bench", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("core", "parallel", "climate", "train_vs_torch"):
        assert f"  {name} " in out
    assert set(cli.BENCH_DEFAULT) <= set(cli.benchmarks())


def test_bench_runs_a_real_section(capfd):
    assert cli.main(["bench", "core", "--", "overhead"]) == 0
    out = capfd.readouterr().out
    assert "per-op overhead" in out and "hpcai µs / numpy µs" in out and "core" in out.split("== summary")[1]


def test_bench_fails_when_a_script_fails_and_names_unknown_ones(tmp_path, capfd):
    (tmp_path / "ok.py").write_text('"""Says ok."""\nimport sys\nprint("ok", sys.argv[1:])\n')
    (tmp_path / "bad.py").write_text('"""Fails."""\nraise SystemExit(3)\n')
    assert cli.main(["bench", "--dir", str(tmp_path), "--list"]) == 0
    assert "ok    " in capfd.readouterr().out
    assert cli.main(["bench", "--dir", str(tmp_path), "ok", "--", "-x", "1"]) == 0
    assert "ok ['-x', '1']" in capfd.readouterr().out
    assert cli.main(["bench", "--dir", str(tmp_path), "bad", "ok"]) == 1
    out = capfd.readouterr().out
    assert "FAILED (exit 3)" in out and "ok ['-x', '1']" not in out and "ok []" in out
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--dir", str(tmp_path), "nope"])
    assert e.value.code == 2 and "unknown benchmark(s) ['nope']" in capfd.readouterr().err


def test_bench_needs_the_source_tree(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--dir", str(tmp_path / "missing")])
    assert e.value.code == 2 and "ship with the source" in capsys.readouterr().err
    code = textwrap.dedent("""
        import sys
        from hpcai import cli, lab
        lab.source_dir = lambda name: None  # as when installed from a wheel
        sys.exit(cli.main(["bench", "--list"]))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and "not the wheel" in run.stderr
