class BlossomUserError(ValueError):
    """A user error: printed as one line by the command line."""
