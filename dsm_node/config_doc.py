"""Generate the documented defaults (dsm_node/defaults/node.yaml, linked from config/node.yaml)
and docs/configuration.md from the schema.

Both files are generated so they cannot drift from the code; a test regenerates them and fails
when the committed copies are stale (`python -m dsm_node.config_doc --write`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from .settings import DEFAULT_CONFIG, Settings

YAML_PATH = DEFAULT_CONFIG
# The reference page is documentation of the source repository, not package data: --write is a
# development command and only runs inside a checkout.
SOURCE_TREE = Path(__file__).resolve().parents[1]
DOC_PATH = SOURCE_TREE / "docs" / "configuration.md"

_HEADER = """\
# dsm-node configuration: every key with its default value.
# GENERATED from dsm_node/settings.py by `python -m dsm_node.config_doc --write`; edit the schema,
# not this file. Copy it, change what your site needs, run `dsm-node serve --config FILE`.
# Any key can also be set as an environment variable DSM_NODE__SECTION__KEY (e.g.
# DSM_NODE__DICOM__PORT=104); lists and mappings as JSON. Precedence: defaults < file < env < flags.
"""


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return {k: _plain(v) for k, v in value}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "get_secret_value"):
        return value.get_secret_value()
    return value


def _fields(model: type[BaseModel], instance: BaseModel, prefix: str) -> list[tuple[str, Any, str, str]]:
    rows = []
    for name, field in model.model_fields.items():
        value = getattr(instance, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            rows.extend(_fields(type(value), value, key + "."))
        else:
            ann = getattr(field.annotation, "__name__", None) or str(field.annotation).replace("typing.", "")
            rows.append((key, _plain(value), ann, field.description or ""))
    return rows


def render_yaml() -> str:
    defaults = Settings()
    lines = [_HEADER.rstrip("\n")]

    def emit(model: BaseModel, indent: int) -> None:
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            pad = "  " * indent
            if field.description:
                lines.append(f"{pad}# {field.description}")
            if isinstance(value, BaseModel):
                lines.append(f"{pad}{name}:")
                emit(value, indent + 1)
            else:
                dumped = yaml.safe_dump({name: _plain(value)}, default_flow_style=True, width=1000).strip()
                lines.append(pad + dumped[1:-1])

    for section in Settings.model_fields:
        lines += ["", f"{section}:"]
        emit(getattr(defaults, section), 1)
    return "\n".join(lines) + "\n"


def render_markdown() -> str:
    defaults = Settings()
    out = [
        "# Configuration reference",
        "",
        "Generated from `dsm_node/settings.py` by `python -m dsm_node.config_doc --write` (a test fails when",
        "this file is stale). Set keys in a YAML file passed with `--config`, or as environment variables",
        "`DSM_NODE__SECTION__KEY` (nested keys joined by `__`, lists as JSON). Precedence: defaults < file <",
        "environment < command-line flags. `dsm-node check-config` prints the effective result.",
    ]
    for section in Settings.model_fields:
        instance = getattr(defaults, section)
        out += ["", f"## `{section}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for key, value, ann, desc in _fields(type(instance), instance, ""):
            shown = "`" + yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip() + "`"
            out.append(f"| `{section}.{key}` | {ann.replace('|', 'or')} | {shown.replace('|', '&#124;')} | {desc} |")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--write", action="store_true", help="rewrite the defaults file and docs/configuration.md (in a checkout)"
    )
    args = parser.parse_args(argv)
    if args.write:
        if not (SOURCE_TREE / "pyproject.toml").is_file():
            parser.error(f"--write regenerates files of a source checkout; {SOURCE_TREE} is not one")
        YAML_PATH.write_text(render_yaml())
        DOC_PATH.parent.mkdir(exist_ok=True)
        DOC_PATH.write_text(render_markdown())
        print(f"wrote {YAML_PATH} and {DOC_PATH}")
    else:
        sys.stdout.write(render_yaml())
    return 0


if __name__ == "__main__":
    sys.exit(main())
