"""How many BLAS threads to use, chosen once when `nn` is imported (before NumPy).

On a machine whose cores other programs already keep busy, OpenBLAS's worker
threads wait for each other at every matrix product: a (64, 64) x (64, 4224)
product took 28 ms with 2 threads under load and 0.4 ms with 1, and lesson 1
`--quick` took 8 to 35 s with 2 threads against 5.3 s with 1 (2 cores, load
average 3 to 4). So when the 1-minute load average says cores are taken, we
use only the free ones. An idle machine (load below 0.5) keeps OpenBLAS's own
default, and a value you set yourself (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS)
always wins.
"""
import math
import os

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cores():
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_for_load(cores, load):
    """BLAS threads for `cores` CPUs when other programs keep `load` of them busy.

    Returns None (leave the library's default: one per core) when the machine is
    idle, else the number of cores left free, at least 1.
    """
    if load < 0.5:
        return None
    return max(1, min(cores, math.floor(cores - load + 0.5)))


def choose_blas_threads():
    """Set OPENBLAS_NUM_THREADS from the load average unless a thread count is already set.

    Returns the number chosen, or None when nothing was set.
    """
    if any(name in os.environ for name in THREAD_VARIABLES):
        return None
    try:
        load = os.getloadavg()[0]
    except (OSError, AttributeError):     # no load average on this system
        return None
    threads = threads_for_load(usable_cores(), load)
    if threads is not None:
        os.environ["OPENBLAS_NUM_THREADS"] = str(threads)
    return threads
