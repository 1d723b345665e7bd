"""Errors a user can act on; the command lines print them as one line and exit 2."""


class UserError(Exception):
    """Bad input from the user (a file, a flag, a data set): say what and what to do."""


class ArtifactError(UserError):
    """An artifacts directory that is missing, incomplete or has been tampered with."""
