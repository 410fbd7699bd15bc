"""The probe's local module: reloaded with it."""

VERSION = 1


def boom() -> None:
    raise KeyError("missing")


def spin() -> None:
    n = 0
    while True:
        n += 1
