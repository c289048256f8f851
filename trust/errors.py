"""Errors a user can act on. Their messages say what was wrong and how to fix it."""


class TrustError(Exception):
    """Base class: the CLI and the app show these as one line, without a traceback."""


class ModelLoadError(TrustError):
    """A model, its assets or a detector could not be loaded."""
