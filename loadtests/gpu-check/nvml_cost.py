#!/usr/bin/env python3
"""nvml_cost.py: what one call of each NVML getter node-probe would sample costs (ctypes).

  nvml_cost.py [--lib libnvidia-ml.so.1] [--device 0] [--calls 2000] [--budget-s 0.6]

Loads libnvidia-ml.so.1 (as the nvml-wrapper crate does), times nvmlInit_v2, then calls each
getter of shared/notes/gpu.md section 6 in a loop (at most --calls times or --budget-s seconds,
after 5 warm-up calls) and prints one JSON object: per getter its return code (and NVML's
string for it), calls made, and us per call (mean, p50, p99, min). Nothing is written to the
device. Exit 0 when NVML answered at all, 1 when it could not be loaded or initialised.
"""
import argparse
import ctypes
import json
import sys
import time

NVML_SUCCESS = 0
NVML_CLOCK_SM, NVML_CLOCK_MEM = 1, 2
NVML_TEMPERATURE_GPU = 0


class Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong),
                ("used", ctypes.c_ulonglong)]


def pct(xs, p):
    s = sorted(xs)
    return s[min(len(s) - 1, int(p / 100.0 * len(s)))] if s else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lib", default="libnvidia-ml.so.1")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--budget-s", type=float, default=0.6)
    args = ap.parse_args()
    out = {"lib": args.lib, "getters": {}, "error": None}
    try:
        lib = ctypes.CDLL(args.lib)
    except OSError as e:
        out["error"] = "cannot load %s: %s" % (args.lib, e)
        print(json.dumps(out, indent=1))
        return 1
    lib.nvmlErrorString.restype = ctypes.c_char_p

    def err(rc):
        try:
            return lib.nvmlErrorString(rc).decode()
        except Exception:  # noqa: BLE001
            return str(rc)

    t0 = time.perf_counter_ns()
    rc = lib.nvmlInit_v2()
    out["init_us"] = round((time.perf_counter_ns() - t0) / 1e3, 1)
    if rc != NVML_SUCCESS:
        out["error"] = "nvmlInit_v2: %d (%s)" % (rc, err(rc))
        print(json.dumps(out, indent=1))
        return 1
    h = ctypes.c_void_p()
    rc = lib.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(args.device), ctypes.byref(h))
    if rc != NVML_SUCCESS:
        out["error"] = "nvmlDeviceGetHandleByIndex_v2: %d (%s)" % (rc, err(rc))
        print(json.dumps(out, indent=1))
        return 1
    name = ctypes.create_string_buffer(96)
    if lib.nvmlDeviceGetName(h, name, ctypes.c_uint(96)) == NVML_SUCCESS:
        out["device"] = name.value.decode(errors="replace")
    drv = ctypes.create_string_buffer(96)
    if lib.nvmlSystemGetDriverVersion(drv, ctypes.c_uint(96)) == NVML_SUCCESS:
        out["driver"] = drv.value.decode(errors="replace")

    u, ull = ctypes.c_uint(), ctypes.c_ulonglong()
    util, mem = Utilization(), Memory()
    count = ctypes.c_uint()

    def sym(*names):
        """The first of these symbols the library exports (newer names first), or None."""
        for n in names:
            try:
                return getattr(lib, n)
            except AttributeError:
                continue
        return None

    reasons = sym("nvmlDeviceGetCurrentClocksEventReasons",
                  "nvmlDeviceGetCurrentClocksThrottleReasons")
    procs = sym("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses")
    proc_util = sym("nvmlDeviceGetProcessUtilization")
    getters = [
        ("utilization_rates", lambda: lib.nvmlDeviceGetUtilizationRates(h, ctypes.byref(util))),
        ("memory_info", lambda: lib.nvmlDeviceGetMemoryInfo(h, ctypes.byref(mem))),
        ("clock_sm", lambda: lib.nvmlDeviceGetClockInfo(h, NVML_CLOCK_SM, ctypes.byref(u))),
        ("clock_mem", lambda: lib.nvmlDeviceGetClockInfo(h, NVML_CLOCK_MEM, ctypes.byref(u))),
        ("temperature", lambda: lib.nvmlDeviceGetTemperature(h, NVML_TEMPERATURE_GPU,
                                                             ctypes.byref(u))),
        ("power_usage", lambda: lib.nvmlDeviceGetPowerUsage(h, ctypes.byref(u))),
        ("total_energy_consumption",
         lambda: lib.nvmlDeviceGetTotalEnergyConsumption(h, ctypes.byref(ull))),
    ]
    if reasons is not None:
        getters.append(("clocks_event_reasons", lambda: reasons(h, ctypes.byref(ull))))
    if procs is not None:
        # Size query (NULL buffer): NVML_ERROR_INSUFFICIENT_SIZE (7) while processes run.
        def running():
            count.value = 0
            return procs(h, ctypes.byref(count), None)
        getters.append(("running_compute_processes_count", running))
    if proc_util is not None:
        def putil():
            count.value = 0
            return proc_util(h, None, ctypes.byref(count), ctypes.c_ulonglong(0))
        getters.append(("process_utilization_count", putil))

    for gname, fn in getters:
        for _ in range(5):
            rc = fn()
        times = []
        end = time.perf_counter() + args.budget_s
        while len(times) < args.calls and time.perf_counter() < end:
            t = time.perf_counter_ns()
            rc = fn()
            times.append(time.perf_counter_ns() - t)
        us = [x / 1e3 for x in times]
        out["getters"][gname] = {
            "rc": rc, "rc_text": err(rc), "calls": len(us),
            "us_mean": round(sum(us) / len(us), 2) if us else None,
            "us_p50": round(pct(us, 50), 2) if us else None,
            "us_p99": round(pct(us, 99), 2) if us else None,
            "us_min": round(min(us), 2) if us else None}
    lib.nvmlShutdown()
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
