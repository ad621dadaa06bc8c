"""``hpcai lab`` serves JupyterLab on 127.0.0.1 behind a token and stops cleanly; ``hpcai bench`` runs scripts.

The lab test starts a real server (about 10 s): a request without the token is refused, one with it served,
a kernel started through the REST API (without the token in its environment), and Ctrl-C (SIGINT, with a terminal as stdin, as in a shell) stops
the server and its kernel: every process it started is checked by PID afterwards.
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
from hpcai import cli

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
        deadline = time.monotonic() + 60
        while _get_or_none(base + "/api/status") is None:
            assert proc.poll() is None, (tmp_path / "lab.log").read_text()
            assert time.monotonic() < deadline, "JupyterLab did not answer within 60 s"
            time.sleep(0.2)
        assert _get(base + "/api/status") == 403
        assert _get(base + "/api/status", Authorization=f"token {wrong(token)}") == 403
        assert _get(base + "/api/status", Authorization=f"token {token}") == 200
        assert _get(f"{base}/api/status?token={token}") == 200
        server = psutil.Process(proc.pid)  # exec'd: the hpcai process became the server
        assert server.cmdline()[1:3] == ["-c", cli.LAB_MAIN] and token not in " ".join(server.cmdline())
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
        started = [server, *server.children(recursive=True)]
        assert len(started) > 1, "no kernel process appeared"
        for p in started[1:]:  # the token stays in the server: kernels (and what they start) do not inherit it
            assert "JUPYTER_TOKEN" not in p.environ() and token not in " ".join(p.cmdline()), procs.describe(p)
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
    command, env, url = cli.lab_command(browser=False)
    assert len(env["JUPYTER_TOKEN"]) >= 24 and url.endswith(env["JUPYTER_TOKEN"])
    assert url.startswith("http://127.0.0.1:8888/lab?token=") and not any(env["JUPYTER_TOKEN"] in a for a in command)
    assert command[:3] == [sys.executable, "-c", cli.LAB_MAIN] and "--ServerApp.ip=127.0.0.1" in command
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in command  # the source tree's notebooks by default


def test_lab_warns_off_loopback(capsys):
    pytest.importorskip("jupyterlab")
    command, _, url = cli.lab_command(ip="0.0.0.0", port=9999, token="t0k3n", browser=False)
    assert "--ServerApp.ip=0.0.0.0" in command and url.endswith(":9999/lab?token=t0k3n")
    assert "warning" in capsys.readouterr().err
    cli.lab_command(ip="::1", token="t0k3n")
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
        from hpcai import cli
        cli._source_dir = lambda name: None  # as when installed from a wheel
        sys.exit(cli.main(["bench", "--list"]))
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 2 and "not the wheel" in run.stderr
