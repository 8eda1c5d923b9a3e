"""The wheel, installed into a fresh virtual environment outside the checkout, runs the node and
the trainer: every run-time file (defaults, class catalog, model configurations, dataset registry,
demo weights, text embeddings) must ship inside the packages.

The wheel is built from a copy of the package sources (setuptools leaves build/ behind in the
source tree, and a stale build/lib would leak removed files into the wheel). The fresh
environment gets the wheel with --no-deps; its dependencies (torch, MONAI, ...) are the test
environment's, made visible by a .pth file that lists that environment's site-packages. Lines of
a .pth file are only added to sys.path, the .pth files inside them are not run, so an editable
install of this checkout in the test environment stays invisible: the test asserts that every
import resolves inside the new environment and runs with the working directory outside the
checkout and no PYTHONPATH.
"""
from __future__ import annotations

import os
import shutil
import signal
import site
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.tools import REPO, free_port, require_tool

pytestmark = pytest.mark.slow

SOURCES = ("pyproject.toml", "README.md", "dsm_node", "model", "training")


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.run_dir = root / "run"
        self.run_dir.mkdir()
        # No PYTHONPATH (the suite runs with the checkout on it), cwd outside the checkout.
        self.env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        self.env["TCP_NODELAY"] = "1"

    def run(self, *argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
        done = subprocess.run(list(argv), cwd=self.run_dir, env=self.env, capture_output=True, text=True,
                              timeout=timeout)
        assert done.returncode == 0, f"{argv} -> {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def python(self, code: str) -> str:
        return self.run(str(self.bin / "python"), "-c", code).stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    work = tmp_path_factory.mktemp("wheel")
    assert not work.resolve().is_relative_to(REPO.resolve())
    src = work / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(work / "dist"), str(src)], check=True, cwd=work, timeout=900)
    (wheel,) = (work / "dist").glob("dsm_node-*.whl")
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c",
                              "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (Path(purelib) / "_test_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "-q", "--no-deps", "--no-index",
                    str(wheel)], check=True, cwd=work, timeout=900)
    inst = Installed(work)
    where = inst.python("import dsm_node, model, training\n"
                        "for m in (dsm_node, model, training): print(m.__file__)").split()
    assert len(where) == 3 and all(Path(p).is_relative_to(purelib) for p in where), where
    return inst


def test_wheel_holds_the_runtime_files(installed):
    listed = installed.python(
        "from dsm_node.settings import DEFAULT_CONFIG, DEFAULT_WEIGHTS\n"
        "from model.catalog import DEFAULT_CATALOG_PATH\n"
        "from model.config import CONFIG_DIR\n"
        "from model.text import DATA_DIR\n"
        "from training.registry import DEFAULT_REGISTRY\n"
        "from dsm_node.db.engine import MIGRATIONS\n"
        "for p in (DEFAULT_CONFIG, DEFAULT_WEIGHTS, DEFAULT_CATALOG_PATH, CONFIG_DIR / 'model_small.yaml',\n"
        "          DATA_DIR, DEFAULT_REGISTRY, MIGRATIONS / 'versions', DEFAULT_WEIGHTS.parent / 'MODEL_CARD.md'):\n"
        "    print(p.exists(), p)\n"
    ).splitlines()
    venv = str(installed.root / "venv")
    for line in listed:
        exists, path = line.split(" ", 1)
        assert exists == "True" and path.startswith(venv), line


def test_check_config(installed):
    out = installed.run(str(installed.bin / "dsm-node"), "check-config")
    assert "built-in defaults" in out.stdout and "DEMONSTRATION weights" in out.stderr
    # The documented defaults file shipped in the package is a valid configuration.
    shipped = installed.python("from dsm_node.settings import DEFAULT_CONFIG; print(DEFAULT_CONFIG)").strip()
    out = installed.run(str(installed.bin / "dsm-node"), "check-config", "--config", shipped)
    assert f"(file: {shipped})" in out.stdout


def test_serve_answers_c_echo(installed):
    echoscu = require_tool("echoscu")
    port, http_port = free_port(), free_port()
    err = installed.run_dir / "serve.err"
    with err.open("wb") as stderr:
        proc = subprocess.Popen([str(installed.bin / "dsm-node"), "serve", "--data-dir", "serve-data",
                                 "--port", str(port), "--http-port", str(http_port)],
                                cwd=installed.run_dir, env=installed.env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        deadline = time.monotonic() + 600
        while "dsm-node listening on" not in err.read_text():
            assert proc.poll() is None, f"dsm-node serve exited with {proc.returncode}:\n{err.read_text()}"
            assert time.monotonic() < deadline, "dsm-node serve did not start in time"
            time.sleep(0.2)
        installed.run(echoscu, "-aet", "WHEELTEST", "-aec", "DSMNODE", "127.0.0.1", str(port), timeout=60)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 0, err.read_text()[-3000:]


def test_infer_on_a_phantom(installed):
    installed.python("from training.phantoms import make_phantom, write_nifti_pair\n"
                     "image, label, affine = make_phantom(5003, shape=(64, 64, 32), spacing=4.0)\n"
                     "write_nifti_pair(image, label, affine, 'ct.nii.gz', 'label.nii.gz')\n")
    installed.run(str(installed.bin / "dsm-node"), "infer", "ct.nii.gz", "--out", "infer", "--device", "cpu",
                  "--no-overlays")
    assert (installed.run_dir / "infer" / "labels.nii.gz").is_file()


def test_train_eval_on_a_phantom(installed):
    installed.run(str(installed.bin / "dsm-train"), "eval", "--data", "phantom:5003:1", "--out", "eval",
                  "--device", "cpu", "--overlays", "0")
    assert any((installed.run_dir / "eval").iterdir())
