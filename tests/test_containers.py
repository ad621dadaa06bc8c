"""The Binder and Apptainer/Singularity environments: what repo2docker builds from binder/, what the
definition file declares (read with spython and with Apptainer's own section rules), and their smoke tests,
run for real here: the MPI allreduce on 2 ranks and the short training run. No Docker or Apptainer needed;
without jupyter-repo2docker or spython (both in hpcai[dev]) the tests that read with them skip."""
import importlib.util
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: toml comes with repo2docker
    tomllib = pytest.importorskip("toml", reason="Python 3.10 reads pyproject.toml with toml (pip install toml)")
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
BINDER = ROOT / "binder"
DEF_FILE = ROOT / "singularity" / "hpcai.def"
BIN = os.path.dirname(sys.executable)  # this environment's python, mpiexec and hpcai
CUDA_BASE = "nvidia/cuda:12.4.1-runtime-ubuntu22.04"
# Apptainer's section names (pkg/build/types/parser/deffile.go): any other makes `apptainer build` fail
APPTAINER_SECTIONS = {"help", "setup", "files", "labels", "environment", "pre", "post", "runscript", "test",
                      "startscript", "arguments"}
TEMPLATE = re.compile(r"{{\s*(\w+)\s*}}")  # Apptainer's build-argument syntax


