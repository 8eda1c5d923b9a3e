"""Sub-command modules of ``dsm-node`` (see dsm_node.cli.COMMANDS)."""
