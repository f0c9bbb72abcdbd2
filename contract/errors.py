"""The user-facing error: a problem the user can fix, printed as one line.

Every layer raises it for what a user did or can change (a bad path, a bad flag, a broker that
is down); the command line prints its message and exits with status 2, never a stack trace.
"""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """A problem the user can fix (bad path, bad flag, broker down): printed as one line, exit 2."""