def run_script(shell: str, script: str, env: dict, cwd, *args, timeout: float = 120):
    """Run ``script`` with ``shell`` in ``cwd``; (returncode, stdout + stderr)."""
    proc = subprocess.run([shell, "-c", script, shell, *args], cwd=cwd, env=env, text=True, timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    return proc.returncode, proc.stdout


def local_env(**extra) -> dict:
    """This environment first on PATH, no variables of an enclosing MPI job, one BLAS thread per rank."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PMI_", "PMIX_", "OMPI_", "HYDRA_")) and k != "HPCAI_MPIEXEC"}
    env.update(PATH=BIN + os.pathsep + env.get("PATH", ""), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONUNBUFFERED="1", **extra)
    return env


def notebook_requirements() -> dict:
    """Every third-party requirement of hpcai[notebook], extras expanded: {name: Requirement}."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras, found, todo = project["optional-dependencies"], {}, ["notebook"]
    for spec in project["dependencies"]:
        found[canonicalize_name(Requirement(spec).name)] = Requirement(spec)
    while todo:
        for spec in extras[todo.pop()]:
            req = Requirement(spec)
            if canonicalize_name(req.name) == "hpcai":
                todo.extend(req.extras)
            else:
                found[canonicalize_name(req.name)] = req
    return found


# -- Binder ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo2docker_output(tmp_path_factory):
    """What ``repo2docker --no-build --debug`` prints for this repository: its log and the Dockerfile."""
    if importlib.util.find_spec("repo2docker") is None:
        pytest.skip("jupyter-repo2docker is not installed (pip install jupyter-repo2docker, or hpcai[dev])")
    cwd = tmp_path_factory.mktemp("r2d")  # no repo2docker_config.py of the caller's folder gets picked up
    env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
    proc = subprocess.run([sys.executable, "-m", "repo2docker", "--no-build", "--debug", "--user-id", "1000",
                           "--user-name", "jovyan", str(ROOT)], cwd=cwd, env=env, text=True, timeout=120,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, f"repo2docker --no-build failed (pip install -e '.[dev]' installs it):\n{proc.stdout}"
    return proc.stdout


def test_repo2docker_builds_python_311_from_our_binder_files(repo2docker_output):
    out = repo2docker_output
    assert "Building conda environment for python=3.11" in out, f"binder/runtime.txt should select Python 3.11:\n{out}"
    steps = ['pip install --no-cache-dir -r "binder/requirements.txt"', "COPY --chown=1000:1000 src/ ${REPO_DIR}/",
             "RUN ./binder/postBuild"]
    where = [out.find(s) for s in steps]
    assert all(i >= 0 for i in where), f"the Dockerfile lacks one of {steps}:\n{out}"
    assert where == sorted(where), ("binder/requirements.txt must install before the repository is copied (a cached "
                                    "layer; no local paths in it) and postBuild after")
    assert "ENV KERNEL_PYTHON_PREFIX=${NB_PYTHON_PREFIX}" in out, "the kernel must run in the environment pip fills"
    assert "ENV PATH=${NB_PYTHON_PREFIX}/bin:" in out, "the environment's bin/ (the wheel's mpiexec) must be on PATH"


def test_binder_requirements_agree_with_pyproject():
    wanted = notebook_requirements()
    lines = [ln.split("#")[0].strip() for ln in (BINDER / "requirements.txt").read_text().splitlines()]
    listed = [Requirement(ln) for ln in lines if ln]
    for req in listed:
        name = canonicalize_name(req.name)
        assert name in wanted, f"binder/requirements.txt: {req} is no dependency of hpcai[notebook]"
        assert str(req.specifier) == str(wanted[name].specifier), \
            f"binder/requirements.txt has {req}, pyproject.toml has {wanted[name]}: keep them equal"
    names = {canonicalize_name(r.name) for r in listed}
    assert {"mpich", "mpi4py", "ipyparallel", "jupyterlab"} <= names, "the MPI and notebook stack is preinstalled"


def test_postbuild_is_an_executable_strict_bash_script():
    post = BINDER / "postBuild"
    assert post.stat().st_mode & stat.S_IXUSR, "binder/postBuild must be executable (chmod +x)"
    if shutil.which("git") and (ROOT / ".git").exists():
        staged = subprocess.run(["git", "ls-files", "-s", "binder/postBuild"], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE).stdout
        assert not staged or staged.startswith("100755"), f"git records postBuild without its x bit: {staged}"
    lines = post.read_text().splitlines()
    assert lines[0] == "#!/bin/bash", "postBuild starts with #!/bin/bash"
    code = [ln for ln in lines[1:] if ln.strip() and not ln.startswith("#")]
    assert code[0] == "set -euo pipefail", "postBuild's first command is set -euo pipefail"
    installs = [ln for ln in code if "pip install" in ln]
    assert installs == ['python -m pip install --no-cache-dir -e ".[notebook]"'], \
        f"postBuild installs hpcai with its notebook extra from the repository root (its cwd), once: {installs}"


def test_postbuild_checks_pass_here(tmp_path):
    """postBuild without its pip install (hpcai is installed here): hpcai finds this environment's mpiexec,
    and 2 ranks allreduce through hpcai's communicator."""
    script = "\n".join(ln for ln in (BINDER / "postBuild").read_text().splitlines() if "pip install" not in ln)
    code, out = run_script("bash", script, local_env(), ROOT)
    assert code == 0, f"postBuild's checks failed here:\n{out}"
    assert out.count("allreduce ok") == 2 and f"MPI engines use {os.path.join(BIN, 'mpiexec')}" in out, out


def test_readme_links_binder_to_a_notebook_that_exists():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Containers: Binder and Singularity", 1)
    assert len(section) == 2, "README.md has the section '## Containers: Binder and Singularity'"
    links = re.findall(r"https://mybinder\.org/v2/gh/[\w.-]+/hpcai/HEAD\?urlpath=lab/tree/(notebooks/[\w.-]+\.ipynb)",
                       section[1])
    assert links, "the section links Binder to a notebook (https://mybinder.org/v2/gh/ORG/hpcai/HEAD?urlpath=...)"
    for path in links:
        assert (ROOT / path).is_file(), f"the Binder link opens {path}, which is not in the repository"
    assert "apptainer build hpcai.sif singularity/hpcai.def" in section[1]


# -- Apptainer / Singularity ----------------------------------------------------------------------------

def def_sections(text: str):
    """(header lines, {section: body}) by Apptainer's rule: a line whose first word starts with % opens a
    section; repeated sections are appended."""
    header, sections, name = [], {}, None
    for line in text.splitlines(keepends=True):
        words = line.split()
        if words and words[0].startswith("%"):
            name = words[0][1:].lower()
            sections.setdefault(name, "")
        elif name is None:
            header.append(line.strip())
        else:
            sections[name] += line
    return header, sections


def def_arguments(sections) -> dict:
    pairs = [ln.strip().split("=", 1) for ln in sections.get("arguments", "").splitlines()]
    return {k.strip(): v.strip() for k, v in (p for p in pairs if len(p) == 2 and not p[0].startswith("#"))}


def render(text: str, args: dict) -> str:
    """The definition file after Apptainer's templating: {{ NAME }} from --build-arg, else %arguments."""
    def value(m):
        assert m.group(1) in args, f"{{{{ {m.group(1)} }}}} is used but has no default in %arguments"
        return args[m.group(1)]
    return TEMPLATE.sub(value, text)


@pytest.fixture(scope="module")
def definition():
    text = DEF_FILE.read_text()
    header, sections = def_sections(text)
    return text, header, sections


def test_definition_parses_with_spython():
    reason = "spython is not installed (pip install spython, or hpcai[dev])"
    SingularityParser = pytest.importorskip("spython.main.parse.parsers", reason=reason).SingularityParser
    DockerWriter = pytest.importorskip("spython.main.parse.writers", reason=reason).DockerWriter

    parser = SingularityParser(str(DEF_FILE))
    recipe = parser.recipe["spython-base"]
    assert recipe.fromHeader.lower() == "{{ base }}", f"From is the BASE build argument: {recipe.fromHeader}"
    files = [ln.split() for ln in recipe.files]
    assert all(len(pair) == 2 and pair[1].startswith("/opt/hpcai/") for pair in files), files
    for src, _ in files:
        assert (ROOT / src).exists(), f"%files copies {src}, which is not in the repository"
    assert {src for src, _ in files} >= {"pyproject.toml", "README.md", "hpcai", "notebooks"}
    assert any(e.startswith('PATH="/opt/venv/bin:') for e in recipe.environ), recipe.environ
    assert any('pip install --no-cache-dir -e "/opt/hpcai[{{ EXTRAS }}]"' in ln for ln in recipe.install), \
        "%post installs hpcai from the copied source with the EXTRAS build argument"
    assert any(ln.startswith("org.opencontainers.image.title hpcai") for ln in recipe.labels), recipe.labels
    assert "from {{ base }}" in DockerWriter(parser.recipe).convert().lower(), "spython converts it to a Dockerfile"


def test_definition_header_sections_and_arguments(definition):
    text, header, sections = definition
    fields = dict(ln.split(":", 1) for ln in header if ln and not ln.startswith("#"))
    assert {k: v.strip() for k, v in fields.items()} == {"Bootstrap": "docker", "From": "{{ BASE }}"}, fields
    assert set(sections) <= APPTAINER_SECTIONS, f"Apptainer rejects sections {set(sections) - APPTAINER_SECTIONS}"
    for name in ("arguments", "files", "post", "environment", "test", "runscript", "labels", "help"):
        assert sections.get(name, "").strip(), f"%{name} is missing or empty"
    args = def_arguments(sections)
    assert args == {"BASE": "python:3.11-slim-bookworm", "EXTRAS": "notebook", "PYTHON": "python3.11"}, args
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for build_args in ({}, {"BASE": CUDA_BASE, "EXTRAS": "notebook,gpu"}):
        rendered = render(text, {**args, **build_args})
        assert "{{" not in rendered and re.search(rf"^From: {re.escape(build_args.get('BASE', args['BASE']))}$",
                                                   rendered, re.M), rendered[:300]
        assert set(build_args.get("EXTRAS", args["EXTRAS"]).split(",")) <= set(extras)
        for name, body in def_sections(rendered)[1].items():
            if name in ("post", "environment", "test", "runscript"):
                check = subprocess.run(["/bin/sh", "-n", "-c", body], text=True, stderr=subprocess.PIPE)
                assert check.returncode == 0, f"%{name} is no valid /bin/sh script: {check.stderr}"


def test_definition_installs_python_and_mpi_for_any_base(definition):
    _, _, sections = definition
    post = sections["post"]
    missing_python = r"if ! command -v {{ PYTHON }}.*\n.*\n\s*apt-get install .*{{ PYTHON }} {{ PYTHON }}-venv"
    assert re.search(missing_python, post), \
        "a CUDA base has no python3.11: %post installs it when missing"
    assert "-m venv /opt/venv" in post and "libibverbs1" in post
    env = sections["environment"]
    assert "HYDRA_LAUNCHER=fork" in env and "PYTHONNOUSERSITE=1" in env
    help_text = sections["help"]
    for needed in ("srun --mpi=pmi2", "apptainer exec", "--nv", CUDA_BASE, "MPI4PY_LIBMPI", "Bind model",
                   "hybrid model"):
        assert needed in help_text, f"%help should explain {needed!r}"


def test_definition_smoke_test_passes_here(definition):
    """%test as Apptainer runs it (/bin/sh, after %environment), with this environment's python, mpiexec
    and hpcai: import, an mpiexec -n 2 allreduce and a short training run that must learn."""
    _, _, sections = definition
    test = sections["test"]
    assert re.search(r"^\s*mpiexec -n 2 .*python -c", test, re.M) and "allreduce" in test, test
    assert "hpcai demo" in test, "%test trains a little"
    script = sections["environment"] + "\n" + test
    code, out = run_script("/bin/sh", script, local_env(), ROOT)
    assert code == 0, f"the image's %test fails here:\n{out}"
    assert out.count("allreduce ok") == 2 and "held-out accuracy" in out, out


def test_definition_runscript_copies_notebooks_and_starts_lab(definition, tmp_path):
    """The runscript with a stand-in `hpcai` that prints its arguments; then `hpcai lab` must accept them."""
    _, _, sections = definition
    runscript = sections["runscript"]
    assert "exec hpcai lab" in runscript and '"$@"' in runscript
    fake = tmp_path / "bin" / "hpcai"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "hpcai $*"\n')
    fake.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    script = runscript.replace("/opt/hpcai/notebooks", str(ROOT / "notebooks"))
    code, out = run_script("/bin/sh", script, env, work, "--port", "8899", "--no-browser")
    assert code == 0, out
    copied = work / "hpcai-notebooks"
    names = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))
    assert names and sorted(p.name for p in copied.glob("*.ipynb")) == names, "the tutorials are copied"
    argv = out.strip().splitlines()[-1].split()
    assert argv == ["hpcai", "lab", "--notebook-dir", str(copied), "--port", "8899", "--no-browser"], out
    usage = subprocess.run([sys.executable, "-m", "hpcai", "lab", "--help"], cwd=tmp_path, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60).stdout
    for option in ("--notebook-dir", "--port", "--no-browser"):
        assert option in usage, f"`hpcai lab` has no {option}, which the runscript and %help use:\n{usage}"
