"""Size limits: refuse, before allocating, what the kernels cannot index or memory cannot hold.

The kernels index their buffers with C ``int`` where they call BLAS, so every product's
rows times columns stays below 2**31. Memory is checked against the machine's physical
RAM: a request for more than :data:`MEMORY_FRACTION` of it is refused with the bytes it
would need, instead of a bare ``MemoryError`` (or an OOM kill) after a long wait.
"""
import functools
import os

INDEX_LIMIT = 2**31 - 1
MEMORY_FRACTION = 0.75


def format_bytes(n):
    """``n`` bytes as a short human-readable string (KiB, MiB, ...)."""
    size = float(n)
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{int(size)} bytes" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@functools.lru_cache(maxsize=None)
def physical_memory():
    """Bytes of physical memory, or None where the platform does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def fits_memory(nbytes):
    """Whether ``nbytes`` stays within :data:`MEMORY_FRACTION` of physical memory."""
    memory = physical_memory()
    return memory is None or nbytes <= MEMORY_FRACTION * memory


def check_memory(what, nbytes):
    """Raise ValueError if ``nbytes`` exceeds :data:`MEMORY_FRACTION` of physical memory.

    ``what`` names the argument(s) and the buffers, e.g. ``"hidden_size=1048576: the
    parameters"``.
    """
    if not fits_memory(nbytes):
        memory = physical_memory()
        raise ValueError(f"{what} would need {format_bytes(nbytes)}, more than "
                         f"{MEMORY_FRACTION:.0%} of this machine's {format_bytes(memory)} "
                         "of memory; expected smaller sizes")


def check_index(what, count):
    """Raise ValueError if ``count`` elements cannot be indexed by the kernels' C ints."""
    if count > INDEX_LIMIT:
        raise ValueError(f"{what} is {count} elements; the kernels index at most "
                         f"{INDEX_LIMIT} (2**31 - 1) per product; expected smaller sizes")
