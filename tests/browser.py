"""Helpers for the real-browser tests: JupyterLab started by ``hpcai lab``, headless Chromium, process checks.

``Lab`` starts ``hpcai lab`` on a free 127.0.0.1 port with a random token, JupyterLab's settings, workspaces
and runtime files in a temporary folder (the user's own are not read or written), and records every process
the server starts (kernels, ipyparallel controllers and engines, ``mpiexec``) while it runs, so that after
``stop()`` ``leftovers()`` can say, by PID, what is still alive (tests/procs.py waits for, describes and kills
those). ``chromium(playwright)`` launches the
system's Chromium (the Debian ``chromium`` package; Playwright downloads no browser).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    import procs
except ImportError:  # no psutil: missing_browser() says so, and the tests skip
    procs = None

CHROMIUM = os.environ.get("HPCAI_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
ARTIFACTS = Path(os.environ.get("HPCAI_ARTIFACTS") or Path(__file__).resolve().parents[1] / "test-artifacts")

# JupyterLab settings for a quiet, predictable page: every cell kept in the DOM, no news or update pop-ups
SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
}


def missing_browser() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    import importlib.util
    for module, install in (("playwright", "pip install playwright"), ("jupyterlab", "pip install jupyterlab"),
                            ("ipywidgets", "pip install ipywidgets"), ("psutil", "pip install psutil")):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed ({install})"
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


def require_browser() -> None:
    """Skip the calling test when :func:`missing_browser` says why it cannot run; under
    ``HPCAI_REQUIRE_BROWSER=1`` (CI) fail instead."""
    import pytest
    why = missing_browser()
    if why:
        if os.environ.get("HPCAI_REQUIRE_BROWSER") == "1":
            pytest.fail(f"HPCAI_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)


def chromium(playwright):
    """Headless system Chromium."""
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ProcessWatch:
    """Every descendant of ``pid`` seen while watching (sampled every ``every`` s), as psutil.Process objects."""

    def __init__(self, pid: int, every: float = 0.25):
        import psutil
        self.root = psutil.Process(pid)
        self.seen = {pid: self.root}
        self._every, self._done = every, threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="process-watch")
        self._thread.start()

    def _loop(self):
        while not self._done.is_set():
            self.sample()
            self._done.wait(self._every)

    def sample(self):
        for pid, p in procs.descendants(self.root.pid).items():
            self.seen.setdefault(pid, p)

    def stop(self):
        self._done.set()
        self._thread.join()

    def alive(self) -> list:
        """The watched processes still running (zombies count as gone)."""
        return procs.living(self.seen.values())


def write_settings(folder) -> Path:
    """JupyterLab's settings folder (``JUPYTERLAB_SETTINGS_DIR``) holding :data:`SETTINGS`."""
    for name, values in SETTINGS.items():
        path = Path(folder) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    return Path(folder)


