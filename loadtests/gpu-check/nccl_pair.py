#!/usr/bin/env python3
"""nccl_pair.py: NCCL collectives with known counts and sizes, for node-probe's NCCL hooks.

  nccl_pair.py --out FILE [--world auto|1|2] [--port 29533] [--settle-s 0] [--timeout-s 50]

The launcher starts the ranks as processes of their own (`nccl_pair.py --rank R ...`, so each
has `nccl_pair.py` in its command line) on the one GPU:
  * two ranks when the NCCL that torch loads is 2.30 or newer, which lets several ranks share
    a GPU (NCCL_MULTI_RANK_GPU_ENABLE=1; shared/notes/gpu.md section 5a), over the socket
    transport on loopback (P2P and SHM off, NCCL_NET=Socket, NCCL_SOCKET_IFNAME=lo);
  * else one rank (a one-rank communicator: NCCL is still called for every collective).
Each rank, through torch.distributed (backend nccl, init_method tcp://127.0.0.1:PORT, eager
communicator set-up with device_id):
  * all_reduce of 1 MiB (float32) x 50, then of 64 MiB x 10;
  * with two ranks, send/recv of 1 MiB x 10 (rank 0 sends, rank 1 receives);
  * one all_reduce of 1 MiB captured in a CUDA graph (after one eager warm-up call), then the
    graph replayed x 20: NCCL is called once, at capture; replays call only cuGraphLaunch.
--settle-s makes each rank wait after CUDA is initialised (libcuda and libnccl mapped) and
before the communicator is set up, so that node-probe's rescan has attached its uprobes.

Truth, written by the launcher to --out (JSON): NCCL version, world size and why, and per rank
its pid, the calls it made to NCCL through torch (op, bytes, dtype, count, captured, host
start/end in time.monotonic_ns()), the graph replays, its threads' names (NCCL's own, e.g.
"NCCL Sock*"), errors. torch may call NCCL beyond these (communicator set-up; a split
communicator for the send/recv pair): `torch_internal` notes them.
"""
import argparse
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

MIB = 1 << 20


