#!/usr/bin/env python3
"""preflight.py: the Python side of gpu-check's preflight (run by run.sh, output to env.txt).

Prints `key: value` lines: Python, torch, its CUDA and NCCL versions, transformers, the GPU torch
sees, and the paths of libcuda.so.1, libcudart, libnccl, libcupti and libnvidia-ml as mapped in
this process (/proc/self/maps) after CUDA was initialised: the files node-probe's uprobes attach
to in a torch process. Every item that is missing is one line `MISSING: ...`.

Exit status: 0 when torch sees a CUDA GPU, 3 when it does not (a CPU build, no device), 4 when
torch cannot be imported; run.sh treats both as fatal (a rehearsal tolerates 3).
"""
import os
import platform
import sys

LIBS = ("libcuda.so", "libcudart.so", "libnccl.so", "libcupti.so", "libnvidia-ml.so",
        "libcublas.so", "libtorch_cuda.so")


def mapped_libs():
    """{prefix: [paths]} of the libraries above mapped in this process."""
    found = {k: set() for k in LIBS}
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                parts = line.split(None, 5)
                if len(parts) < 6:
                    continue
                path = parts[5].strip()
                base = os.path.basename(path)
                for k in LIBS:
                    if base.startswith(k):
                        found[k].add(path)
    except OSError as e:
        print("MISSING: /proc/self/maps (%s)" % e)
    return {k: sorted(v) for k, v in found.items()}


def main():
    print("python: %s (%s)" % (platform.python_version(), sys.executable))
    ok = True
    try:
        import torch
    except Exception as e:  # noqa: BLE001
        print("MISSING: torch (%s: %s)" % (type(e).__name__, e))
        return 4
    print("torch: %s (CUDA build %s)" % (torch.__version__, torch.version.cuda))
    if not torch.cuda.is_available():
        print("MISSING: a CUDA GPU visible to torch (torch.cuda.is_available() is False%s)"
              % ("; CPU build" if torch.version.cuda is None else ""))
        ok = False
    else:
        try:
            torch.zeros(1, device="cuda")  # initialise CUDA: libcuda.so.1 gets mapped
            torch.cuda.synchronize()
            p = torch.cuda.get_device_properties(0)
            print("gpu: %s, %d SMs, %.1f GiB, capability %d.%d, %d device(s)"
                  % (p.name, p.multi_processor_count, p.total_memory / 2**30, p.major, p.minor,
                     torch.cuda.device_count()))
            print("cuda runtime (torch.version.cuda): %s; driver API version %s"
                  % (torch.version.cuda, driver_version()))
        except Exception as e:  # noqa: BLE001
            print("MISSING: CUDA initialisation (%s: %s)" % (type(e).__name__, e))
            ok = False
    try:
        print("nccl (torch.cuda.nccl.version()): %s" % (torch.cuda.nccl.version(),))
    except Exception as e:  # noqa: BLE001
        print("MISSING: NCCL in torch (%s: %s)" % (type(e).__name__, e))
    try:
        import transformers
        print("transformers: %s" % transformers.__version__)
    except Exception as e:  # noqa: BLE001
        print("MISSING: transformers (%s: %s; gpu_engine.py falls back to its own decoder)"
              % (type(e).__name__, e))
    try:
        import torch.profiler  # noqa: F401
        print("torch.profiler: importable (CUPTI stage)")
    except Exception as e:  # noqa: BLE001
        print("MISSING: torch.profiler (%s)" % e)
    for k, paths in mapped_libs().items():
        if paths:
            for p in paths:
                print("mapped %s: %s" % (k, os.path.realpath(p)))
        elif k in ("libcuda.so", "libcudart.so", "libnccl.so"):
            print("MISSING: %s* in this CUDA-initialised python process (/proc/self/maps)" % k)
        else:
            print("not mapped %s* (loaded later, if at all)" % k)
    return 0 if ok else 3


def driver_version():
    """cuDriverGetVersion from libcuda.so.1 (e.g. 13000), or '?'."""
    import ctypes
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        v = ctypes.c_int()
        if lib.cuDriverGetVersion(ctypes.byref(v)) == 0:
            return "%d.%d" % (v.value // 1000, v.value % 1000 // 10)
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    sys.exit(main())
