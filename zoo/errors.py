"""One exception type for mistakes the user can fix; the CLI turns it into a one-line message and exit code 2."""


class ZooError(Exception):
    """Bad input or a broken environment the user can act on. The message says what is wrong and what to do."""


def printable(text: str, limit: int = 500) -> str:
    """A message safe to show: undecodable bytes (surrogates from argv) replaced, and a 1 MB argument echoed in
    it cut at `limit` characters, so it can neither break nor flood the terminal or the page."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    return text if len(text) <= limit else text[:limit] + "..."
