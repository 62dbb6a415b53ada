"""The error every dataset problem raises."""


class DatasetError(ValueError):
    """A dataset folder or file is missing, unreadable or inconsistent; the message names the file(s)."""
