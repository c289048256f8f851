"""Errors a user can act on. Their messages say what was wrong and how to fix it."""

LABEL_CHARS = 60  # a prompt shown in a warning, a message or a table is cut to this many characters


def shorten(prompt: str) -> str:
    """A prompt cut to LABEL_CHARS characters for a warning, a message or a table cell."""
    return prompt if len(prompt) <= LABEL_CHARS else prompt[:LABEL_CHARS - 1].rstrip() + "…"


class TrustError(ValueError):
    """Base class: the CLI and the app show these as one line, without a traceback.

    A ValueError, as the package's checks of plain arguments raise, so that `except ValueError` catches every
    input the package refuses (a bad number, a missing folder, a delta of another model).
    """


class ModelLoadError(TrustError):
    """A model, its assets or a detector could not be loaded."""
