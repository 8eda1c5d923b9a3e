"""The layering the architecture promises, checked on the source: `model/` imports neither the
node nor the trainer, `training/` does not import the node, the node uses the model through its
inference and catalog modules only, and delivery does not reach into receive (TLS lives in the
neutral `dsm_node/tls.py`)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

# What of model/ the node may use: running it (segment, grid), naming its outputs (catalog),
# finding the packaged files (resources), and the file-backed arrays whose pages the model's
# inference releases after use (spill).
NODE_MAY_IMPORT_FROM_MODEL = {"model.segment", "model.grid", "model.catalog", "model.resources", "model.spill"}
# The one node module that uses the trainer's package: the demo loop behind `dsm-node demo`
# (dsm_node/commands/demo.py, which imports it only when run) makes its sample study with the
# phantom generator (and finds ../shared/data the way evaluation does). It serves nothing to a
# PACS; everything else in the node, the command modules included, must run without training/.
NODE_MAY_IMPORT_TRAINING = {"dsm_node/demo.py"}


def imports(path: Path) -> set[str]:
    """Absolute module names imported anywhere in ``path`` (relative imports resolved)."""
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def offenders(package: str, rule, exempt: frozenset[str] | set[str] = frozenset()) -> list[str]:
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        if str(path.relative_to(REPO)) in exempt:
            continue
        for name in sorted(imports(path)):
            if rule(name):
                bad.append(f"{path.relative_to(REPO)}: {name}")
    return bad


def under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def test_model_imports_neither_the_node_nor_the_trainer():
    assert offenders("model", lambda n: under(n, "dsm_node") or under(n, "training")) == []


def test_training_does_not_import_the_node():
    assert offenders("training", lambda n: under(n, "dsm_node")) == []


def test_the_node_uses_the_model_for_inference_and_its_catalog_only():
    def outside(name: str) -> bool:
        if not under(name, "model") or name == "model":
            return False
        return not any(under(name, allowed) for allowed in NODE_MAY_IMPORT_FROM_MODEL)

    assert offenders("dsm_node", outside) == []
    assert offenders("dsm_node", lambda n: under(n, "training"), NODE_MAY_IMPORT_TRAINING) == []


def test_the_exceptions_are_still_needed():
    # an exception that names a moved or cleaned-up file would silently exempt nothing
    for exempt in sorted(NODE_MAY_IMPORT_TRAINING):
        assert any(under(n, "training") for n in imports(REPO / exempt)), exempt


def test_delivery_does_not_reach_into_receive():
    assert offenders("dsm_node/delivery", lambda n: under(n, "dsm_node.receive")) == []


def test_the_rules_see_relative_imports():
    # the checker itself: the SCP's relative import of the TLS module resolves to dsm_node.tls
    assert "dsm_node.tls" in imports(REPO / "dsm_node" / "receive" / "scp.py")
