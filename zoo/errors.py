"""One exception type for mistakes the user can fix; the CLI turns it into a one-line message and exit code 2."""


class ZooError(Exception):
    """Bad input or a broken environment the user can act on. The message says what is wrong and what to do."""
