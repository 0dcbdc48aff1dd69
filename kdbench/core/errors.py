"""Errors a user can act on.

Library code raises these with a message that names the file, key or plugin and says what to do; only the CLI
edge turns them into a one-paragraph message and a non-zero exit.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# The one exit-status scheme of every command (docs/running.md): 0 done; 1 done, but it reports failures (failed
# cells, invalid or unverified tasks); 2 refused with a message (a usage error: a bad option, name, parameter or
# input file, as click's own usage errors); 130 interrupted (Ctrl-C, SIGTERM).
EXIT_FAILURES = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class KdbenchError(Exception):
    """Base class: an error whose message is meant for the user, not a traceback."""

    exit_code = EXIT_USAGE


class PluginError(KdbenchError):
    """A plugin could not be loaded, registered or configured."""


class UnknownNameError(KdbenchError):
    """A name (plugin, task, parameter) that is not among the available ones."""

    def __init__(self, what: str, name: str, available: Iterable[str], hint: str = "") -> None:
        self.what, self.name, self.available = what, name, sorted(available)
        super().__init__(unknown_name_message(what, name, self.available, hint))


class ParameterError(KdbenchError):
    """A plugin or task parameter has a bad key or value."""


class TaskError(KdbenchError):
    """A task manifest or split manifest is malformed or does not match its data."""


class OutputError(KdbenchError):
    """The output location cannot be written."""


def unknown_name_message(
    what: str, name: str, available: Iterable[str], hint: str = "", shown: str | None = None
) -> str:
    """'Unknown attack 'minkk'. Did you mean 'mink'? Available: loss, mink.' — lm-eval style. ``shown`` names the
    culprit in full where ``name`` is only its last part (a manifest's dotted key)."""
    options = sorted(available)
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    message = f"Unknown {what} {shown or repr(name)}."
    if close:
        message += " Did you mean " + " or ".join(repr(c) for c in close) + "?"
    message += " Available: " + (", ".join(options) if options else "(none)") + "."
    if hint:
        message += " " + hint
    return message
