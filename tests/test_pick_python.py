"""`make` picks a Python 3.11 or newer for .venv, or stops before pip with a message that says
what to do (scripts/pick_python.sh). Fake interpreters on a PATH of their own stand in for a
machine whose python3 is 3.10, as Ubuntu 22.04's is."""

import pathlib
import shutil
import subprocess

import pytest
from conftest import fake_commands

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "pick_python.sh"


def fake_pythons(folder: pathlib.Path, **versions: str) -> dict[str, str]:
    """Executables named like pythons (python3_12 -> python3.12) that print a version the way
    pick_python.sh asks for it; returns an environment whose PATH holds only them, `sh` and
    `make`."""
    scripts = {name: f"echo {' '.join(version.split('.'))}" for name, version in versions.items()}
    return fake_commands(folder, **scripts)


def pick(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", str(SCRIPT), *args], env=env, capture_output=True, text=True, cwd=ROOT
    )


def test_it_takes_python3_when_it_is_new_enough(tmp_path):
    done = pick(fake_pythons(tmp_path, python3="3.13.0", python3_12="3.12.1"))
    assert (done.returncode, done.stdout, done.stderr) == (0, "python3\n", "")


def test_it_passes_over_an_old_python3_and_says_so(tmp_path):
    done = pick(fake_pythons(tmp_path, python3="3.10.12", python3_12="3.12.3"))
    assert done.returncode == 0
    assert done.stdout == "python3.12\n"
    assert "python3 is 3.10.12" in done.stderr and "python3.12 (Python 3.12.3)" in done.stderr


def test_it_says_why_it_did_not_take_python3(tmp_path):
    done = pick(fake_pythons(tmp_path / "absent", python3_12="3.12.3"))
    assert done.stdout == "python3.12\n" and "no python3 on PATH" in done.stderr
    broken = tmp_path / "broken"
    env = fake_pythons(broken, python3_13="3.13.1")
    (broken / "python3").write_text("#!/bin/sh\necho 'error while loading shared libraries'\n")
    (broken / "python3").chmod(0o755)
    done = pick(env)
    assert done.stdout == "python3.13\n" and "python3 does not run" in done.stderr


def test_without_a_new_enough_python_it_says_what_to_install(tmp_path):
    done = pick(fake_pythons(tmp_path, python3="3.10.12", python3_14="3.9.0"))
    assert done.returncode == 1 and done.stdout == ""
    assert "python3 is 3.10.12" in done.stderr and "python3.14 is 3.9.0" in done.stderr
    assert "PYTHON=" in done.stderr and "3.11 or newer" in done.stderr


@pytest.mark.parametrize(
    ("named", "said"),
    [("python3.10", "python3.10 is Python 3.10.4"), ("nowhere", "nowhere does not run")],
)
def test_a_named_python_is_taken_or_refused_by_name(tmp_path, named, said):
    env = fake_pythons(tmp_path, python3="3.13.0", python3_10="3.10.4", python3_11="3.11.9")
    assert pick(env, "python3.11").stdout == "python3.11\n"
    refused = pick(env, named)
    assert refused.returncode == 1 and said in refused.stderr and refused.stdout == ""


def make_in_checkout(checkout: pathlib.Path, target: str, env: dict[str, str]):
    """`make target` in a checkout of the Makefile, requirements.txt and pick_python.sh."""
    (checkout / "scripts").mkdir(parents=True, exist_ok=True)
    for name in ("Makefile", "requirements.txt"):
        shutil.copy(ROOT / name, checkout)
    shutil.copy(SCRIPT, checkout / "scripts")
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
    )


def test_make_stops_before_making_a_venv_with_an_old_python(tmp_path):
    env = fake_pythons(tmp_path / "bin", python3="3.10.12")
    done = make_in_checkout(tmp_path / "checkout", ".venv/.stamps/venv", env)
    assert done.returncode != 0
    assert "no Python 3.11 or newer on PATH (python3 is 3.10.12" in done.stderr
    assert not (tmp_path / "checkout" / ".venv").exists()


def test_make_refuses_a_venv_an_old_python_made_before(tmp_path):
    """A checkout where an earlier `make test` made .venv with Python 3.10 (and pip failed)."""
    venv = tmp_path / "checkout" / ".venv"
    fake_pythons(venv / "bin", python="3.10.12")
    (venv / ".stamps").mkdir()
    (venv / ".stamps" / "venv").touch()
    env = fake_pythons(tmp_path / "bin", python3="3.12.3")
    done = make_in_checkout(tmp_path / "checkout", ".venv/.stamps/deps", env)
    assert done.returncode != 0
    assert ".venv/bin/python is Python 3.10.12" in done.stderr
    assert "rm -rf .venv" in done.stdout + done.stderr
    assert not (venv / ".stamps" / "deps").exists()
