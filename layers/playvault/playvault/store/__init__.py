"""Data access, one module per aggregate: users, catalog (artists/albums/tracks), plays, state.

Table names reach the models only through `bind(settings)` (environment variables set by
template.yaml); every client reaches AWS through the standard AWS_ENDPOINT_URL when it is set.
"""

from __future__ import annotations

from playvault.store.base import ALL_MODELS, bind

__all__ = ["ALL_MODELS", "bind"]
