"""JupyterHub on the batch system, as an HPC centre runs it: the hub spawns JupyterLab as a Slurm job.

The hub's configuration is ``hpcai site hub``'s fragment (wrapspawner's profiles over batchspawner's Slurm
spawner, the engines' settings in the servers' environment) plus what only a test needs (a free port, the
dummy authenticator, files in a temporary folder). Headless Chromium logs in, starts a server from the
"1 core, 1 h" profile (a Slurm job), opens the quickstart notebook, runs it and its control panel on 2 engines
-- another Slurm job, because the server's environment says so -- and waits for the results. Stopping the hub
stops the server (scancel); the queue must then be empty and every process the hub started gone (by PID).
Screenshots go to ``$HPCAI_ARTIFACTS`` (default ``test-artifacts/``). Needs the one-node Slurm (see conftest),
Chromium with Playwright, jupyterhub, batchspawner and wrapspawner, and configurable-http-proxy (from npm:
installed into a cache folder when missing). Skips without them, except under ``HPCAI_REQUIRE_SLURM=1``.
"""
import getpass
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import browser
from browser import procs
from procs import slurm_queue

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "00_quickstart.ipynb"
PROFILE = "1 core, 1 h"
PROXY_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hpcai-tests" / "chp"


def _missing() -> str | None:
    why = browser.missing_browser()
    for module in ("jupyterhub", "batchspawner", "wrapspawner"):
        if why is None and importlib.util.find_spec(module) is None:
            why = f"{module} is not installed (pip install 'hpcai[hub]')"
    return why


def _proxy() -> str | None:
    """configurable-http-proxy: on PATH, else npm-installed into a cache folder (None without npm)."""
    found = shutil.which("configurable-http-proxy") or PROXY_CACHE / "node_modules" / ".bin" / "configurable-http-proxy"
    if Path(found).exists():
        return str(found)
    if shutil.which("npm") is None:
        return None
    PROXY_CACHE.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(PROXY_CACHE),
                    "configurable-http-proxy@4"], check=True, timeout=300, capture_output=True)
    return str(found) if Path(found).exists() else None


@pytest.fixture(scope="module")
def hub_ready(slurm):
    why = _missing()
    proxy = None if why else _proxy()
    if why is None and proxy is None:
        why = "configurable-http-proxy is not installed and there is no npm to install it"
    if why:
        if os.environ.get("HPCAI_REQUIRE_SLURM") == "1":
            pytest.fail(f"HPCAI_REQUIRE_SLURM=1 but {why}")
        pytest.skip(why)
    return proxy


def _config(tmp: Path, proxy: str, port: int, user: str, notebooks: Path) -> str:
    import batchspawner

    from hpcai import site
    environment = site.site_environment("slurm", partition="debug", threads=1, env={"UCX_NET_DEVICES": "lo"})
    script = batchspawner.SlurmSpawner.batch_script.default_value.replace(
        "{{homedir}}/jupyterhub_slurmspawner_%j.log", str(tmp / "lab-job-%j.log"))
    test_only = {
        "c.JupyterHub.ip": "127.0.0.1", "c.JupyterHub.port": port, "c.JupyterHub.hub_ip": "127.0.0.1",
        "c.JupyterHub.hub_port": browser.free_port(), "c.JupyterHub.db_url": f"sqlite:///{tmp / 'hub.sqlite'}",
        "c.JupyterHub.cookie_secret_file": str(tmp / "cookie_secret"), "c.JupyterHub.pid_file": str(tmp / "hub.pid"),
        "c.ConfigurableHTTPProxy.command": [proxy], "c.ConfigurableHTTPProxy.pid_file": str(tmp / "proxy.pid"),
        "c.ConfigurableHTTPProxy.api_url": f"http://127.0.0.1:{browser.free_port()}",
        "c.JupyterHub.authenticator_class": "dummy", "c.Authenticator.allowed_users": {user},
        "c.BatchSpawnerBase.exec_prefix": "",  # the hub runs as the one user here (a site uses sudo)
        "c.Spawner.cmd": [os.path.join(os.path.dirname(sys.executable), "jupyterhub-singleuser")],
        "c.Spawner.args": ["--allow-root"] if os.geteuid() == 0 else [],
        "c.Spawner.notebook_dir": str(notebooks),
        "c.Spawner.env_keep": ["PATH", "LANG", "SLURM_CONF", "JUPYTERLAB_SETTINGS_DIR"],
        "c.SlurmSpawner.batch_script": script,
    }
    return (site.hub_config(environment, partition="debug") + "\n# test only\n"
            + "".join(f"{k} = {v!r}\n" for k, v in test_only.items()))


