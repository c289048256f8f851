"""Errors a user can act on. Their messages say what was wrong and how to fix it."""

LABEL_CHARS = 60  # a prompt shown in a warning, a message or a table is cut to this many characters


def shorten(prompt: str, limit: int = LABEL_CHARS) -> str:
    """A prompt cut to `limit` characters for a warning, a message or a table cell."""
    return prompt if len(prompt) <= limit else prompt[:limit - 1].rstrip() + "…"


def number_text(value) -> str:
    """A number as a message quotes it: a whole one in digits (1234), a huge or fractional one as %g (1e+20,
    not 100000000000000000000 nor 1e+20 printed as the float's 21 digits)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return repr(value)
    if isinstance(value, int) and len(digits := str(value)) > 15:
        try:
            return f"{float(value):g}"
        except OverflowError:  # past a float's range (400 nines typed as --max-steps): its start
            return f"{digits[:12]}... ({len(digits)} digits)"
    return f"{int(value)}" if abs(value) < 1e15 and value == int(value) else f"{value:g}"


class TrustError(ValueError):
    """Base class: the CLI and the app show these as one line, without a traceback.

    A ValueError, as the package's checks of plain arguments raise, so that `except ValueError` catches every
    input the package refuses (a bad number, a missing folder, a delta of another model).
    """


class ModelLoadError(TrustError):
    """A model, its assets or a detector could not be loaded."""
