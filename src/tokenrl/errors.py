"""Errors that reach the user as one message and exit status 2 (no traceback)."""


class RunError(RuntimeError):
    """A run folder problem (exists, missing, corrupt); the message says what to do."""
