"""``scripts/install.sh``: llama.cpp is compiled only when the embedded model is wanted and not
already there, the compile shows its progress, and the "compiling" line appears only then.

The real script runs in a scratch copy of the repository layout whose ``.venv/bin/python`` is a
stand-in: it records every call and, asked for a wheel, prints build lines as pip's verbose
output carries them (ninja's ``[3/193] /usr/bin/gcc ... -c path/ggml.c``) and writes a wheel
file. So each case shows what the script would run, and what a reader would see, without pip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VERSION = "0.3.36"
WHEEL = f"llama_cpp_python-{VERSION}-cp311-cp311-linux_x86_64.whl"

# The stand-in for the venv's python: pip's verbose build output, a wheel in -w's folder.
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "$*" >> "$CALLS"
case "$*" in
  "-c "*)  # the installed llama-cpp-python's version, if the case says there is one
    [ -n "${FAKE_INSTALLED:-}" ] && echo "$FAKE_INSTALLED" && exit 0
    exit 1 ;;
  *" wheel "*)
    echo "Building wheel for llama-cpp-python (pyproject.toml): started"
    echo "  [1/3] /usr/bin/gcc -DGGML_BUILD -O3 -c /tmp/pip-wheel-x/vendor/llama.cpp/ggml/src/ggml.c"
    echo "  -- Configuring done"
    echo "  [2/3] /usr/bin/g++ -O3 -c /tmp/pip-wheel-x/vendor/llama.cpp/src/llama.cpp"
    [ -n "${FAKE_BUILD_FAILS:-}" ] && { echo "  error: the compiler gave up"; exit 1; }
    echo "  [3/3] : && /usr/bin/g++ -shared -o vendor/llama.cpp/src/libllama.so"
    while [ $# -gt 0 ]; do [ "$1" = -w ] && touch "$2/__WHEEL__"; shift; done ;;
esac
exit 0
""".replace("__WHEEL__", WHEEL)


@dataclass
class Run:
    code: int
    out: str
    err: str
    calls: list[str]

    def ran(self, words: str) -> bool:
        return any(words in call for call in self.calls)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "install.sh", tmp_path / "scripts" / "install.sh")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return tmp_path


def install(project: Path, extras: str, **fake: str) -> Run:
    calls = project / "calls.txt"
    calls.unlink(missing_ok=True)
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(project),
        "CALLS": str(calls),
        "TURNOUT_WHEEL_CACHE": str(project / "wheels"),
        **fake,
    }
    result = subprocess.run(
        ["bash", str(project / "scripts" / "install.sh"), extras],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr, calls.read_text().splitlines())


def cached(project: Path) -> Path:
    return project / "wheels" / "portable-1" / WHEEL


@pytest.mark.parametrize("extras", ["bedrock,redis", "bedrock,redis,postgres,dev", "redis"])
def test_a_gateway_without_the_embedded_model_compiles_nothing(project: Path, extras: str) -> None:
    run = install(project, extras)
    assert run.code == 0, run.err
    assert "compiling" not in run.out + run.err
    assert not run.ran(" wheel ") and not run.ran("llama-cpp-python")
    assert run.calls[-1].endswith(f"install -q -e .[{extras}]")
    assert not (project / "wheels").exists()


def test_the_embedded_model_is_compiled_once_showing_each_step(project: Path) -> None:
    run = install(project, "local,bedrock,redis")
    assert run.code == 0, run.err
    lines = run.out.splitlines()
    assert lines[0].startswith(f"install: compiling llama-cpp-python {VERSION} once (3-12 minutes)")
    # Each build step, short: its number of the total and the file; no compiler flags, no noise.
    assert lines[1:] == ["  [1/3] ggml.c", "  [2/3] llama.cpp", "  [3/3] libllama.so"]
    assert cached(project).is_file()
    log = (project / "wheels" / "portable-1" / "build.log").read_text()
    assert "-DGGML_BUILD -O3" in log and "Configuring done" in log  # the whole log is kept
    wheel = next(call for call in run.calls if " wheel " in call)
    assert "-v " in wheel and f"llama-cpp-python=={VERSION}" in wheel
    assert run.ran(f"install -q --find-links {project}/wheels/portable-1 llama-cpp-python=={VERSION} -e .[local,")
    assert (project / ".venv" / ".llama-build").read_text() == "portable-1\n"

    again = install(project, "local,bedrock,redis", FAKE_INSTALLED=VERSION)
    assert again.code == 0, again.err
    assert again.out == "" and not again.ran(" wheel ")


def test_a_cached_wheel_is_installed_without_compiling(project: Path) -> None:
    cached(project).parent.mkdir(parents=True)
    cached(project).touch()
    run = install(project, "local")
    assert run.code == 0, run.err
    assert run.out == "" and not run.ran(" wheel ")
    assert run.ran(f"llama-cpp-python=={VERSION} -e .[local]")
    assert run.ran("--force-reinstall")  # a venv without this build's marker gets the cached build


def test_a_venv_that_has_this_build_already_needs_no_compiler_even_without_the_cache(project: Path) -> None:
    (project / ".venv" / ".llama-build").write_text("portable-1\n")
    run = install(project, "local,redis", FAKE_INSTALLED=VERSION)
    assert run.code == 0, run.err
    assert "compiling" not in run.out and not run.ran(" wheel ")
    assert run.calls[-1].endswith("install -q -e .[local,redis]")


@pytest.mark.parametrize(
    ("installed", "marker"),
    [("0.3.35", "portable-1"), (VERSION, "native-0"), (VERSION, None)],
    ids=["another version", "another build", "no marker"],
)
def test_another_version_or_build_in_the_venv_is_replaced(project: Path, installed: str, marker: str | None) -> None:
    if marker is not None:
        (project / ".venv" / ".llama-build").write_text(marker + "\n")
    run = install(project, "local", FAKE_INSTALLED=installed)
    assert run.code == 0, run.err
    assert run.out.startswith("install: compiling")
    assert run.ran(" wheel ")


def test_a_failed_compile_says_so_with_the_end_of_its_log(project: Path) -> None:
    run = install(project, "local", FAKE_BUILD_FAILS="1")
    assert run.code == 1
    assert "the compiler gave up" in run.err  # the last lines of the log, where the error is
    assert run.err.rstrip().endswith(f"the whole log: {project}/wheels/portable-1/build.log")
    assert not cached(project).exists()
    assert not run.ran("--find-links")  # nothing installed after a failed build


def test_the_package_metadata_is_read_without_a_deprecation_warning() -> None:
    """``make serve`` installs turnout itself first: a setuptools deprecation there (a framed
    block about ``project.license`` as a table, to become an error in its 2027 releases) is the
    first thing a new user reads. The license is an SPDX expression, which setuptools 77+ takes."""
    setuptools = pytest.importorskip("setuptools")
    from setuptools.config.pyprojecttoml import apply_configuration  # type: ignore[import-untyped]

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dist = apply_configuration(setuptools.Distribution(), str(ROOT / "pyproject.toml"))
    assert dist.metadata.license_expression == "Apache-2.0"
