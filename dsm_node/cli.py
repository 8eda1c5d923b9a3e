"""``dsm-node``: one entry point, one module per sub-command.

Each module in COMMANDS exposes ``configure(parser)`` and ``run(args) -> int`` (and
``CONFIG_OPTION = False`` where ``--config`` would not be used). Command modules import heavy
packages (torch, monai) inside ``run`` only, so ``dsm-node audit`` starts fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "check-config": ("dsm_node.commands.check_config", "print the effective configuration or the error"),
    "db": ("dsm_node.commands.db", "database migrations (upgrade, current)"),
    "audit": ("dsm_node.commands.audit", "show or export the audit trail"),
    "serve": ("dsm_node.commands.serve", "run the node: DICOM receiver, completeness/selection, delivery, HTTP"),
    "studies": ("dsm_node.commands.studies", "list received studies, their state and the series chosen"),
    "deliveries": ("dsm_node.commands.deliveries", "list the delivery outbox (pending, in progress, delivered, dead)"),
    "resend": ("dsm_node.commands.resend", "re-arm dead-lettered or delivered deliveries (IDs or --all-dead)"),
    "fsck": (
        "dsm_node.commands.fsck",
        "check spool against database: index or quarantine files without rows, mark rows without files",
    ),
    "infer": ("dsm_node.commands.infer", "run DSM offline on a DICOM folder or NIfTI file (SEG, SR, NIfTI, PNGs)"),
    "worker": ("dsm_node.commands.worker", "run a Celery inference worker (scale-out; executor.kind: celery)"),
    "view": ("dsm_node.commands.view", "open a study and the node's SEG/SR in OHIF (offline, 127.0.0.1)"),
    "export": ("dsm_node.commands.export", "encode a label map (NIfTI on the CT grid) as DICOM-SEG + TID 1500 SR"),
    "demo": ("dsm_node.commands.demo", "the whole loop once: a node on embedded defaults and a local receiver, "
             "one CT sent, SEG + SR, timings and overlay PNGs"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsm-node", description="DICOM node for the DSM CT segmentation model")
    parser.add_argument("--version", action="version", version=f"dsm-node {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        command = importlib.import_module(module)
        if getattr(command, "CONFIG_OPTION", True):  # False: the command makes its own configuration
            p.add_argument("--config", metavar="FILE", help="YAML configuration file (default: built-in defaults)")
        p.set_defaults(_module=module)
        command.configure(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .fsmodes import restrict_umask
    from .heap import return_freed_memory

    restrict_umask()  # files 0640, folders 0750 at most, whatever the caller's umask
    return_freed_memory()  # large series: freed NumPy temporaries go back to the system
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
