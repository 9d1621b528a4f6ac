"""User-facing errors: the CLI prints these as one line, never as a stack trace."""


class GradusError(Exception):
    """Bad input a user can fix; the message names the file, key or row and the fix."""
