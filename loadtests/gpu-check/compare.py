#!/usr/bin/env python3
"""compare.py: gpu-check's comparisons of node-probe's output with the ground truth.

  compare.py --out DIR [--only overhead]

Reads what run.sh left in DIR (every input may be missing: each stage may have failed) and
writes DIR/summary.md and DIR/summary.json; with --only overhead, only DIR/overhead.json.

Sections (README.md says what each comparison means):
  stages    stages.tsv: which stage ran, failed or was skipped, and why
  env       env.txt: the machine; its MISSING lines
  probe     node-probe's own health: probe.log (uprobes attached, attach failures, its final
            counters), probe_metrics.txt (losses)
  steps     GPU steps: node-probe's (`gpu_step` lines of probe.jsonl, else the steps of its
            request records) against truth.jsonl's step lines, matched by copy-event handle
            and completion time: counts, class, GPU time error, launch counts
  requests  per request: node-probe's gpu_ns / gpu_cost_ns / engine_steps against the truth
            steps each request was a member of
  cupti     per profiled step: node-probe's kernel and graph launch counts against CUPTI's
  overhead  the A/B loads: ITL and step time without and with node-probe
  nccl      collectives node-probe reported against nccl_truth.json
  nvml      us per NVML call
Stdlib only.
"""
import argparse
import bisect
import json
import math
import os
import re
import sys

MATCH_TOL_NS = 2_000_000  # a probe step matches a truth step completing within 2 ms
COLL_FUNCS = {"all_reduce", "reduce_scatter", "all_gather", "broadcast", "reduce", "send",
              "recv", "all_to_all"}
NOT_REPORTED = "not reported by this node-probe build"


# ---- readers ---------------------------------------------------------------------------------


def read_jsonl(path):
    """(rows, problem): problem is None, or why nothing (or not everything) was read."""
    if not os.path.exists(path):
        return [], "missing: %s" % os.path.basename(path)
    rows, bad = [], 0
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                v = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(v, dict):
                rows.append(v)
    if not rows:
        return [], "empty: %s" % os.path.basename(path)
    return rows, ("%d unparsable lines in %s" % (bad, os.path.basename(path)) if bad else None)


def read_json(path):
    """(object or None, problem)."""
    if not os.path.exists(path):
        return None, "missing: %s" % os.path.basename(path)
    try:
        with open(path) as f:
            return json.load(f), None
    except (OSError, ValueError) as e:
        return None, "unreadable: %s (%s)" % (os.path.basename(path), e)


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return None


# ---- statistics --------------------------------------------------------------------------------


def pct(xs, p):
    """Nearest-rank percentile, or None."""
    xs = sorted(x for x in xs if x is not None)
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, int(math.ceil(p / 100.0 * len(xs))) - 1))]