class Lab:
    """``hpcai lab`` on a free port of 127.0.0.1 with a random token, serving ``notebook_dir``."""

    def __init__(self, notebook_dir, workdir, start_timeout: float = 90):
        import secrets
        self.notebook_dir, self.workdir = Path(notebook_dir), Path(workdir)
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        env = dict(os.environ)
        for var, sub in (("JUPYTERLAB_SETTINGS_DIR", "settings"), ("JUPYTERLAB_WORKSPACES_DIR", "workspaces"),
                         ("JUPYTER_RUNTIME_DIR", "runtime")):
            env[var] = str(self.workdir / sub)
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        write_settings(self.workdir / "settings")
        bin_dir = os.path.dirname(sys.executable)  # this environment's jupyter and mpiexec first, as in a venv
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        command = [sys.executable, "-m", "hpcai", "lab", "--no-browser", "--port", str(self.port),
                   "--token", self.token, "--notebook-dir", str(self.notebook_dir)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-root")  # CI containers run as root
        self.log_path = self.workdir / "lab.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     cwd=self.notebook_dir, env=env)
        self.watch = ProcessWatch(self.proc.pid)
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"hpcai lab exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if self.api("status") is not None:
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab did not answer within {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.25)

    def api(self, path: str, method: str = "GET", body=None, timeout: float = 10):
        """A REST call with the token; the decoded JSON (None for an empty reply)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.base}/api/{path}", data=data, method=method,
                                         headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            text = r.read()
        return json.loads(text) if text else None

    def url(self, path: str = "") -> str:
        return f"{self.base}/lab/tree/{path}?token={self.token}"

    def shutdown_kernels(self, timeout: float = 60) -> None:
        """Shut every kernel down through the server (a shutdown request: the kernel's atexit handlers run)."""
        try:
            for kernel in self.api("kernels"):
                self.api(f"kernels/{kernel['id']}", method="DELETE", timeout=timeout)
        except (OSError, urllib.error.URLError):
            pass

    def stop(self, timeout: float = 60) -> int | None:
        """Kernels shut down, then the server stopped with SIGTERM (its clean stop); its exit status."""
        if self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.watch.sample() if self.watch.root.is_running() else None
        self.watch.stop()
        self._log.close()
        return self.proc.returncode

    def leftovers(self) -> list:
        """Processes this lab started that are still alive (call after ``stop()``; ``procs.collect`` waits)."""
        left = self.watch.alive()
        return left + [p for p in self._strays() if p.pid not in {q.pid for q in left}]

    def _strays(self) -> list:
        """Processes working in the served folder that escaped the watch (re-parented before a sample)."""
        import psutil
        found, root = [], str(self.notebook_dir.resolve())
        for p in psutil.process_iter(["pid", "cwd"]):
            cwd = p.info.get("cwd") or ""
            if p.pid != os.getpid() and (cwd == root or cwd.startswith(root + os.sep)) and procs.alive(p):
                found.append(p)
        return found


def copy_notebooks(source, target) -> Path:
    """A copy of the notebooks folder, so the repository's files are never touched by a test."""
    return Path(shutil.copytree(source, target, ignore=shutil.ignore_patterns(".ipynb_checkpoints")))


# -- driving JupyterLab's page -----------------------------------------------------------------------------
def run_all_cells(page) -> None:
    """Run > Run All Cells from the menu bar."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Run All Cells")).click()


def shut_down_kernel(page) -> None:
    """Kernel > Shut Down Kernel from the menu bar (what a user does when done: the kernel exits cleanly)."""
    page.locator(".lm-MenuBar-item", has_text=re.compile(r"^Kernel$")).click()
    page.locator(".lm-Menu-item", has_text=re.compile(r"^Shut Down Kernel")).click()
    accept_kernel_dialog(page)


def accept_kernel_dialog(page) -> None:
    """If JupyterLab asks which kernel to use, take the one it proposes."""
    dialog = page.locator(".jp-Dialog")
    try:
        dialog.wait_for(state="visible", timeout=3000)
    except Exception:  # no dialog: the notebook's kernel started by itself
        return
    dialog.locator(".jp-mod-accept").click()


def wait_kernel_idle(page, timeout: float, lab=None) -> None:
    """The notebook's kernel is connected and idle (the toolbar indicator, and ``lab``'s server agrees)."""
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=timeout * 1000)
    deadline = time.monotonic() + timeout
    while lab is not None and time.monotonic() < deadline:
        kernels = lab.api("kernels")
        if kernels and all(k["execution_state"] == "idle" for k in kernels):
            return
        time.sleep(0.5)
    if lab is not None:
        raise TimeoutError(f"kernel not idle after {timeout} s: {lab.api('kernels')}")


def wait_all_cells_ran(page, timeout: float) -> None:
    """Every code cell has an execution count (none queued ``[*]`` or never run ``[ ]``)."""
    page.wait_for_function("""() => {
        const prompts = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')];
        return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent));
    }""", timeout=timeout * 1000)


def errors_in_outputs(page) -> list:
    outputs = (".jp-Notebook .jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr'], "
               ".jp-Notebook .jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
    return page.locator(outputs).all_inner_texts()


def choose(page, choices: dict, timeout: float = 60.0) -> None:
    """Select ``choices`` (name: option) in the panel's dropdowns and wait until every one holds for 2 s.
    Choosing an application rebuilds the other dropdowns with its defaults in the kernel, and on a loaded
    machine that reply can arrive after a later choice was made, undoing it: such a choice is made again."""
    def chosen(name):
        return page.eval_on_selector(f".hpcai-{name} select", "s => s.selectedOptions[0].textContent")
    for name, value in choices.items():
        page.select_option(f".hpcai-{name} select", value)
    deadline, held = time.monotonic() + timeout, 0
    while held < 4:
        page.wait_for_timeout(500)
        now = {name: chosen(name) for name in choices}
        wrong = {name: shown for name, shown in now.items() if shown != choices[name]}
        held = 0 if wrong else held + 1
        if wrong and time.monotonic() > deadline:
            raise AssertionError(f"panel choices did not hold for {timeout} s: {wrong}, wanted {choices}")
        for name in wrong:
            page.select_option(f".hpcai-{name} select", choices[name])


def run_panel(page, choices: dict, engines: int, timeout: float, shot=None) -> str:
    """In the quickstart's control panel: choose ``choices`` and ``engines``, press Run, wait (``timeout`` s)
    until the results view shows a figure or the status says error/stopped; the status line.
    ``shot(name, locator)`` takes screenshots along the way."""
    panel = page.locator(".hpcai-panel")
    panel.wait_for(state="visible")
    choose(page, choices)
    box = page.locator(".hpcai-engines input")
    box.fill(str(engines))
    box.press("Enter")
    page.wait_for_function("() => !document.querySelector('.hpcai-run').disabled")
    shot and shot("panel", panel)
    page.click(".hpcai-run")
    page.wait_for_function("() => !/idle/.test(document.querySelector('.hpcai-status').textContent)",
                           timeout=30_000)
    figure = page.locator(".hpcai-results img.hpcai-figure").first
    try:
        page.wait_for_function(
            """() => {
                const status = document.querySelector('.hpcai-status').textContent;
                if (/error|stopped/.test(status)) return true;
                const img = document.querySelector('.hpcai-results img.hpcai-figure');
                return img && img.complete && img.naturalWidth > 0 && img.offsetParent !== null;
            }""", timeout=timeout * 1000)
    finally:
        figure.scroll_into_view_if_needed(timeout=5000) if figure.count() else None
        shot and shot("results", page)
    return page.inner_text(".hpcai-status")


@contextlib.contextmanager
def notebook_page(served, workdir, notebook: str, label: str):
    """``(page, lab)``: ``hpcai lab`` serving ``served`` with ``notebook`` open in headless Chromium, its kernel
    idle. A failure leaves ``<label>-failure.png`` and ``<label>-lab.log`` in :data:`ARTIFACTS`; afterwards the
    lab is stopped, it must exit 0 and leave no process behind (what it leaves is killed and reported)."""
    from playwright.sync_api import sync_playwright
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    lab, page = Lab(served, workdir), None
    try:
        with sync_playwright() as p:
            chrome = chromium(p)
            try:
                page = chrome.new_page(viewport={"width": 1400, "height": 1000})
                page.set_default_timeout(60_000)
                page.goto(lab.url(notebook), wait_until="domcontentloaded")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
                accept_kernel_dialog(page)
                wait_kernel_idle(page, timeout=90, lab=lab)
                yield page, lab
            except BaseException:
                if page is not None:
                    page.screenshot(path=str(ARTIFACTS / f"{label}-failure.png"), full_page=True)
                (ARTIFACTS / f"{label}-lab.log").write_text(lab.log())
                raise
            finally:
                chrome.close()
    finally:
        code = lab.stop()
        left = procs.collect(lab.leftovers)  # waits up to 15 s, then kills what is left
    assert not left, f"processes left behind after JupyterLab stopped (killed now): {left}"
    assert code == 0, f"hpcai lab exited with {code}:\n{lab.log()[-3000:]}"
