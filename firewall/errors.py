"""Errors a user can act on; the command lines print them as one line and exit 2."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (a file, a flag, a data set): say what and what to do."""


class ArtifactError(UserError):
    """An artifacts directory that is missing, incomplete or has been tampered with."""


def run_reporting_errors(action: Callable[[], object], *also: type[Exception]) -> int:
    """Run a command's body; a user error becomes one line on stderr and exit code 2."""
    try:
        action()
    except (UserError, *also) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
