"""The one exception type for bad input.

Anything a user can get wrong (a missing file, a corrupt volume, a policy that cannot
fit) raises :class:`InputError` with a one-line message that names the file or value.
The CLI turns it into ``swapseg: error: <message>`` and exit status 2, with no traceback.
"""

from __future__ import annotations

__all__ = ["InputError"]


class InputError(Exception):
    """Bad input from the user. The message is one line naming the file or value."""
