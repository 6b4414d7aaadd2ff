"""The base of every failure a user can fix (a bad option, file or folder).

The CLI prints one as a single line and exits with status 2.  This module
imports nothing, so the CLI can name the base without importing the modules
that raise it (torch and open_clip: seconds before `clipsr --help` answers)."""


class UserError(Exception):
    """Its message names what is wrong and how to fix it."""


class UsageError(UserError, ValueError):
    """A bad option or argument: found before any work starts."""


class CaptionError(UserError, ValueError):
    """A caption file or sidecar that cannot be read as captions."""
