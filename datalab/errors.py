"""Errors a user can act on.

Each carries the place (file, line, field) and the rule that was broken, so
the CLI and the API can show it as it is, without a traceback.
"""

from __future__ import annotations


class DatalabError(Exception):
    """Base class: the message is meant for the person who ran the command.

    ``hint``, when set, is what to do about it; the CLI prints it after the
    message ("what failed — what to do") instead of its default for the kind.
    """

    hint: str | None = None


class ContractError(DatalabError):
    """A contract or dataset spec is invalid; ``problems`` lists every one."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s)\n{lines}")


class UsageError(DatalabError):
    """The command was given something it cannot work with (a wrong kind of contract, a missing option)."""


class PolicyRefused(DatalabError):
    """The sovereignty policy forbids the request; names the rule and input."""

    def __init__(self, rule: str, message: str):
        self.rule = rule
        super().__init__(f"refused by rule '{rule}': {message}")


class NotFound(DatalabError):
    """A dataset, version, contract or delivery that does not exist (for you)."""


class MissingFile(NotFound):
    """A file the user named does not exist (the CLI's filesystem kind, exit 4)."""


class IntegrityError(DatalabError):
    """Stored bytes no longer match their recorded checksum."""
