import math
import sys

import pytest

from lmrnn.runtime import cpu_seconds


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/stat is Linux's")
def test_cpu_seconds_count_this_process_within_the_machine():
    own_before, machine_before = cpu_seconds()
    total = 0
    for i in range(4_000_000):  # about a quarter of a second of one core
        total += i
    own, machine = (after - before for after, before in zip(cpu_seconds(), (own_before, machine_before)))
    assert own > 0.05
    # the machine's busy time includes this process's (both in clock ticks of 10 ms at the coarsest)
    assert math.isfinite(machine) and machine >= own - 0.05