def dist(xs, scale=1.0, nd=3):
    """{n, p50, p90, mean} of xs / scale."""
    xs = [x / scale for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    r = lambda v: None if v is None else round(v, nd)  # noqa: E731
    return {"n": len(xs), "p50": r(pct(xs, 50)), "p90": r(pct(xs, 90)),
            "mean": r(sum(xs) / len(xs))}


def ratio(a, b):
    return round(a / b, 4) if a is not None and b else None


def share(k, n):
    return "%d/%d (%.1f%%)" % (k, n, 100.0 * k / n) if n else "0/0"


# ---- context: what every section needs ------------------------------------------------------------


class Ctx:
    def __init__(self, out):
        self.out = out
        self.path = lambda name: os.path.join(out, name)
        self.truth, self.truth_problem = read_jsonl(self.path("truth.jsonl"))
        clock = next((r for r in self.truth if r.get("kind") == "clock"), None)
        self.offset = clock["unix_ns"] - clock["mono_ns"] if clock else None  # unix - mono
        # One core line per engine core started (run.sh restarts the engine if the CUPTI
        # stage took it down): the first describes the engine; steps of every core count.
        cores = [r for r in self.truth if r.get("kind") == "core"]
        self.core = cores[0] if cores else {}
        self.core_pids = {r.get("core_pid") for r in cores}
        self.core_pid = self.core.get("core_pid")
        need = ("seq", "start_ns", "recorded_ns", "done_ns", "members", "class", "batch",
                "tokens", "graphs")
        self.steps = sorted((r for r in self.truth if r.get("kind") == "step"
                             and all(r.get(k) is not None for k in need)
                             and (not cores or r.get("core_pid") in self.core_pids)),
                            key=lambda r: (r["start_ns"], r["seq"]))
        prev_done = {}
        for s in self.steps:
            # The truth counterpart of node-probe's gpu_ns, from host times: from the first
            # launch, or the previous step's completion if later, to the sync's return.
            pd = prev_done.get(s["core_pid"], 0)
            s["host_span_ns"] = s["done_ns"] - max(s["start_ns"], pd)
            prev_done[s["core_pid"]] = s["done_ns"]
        self.truth_reqs = [r for r in self.truth if r.get("kind") == "request"
                           and r.get("response_id") and r.get("engine_id")]
        self.stages = self.read_stages()

    def read_stages(self):
        rows = []
        text = read_text(self.path("stages.tsv")) or ""
        for line in text.splitlines():
            p = line.split("\t")
            if len(p) >= 5:
                rows.append({"stage": p[0], "status": p[1], "seconds": int(p[2] or 0),
                             "start_mono_ns": int(p[3] or 0), "end_mono_ns": int(p[4] or 0),
                             "note": p[5] if len(p) > 5 else ""})
        return rows

    def stage(self, name):
        return next((s for s in reversed(self.stages) if s["stage"] == name), None)

    def main_window(self):
        """(start, end) mono ns of the main node-probe run's traffic: the load stage's start to
        the end of the CUPTI stage (or of the load), the A/B stage's start at most."""
        load = self.stage("load")
        start = load["start_mono_ns"] if load and load["start_mono_ns"] else 0
        end = None
        for name in ("cupti", "load"):
            s = self.stage(name)
            if s and s["end_mono_ns"]:
                end = s["end_mono_ns"]
                break
        ab = self.stage("ab")
        if ab and ab["start_mono_ns"]:
            end = min(end, ab["start_mono_ns"]) if end else ab["start_mono_ns"]
        return start, end or 2**63

    def to_mono(self, unix_ns):
        return None if unix_ns is None or self.offset is None else unix_ns - self.offset


# ---- sections ----------------------------------------------------------------------------------


def sec_stages(c):
    if not c.stages:
        return {"status": "missing: stages.tsv"}, ["No stages.tsv: run.sh did not get past its "
                                                   "start."]
    md = ["| stage | status | s | note |", "|---|---|---|---|"]
    for s in c.stages:
        md.append("| %s | %s | %d | %s |" % (s["stage"], s["status"], s["seconds"],
                                            s["note"].replace("|", "/")))
    bad = [s["stage"] for s in c.stages if s["status"] not in ("ok",)]
    return {"status": "ok" if not bad else "some stages not ok: %s" % ", ".join(bad),
            "stages": c.stages}, md


def sec_env(c):
    text = read_text(c.path("env.txt"))
    if text is None:
        return {"status": "missing: env.txt"}, ["No env.txt."]
    missing = [l[len("MISSING: "):] for l in text.splitlines() if l.startswith("MISSING: ")]
    keys = ("kernel:", "gpu:", "gpus:", "torch:", "nccl", "transformers:", "node-probe:",
            "btf:", "lockdown:", "cuda runtime", "mapped libcuda", "mapped libnccl",
            "mapped libcudart")
    facts = [l for l in text.splitlines() if l.startswith(keys)]
    md = ["- " + l for l in facts] + ["- **MISSING:** " + m for m in missing]
    return {"status": "ok" if not missing else "%d missing" % len(missing), "facts": facts,
            "missing": missing}, md


def probe_log_facts(text):
    if text is None:
        return None
    attached = sorted(set(re.findall(r"uprobes attached.*?library=(\S+)", text)))
    failed = re.findall(r"cannot attach uprobe.*?symbol=(\S+)", text)
    stopped = [l for l in text.splitlines() if "node-probe stopped" in l]
    errors = [l for l in text.splitlines() if " ERROR " in l or "error:" in l]
    warns = sum(1 for l in text.splitlines() if " WARN " in l)
    return {"libraries_attached": attached, "attach_failures": len(failed),
            "attach_failed_symbols": sorted(set(failed))[:40], "warnings": warns,
            "errors": errors[:10], "final_counters": stopped[-1][:2000] if stopped else None}


def sec_probe(c):
    res = {}
    md = []
    for name in ("probe.log", "probe_ab.log", "probe_nccl.log"):
        f = probe_log_facts(read_text(c.path(name)))
        if f is None:
            continue
        res[name] = f
        md.append("- `%s`: uprobes attached to %s; %d attach failures%s; %d warnings, %d errors"
                  % (name, ", ".join(f["libraries_attached"]) or "nothing",
                     f["attach_failures"],
                     (" (" + ", ".join(f["attach_failed_symbols"][:8]) + ")")
                     if f["attach_failures"] else "", f["warnings"], len(f["errors"])))
        for e in f["errors"][:3]:
            md.append("  - error: `%s`" % e[:300])
        if f["final_counters"]:
            md.append("  - final: `%s`" % f["final_counters"][:600])
    metrics = read_text(c.path("probe_metrics.txt"))
    if metrics:
        losses = []
        for line in metrics.splitlines():
            if line.startswith("#"):
                continue
            if re.search(r"lost|drop|decode_error|abandon|fail", line):
                parts = line.rsplit(None, 1)
                try:
                    if len(parts) == 2 and float(parts[1]) != 0:
                        losses.append(line)
                except ValueError:
                    pass
        res["metrics_nonzero_losses"] = losses
        md.append("- `/metrics` at the end of the main run: %s"
                  % ("no nonzero loss/drop/failure counter" if not losses
                     else "; ".join("`%s`" % l for l in losses[:10])))
    if not res:
        return {"status": "missing: probe.log"}, ["No node-probe log: it did not run."]
    main = res.get("probe.log") or {}
    status = "ok"
    if main and not any("libcuda" in l for l in main.get("libraries_attached", [])):
        status = "node-probe never attached to libcuda.so"
    return dict(res, status=status), md


def probe_rows(c, name):
    rows, problem = read_jsonl(c.path(name))
    return rows, problem


def probe_gpu_steps(c, rows):
    """node-probe's GPU steps of the core, per API: from `gpu_step` lines, else from the steps
    of its request records (deduplicated by step_id). Times converted to mono ns."""
    out = {"driver": [], "runtime": []}
    source = None
    for r in rows:
        if r.get("kind") != "gpu_step":
            continue
        if c.core_pids and r.get("tgid") not in c.core_pids:
            continue
        source = "gpu_step lines (--print-events)"
        s = dict(r)
        s["end_mono"] = c.to_mono(r.get("end_ns"))
        s["start_mono"] = c.to_mono(r.get("start_ns"))
        s["launched_mono"] = c.to_mono(r.get("launched_ns"))
        out.setdefault(r.get("api", "driver"), []).append(s)
    if source is None:
        seen = set()
        for r in rows:
            if r.get("kind") != "request":
                continue
            for st in r.get("steps") or []:
                key = (r.get("engine_instance"), st.get("step_id"))
                if key in seen or "gpu_ns" not in st:
                    continue
                seen.add(key)
                source = "the steps of request records"
                out["driver"].append({
                    "end_mono": c.to_mono(st.get("end_unix_ns")),
                    "start_mono": c.to_mono(st.get("start_unix_ns")), "event": None,
                    "class": st.get("gpu_class"), "gpu_ns": st.get("gpu_ns"),
                    "launch_ns": st.get("gpu_launch_ns"),
                    "graph_launches": st.get("graph_launches"),
                    "kernel_launches": st.get("kernel_launches"),
                    "dtoh_bytes": st.get("dtoh_bytes"), "htod_bytes": st.get("htod_bytes"),
                    "upper_bound": st.get("gpu_upper_bound"), "host_bound": st.get("host_bound"),
                    "sync_wait_ns": st.get("sync_wait_ns")})
    for k in out:
        out[k] = sorted((s for s in out[k] if s.get("end_mono") is not None),
                        key=lambda s: s["end_mono"])
    return out, source


def match_steps(truth_steps, probe_steps, by_event=True):
    """Greedy one-to-one matching: each truth step (in order) takes the unused probe step of the
    same copy-event handle (when both know it, and by_event) whose end is nearest its done_ns,
    within MATCH_TOL_NS. Returns [(truth, probe)], unmatched probe steps."""
    ends = [p["end_mono"] for p in probe_steps]
    used = [False] * len(probe_steps)
    pairs = []
    for t in truth_steps:
        i = bisect.bisect_left(ends, t["done_ns"] - MATCH_TOL_NS)
        best, best_d = None, None
        while i < len(ends) and ends[i] <= t["done_ns"] + MATCH_TOL_NS:
            p = probe_steps[i]
            if not used[i] and (not by_event or not p.get("event") or not t.get("event")
                                or p["event"] == t["event"]):
                d = abs(ends[i] - t["done_ns"])
                if best_d is None or d < best_d:
                    best, best_d = i, d
            i += 1
        if best is not None:
            used[best] = True
            pairs.append((t, probe_steps[best]))
    return pairs, [p for p, u in zip(probe_steps, used) if not u]


def step_section_data(c):
    """Shared by the steps, requests and cupti sections."""
    rows, problem = probe_rows(c, "probe.jsonl")
    per_api, source = probe_gpu_steps(c, rows)
    lo, hi = c.main_window()
    truth = [s for s in c.steps if s["start_ns"] >= lo and s["done_ns"] <= hi]
    api = "driver" if per_api.get("driver") else ("runtime" if per_api.get("runtime") else None)
    pairs, extra = ([], [])
    probe = []
    event_mismatch = False
    if api:
        probe = [p for p in per_api[api] if lo <= p["end_mono"] <= hi]
        pairs, extra = match_steps(truth, probe)
        if len(pairs) < 0.5 * min(len(truth), len(probe)):
            # Handles that never agree (node-probe's event is not torch's cuda_event?): match
            # by completion time alone, and say so.
            p2, e2 = match_steps(truth, probe, by_event=False)
            if len(p2) > len(pairs):
                pairs, extra, event_mismatch = p2, e2, True
    return {"event_mismatch": event_mismatch, "rows": rows, "problem": problem,
            "per_api": per_api, "source": source,
            "api": api, "truth": truth, "probe": probe, "pairs": pairs, "extra": extra,
            "window": (lo, hi)}


def sec_steps(c, d):
    if d["problem"] and not d["rows"]:
        return {"status": d["problem"]}, ["No node-probe output (%s)." % d["problem"]]
    if not c.steps:
        return {"status": c.truth_problem or "no truth steps"}, [
            "No truth steps (%s)." % (c.truth_problem or "truth.jsonl has no step lines")]
    if c.offset is None:
        return {"status": "truth.jsonl has no clock line"}, ["No clock line in truth.jsonl."]
    if not d["api"]:
        return {"status": "node-probe reported no GPU step of the core (pid %s)" % c.core_pid}, [
            "node-probe reported no GPU step of the engine core (pid %s): its CUDA hooks saw "
            "nothing, or did not attach (see the probe section)." % c.core_pid]
    pairs, truth, probe = d["pairs"], d["truth"], d["probe"]
    res = {"status": "ok", "source": d["source"], "api": d["api"],
           "truth_steps": len(truth), "probe_steps": len(probe),
           "probe_steps_by_api": {k: len(v) for k, v in d["per_api"].items()},
           "matched": len(pairs), "truth_unmatched": len(truth) - len(pairs),
           "probe_unmatched": len(d["extra"])}
    classes = {}
    for t, p in pairs:
        k = "%s -> %s" % (t["class"], p.get("class"))
        classes[k] = classes.get(k, 0) + 1
    res["class_truth_to_probe"] = classes
    err, rel, err_ok, err_ub, span_err, launch_err = [], [], [], [], [], []
    for t, p in pairs:
        if t.get("gpu_ns") is None or p.get("gpu_ns") is None:
            continue
        e = p["gpu_ns"] - t["gpu_ns"]
        err.append(e)
        rel.append(abs(e) / t["gpu_ns"] if t["gpu_ns"] else None)
        (err_ub if p.get("upper_bound") else err_ok).append(abs(e))
        span_err.append(abs(p["gpu_ns"] - t["host_span_ns"]))
        if p.get("launch_ns") is not None:
            launch_err.append(abs(p["launch_ns"] - (t["recorded_ns"] - t["start_ns"])))
    res["gpu_ns_abs_error_us"] = dist([abs(e) for e in err], 1e3)
    res["gpu_ns_signed_error_us"] = dist(err, 1e3)
    res["gpu_ns_rel_error"] = dist(rel, 1.0, 4)
    res["gpu_ns_abs_error_us_measured"] = dist(err_ok, 1e3)
    res["gpu_ns_abs_error_us_upper_bound"] = dist(err_ub, 1e3)
    res["gpu_ns_vs_truth_host_span_abs_error_us"] = dist(span_err, 1e3)
    res["launch_ns_abs_error_us"] = dist(launch_err, 1e3)
    res["truth_gpu_ns_us"] = dist([t.get("gpu_ns") for t, _ in pairs], 1e3)
    graphs_eq = sum(1 for t, p in pairs if p.get("graph_launches") == t["graphs"])
    dtoh_eq = sum(1 for t, p in pairs if p.get("dtoh_bytes") == 8 * t["batch"])
    res["graph_launches_equal"] = share(graphs_eq, len(pairs))
    res["dtoh_bytes_equal_8_per_request"] = share(dtoh_eq, len(pairs))
    res["flags"] = {k: share(sum(1 for p in probe if p.get(k)), len(probe))
                    for k in ("upper_bound", "host_bound", "sync_immediate")}
    res["kernel_launches_per_step"] = {
        cls: dist([p.get("kernel_launches") for t, p in pairs if t["class"] == cls], 1.0, 1)
        for cls in ("full_graph", "eager")}
    if len(pairs) < len(truth):
        res["status"] = "%d of %d truth steps not matched" % (len(truth) - len(pairs), len(truth))
    res["event_handles_agree"] = not d.get("event_mismatch")
    if d.get("event_mismatch"):
        res["status"] += "; copy-event handles did not agree (matched by time alone)"
    g = res["gpu_ns_abs_error_us"]
    md = ["Source: %s, API `%s` (per API: %s). Window: the main load and CUPTI stages."
          % (d["source"], d["api"], res["probe_steps_by_api"]),
          "",
          "| | value |", "|---|---|",
          "| truth steps / node-probe steps / matched | %d / %d / %d |"
          % (len(truth), len(probe), len(pairs)),
          "| class (truth -> node-probe) | %s |"
          % ", ".join("%s: %d" % kv for kv in sorted(classes.items())),
          "| GPU time abs. error, us (p50 / p90) | %s / %s |" % (g.get("p50"), g.get("p90")),
          "| GPU time signed error, us (p50) | %s |" % res["gpu_ns_signed_error_us"].get("p50"),
          "| GPU time rel. error (p50 / p90) | %s / %s |"
          % (res["gpu_ns_rel_error"].get("p50"), res["gpu_ns_rel_error"].get("p90")),
          "| abs. error, measured steps / upper-bound steps, us (p50) | %s / %s |"
          % (res["gpu_ns_abs_error_us_measured"].get("p50"),
             res["gpu_ns_abs_error_us_upper_bound"].get("p50")),
          "| vs truth host span, abs. error us (p50 / p90) | %s / %s |"
          % (res["gpu_ns_vs_truth_host_span_abs_error_us"].get("p50"),
             res["gpu_ns_vs_truth_host_span_abs_error_us"].get("p90")),
          "| launch time abs. error, us (p50) | %s |" % res["launch_ns_abs_error_us"].get("p50"),
          "| truth GPU time per step, us (p50 / p90) | %s / %s |"
          % (res["truth_gpu_ns_us"].get("p50"), res["truth_gpu_ns_us"].get("p90")),
          "| graph launches = truth | %s |" % res["graph_launches_equal"],
          "| DtoH bytes = 8 x batch | %s |" % res["dtoh_bytes_equal_8_per_request"],
          "| node-probe flags: upper_bound / host_bound / sync_immediate | %s / %s / %s |"
          % (res["flags"]["upper_bound"], res["flags"]["host_bound"],
             res["flags"]["sync_immediate"]),
          "| kernel launches per step, full_graph / eager (p50) | %s / %s |"
          % (res["kernel_launches_per_step"]["full_graph"].get("p50"),
             res["kernel_launches_per_step"]["eager"].get("p50"))]
    return res, md


def sec_requests(c, d):
    rows = d["rows"]
    recs = [r for r in rows if r.get("kind") == "request"]
    if not recs:
        return {"status": d["problem"] or "no request records in probe.jsonl"}, [
            "No node-probe request records (%s)." % (d["problem"] or "none in probe.jsonl")]
    lo, hi = d["window"]
    truth = {r["response_id"]: r for r in c.truth_reqs
             if r.get("handed_ns") and lo <= r["handed_ns"] <= hi}
    members = {}
    for s in c.steps:
        for eid, tok in s["members"]:
            members.setdefault(eid, []).append((s, tok))
    got = [r for r in recs if r.get("response_id") in truth]
    lat_err, lat_rel, cost_err, span_err, steps_eq, tokens_eq, with_gpu = [], [], [], [], 0, 0, 0
    for r in got:
        t = truth[r["response_id"]]
        ms = members.get(t["engine_id"], [])
        if r.get("engine_steps") == len(ms):
            steps_eq += 1
        if r.get("step_tokens") == [tok for _, tok in ms]:
            tokens_eq += 1
        if r.get("gpu_ns") is None or any(s.get("gpu_ns") is None for s, _ in ms):
            continue
        with_gpu += 1
        lat = sum(s["gpu_ns"] for s, _ in ms)
        cost = sum(s["gpu_ns"] * tok / s["tokens"] for s, tok in ms if s["tokens"])
        lat_err.append(abs(r["gpu_ns"] - lat))
        lat_rel.append(abs(r["gpu_ns"] - lat) / lat if lat else None)
        span_err.append(abs(r["gpu_ns"] - sum(s["host_span_ns"] for s, _ in ms)))
        if r.get("gpu_cost_ns") is not None:
            cost_err.append(abs(r["gpu_cost_ns"] - cost))
    res = {"status": "ok", "truth_requests": len(truth), "probe_records": len(recs),
           "matched": len(got),
           "engine_vllm": sum(1 for r in got if r.get("engine") == "vllm"),
           "with_gpu_ns": with_gpu,
           "engine_steps_equal": share(steps_eq, len(got)),
           "step_tokens_equal": share(tokens_eq, len(got)),
           "gpu_ms_latency_abs_error": dist(lat_err, 1e6, 4),
           "gpu_ms_latency_rel_error": dist(lat_rel, 1.0, 4),
           "gpu_ms_cost_abs_error": dist(cost_err, 1e6, 4),
           "gpu_ms_vs_host_span_abs_error": dist(span_err, 1e6, 4),
           "upper_bound_steps_per_request": dist([r.get("gpu_upper_bound_steps") for r in got],
                                                 1.0, 1)}
    if len(got) < len(truth) or with_gpu < len(got):
        res["status"] = "%d of %d truth requests have a node-probe record with gpu_ns" % (
            with_gpu, len(truth))
    md = ["| | value |", "|---|---|",
          "| truth requests / node-probe records / matched by response id | %d / %d / %d |"
          % (len(truth), len(recs), len(got)),
          "| followed as vLLM / with gpu_ns | %d / %d |" % (res["engine_vllm"], with_gpu),
          "| engine_steps = truth steps / step_tokens = truth | %s / %s |"
          % (res["engine_steps_equal"], res["step_tokens_equal"]),
          "| gpu_ns (latency view) abs. error, ms (p50 / p90) | %s / %s |"
          % (res["gpu_ms_latency_abs_error"].get("p50"), res["gpu_ms_latency_abs_error"].get("p90")),
          "| gpu_ns rel. error (p50 / p90) | %s / %s |"
          % (res["gpu_ms_latency_rel_error"].get("p50"), res["gpu_ms_latency_rel_error"].get("p90")),
          "| gpu_cost_ns (token-weighted) abs. error, ms (p50 / p90) | %s / %s |"
          % (res["gpu_ms_cost_abs_error"].get("p50"), res["gpu_ms_cost_abs_error"].get("p90")),
          "| gpu_ns vs truth host spans, abs. error ms (p50) | %s |"
          % res["gpu_ms_vs_host_span_abs_error"].get("p50"),
          "| gpu_upper_bound_steps per request (p50 / p90) | %s / %s |"
          % (res["upper_bound_steps_per_request"].get("p50"),
             res["upper_bound_steps_per_request"].get("p90"))]
    return res, md


def sec_cupti(c, d):
    cu, problem = read_json(c.path("cupti.json"))
    if cu is None:
        return {"status": problem}, ["No CUPTI counts (%s)." % problem]
    if cu.get("error"):
        return {"status": "error: %s" % cu["error"]}, ["CUPTI failed: `%s`" % cu["error"]]
    steps = cu.get("steps") or []
    by_seq = {s["seq"]: s for s in c.steps if s["core_pid"] == c.core_pid}
    probe_of = {id(t): p for t, p in d["pairs"]}
    # The runtime-API steps too, when node-probe printed them (gpu_step lines).
    rt_pairs, _ = match_steps([by_seq[s["seq"]] for s in steps if s["seq"] in by_seq],
                              d["per_api"].get("runtime") or [])
    rt_of = {id(t): p for t, p in rt_pairs}
    rows, k_eq, g_eq, rt_eq, n = [], 0, 0, 0, 0
    md = ["| seq | class | CUPTI launches (runtime+driver) / graph / memcpy / event records | "
          "GPU kernels | node-probe driver launches / graph | node-probe runtime launches |",
          "|---|---|---|---|---|---|"]
    for s in steps:
        t = by_seq.get(s["seq"])
        p = probe_of.get(id(t)) if t else None
        rp = rt_of.get(id(t)) if t else None
        row = {"seq": s["seq"], "class": t["class"] if t else None,
               "cupti_kernel_launches": s["kernel_launches"],
               "cupti_graph_launches": s["graph_launches"],
               "cupti_memcpy_calls": s["memcpy_calls"], "cupti_gpu_kernels": s["gpu_kernels"],
               "probe_kernel_launches": p.get("kernel_launches") if p else None,
               "probe_graph_launches": p.get("graph_launches") if p else None,
               "probe_runtime_kernel_launches": rp.get("kernel_launches") if rp else None}
        rows.append(row)
        if p:
            n += 1
            k_eq += p.get("kernel_launches") == s["kernel_launches"]
            g_eq += p.get("graph_launches") == s["graph_launches"]
        if rp:
            rt_eq += rp.get("kernel_launches") == s["api"].get("cudaLaunchKernel", 0) + \
                s["api"].get("cudaLaunchKernelExC", 0)
        md.append("| %s | %s | %d / %d / %d / %d | %d | %s / %s | %s |" % (
            s["seq"], row["class"], s["kernel_launches"], s["graph_launches"],
            s["memcpy_calls"], s["event_records"], s["gpu_kernels"],
            row["probe_kernel_launches"], row["probe_graph_launches"],
            row["probe_runtime_kernel_launches"]))
    res = {"status": "ok", "profiled_steps": len(steps), "matched_probe_steps": n,
           "kernel_launches_equal": share(k_eq, n), "graph_launches_equal": share(g_eq, n),
           "runtime_launches_equal_cuda_launch_calls": share(rt_eq, len(rt_pairs)),
           "totals": cu.get("totals"), "api_total": cu.get("api_total"), "rows": rows}
    if not n:
        res["status"] = "no profiled step matched a node-probe step"
    elif k_eq < n or g_eq < n:
        res["status"] = "launch counts differ on some steps"
    md[:0] = ["node-probe (driver API) vs CUPTI per profiled step: kernel launches equal %s, "
              "graph launches equal %s; node-probe runtime-API launches = CUPTI's "
              "cudaLaunchKernel[ExC] calls: %s." % (res["kernel_launches_equal"],
                                                    res["graph_launches_equal"],
                                                    res["runtime_launches_equal_cuda_launch_calls"]),
              ""]
    return res, md


def overhead(c):
    """The A/B loads (ab_{off,on}_N.json): ITL and the truth's step times per arm."""
    arms = {"off": [], "on": []}
    for name in sorted(os.listdir(c.out)) if os.path.isdir(c.out) else []:
        m = re.match(r"ab_(off|on)_(\d+)\.json$", name)
        if m:
            v, _ = read_json(c.path(name))
            if isinstance(v, dict):
                arms[m.group(1)].append(v)
    if not arms["off"] or not arms["on"]:
        return {"status": "missing: A/B loads (ab_off_N.json and ab_on_N.json)",
                "arms": {k: len(v) for k, v in arms.items()}}
    res = {"status": "ok"}
    for arm, loads in arms.items():
        itl = [x / 1e3 for l in loads for x in (l.get("itl_us") or [])]
        steps = [s for l in loads for s in c.steps
                 if l.get("start_mono_ns", 0) <= s["start_ns"]
                 and s["done_ns"] <= l.get("end_mono_ns", 0)]
        steps.sort(key=lambda s: (s["core_pid"], s["seq"]))
        intervals = [b["done_ns"] - a["done_ns"] for a, b in zip(steps, steps[1:])
                     if b["seq"] == a["seq"] + 1 and b["core_pid"] == a["core_pid"]]
        full = [s for s in steps if s["class"] == "full_graph"]
        secs = sum(l.get("elapsed_s", 0) for l in loads)
        res[arm] = {"rounds": len(loads), "requests_ok": sum(l.get("ok", 0) for l in loads),
                    "errors": sum(l.get("errors", 0) for l in loads),
                    "tok_per_s": round(sum(l.get("tokens", 0) for l in loads) / secs, 1)
                    if secs else None,
                    "itl_ms": dist(itl, 1.0, 4),
                    "itl_ms_p99": pct(itl, 99),
                    "steps": len(steps),
                    "step_interval_ms": dist(intervals, 1e6, 4),
                    "step_gpu_ms": dist([s.get("gpu_ns") for s in steps], 1e6, 4),
                    "full_graph_gpu_ms": dist([s.get("gpu_ns") for s in full], 1e6, 4),
                    "launch_ms": dist([s["recorded_ns"] - s["start_ns"] for s in steps], 1e6, 4)}
    off, on = res["off"], res["on"]
    res["ratio_on_over_off"] = {
        "itl_p50": ratio(on["itl_ms"].get("p50"), off["itl_ms"].get("p50")),
        "itl_p90": ratio(on["itl_ms"].get("p90"), off["itl_ms"].get("p90")),
        "step_interval_p50": ratio(on["step_interval_ms"].get("p50"),
                                   off["step_interval_ms"].get("p50")),
        "step_gpu_p50": ratio(on["step_gpu_ms"].get("p50"), off["step_gpu_ms"].get("p50")),
        "launch_p50": ratio(on["launch_ms"].get("p50"), off["launch_ms"].get("p50")),
        "tok_per_s": ratio(on["tok_per_s"], off["tok_per_s"])}
    return res


def sec_overhead(c):
    res, problem = read_json(c.path("overhead.json"))
    if res is None:
        res = overhead(c)
    if res.get("status") != "ok":
        return res, ["No A/B overhead (%s)." % res.get("status", problem)]
    off, on, r = res["off"], res["on"], res["ratio_on_over_off"]
    md = ["| | off | on | on/off |", "|---|---|---|---|",
          "| rounds / requests ok / errors | %d / %d / %d | %d / %d / %d | |"
          % (off["rounds"], off["requests_ok"], off["errors"], on["rounds"], on["requests_ok"],
             on["errors"])]
    for label, key, rk in (("ITL p50, ms", ("itl_ms", "p50"), "itl_p50"),
                           ("ITL p90, ms", ("itl_ms", "p90"), "itl_p90"),
                           ("step interval p50, ms", ("step_interval_ms", "p50"),
                            "step_interval_p50"),
                           ("step GPU time p50, ms", ("step_gpu_ms", "p50"), "step_gpu_p50"),
                           ("step launch time p50, ms", ("launch_ms", "p50"), "launch_p50")):
        md.append("| %s | %s | %s | %s |" % (label, off[key[0]].get(key[1]),
                                             on[key[0]].get(key[1]), r.get(rk)))
    md.append("| tokens/s | %s | %s | %s |" % (off["tok_per_s"], on["tok_per_s"],
                                               r.get("tok_per_s")))
    return res, md


def sec_nccl(c):
    truth, problem = read_json(c.path("nccl_truth.json"))
    if truth is None:
        return {"status": problem}, ["No NCCL truth (%s)." % problem]
    exp = {}
    for rk in truth.get("ranks", []):
        for call in rk.get("calls", []):
            k = (call["op"], call["bytes"], bool(call.get("captured")))
            exp[k] = exp.get(k, 0) + call["n"]
    md = ["NCCL %s, world size %s (%s); rank errors: %s" % (
        truth.get("nccl_version"), truth.get("world_size"), truth.get("why"),
        "; ".join(e for rk in truth.get("ranks", []) for e in rk.get("errors", [])) or "none")]
    threads = {}
    for rk in truth.get("ranks", []):
        for n, k in (rk.get("threads") or {}).items():
            if n.startswith("NCCL"):
                threads[n] = threads.get(n, 0) + k
    md.append("NCCL threads seen by the ranks: %s" % (", ".join(sorted(threads)) or "none"))
    graph = [rk.get("graph") for rk in truth.get("ranks", [])]
    rows, prob = read_jsonl(c.path("probe_nccl.jsonl"))
    colls = [r for r in rows if r.get("func") in COLL_FUNCS
             or "coll" in str(r.get("kind", "")) or "nccl" in str(r.get("kind", ""))]
    got = {}
    ranks_seen = set()
    for r in colls:
        if r.get("func") not in COLL_FUNCS:
            continue
        k = (r["func"], r.get("bytes"), bool(r.get("captured")))
        got[k] = got.get(k, 0) + 1
        if r.get("rank") is not None:
            ranks_seen.add((r.get("rank"), r.get("nranks")))
    rank_errors = [e for rk in truth.get("ranks", []) for e in rk.get("errors", [])]
    res = {"status": "ok", "truth_calls": {"%s %s B%s" % (k[0], k[1], " captured" if k[2]
                                                          else ""): v for k, v in exp.items()},
           "graph": graph, "nccl_threads": threads, "rank_errors": rank_errors}
    md.append("")
    md.append("| op, bytes, captured | truth calls (all ranks) | node-probe |")
    md.append("|---|---|---|")
    if not colls:
        res["status"] = NOT_REPORTED + (
            "; the ranks failed: %s" % rank_errors[0][:200] if rank_errors else "")
        res["probe_line_kinds"] = sorted({str(r.get("kind")) for r in rows})[:30]
        for k, v in sorted(exp.items()):
            md.append("| %s, %d, %s | %d | %s |" % (k[0], k[1], k[2], v, NOT_REPORTED))
        md.append("")
        md.append("node-probe printed no collective records (%s); line kinds seen: %s"
                  % (prob or "probe_nccl.jsonl read", ", ".join(res["probe_line_kinds"]) or "none"))
        return res, md
    res["probe_calls"] = {"%s %s B%s" % (k[0], k[1], " captured" if k[2] else ""): v
                          for k, v in got.items()}
    res["probe_rank_nranks"] = sorted(ranks_seen)
    bad = 0
    for k in sorted(set(exp) | set(got), key=str):
        v, g = exp.get(k, 0), got.get(k, 0)
        bad += v != g
        md.append("| %s, %s, %s | %d | %d |" % (k[0], k[1], k[2], v, g))
    replays = sum((gr or {}).get("replays", 0) for gr in graph)
    md.append("")
    md.append("Graph replays (no NCCL call each, by design): %d; (rank, nranks) reported: %s"
              % (replays, sorted(ranks_seen) or "none"))
    if bad:
        res["status"] = "%d (op, bytes, captured) counts differ" % bad
    if rank_errors:
        res["status"] += "; the ranks failed: %s" % rank_errors[0][:200]
    return res, md


def sec_nvml(c):
    v, problem = read_json(c.path("nvml.json"))
    if v is None:
        return {"status": problem}, ["No NVML measurement (%s)." % problem]
    if v.get("error"):
        return dict(v, status="error: %s" % v["error"]), ["NVML: `%s`" % v["error"]]
    md = ["%s, driver %s; nvmlInit_v2 took %s us" % (v.get("device"), v.get("driver"),
                                                     v.get("init_us")),
          "", "| getter | rc | calls | us/call p50 | p99 | mean |", "|---|---|---|---|---|---|"]
    for name, g in (v.get("getters") or {}).items():
        md.append("| %s | %s %s | %s | %s | %s | %s |" % (
            name, g.get("rc"), "" if g.get("rc") == 0 else "(%s)" % g.get("rc_text"),
            g.get("calls"), g.get("us_p50"), g.get("us_p99"), g.get("us_mean")))
    return dict(v, status="ok"), md


# ---- main ----------------------------------------------------------------------------------------


def guarded(fn, *args):
    """A section that raised becomes an error entry; the summary is still written."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        return ({"status": "error in compare.py: %s: %s" % (type(e).__name__, e)},
                ["compare.py failed on this section: `%s: %s`" % (type(e).__name__, e)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="run.sh's output directory")
    ap.add_argument("--only", choices=["overhead"], help="write only overhead.json")
    args = ap.parse_args()
    c = Ctx(args.out)
    if args.only == "overhead":
        res = overhead(c)
        with open(c.path("overhead.json"), "w") as f:
            json.dump(res, f, indent=1)
        print("overhead: %s" % res.get("status"))
        return 0
    try:
        d = step_section_data(c)
    except Exception as e:  # noqa: BLE001
        d = {"rows": [], "problem": "error reading probe.jsonl: %s" % e, "per_api": {},
             "source": None, "api": None, "truth": [], "probe": [], "pairs": [], "extra": [],
             "window": (0, 2**63), "event_mismatch": False}
    sections = [
        ("stages", "Stages", guarded(sec_stages, c)),
        ("env", "Machine (env.txt)", guarded(sec_env, c)),
        ("probe", "node-probe health", guarded(sec_probe, c)),
        ("steps", "GPU steps: node-probe vs truth", guarded(sec_steps, c, d)),
        ("requests", "Per request GPU time: node-probe vs truth", guarded(sec_requests, c, d)),
        ("cupti", "Launch counts: node-probe vs CUPTI", guarded(sec_cupti, c, d)),
        ("overhead", "A/B overhead", guarded(sec_overhead, c)),
        ("nccl", "NCCL collectives", guarded(sec_nccl, c)),
        ("nvml", "NVML cost per call", guarded(sec_nvml, c)),
    ]
    summary = {"out": os.path.abspath(args.out), "core": c.core,
               "truth": c.truth_problem or "ok"}
    md = ["# gpu-check summary", "",
          "Engine: %s on %s (%s); truth: %s." % (c.core.get("model", "?"), c.core.get("gpu", "?"),
                                                  c.core.get("torch", "?"),
                                                  c.truth_problem or "truth.jsonl read"), ""]
    for key, title, (res, lines) in sections:
        summary[key] = res
        md += ["## %s" % title, "", "Status: **%s**" % res.get("status", "?"), ""] + lines + [""]
    with open(c.path("summary.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    with open(c.path("summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    print("compare: wrote %s and %s" % (c.path("summary.md"), c.path("summary.json")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
