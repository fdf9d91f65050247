"""The lab as an HTTP service: providers push, consumers pull, admins manage.

``create_app()`` builds the FastAPI application; ``datalab serve`` runs it on
uvicorn. The routes are split by who calls them (``providers``,
``consumers``, ``admin``); ``deps`` turns a bearer token into a principal and
refuses (and audits) everything else. See docs/service.md.
"""

from datalab.service.app import create_app

__all__ = ["create_app"]
