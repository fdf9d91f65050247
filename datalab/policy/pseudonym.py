"""Keyed pseudonyms for personal data (GDPR): HMAC-SHA256 with a lab secret.

The key is read from ``DATALAB_PSEUDONYM_KEY`` (hex) or a key file created
once with mode 0600 under ``$DATALAB_HOME/secrets``; it is never written
next to the data, so a published dataset alone cannot be re-identified.
Pseudonyms are stable per tenant and column, so joins over time still work.
"""

from __future__ import annotations

import hashlib
import hmac

import polars as pl

from datalab.config import Settings, lab_key, settings


def key(s: Settings | None = None) -> bytes:
    """The lab's pseudonym key: ``DATALAB_PSEUDONYM_KEY``, else the key file under secrets (created once, :func:`lab_key`)."""
    s = s or settings()
    if s.pseudonym_key:
        return s.pseudonym_key
    return lab_key(s.secrets / "pseudonym.key")


def pseudonym(k: bytes, scope: str, value: str) -> str:
    return "ps_" + hmac.new(k, f"{scope}\x00{value}".encode(), hashlib.sha256).hexdigest()[:16]


def mapping(values: pl.Series, scope: str, s: Settings | None = None) -> pl.DataFrame:
    """A two-column table value -> pseudonym for the distinct ``values``.

    The curation plan joins on it, which keeps the plan free of Python UDFs
    (HMAC runs here once per distinct value, not once per row).
    """
    k = key(s)
    uniq = values.drop_nulls().unique().cast(pl.String)
    return pl.DataFrame({
        "_orig": uniq,
        "_pseudo": [pseudonym(k, scope, v) for v in uniq.to_list()],
    }, schema={"_orig": values.dtype if values.dtype == pl.String else pl.String, "_pseudo": pl.String})
