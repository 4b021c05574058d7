"""`zoo bench`: not implemented yet."""

from zoo.errors import ZooError


def configure(p):
    pass


def run(args):
    raise ZooError("`zoo bench` is not implemented yet")
