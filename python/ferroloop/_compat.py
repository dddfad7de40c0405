"""The CPython versions ferroloop was verified on, and the guard for newer ones.

ferroloop relies on CPython internals (``docs/cpython-contract.md`` lists them). Those it reads
by layout are probed at run time and fall back to slower public paths when a probe fails; the
asyncio methods it borrows are checked when ``ferroloop._loop`` is imported. A newer CPython
than the newest verified one therefore imports, with a ``RuntimeWarning`` naming the version,
so that its users know ferroloop was not tested there.
"""

import sys
import warnings

#: Oldest supported and newest verified CPython (major, minor).
OLDEST_SUPPORTED = (3, 10)
NEWEST_VERIFIED = (3, 13)


def running_version() -> tuple[int, ...]:
    """The running interpreter's (major, minor, micro)."""
    return tuple(sys.version_info[:3])


def check_version() -> None:
    """Refuse an unsupported CPython; warn on one newer than the newest verified version."""
    version = running_version()
    name = ".".join(str(part) for part in version)
    if version[:2] < OLDEST_SUPPORTED:
        raise ImportError(
            f"ferroloop requires CPython {OLDEST_SUPPORTED[0]}.{OLDEST_SUPPORTED[1]} or later; "
            f"this is {name}"
        )
    if version[:2] > NEWEST_VERIFIED:
        warnings.warn(
            f"ferroloop was verified on CPython up to {NEWEST_VERIFIED[0]}.{NEWEST_VERIFIED[1]}; "
            f"CPython {name} is newer and untested: the internals ferroloop relies on "
            "(docs/cpython-contract.md) are probed at run time, but report any problem",
            RuntimeWarning,
            stacklevel=3,
        )


check_version()
