"""Memory-allocator settings for CPU training.

With glibc's defaults, large temporaries are handed back to the OS and faulted in again every step; on the
reference HSTU code (meta-recsys/generative-recommenders) this cost a large factor in throughput. Raising
glibc's mmap and trim thresholds keeps freed memory in the process for reuse. Other allocators (jemalloc via
LD_PRELOAD) are left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def tune_glibc_malloc() -> str:
    """Returns the allocator in use, as a label for benchmark records."""
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload:
        return "jemalloc" if "jemalloc" in preload else "tcmalloc"
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "system"
    if os.environ.get("GENREC_MALLOC_TUNING", "1") == "0":
        return "glibc (default)"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 << 20) and libc.mallopt(M_TRIM_THRESHOLD, 1 << 30)
    except OSError:
        return "glibc (default)"
    return "glibc (tuned: mmap 32 MiB, trim 1 GiB)" if ok else "glibc (default)"