def _wait_hub(url: str, proc, log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyterhub exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/hub/api", timeout=5):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterHub did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def test_hub_spawns_lab_as_a_slurm_job_whose_panel_runs_on_slurm_engines(hub_ready, tmp_path):
    from playwright.sync_api import sync_playwright
    artifacts = browser.ARTIFACTS
    artifacts.mkdir(parents=True, exist_ok=True)
    user, port = getpass.getuser(), browser.free_port()
    notebooks = browser.copy_notebooks(ROOT / "notebooks", tmp_path / "notebooks")
    settings = browser.write_settings(tmp_path / "settings")
    (tmp_path / "jupyterhub_config.py").write_text(_config(tmp_path, hub_ready, port, user, notebooks))
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
           "JUPYTERLAB_SETTINGS_DIR": str(settings)}
    log = tmp_path / "hub.log"
    with open(log, "w") as out:
        hub = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "jupyterhub"), "-f",
                                str(tmp_path / "jupyterhub_config.py")], cwd=tmp_path, env=env,
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    watch, url, page, jobs = browser.ProcessWatch(hub.pid), f"http://127.0.0.1:{port}", None, set()
    try:
        _wait_hub(url, hub, log)
        with sync_playwright() as p:
            chrome = browser.chromium(p)
            try:
                page = chrome.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(f"{url}/hub/login", wait_until="domcontentloaded")
                page.fill("input[name=username]", user)
                page.fill("input[name=password]", "any")
                page.click("#login_submit")
                page.wait_for_selector("select[name=profile]")
                page.select_option("select[name=profile]", label=PROFILE)
                page.screenshot(path=str(artifacts / "hub-profiles.png"))
                page.click("form [type=submit]")
                page.wait_for_url(f"**/user/{user}/lab**", timeout=240_000)
                jobs = slurm_queue()
                assert len(jobs) == 1, f"the server is not one Slurm job: queue {jobs}"
                page.goto(f"{url}/user/{user}/lab/tree/{NOTEBOOK}", wait_until="domcontentloaded")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
                browser.accept_kernel_dialog(page)
                browser.wait_kernel_idle(page, timeout=120)
                browser.run_all_cells(page)
                browser.wait_all_cells_ran(page, timeout=300)
                browser.wait_kernel_idle(page, timeout=120)
                assert not [e for e in browser.errors_in_outputs(page) if "Error" in e or "Traceback" in e]

                seen = set()

                def shot(name, where):
                    seen.update(slurm_queue())  # the engines' job shows up while the panel runs
                    full = {"full_page": True} if where is page else {}
                    where.screenshot(path=str(artifacts / f"hub-{name}.png"), **full)
                status = browser.run_panel(page, {"app": "digits"}, 2, 240, shot)
                assert status.startswith("done in"), status
                assert seen - jobs, f"the panel's engines were not a Slurm job: queue {seen}"
                browser.shut_down_kernel(page)  # the kernel's engines stop with it: their job leaves the queue
                deadline = time.monotonic() + 60
                while slurm_queue() - jobs and time.monotonic() < deadline:
                    time.sleep(1)
                assert not slurm_queue() - jobs, f"the engines' job outlived the kernel: queue {slurm_queue()}"
                assert "test_accuracy" in page.inner_text(".hpcai-results .hpcai-metrics")
            except BaseException:
                if page is not None:
                    page.screenshot(path=str(artifacts / "hub-failure.png"), full_page=True)
                shutil.copy(log, artifacts / "hub.log")
                raise
            finally:
                chrome.close()
    finally:
        hub.send_signal(signal.SIGTERM)  # the hub stops its servers (cleanup_servers): scancel of the lab's job
        try:
            hub.wait(90)
        except subprocess.TimeoutExpired:
            hub.kill()
        deadline = time.monotonic() + 60
        while slurm_queue() & jobs and time.monotonic() < deadline:
            time.sleep(1)
        watch.stop()
        left = procs.collect(watch.alive)
        queued = slurm_queue() & jobs
        if queued:
            subprocess.run(["scancel", *queued])
    assert not queued, f"jobs left in the queue after the hub stopped (cancelled now): {queued}"
    assert not left, f"processes left behind after the hub stopped (killed now): {left}"
