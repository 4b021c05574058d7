"""`zoo demo`: not implemented yet."""

from zoo.errors import ZooError


def configure(p):
    pass


def run(args):
    raise ZooError("`zoo demo` is not implemented yet")
