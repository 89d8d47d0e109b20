"""Why each pytest worker (tests/conftest.py) and each local sweep job (mope_lightning/sweeps/submit.py) gets its share of the cores
as torch threads: the forward time of a small convolutional net, alone and with as many copies running at once as
there are cores, with the default thread count and with one thread per process.

    python benchmarks/oversubscription.py        # about a minute on 2 cores; run it with nothing else running
"""

import os
import subprocess
import sys

CHILD = """
import time, torch, torchvision
m = torchvision.models.mobilenet_v2(width_mult=0.25).eval()
x = torch.randn(64, 3, 32, 32)
with torch.no_grad():
    m(x)
    times = []
    for _ in range(20):
        t = time.perf_counter(); m(x); times.append(time.perf_counter() - t)
print(sorted(times)[10])
"""


def forward_seconds(processes: int, threads: str) -> float:
    """The median forward time of the slowest of `processes` copies run at once, with OMP_NUM_THREADS=`threads`."""
    env = {**os.environ, "OMP_NUM_THREADS": threads}
    procs = [
        subprocess.Popen([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    return max(float(p.communicate()[0]) for p in procs)


def main() -> None:
    cores = os.cpu_count() or 1
    alone = forward_seconds(1, str(cores))
    crowded = forward_seconds(cores, str(cores))
    shared = forward_seconds(cores, "1")
    print(f"{cores} cores; MobileNetV2 x0.25 forward, batch 64 x 3 x 32 x 32, median of 20:")
    print(f"  1 process,  {cores} threads: {alone:.4f} s")
    print(f"  {cores} processes, {cores} threads each: {crowded:.4f} s ({crowded / shared:.0f}x the next line)")
    print(f"  {cores} processes, 1 thread each:  {shared:.4f} s")


if __name__ == "__main__":
    main()
