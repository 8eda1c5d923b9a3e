"""Both command lines, ``dsm-node`` and ``dsm-train``, are a COMMANDS table of modules in their
``commands`` package, each with ``configure(parser)`` and ``run(args) -> int``; every sub-command
answers ``--help``, and asking for help loads neither torch nor MONAI."""
from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from dsm_node import cli as node_cli
from training import cli as train_cli

REPO = Path(__file__).resolve().parents[2]
CLIS = {"dsm-node": (node_cli, "dsm_node.commands."), "dsm-train": (train_cli, "training.commands.")}
ENTRIES = [(prog, name) for prog, (cli, _) in CLIS.items() for name in cli.COMMANDS]


@pytest.mark.parametrize(("prog", "name"), ENTRIES, ids=[f"{p} {n}" for p, n in ENTRIES])
def test_every_command_imports_configures_and_answers_help(prog, name, capsys):
    cli, package = CLIS[prog]
    module_name, help_text = cli.COMMANDS[name]
    assert module_name.startswith(package), f"{prog} {name} lives outside {package}"
    assert help_text
    module = importlib.import_module(module_name)
    assert callable(module.run)
    parser = argparse.ArgumentParser(prog=f"{prog} {name}")
    module.configure(parser)
    assert len(parser._actions) > 1  # more than argparse's own -h

    with pytest.raises(SystemExit) as exit_:
        cli.build_parser().parse_args([name, "--help"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: {prog} {name}")


def test_the_demo_command_offers_no_config_option():
    # The demo node writes its own configuration; every other dsm-node command takes --config.
    parser = node_cli.build_parser()
    assert parser.parse_args(["studies", "--config", "node.yaml"]).config == "node.yaml"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["demo", "--config", "node.yaml"])
    assert exit_.value.code == 2


@pytest.mark.parametrize("module", ["dsm_node.cli", "training.cli"])
def test_help_loads_neither_torch_nor_monai(module):
    code = (
        "import json, sys\n"
        f"from {module} import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit as e:\n"
        "    code = e.code\n"
        "print(json.dumps({'code': code, 'heavy': sorted(m for m in ('torch', 'monai') if m in sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "heavy": []}
