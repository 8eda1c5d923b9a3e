"""glibc's mmap threshold fixed at start (dsm_node/heap.py): multi-megabyte temporaries are
mappings of their own (returned to the system when freed), also after a larger block was freed."""
from __future__ import annotations

import ctypes.util
import platform
import subprocess
import sys

import pytest

from dsm_node.heap import return_freed_memory

# In a fresh interpreter: free a 24 MiB array (glibc's rising threshold then moves up to 24
# MiB), allocate an 8 MiB one, and ask glibc (mallinfo2) how many bytes it holds in mappings of
# their own: with the fixed threshold the 8 MiB array is one, with the rising one it comes
# from the heap, which glibc keeps.
CODE = """
import ctypes, sys, numpy as np
from dsm_node.heap import return_freed_memory
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert return_freed_memory()
big = np.ones(24 << 20, np.uint8); del big
before = libc.mallinfo2().hblkhd
a = np.ones(8 << 20, np.uint8)
print(libc.mallinfo2().hblkhd - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc"
                    or not ctypes.util.find_library("c"), reason="glibc only")
def test_large_temporaries_stay_mappings_of_their_own_after_a_larger_free():
    mapped = {mode: int(subprocess.run([sys.executable, "-c", CODE, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("fixed", "default")}
    assert mapped["fixed"] >= 8 << 20
    assert mapped["default"] == 0  # the control: glibc's own behaviour, which the fix changes
    assert return_freed_memory()
