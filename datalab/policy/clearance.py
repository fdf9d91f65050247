"""The consumer's clearance, checked on every pull against the version's classification and export control.

A version carries the classification and ``export_control`` flag of its
inputs (combined: the highest classification, export-controlled if any
input is). The consumer declares what it is cleared for:

* ``DATALAB_CLEARANCE``: the highest classification it may receive
  (public < internal < confidential < restricted). Unset means
  ``confidential``: members of the lab work under its NDA, restricted data
  needs an explicit clearance.
* ``DATALAB_EXPORT_CLEARED``: ``1``/``true``/``yes`` when it is cleared for
  export-controlled (dual-use) content; unset means not cleared.

A refusal is a ``PolicyRefused`` naming the rule, so ``pull`` audits it
like every other refusal.
"""

from __future__ import annotations

from datalab.config import DEFAULT_CLEARANCE, Settings, settings
from datalab.contracts.policy import CLASSIFICATIONS, Policy
from datalab.errors import PolicyRefused

PRINCIPAL_KEY = "principal"  # set by ``auth.clearance_env``: the clearance is a principal's roles, not an environment


def check_clearance(pol: Policy, env: dict[str, str] | None = None, s: Settings | None = None) -> None:
    """Refuse unless the consumer's clearance covers ``pol``; the refusal says how clearance is granted here.

    Locally that is the consumer's own environment; over HTTP it is the
    principal's roles, which only an admin of the lab grants (issue 20: the
    message used to tell an HTTP consumer to set an environment variable).
    ``env`` None: this process's settings (``DATALAB_CLEARANCE``, ``DATALAB_EXPORT_CLEARED``,
    checked in datalab.config); else a principal's clearance (``auth.clearance_env``).
    """
    if env is None:
        s = s or settings()
        principal, clearance, cleared = None, s.clearance, s.export_cleared
    else:
        principal = env.get(PRINCIPAL_KEY)
        clearance = (env.get("DATALAB_CLEARANCE") or DEFAULT_CLEARANCE).strip().lower()
        cleared = env.get("DATALAB_EXPORT_CLEARED", "").strip().lower() in ("1", "true", "yes")
    if clearance not in CLASSIFICATIONS:
        raise PolicyRefused("classification", f"DATALAB_CLEARANCE={clearance!r} is not one of {list(CLASSIFICATIONS)}")
    if CLASSIFICATIONS.index(pol.classification) > CLASSIFICATIONS.index(clearance):
        who = ", ".join(pol.sources.get("classification", [])) or "the dataset policy"
        how = (f"principal {principal!r} lacks the role 'restricted' (an admin of the lab grants it)" if principal
               else "DATALAB_CLEARANCE")
        raise PolicyRefused("classification", f"the version is {pol.classification} (set by {who}); the consumer's "
                            f"clearance is {clearance} ({how})")
    if pol.export_control and not cleared:
        who = ", ".join(pol.sources.get("export_control", [])) or "the dataset policy"
        how = (f"principal {principal!r} lacks the role 'export-cleared', which only an admin of the lab grants"
               if principal else "set DATALAB_EXPORT_CLEARED=1 only if it is")
        raise PolicyRefused("export_control", f"the version holds export-controlled content (set by {who}); "
                            f"the consumer is not cleared for it ({how})")
