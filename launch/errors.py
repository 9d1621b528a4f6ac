"""User-facing errors: the CLI prints these as one line, never as a stack trace."""


class GradusError(Exception):
    """Bad input a user can fix; the message names the file, key or row and the fix."""


_NOTED: set[str] = set()


def note_once(message: str) -> None:
    """A setting that works but may not do what its user expects: said once per
    process (an ablation loads every cell's config)."""
    if message not in _NOTED:
        _NOTED.add(message)
        print(f"gradus: {message}", flush=True)
