#!/usr/bin/env python3
"""load.py: a bounded streaming load for gpu_engine.py that measures TTFT and ITL (stdlib only).

It speaks the gpu-sim's API (loadtests/gpu-sim/README.md, HTTP): POST /v1/completions with
stream=true, one SSE event per token with text " t<i>", finish_reason "length" on the last, then
`data: [DONE]`. Every event is checked, as `loadtests/gpu-sim/vllm load` does; unlike it, this
load sends prompts of --min-prompt..--max-prompt words (log-uniform: mostly short, some long)
with a fixed --max-tokens, varies its concurrency between --min-clients and --clients, can run
for a fixed time, and records when each event arrived.

  load.py --port P [--requests 48] [--duration-s 0] [--clients 8] [--min-clients 4]
          [--min-prompt 16] [--max-prompt 1024] [--max-tokens 32] [--seed 1] [--timeout-s 120]
          [--label NAME]

Prints one JSON object: sent, ok, errors, start/end (time.monotonic_ns(), the engine truth's
clock), TTFT and ITL percentiles in ms, the ITL samples in us (`itl_us`), tokens per second.
Exits 1 if any request failed. Bounded: --timeout-s caps the whole run (every read has a timeout
too), --requests caps the count (with --duration-s, 0 means no cap below 100 000).
"""
import argparse
import http.client
import json
import math
import random
import sys
import threading
import time


def pct(xs, p):
    """The p-th percentile (nearest rank) of a list, or None."""
    if not xs:
        return None
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(math.ceil(p / 100.0 * len(s))) - 1))]


def one(conn, rng, args):
    """One streamed completion; returns (ttft_ns, [inter-token gaps ns])."""
    lo, hi = math.log(args.min_prompt), math.log(args.max_prompt)
    words = int(round(math.exp(rng.uniform(lo, hi))))
    prompt = " ".join("w%d" % rng.randrange(10_000) for _ in range(words))
    body = json.dumps({"model": "gpu-check", "prompt": prompt, "max_tokens": args.max_tokens,
                       "stream": True})
    t0 = time.monotonic_ns()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError("status %d: %r" % (resp.status, resp.read()[:200]))
    if not resp.getheader("Content-Type", "").startswith("text/event-stream"):
        raise RuntimeError("not an event stream")
    times, rid, done = [], None, False
    for _ in range(4 * args.max_tokens + 8):  # bounded: events, blank lines, [DONE]
        line = resp.readline(1 << 20)
        if not line:
            break
        now = time.monotonic_ns()
        line = line.rstrip(b"\r\n")
        if not line:
            continue
        if not line.startswith(b"data: "):
            raise RuntimeError("not an SSE data line: %r" % line[:80])
        data = line[6:]
        if data == b"[DONE]":
            done = True
            break
        obj = json.loads(data)
        rid = rid or obj["id"]
        ch = obj["choices"][0]
        i = len(times)
        want_finish = "length" if i == args.max_tokens - 1 else None
        if obj["id"] != rid or ch["text"] != " t%d" % i or ch["finish_reason"] != want_finish:
            raise RuntimeError("bad event %d: %r" % (i, obj))
        times.append(now)
    rest = resp.read().strip()
    if not done or len(times) != args.max_tokens or rest:
        raise RuntimeError("stream: done=%s events=%d/%d trailing=%r"
                           % (done, len(times), args.max_tokens, rest[:40]))
    return times[0] - t0, [b - a for a, b in zip(times, times[1:])]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--duration-s", type=float, default=0.0,
                    help="keep sending until this many seconds passed (0: until --requests)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--min-clients", type=int, default=4,
                    help="clients beyond this many pause 0..1 s before each request, so the "
                         "concurrency varies between --min-clients and --clients")
    ap.add_argument("--min-prompt", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=1024)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout-s", type=float, default=120.0)
    ap.add_argument("--label", default="")
    args = ap.parse_args()
    if not 1 <= args.min_prompt <= args.max_prompt or args.max_tokens < 1:
        ap.error("need 1 <= --min-prompt <= --max-prompt and --max-tokens >= 1")
    cap = args.requests if args.requests > 0 else 100_000
    lock = threading.Lock()
    counts = {"sent": 0, "ok": 0, "errors": 0}
    ttfts, itls, errors = [], [], []
    start_ns = time.monotonic_ns()
    start = time.monotonic()
    deadline = start + args.timeout_s
    send_until = start + args.duration_s if args.duration_s > 0 else deadline

    def take():
        with lock:
            if counts["sent"] >= cap or time.monotonic() >= send_until:
                return None
            counts["sent"] += 1
            return counts["sent"] - 1

    def client(idx):
        conn = None
        pause = random.Random(args.seed * 7919 + idx)
        while True:
            if idx >= args.min_clients:
                time.sleep(pause.uniform(0.0, 1.0))
            n = take()
            if n is None:
                break
            left = max(1.0, deadline - time.monotonic())
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", args.port,
                                                      timeout=min(30.0, left))
                conn.timeout = min(30.0, left)
                if conn.sock is not None:
                    conn.sock.settimeout(conn.timeout)
                ttft, gaps = one(conn, random.Random(args.seed * 1_000_003 + n), args)
                with lock:
                    counts["ok"] += 1
                    ttfts.append(ttft)
                    itls.extend(gaps)
            except Exception as e:  # noqa: BLE001 - every failure counts as an error
                with lock:
                    counts["errors"] += 1
                    if len(errors) < 5:
                        errors.append("request %d: %s: %s" % (n, type(e).__name__, e))
                if conn is not None:
                    conn.close()
                    conn = None
        if conn is not None:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.1, deadline + 35 - time.monotonic()))
    stuck = sum(1 for t in threads if t.is_alive())
    end_ns = time.monotonic_ns()
    with lock:
        out = dict(counts)
        out["errors"] += stuck
        ttft_ms = [x / 1e6 for x in ttfts]
        itl_ms = [x / 1e6 for x in itls]
        out.update({
            "label": args.label, "start_mono_ns": start_ns, "end_mono_ns": end_ns,
            "elapsed_s": round((end_ns - start_ns) / 1e9, 3),
            "clients": args.clients, "min_clients": args.min_clients,
            "prompt_words": [args.min_prompt, args.max_prompt], "max_tokens": args.max_tokens,
            "tokens": out["ok"] * args.max_tokens,
            "tok_per_s": round(out["ok"] * args.max_tokens / max(1e-9, (end_ns - start_ns) / 1e9),
                               1),
            "ttft_ms": {"p50": pct(ttft_ms, 50), "p90": pct(ttft_ms, 90)},
            "itl_ms": {"n": len(itl_ms), "p50": pct(itl_ms, 50), "p90": pct(itl_ms, 90),
                       "p99": pct(itl_ms, 99),
                       "mean": sum(itl_ms) / len(itl_ms) if itl_ms else None},
            "itl_us": [int(x / 1000) for x in itls],
            "first_errors": errors,
        })
    for e in errors:
        print(e, file=sys.stderr)
    print(json.dumps(out), flush=True)
    return 1 if out["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