def nccl_version():
    """torch's NCCL version as (major, minor, patch), or None."""
    import torch
    try:
        v = torch.cuda.nccl.version()
    except Exception:  # noqa: BLE001
        return None
    if isinstance(v, tuple):
        return tuple(int(x) for x in v[:3])
    v = int(v)  # older torch: 2708 -> (2, 7, 8); 22304 -> (2, 23, 4)
    if v >= 10000:
        return (v // 10000, v // 100 % 100, v % 100)
    return (v // 1000, v // 100 % 10, v % 100)


def thread_names():
    names = {}
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/comm" % tid) as f:
                n = f.read().strip()
            names[n] = names.get(n, 0) + 1
    except OSError:
        pass
    return names


def rank_main(args):
    libc = ctypes.CDLL(None)
    libc.prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGTERM), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))  # PR_SET_PDEATHSIG: go with the launcher
    rec = {"rank": args.rank, "pid": os.getpid(), "calls": [], "graph": None, "errors": []}

    def dump():
        with open(args.piece, "w") as f:
            json.dump(rec, f, indent=1)

    try:
        import torch
        import torch.distributed as dist
        torch.cuda.set_device(0)
        torch.zeros(1, device="cuda")  # CUDA initialised: libcuda.so.1 mapped
        if args.settle_s > 0:
            time.sleep(args.settle_s)
        dev = torch.device("cuda", 0)
        t0 = time.monotonic_ns()
        kw = {"device_id": dev}
        try:
            dist.init_process_group("nccl", init_method="tcp://127.0.0.1:%d" % args.port,
                                    rank=args.rank, world_size=args.world, **kw)
        except TypeError:  # a torch without device_id: the communicator is set up lazily
            dist.init_process_group("nccl", init_method="tcp://127.0.0.1:%d" % args.port,
                                    rank=args.rank, world_size=args.world)
        rec["init_ns"] = [t0, time.monotonic_ns()]

        def run(op, n, tensor, fn, captured=False):
            start = time.monotonic_ns()
            for _ in range(n):
                fn(tensor)
            torch.cuda.synchronize()
            rec["calls"].append({"op": op, "n": n, "bytes": tensor.numel() * tensor.element_size(),
                                 "count": tensor.numel(), "dtype": str(tensor.dtype),
                                 "captured": captured, "start_ns": start,
                                 "end_ns": time.monotonic_ns()})

        small = torch.ones(MIB // 4, device=dev)
        big = torch.ones(64 * MIB // 4, device=dev)
        run("all_reduce", 50, small, dist.all_reduce)
        run("all_reduce", 10, big, dist.all_reduce)
        if args.world == 2:
            buf = torch.ones(MIB // 4, device=dev)
            if args.rank == 0:
                run("send", 10, buf, lambda t: dist.send(t, 1))
            else:
                run("recv", 10, buf, lambda t: dist.recv(t, 0))
        # A CUDA-graph-captured all_reduce, replayed: NCCL is called at capture only.
        g_in = torch.ones(MIB // 4, device=dev)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                run("all_reduce", 1, g_in, dist.all_reduce)  # warm-up before the capture
            torch.cuda.current_stream().wait_stream(side)
            g = torch.cuda.CUDAGraph()
            start = time.monotonic_ns()
            with torch.cuda.graph(g):
                dist.all_reduce(g_in)
            rec["calls"].append({"op": "all_reduce", "n": 1, "bytes": MIB, "count": MIB // 4,
                                 "dtype": str(g_in.dtype), "captured": True,
                                 "start_ns": start, "end_ns": time.monotonic_ns()})
            start = time.monotonic_ns()
            for _ in range(20):
                g.replay()
            torch.cuda.synchronize()
            rec["graph"] = {"replays": 20, "start_ns": start, "end_ns": time.monotonic_ns()}
        except Exception as e:  # noqa: BLE001
            rec["graph"] = {"error": "%s: %s" % (type(e).__name__, e)}
        rec["threads"] = thread_names()
        dist.destroy_process_group()
    except Exception as e:  # noqa: BLE001
        rec["errors"].append("%s: %s" % (type(e).__name__, e))
        rec.setdefault("threads", thread_names())
        dump()
        return 1
    dump()
    return 0


def launcher_main(args):
    ver = nccl_version()
    truth = {"nccl_version": ".".join(map(str, ver)) if ver else None, "ranks": [],
             "errors": [], "torch_internal": [
                 "communicator set-up: ncclCommInitRank[Config] once per rank",
                 "send/recv: torch may set up a second (pair) communicator for them"]}
    if args.world == "auto":
        world = 2 if ver is not None and ver >= (2, 30, 0) else 1
        why = ("NCCL %s >= 2.30: two ranks share the GPU (NCCL_MULTI_RANK_GPU_ENABLE)" if world
               == 2 else "NCCL %s < 2.30 (or unknown): one rank") % truth["nccl_version"]
    else:
        world, why = int(args.world), "--world %s" % args.world
    truth.update({"world_size": world, "why": why,
                  "expected": {"all_reduce_1MiB": 50, "all_reduce_64MiB": 10,
                               "all_reduce_graph_warmup": 1, "all_reduce_captured": 1,
                               "graph_replays": 20,
                               "send_1MiB": 10 if world == 2 else 0,
                               "recv_1MiB": 10 if world == 2 else 0}})
    env = dict(os.environ)
    env.setdefault("NCCL_SOCKET_IFNAME", "lo")
    env.setdefault("NCCL_DEBUG", "WARN")
    if world == 2:
        env.update({"NCCL_MULTI_RANK_GPU_ENABLE": "1", "NCCL_P2P_DISABLE": "1",
                    "NCCL_SHM_DISABLE": "1", "NCCL_NET": "Socket"})
    procs = []
    for r in range(world):
        piece = "%s.rank%d" % (args.out, r)
        if os.path.exists(piece):
            os.remove(piece)
        cmd = [sys.executable, os.path.abspath(__file__), "--rank", str(r), "--world",
               str(world), "--port", str(args.port), "--settle-s", str(args.settle_s),
               "--piece", piece]
        procs.append((r, piece, subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)))

    def stop_all(*_):
        for _, _, p in procs:
            if p.poll() is None:
                p.kill()

    signal.signal(signal.SIGTERM, lambda *_: (stop_all(), sys.exit(124)))
    deadline = time.monotonic() + args.timeout_s
    for r, piece, p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            truth["errors"].append("rank %d did not finish in %.0f s" % (r, args.timeout_s))
            stop_all()
            p.wait(timeout=5)
        try:
            with open(piece) as f:
                rank = json.load(f)
            os.remove(piece)
        except (OSError, ValueError) as e:
            rank = {"rank": r, "errors": ["no truth from this rank: %s" % e]}
        rank["exit"] = p.returncode
        truth["ranks"].append(rank)
    with open(args.out, "w") as f:
        json.dump(truth, f, indent=1)
    bad = truth["errors"] or any(r.get("errors") or r.get("exit") for r in truth["ranks"])
    print("nccl_pair: world %d, %s -> %s" % (world, "errors" if bad else "ok", args.out))
    return 1 if bad else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="nccl_truth.json")
    ap.add_argument("--world", default="auto", choices=["auto", "1", "2"])
    ap.add_argument("--port", type=int, default=29533)
    ap.add_argument("--settle-s", type=float, default=0.0)
    ap.add_argument("--timeout-s", type=float, default=50.0)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--piece", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.rank is not None:
        args.world = int(args.world)
        return rank_main(args)
    return launcher_main(args)


if __name__ == "__main__":
    sys.exit(main())
