"""The receiving side: C-STORE/C-ECHO SCP, access control, TLS, instance index, reconciliation.

Public API::

    from dsm_node.receive import StorageSCP, reconcile
    reconcile(ctx)            # at start-up, before the SCP accepts associations
    scp = StorageSCP(ctx); scp.start(); ...; scp.stop()
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .reconcile import ReconcileReport, reconcile
    from .scp import StorageSCP

__all__ = ["StorageSCP", "reconcile", "ReconcileReport"]


def __getattr__(name: str) -> Any:  # lazy: importing the package stays cheap
    if name == "StorageSCP":
        from .scp import StorageSCP

        return StorageSCP
    if name in ("reconcile", "ReconcileReport"):
        from . import reconcile as mod

        return getattr(mod, name)
    raise AttributeError(name)
