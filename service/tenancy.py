"""Tenants: who owns a stored video.

With ``TRDETR_API_KEYS`` set, each key is a tenant: its videos live in their own Redis namespace
(:class:`service.quota.TenantKeys`), under their own storage quota, and no other key can read, list,
search or delete them. Without keys every client is the one ``shared`` tenant.

A tenant id is derived from its key by a one-way hash, so it is stable (the same key always finds its
videos again, on every replica and after restarts), safe to show in Redis key names, logs and metrics,
and never reveals the key. It only hides a key that is hard to guess: generate keys at random (e.g.
``openssl rand -hex 32``), as the deployment docs say. Later features that group a tenant's data
(collections, search) use the same id.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SHARED_TENANT_ID = "shared"
_DOMAIN = b"trdetr-tenant-v1\0"  # separates this hash from any other use of the same key


@dataclass(frozen=True)
class Tenant:
    """The owner of a request's videos; ``id`` is non-secret (``shared``, or ``k`` + 20 hex digits)."""

    id: str


SHARED_TENANT = Tenant(SHARED_TENANT_ID)


def tenant_for_key(api_key: str) -> Tenant:
    """The tenant of an API key: ``k`` + the first 80 bits of SHA-256(domain || key), in hex."""
    return Tenant("k" + hashlib.sha256(_DOMAIN + api_key.encode()).hexdigest()[:20])
