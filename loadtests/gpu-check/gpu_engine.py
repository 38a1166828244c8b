#!/usr/bin/env python3
"""gpu_engine.py: a small vLLM-shaped engine with a real model on a real GPU (loadtests/gpu-check).

It makes the CUDA calls a one-GPU vLLM 0.32 makes (`uni` executor, async scheduling:
shared/notes/gpu.md section 1), in the same order, so that node-probe's GPU hooks can be checked
against ground truth on real NVIDIA libraries:

  gpu_engine.py vllm serve --port P --truth FILE [--cupti-out FILE] [engine options]
      The API server. It is the frontend of loadtests/gpu-sim/vllm (imported from there: same
      HTTP API, SSE chunks, ZMTP/msgpack IPC and request truth lines), with this file's `core`
      as its engine core. The word `vllm` right before `serve` is what node-probe's vLLM follower
      looks for in an API server's command line (`is_vllm_frontend`): it then follows requests
      into the core and attributes the core's GPU steps to them. Prints {"pid", "port",
      "core_pid"} on stdout once the core is ready (model built, graphs captured).
  gpu_engine.py core --fd N ...        (started by serve, not by hand)
      The EngineCore: comm `VLLM::EngineCor`, continuous batching up to --max-batch, launch step
      N+1 before synchronizing step N (a batch queue of 2).
  gpu_engine.py dry-run [--device cpu] [--no-graphs] [--steps 3]
      Builds the model and runs a few steps of three made-up requests without IPC, printing
      the step truth lines: a check of the model and step code where there is no GPU.

The model: a tiny random Llama (transformers LlamaConfig: hidden 256, 4 layers, 4 heads, vocab
4096, bf16, random init); when transformers cannot be imported, a hand-written decoder of the
same shape. Only its modules (embedding, norms, projections, MLPs, LM head) are used: attention
and the KV cache are this file's, because continuous batching needs a per-slot position that
transformers' StaticCache does not have. RoPE uses theta 10000 (the weights are random).

One step on the GPU (gpu.md section 1; V1 runner style inputs):
  1. inputs (slots, positions, prompt ids) staged in one of two pinned host buffers and copied
     with one HtoD cudaMemcpyAsync; the next token of every running request stays on the GPU
     (`last_tok`), as vLLM's async scheduling keeps sampled ids on the device;
  2. forward: a uniform decode batch replays the CUDA graph captured for its batch bucket
     (1, 2, 4, 8): one cudaGraphLaunch (`full_graph`); a step with a prefill runs eagerly, every
     kernel its own launch (`eager`);
  3. sampler (argmax) launched eagerly after the forward;
  4. output copy on a side stream: copy_stream.wait_stream(main), ids.to("cpu",
     non_blocking=True), copy_event.record(copy_stream) with a blocking-sync event (two,
     alternated: one per in-flight step);
  5. completion: copy_event.synchronize(), called after the next step was launched.

Truth (`--truth`, JSON lines appended with O_APPEND, one write(2) each, shared with the frontend,
whose request lines are the gpu-sim's):
  {"kind":"clock", "mono_ns", "unix_ns"}       time.monotonic_ns() and time.time_ns() together
  {"kind":"core", ...}                          model, device, versions, graph capture time
  {"kind":"step", "seq", "class", "members":[[engine_id, tokens]...], "batch", "tokens",
   "graphs", "bucket", "prefills", "event", "start_ns", "recorded_ns", "sync_ns", "done_ns",
   "gpu_ns", "profiled"}
  Host times are time.monotonic_ns() (CLOCK_MONOTONIC, node-probe's kernel clock): start_ns just
  before the step's first CUDA call, recorded_ns after its copy-event record, sync_ns before and
  done_ns after the synchronize. gpu_ns comes from two timing events on the main stream, one
  recorded before the step's first launch and one after its sampler (before the output copy,
  whose 8 bytes per request take a few us): the step's GPU span, start to end of its compute.
  The timing events are separate from the copy event, so the calls node-probe pairs (the
  copy-event record and its synchronize) stay vLLM's; recording them inside the launch window
  adds two cuEventRecord calls per step there, which do not close a window.

CUPTI (`--cupti-out FILE`): on SIGUSR1 the core profiles its next --profile-steps steps with
torch.profiler (CUDA activities), each step's launches inside record_function("isp_step_<seq>"),
and writes per step the CUDA API calls (kernel launches, graph launches, memcpys, event records)
and the GPU kernels and copies they caused: node-probe's per-step counts are compared with them.
"""
import argparse
import contextlib
import ctypes
import importlib.util
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from importlib.machinery import SourceFileLoader
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
SIM_PATH = os.path.join(HERE, "..", "gpu-sim", "vllm")
READY_TIMEOUT_S = 240.0  # torch import, model build and graph capture on a fresh machine
ROPE_THETA = 10000.0
PROFILE_IDLE_S = 5.0  # a profile with no new step for this long is written with what it has


def load_sim():
    """The gpu-sim's `vllm` script as a module (stdlib only; its main is behind __name__)."""
    loader = SourceFileLoader("gpu_sim_vllm", SIM_PATH)
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


sim = load_sim()


# ======================================================================================= model


def build_model(torch, a, device, dtype):
    """(embed, layers, norm, lm_head, source). Each layer has ln1, q, k, v, o, ln2, mlp."""
    inter = a.intermediate or (a.hidden * 8 // 3 + 63) // 64 * 64
    if not a.no_transformers:
        try:
            import transformers
            from transformers import LlamaConfig, LlamaForCausalLM
            cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=inter,
                              num_hidden_layers=a.layers, num_attention_heads=a.heads,
                              num_key_value_heads=a.heads, vocab_size=a.vocab,
                              max_position_embeddings=a.max_len, tie_word_embeddings=False)
            m = LlamaForCausalLM(cfg).to(device=device, dtype=dtype).eval()
            layers = [SimpleNamespace(ln1=l.input_layernorm, q=l.self_attn.q_proj,
                                      k=l.self_attn.k_proj, v=l.self_attn.v_proj,
                                      o=l.self_attn.o_proj, ln2=l.post_attention_layernorm,
                                      mlp=l.mlp) for l in m.model.layers]
            return (m.model.embed_tokens, layers, m.model.norm, m.lm_head,
                    "transformers %s LlamaForCausalLM" % transformers.__version__)
        except Exception as e:  # noqa: BLE001 - any failure falls back to the hand-written one
            print("gpu_engine: transformers unusable (%s: %s); hand-written decoder"
                  % (type(e).__name__, e), file=sys.stderr)
    nn = torch.nn

    class RMSNorm(nn.Module):
        def __init__(self, n, eps=1e-6):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(n))
            self.eps = eps

        def forward(self, x):
            xf = x.float()
            xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
            return self.weight * xf.to(x.dtype)

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate = nn.Linear(a.hidden, inter, bias=False)
            self.up = nn.Linear(a.hidden, inter, bias=False)
            self.down = nn.Linear(inter, a.hidden, bias=False)

        def forward(self, x):
            return self.down(torch.nn.functional.silu(self.gate(x)) * self.up(x))

    def lin(i, o):
        return nn.Linear(i, o, bias=False)

    mods = nn.ModuleList()
    layers = []
    for _ in range(a.layers):
        ly = nn.ModuleDict(dict(ln1=RMSNorm(a.hidden), q=lin(a.hidden, a.hidden),
                                k=lin(a.hidden, a.hidden), v=lin(a.hidden, a.hidden),
                                o=lin(a.hidden, a.hidden), ln2=RMSNorm(a.hidden), mlp=MLP()))
        mods.append(ly)
        layers.append(SimpleNamespace(**{k: ly[k] for k in ly.keys()}))
    embed, norm, head = nn.Embedding(a.vocab, a.hidden), RMSNorm(a.hidden), lin(a.hidden, a.vocab)
    mods.extend([embed, norm, head])
    for p in mods.parameters():
        if p.dim() > 1:
            nn.init.normal_(p, std=0.02)
    mods.to(device=device, dtype=dtype).eval()
    return embed, layers, norm, head, "hand-written torch decoder"


class Req:
    __slots__ = ("id", "ids", "prompt_len", "max_tokens", "produced", "aborted", "slot",
                 "next_pos")

    def __init__(self, rid, ids, max_tokens, max_prompt):
        self.id = rid
        self.ids = list(ids[:max_prompt]) or [1]  # a longer prompt is cut (counted as cut)
        self.prompt_len = len(self.ids)
        self.max_tokens = max(1, max_tokens)
        self.produced = 0  # tokens scheduled (async scheduling counts ahead of outputs)
        self.aborted = False
        self.slot = -1
        self.next_pos = 0


class Engine:
    """Model, KV cache, CUDA graphs, scheduling and the launch/complete halves of a step."""

    def __init__(self, a, write_truth):
        import torch
        self.torch, self.a, self.write_truth = torch, a, write_truth
        self.dev = torch.device(a.device)
        self.cuda = self.dev.type == "cuda"
        if self.cuda and not torch.cuda.is_available():
            raise SystemExit("gpu_engine: --device cuda but torch sees no GPU")
        self.dtype = torch.bfloat16
        self.pid = os.getpid()
        self.hd = a.hidden // a.heads
        self.slots = a.max_batch + 1  # the last slot is scratch, for graph padding
        self.scratch = a.max_batch
        self.max_prompt = min(a.max_prompt, a.max_len - 2)
        torch.manual_seed(a.seed)
        if self.cuda:
            torch.cuda.set_device(self.dev)
            # The model runs on a stream of its own (not the legacy default stream, which would
            # synchronize with the copy stream), as vLLM's runner does.
            self.main = torch.cuda.Stream()
            torch.cuda.set_stream(self.main)
            self.copy_stream = torch.cuda.Stream()
            # vLLM: torch.cuda.Event(blocking=True), one per in-flight step.
            self.copy_events = [torch.cuda.Event(blocking=True) for _ in range(2)]
        (self.embed, self.layers, self.norm, self.lm_head,
         self.model_source) = build_model(torch, a, self.dev, self.dtype)
        kv = (a.layers, self.slots, a.heads, a.max_len, self.hd)
        self.k_cache = torch.zeros(kv, dtype=self.dtype, device=self.dev)
        self.v_cache = torch.zeros(kv, dtype=self.dtype, device=self.dev)
        self.last_tok = torch.zeros(self.slots, dtype=torch.long, device=self.dev)
        inv = 1.0 / (ROPE_THETA ** (torch.arange(0, self.hd, 2, dtype=torch.float32,
                                                 device=self.dev) / self.hd))
        f = torch.outer(torch.arange(a.max_len, dtype=torch.float32, device=self.dev), inv)
        emb = torch.cat([f, f], dim=-1)
        self.cos, self.sin = emb.cos().to(self.dtype), emb.sin().to(self.dtype)
        self.positions = torch.arange(a.max_len, device=self.dev)
        # Two pinned staging buffers, alternated: step N's is reused by step N+2, launched only
        # after step N was synchronized (so its HtoD copy is done). Never freed: a freed pinned
        # block would record CUDA events at odd times.
        n = 2 * a.max_batch + a.max_batch * self.max_prompt + 16
        self.stage = [torch.zeros(n, dtype=torch.long, pin_memory=self.cuda) for _ in range(2)]
        self.buckets = []
        b = 1
        while True:
            self.buckets.append(b)
            if b >= a.max_batch:
                break
            b *= 2
        self.graphs, self.static_in, self.static_logits = {}, {}, {}
        self.capture_s = 0.0
        if self.cuda and a.graphs:
            self.capture()
        self.free_slots = list(range(a.max_batch))
        self.waiting, self.running, self.by_id = deque(), [], {}
        self.seq = 0
        self.cut_prompts = 0
        # CUPTI (torch.profiler), started on request (SIGUSR1)
        self.profile_wanted = False
        self.prof = None
        self.prof_seqs = []
        self.prof_last_step = 0.0

    # ---- the forward passes ----------------------------------------------------------------

    def rope(self, x, cos, sin):
        h = x.shape[-1] // 2
        rot = self.torch.cat([-x[..., h:], x[..., :h]], dim=-1)
        return x * cos + rot * sin

    def decode_forward(self, slots, pos):
        """One token for each of len(slots) requests: logits [B, vocab]. Graph-capturable."""
        torch, a = self.torch, self.a
        bsz = slots.shape[0]
        x = self.embed(self.last_tok[slots])  # the inputs never leave the GPU
        cos, sin = self.cos[pos][:, None, :], self.sin[pos][:, None, :]
        mask = (self.positions[None, :] <= pos[:, None])[:, None, None, :]  # [B,1,1,L]
        scale = self.hd ** -0.5
        for i, ly in enumerate(self.layers):
            h = ly.ln1(x)
            q = self.rope(ly.q(h).view(bsz, a.heads, self.hd), cos, sin)
            k = self.rope(ly.k(h).view(bsz, a.heads, self.hd), cos, sin)
            v = ly.v(h).view(bsz, a.heads, self.hd)
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc[slots, :, pos] = k
            vc[slots, :, pos] = v
            att = torch.matmul(q[:, :, None, :], kc[slots].transpose(-1, -2)) * scale
            att = att.float().masked_fill(~mask, float("-inf")).softmax(-1).to(self.dtype)
            o = torch.matmul(att, vc[slots]).reshape(bsz, a.hidden)  # [B,H,1,D] -> [B,hidden]
            x = x + ly.o(o)
            x = x + ly.mlp(ly.ln2(x))
        return self.lm_head(self.norm(x))

    def prefill_forward(self, slot, ids):
        """A whole prompt for one request (eager): logits of its last position, [1, vocab]."""
        torch, a = self.torch, self.a
        n = ids.shape[0]
        x = self.embed(ids)
        cos, sin = self.cos[:n][:, None, :], self.sin[:n][:, None, :]
        for i, ly in enumerate(self.layers):
            h = ly.ln1(x)
            q = self.rope(ly.q(h).view(n, a.heads, self.hd), cos, sin).transpose(0, 1)
            k = self.rope(ly.k(h).view(n, a.heads, self.hd), cos, sin).transpose(0, 1)
            v = ly.v(h).view(n, a.heads, self.hd).transpose(0, 1)
            self.k_cache[i, slot, :, :n] = k
            self.v_cache[i, slot, :, :n] = v
            o = torch.nn.functional.scaled_dot_product_attention(
                q[None], k[None], v[None], is_causal=True)[0]  # [H, n, D]
            x = x + ly.o(o.transpose(0, 1).reshape(n, a.hidden))
            x = x + ly.mlp(ly.ln2(x))
        return self.lm_head(self.norm(x[-1:]))

    def capture(self):
        """One CUDA graph of decode_forward per batch bucket, largest first (as vLLM)."""
        torch = self.torch
        t0 = time.monotonic()
        pool = None
        for bsz in sorted(self.buckets, reverse=True):
            static_in = torch.zeros((2, bsz), dtype=torch.long, device=self.dev)
            static_in[0].fill_(self.scratch)
            side = torch.cuda.Stream()
            side.wait_stream(self.main)
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up outside the capture (lazy inits, autotuning)
                    self.decode_forward(static_in[0], static_in[1])
            self.main.wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                logits = self.decode_forward(static_in[0], static_in[1])
            pool = g.pool()
            self.graphs[bsz], self.static_in[bsz], self.static_logits[bsz] = g, static_in, logits
        torch.cuda.synchronize()
        self.capture_s = time.monotonic() - t0

    # ---- scheduling (the gpu-sim's rules) ----------------------------------------------------

    def add(self, rid, ids, max_tokens):
        r = Req(rid, ids, max_tokens, self.max_prompt)
        self.cut_prompts += r.prompt_len < len(ids)
        self.waiting.append(r)
        self.by_id[rid] = r

    def abort(self, rids):
        for rid in rids:
            r = self.by_id.get(rid)
            if r is not None:
                r.aborted = True

    def has_work(self):
        return bool(self.running or self.waiting)

    def release(self, r):
        self.by_id.pop(r.id, None)
        if r.slot >= 0:
            self.free_slots.append(r.slot)  # stream order keeps a reuse after its last read
            r.slot = -1

    def schedule(self):
        """Step members [(req, tokens, is_prefill, finishes)]: running ones first, then
        admissions (whole prompt in one step). A request finishes in the step that produces its
        max_tokens-th token (its prefill step's token is its first)."""
        a = self.a
        members = []
        for r in self.running:
            if r.aborted:
                self.release(r)
            else:
                members.append((r, 1, False))
        budget = a.max_num_batched_tokens - len(members)
        while self.waiting and len(members) < a.max_batch and self.free_slots:
            r = self.waiting[0]
            if r.aborted:
                self.waiting.popleft()
                self.by_id.pop(r.id, None)
                continue
            if r.prompt_len > budget and members:
                break
            self.waiting.popleft()
            r.slot = self.free_slots.pop()
            members.append((r, r.prompt_len, True))
            budget -= r.prompt_len
        self.running = []
        out = []
        for r, t, p in members:
            r.produced += 1
            fin = r.produced >= r.max_tokens
            out.append((r, t, p, fin))  # a finishing request is released by launch()
            if not fin:
                self.running.append(r)
        return out

    # ---- one step ------------------------------------------------------------------------------

    def launch(self, members):
        """Launches one step (nothing waits for the GPU here); returns what complete() needs."""
        torch, a = self.torch, self.a
        self.seq += 1
        seq = self.seq
        bsz = len(members)
        dec = [m for m in members if not m[2]]
        pre = [m for m in members if m[2]]
        full = not pre and self.cuda and a.graphs
        bucket = next(x for x in self.buckets if x >= bsz) if full else 0
        profiled = self.prof is not None and len(self.prof_seqs) < a.profile_steps
        if profiled:
            self.prof_seqs.append(seq)
        ann = (torch.profiler.record_function("isp_step_%d" % seq) if profiled
               else contextlib.nullcontext())
        st = {"kind": "step", "core_pid": self.pid, "seq": seq,
              "class": "full_graph" if full else "eager",
              "members": [[m[0].id, m[1]] for m in members], "batch": bsz,
              "tokens": sum(m[1] for m in members), "graphs": 1 if full else 0,
              "bucket": bucket, "prefills": len(pre), "profiled": profiled}
        stage = self.stage[seq % 2]
        with ann:
            st["start_ns"] = time.monotonic_ns()
            t_start = t_end = None
            if self.cuda:
                t_start = torch.cuda.Event(enable_timing=True)
                t_start.record(self.main)
            if full:
                slots = [m[0].slot for m in members] + [self.scratch] * (bucket - bsz)
                pos = [m[0].next_pos for m in members] + [0] * (bucket - bsz)
                stage[:2 * bucket] = torch.tensor(slots + pos, dtype=torch.long)
                static_in = self.static_in[bucket]
                static_in.copy_(stage[:2 * bucket].view(2, bucket), non_blocking=True)  # HtoD
                self.graphs[bucket].replay()  # cudaGraphLaunch
                logits = self.static_logits[bucket][:bsz]
                slots_gpu = static_in[0, :bsz]
            else:
                d = len(dec)
                host = [m[0].slot for m in members] + [m[0].next_pos for m in dec]
                for m in pre:
                    host += m[0].ids
                stage[:len(host)] = torch.tensor(host, dtype=torch.long)
                inp = stage[:len(host)].to(self.dev, non_blocking=True)  # one HtoD
                parts = []
                if dec:
                    parts.append(self.decode_forward(inp[:d], inp[bsz:bsz + d]))
                off = bsz + d
                for m in pre:
                    n = m[0].prompt_len
                    parts.append(self.prefill_forward(m[0].slot, inp[off:off + n]))
                    off += n
                logits = parts[0] if len(parts) == 1 else torch.cat(parts)
                slots_gpu = inp[:bsz]
            ids = torch.argmax(logits, dim=-1)  # the sampler, launched eagerly
            self.last_tok.index_copy_(0, slots_gpu, ids)  # next step's inputs, on the GPU
            if self.cuda:
                t_end = torch.cuda.Event(enable_timing=True)
                t_end.record(self.main)
                ev = self.copy_events[seq % 2]
                self.copy_stream.wait_stream(self.main)  # cuEventRecord + cuStreamWaitEvent
                with torch.cuda.stream(self.copy_stream):
                    ids_cpu = ids.to("cpu", non_blocking=True)  # DtoH on the copy stream
                    ev.record(self.copy_stream)
                st["event"] = int(getattr(ev, "cuda_event", 0) or 0)
            else:
                ev, ids_cpu = None, ids.cpu()
                st["event"] = 0
            st["recorded_ns"] = time.monotonic_ns()
        for r, _t, p, fin in members:
            # The position of the token this step sampled: where the next step writes its KV.
            r.next_pos = min(r.prompt_len if p else r.next_pos + 1, a.max_len - 1)
            if fin:
                self.release(r)
        # ids stays referenced until complete(): its memory is not reused while being copied.
        return (st, members, ev, t_start, t_end, ids, ids_cpu)

    def complete(self, step):
        """Waits for a launched step (its copy event); returns (truth line, members, ids)."""
        st, members, ev, t_start, t_end, _ids, ids_cpu = step
        st["sync_ns"] = time.monotonic_ns()
        if ev is not None:
            ev.synchronize()  # cuEventSynchronize
        st["done_ns"] = time.monotonic_ns()
        if t_start is not None:
            # t_end precedes the copy stream's wait point: complete once ev is.
            st["gpu_ns"] = int(t_start.elapsed_time(t_end) * 1e6)
        else:
            st["gpu_ns"] = None
        toks = ids_cpu.tolist()
        self.write_truth(st)  # before the outputs go out: a step's line precedes its requests'
        if st["profiled"]:
            self.prof_last_step = time.monotonic()
            if st["seq"] == self.prof_seqs[-1] and len(self.prof_seqs) >= self.a.profile_steps:
                self.finish_profile()
        return st, members, toks

    # ---- CUPTI via torch.profiler --------------------------------------------------------------

    def maybe_start_profile(self):
        if not self.profile_wanted or self.prof is not None:
            return
        self.profile_wanted = False
        if not self.a.cupti_out:
            return
        if not self.cuda:
            write_json(self.a.cupti_out, {"error": "no CUDA device: nothing for CUPTI to count"})
            return
        from torch.profiler import ProfilerActivity, profile
        try:
            self.prof = profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA])
            self.prof.start()
            self.prof_seqs = []
            self.prof_last_step = time.monotonic()
            print("gpu_engine: profiling the next %d steps" % self.a.profile_steps,
                  file=sys.stderr)
        except Exception as e:  # noqa: BLE001
            self.prof = None
            write_json(self.a.cupti_out, {"error": "profiler start: %s: %s"
                                          % (type(e).__name__, e)})

    def profile_idle(self):
        """A profile that saw no step for PROFILE_IDLE_S is written with what it has."""
        if self.prof is not None and time.monotonic() - self.prof_last_step > PROFILE_IDLE_S:
            self.finish_profile()

    def finish_profile(self):
        prof, self.prof = self.prof, None
        if prof is None:
            return
        out = self.a.cupti_out
        trace = out + ".trace.json"
        try:
            prof.stop()
            prof.export_chrome_trace(trace)
            res = cupti_counts(trace, self.prof_seqs)
        except Exception as e:  # noqa: BLE001
            res = {"error": "%s: %s" % (type(e).__name__, e)}
        finally:
            if not self.a.keep_trace and os.path.exists(trace):
                os.remove(trace)
        res["torch"] = self.torch.__version__
        res["requested_steps"] = self.a.profile_steps
        write_json(out, res)
        print("gpu_engine: CUPTI counts of %d steps in %s" % (len(self.prof_seqs), out),
              file=sys.stderr)


def cupti_counts(trace_path, seqs):
    """Per profiled step: CUDA API calls made inside its record_function annotation (host
    time containment; only the core's main thread calls CUDA) and the GPU work they caused
    (kernels and copies, by correlation id)."""
    with open(trace_path) as f:
        events = json.load(f).get("traceEvents", [])
    steps = {}
    for e in events:
        if e.get("cat") == "user_annotation" and str(e.get("name", "")).startswith("isp_step_"):
            seq = int(e["name"][len("isp_step_"):])
            steps[seq] = {"seq": seq, "t0": float(e["ts"]), "t1": float(e["ts"]) + float(
                e.get("dur", 0)), "api": {}, "kernel_launches": 0, "graph_launches": 0,
                "memcpy_calls": 0, "event_records": 0, "stream_waits": 0, "gpu_kernels": 0,
                "gpu_kernels_in_graphs": 0, "gpu_memcpys": 0, "gpu_memcpy_bytes": 0,
                "gpu_memsets": 0}
    ordered = sorted(steps.values(), key=lambda s: s["t0"])
    corr_step, corr_graph = {}, set()
    unassigned, api_total = {}, {}
    for e in events:
        if e.get("cat") not in ("cuda_runtime", "cuda_driver"):
            continue
        name, ts = str(e.get("name", "")), float(e.get("ts", 0))
        api_total[name] = api_total.get(name, 0) + 1
        s = next((s for s in ordered if s["t0"] <= ts <= s["t1"]), None)
        if s is None:
            unassigned[name] = unassigned.get(name, 0) + 1
            continue
        s["api"][name] = s["api"].get(name, 0) + 1
        base = name.replace("_ptsz", "").replace("_v2", "")
        if base.startswith(("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchCooperativeKernel")):
            s["kernel_launches"] += 1
        elif base.startswith(("cudaGraphLaunch", "cuGraphLaunch")):
            s["graph_launches"] += 1
        elif "Memcpy" in base:
            s["memcpy_calls"] += 1
        elif "EventRecord" in base:
            s["event_records"] += 1
        elif "StreamWaitEvent" in base:
            s["stream_waits"] += 1
        corr = (e.get("args") or {}).get("correlation")
        if corr is not None:
            corr_step[corr] = s
            if "GraphLaunch" in base:
                corr_graph.add(corr)
    for e in events:
        cat = e.get("cat")
        if cat not in ("kernel", "gpu_memcpy", "gpu_memset"):
            continue
        corr = (e.get("args") or {}).get("correlation")
        s = corr_step.get(corr)
        if s is None:
            continue
        if cat == "kernel":
            s["gpu_kernels"] += 1
            s["gpu_kernels_in_graphs"] += corr in corr_graph
        elif cat == "gpu_memcpy":
            s["gpu_memcpys"] += 1
            s["gpu_memcpy_bytes"] += int((e.get("args") or {}).get("bytes", 0) or 0)
        else:
            s["gpu_memsets"] += 1
    for s in ordered:
        del s["t0"], s["t1"]
    keys = ("kernel_launches", "graph_launches", "memcpy_calls", "event_records",
            "gpu_kernels", "gpu_memcpys")
    return {"steps": ordered, "profiled_seqs": list(seqs),
            "totals": {k: sum(s[k] for s in ordered) for k in keys},
            "api_total": api_total, "api_outside_steps": unassigned, "error": None}


def write_json(path, obj):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


# ======================================================================================== core


class Core:
    """The EngineCore process: IPC with the frontend (the gpu-sim's protocol) around Engine."""

    def __init__(self, args):
        self.args = args
        self.stop = False
        self.sock = socket.socket(fileno=args.fd)
        self.truth = sim.Truth(args.truth)
        self.inbox = queue.Queue()
        self.truth.write({"kind": "clock", "mono_ns": time.monotonic_ns(),
                          "unix_ns": time.time_ns()})
        self.eng = Engine(args, self.truth.write)
        self.truth.write(core_info(self.eng))

    def reader(self):
        mr = sim.MessageReader()
        try:
            while True:
                data = self.sock.recv(1 << 16)
                if not data:
                    break
                for parts in mr.feed(data):
                    if len(parts) != 2 or len(parts[0]) != 1:
                        continue
                    body, _ = sim.mp_decode(parts[1])
                    if parts[0] == b"\x00":
                        self.inbox.put(("add", body))
                    elif parts[0] == b"\x01":
                        self.inbox.put(("abort", body))
        except (OSError, ValueError) as e:
            print("gpu_engine core: reader: %s" % e, file=sys.stderr)
        self.inbox.put(None)

    def take_inbox(self, block):
        """New requests into the engine; False once the frontend is gone."""
        while True:
            try:
                item = self.inbox.get(timeout=0.25) if block else self.inbox.get_nowait()
            except queue.Empty:
                self.eng.maybe_start_profile()
                self.eng.profile_idle()
                if block and not self.stop:
                    continue
                return not self.stop
            block = False
            if item is None:
                return False
            kind, body = item
            if kind == "add":
                self.eng.add(body[0], [int(t) for t in body[1]], int(body[2]))
            else:
                self.eng.abort(body)

    def send_outputs(self, members, toks):
        body = bytearray(sim.mp_array(len(members)))
        for (r, _, _, fin), tok in zip(members, toks):
            body += b"\x93" + sim.mp_str(r.id) + b"\x91" + sim.mp_int(int(tok))
            body += sim.TRUE if fin else sim.FALSE
        self.sock.sendall(sim.zmtp_frame(bytes(body)))  # >= 10 bytes: never a "doorbell"

    def complete(self, step):
        _st, members, toks = self.eng.complete(step)
        self.send_outputs(members, toks)

    def run(self):
        """vLLM's step_with_batch_queue with a queue of 2: launch N+1, then sync N."""
        eng = self.eng
        self.sock.sendall(sim.zmtp_frame(sim.mp_array(2) + sim.mp_str("READY")
                                         + sim.mp_int(os.getpid())))
        threading.Thread(target=self.reader, name="core-reader", daemon=True).start()
        inflight = None
        alive = True
        while alive and not self.stop:
            alive = self.take_inbox(block=False)
            if not alive:
                break
            eng.maybe_start_profile()
            members = eng.schedule() if eng.has_work() else []
            if not members:
                if inflight is not None:
                    self.complete(inflight)
                    inflight = None
                    continue
                alive = self.take_inbox(block=True)
                continue
            step = eng.launch(members)
            if inflight is not None:
                self.complete(inflight)
            inflight = step
        if inflight is not None:
            try:
                self.complete(inflight)
            except OSError:
                pass
        if eng.prof is not None:
            eng.finish_profile()


def core_info(eng):
    torch = eng.torch
    info = {"kind": "core", "core_pid": eng.pid, "model": eng.model_source,
            "hidden": eng.a.hidden, "layers": eng.a.layers, "heads": eng.a.heads,
            "vocab": eng.a.vocab, "max_len": eng.a.max_len, "max_batch": eng.a.max_batch,
            "buckets": eng.buckets if eng.graphs else [], "capture_s": round(eng.capture_s, 3),
            "torch": torch.__version__, "device": str(eng.dev)}
    if eng.cuda:
        info["gpu"] = torch.cuda.get_device_name(eng.dev)
        info["cuda"] = torch.version.cuda
    return info


def core_main(args):
    libc = ctypes.CDLL(None, use_errno=True)
    # As the gpu-sim's core: comm "VLLM::EngineCor" (before any CUDA call, so that threads
    # started later inherit it), go when the frontend goes.
    libc.prctl(ctypes.c_int(15), ctypes.c_char_p(b"VLLM::EngineCore"), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))
    libc.prctl(ctypes.c_int(1), ctypes.c_ulong(signal.SIGTERM), ctypes.c_ulong(0),
               ctypes.c_ulong(0), ctypes.c_ulong(0))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the frontend decides; EOF stops the core
    import torch
    with torch.inference_mode():
        core = Core(args)

        def on_term(*_):
            core.stop = True

        def on_usr1(*_):
            core.eng.profile_wanted = True

        signal.signal(signal.SIGTERM, on_term)
        signal.signal(signal.SIGUSR1, on_usr1)
        try:
            core.run()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            core.truth.close()
    return 0


# ==================================================================================== frontend


def serve_main(args):
    """The gpu-sim's serve_main with this file's core: socketpair, core, READY, HTTP."""
    truth_path = os.path.abspath(args.truth)
    front, back = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    cmd = [sys.executable, os.path.abspath(__file__), "core", "--fd", str(back.fileno())]
    cmd += engine_argv(args)
    proc = subprocess.Popen(cmd, pass_fds=(back.fileno(),), stdin=subprocess.DEVNULL,
                            stdout=sys.stderr.fileno())
    back.close()

    def stop_core(code):
        try:
            front.shutdown(socket.SHUT_RDWR)  # the core sees EOF and exits
        except OSError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if proc.returncode != 0:
            print("frontend: the engine core exited with %s" % proc.returncode, file=sys.stderr)
        return code

    mr = sim.MessageReader()
    ready = False
    deadline = time.monotonic() + READY_TIMEOUT_S
    try:
        while not ready and time.monotonic() < deadline and proc.poll() is None:
            front.settimeout(max(0.1, min(1.0, deadline - time.monotonic())))
            try:
                data = front.recv(1 << 16)
            except socket.timeout:
                continue
            if not data:
                break
            for parts in mr.feed(data):
                v, _ = sim.mp_decode(parts[-1])
                ready = ready or (isinstance(v, list) and v[:1] == ["READY"])
    except (OSError, ValueError):
        ready = False
    if not ready:
        print("frontend: the engine core did not start", file=sys.stderr)
        return stop_core(1)
    front.settimeout(None)

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # The gpu-sim's Handler reads its module's global FE.
    sim.FE = sim.Frontend(front, sim.Truth(truth_path), proc.pid, args.model)
    threading.Thread(target=sim.FE.reader, args=(mr,), name="frontend-reader",
                     daemon=True).start()
    srv = sim.Server((args.host, args.port), sim.Handler)
    threading.Thread(target=srv.serve_forever, name="http", daemon=True).start()
    sys.stdout.write(json.dumps({"pid": os.getpid(), "port": srv.server_address[1],
                                 "core_pid": proc.pid}) + "\n")
    sys.stdout.flush()
    code = 0
    while not stop.wait(0.5):
        if proc.poll() is not None:
            print("frontend: the engine core exited (%s)" % proc.returncode, file=sys.stderr)
            code = 1
            break
    sim.FE.stopping = True
    srv.shutdown()
    srv.server_close()
    return stop_core(code)


# ===================================================================================== dry run


def dry_run_main(args):
    """A few steps of three made-up requests, no IPC: truth lines on stdout."""
    import torch
    lines = []

    def write(obj):
        lines.append(obj)
        print(json.dumps(obj, separators=(",", ":")), flush=True)

    with torch.inference_mode():
        eng = Engine(args, write)
        write(core_info(eng))
        eng.add("dry-0", list(range(1, 17)), 3)
        eng.add("dry-1", list(range(1, 41)), 4)
        eng.add("dry-2", [5] * 5, 2)
        inflight = None
        steps = 0
        while steps < args.steps and (eng.has_work() or inflight is not None):
            members = eng.schedule() if eng.has_work() else []
            if not members:
                eng.complete(inflight)
                inflight = None
                continue
            step = eng.launch(members)
            steps += 1
            if inflight is not None:
                eng.complete(inflight)
            inflight = step
        if inflight is not None:
            eng.complete(inflight)
    done = [s for s in lines if s.get("kind") == "step"]
    if len(done) != steps or steps == 0:
        print("dry-run: %d steps launched, %d completed" % (steps, len(done)), file=sys.stderr)
        return 1
    print("dry-run: %d steps ok (%s)" % (steps, ", ".join(s["class"] for s in done)),
          file=sys.stderr)
    return 0


# ======================================================================================== main


ENGINE_OPTS = ("device", "max_batch", "max_num_batched_tokens", "max_len", "max_prompt",
               "hidden", "intermediate", "layers", "heads", "vocab", "seed", "profile_steps")


def engine_argv(args):
    """The engine options of `serve`, passed on to `core`."""
    out = ["--truth", os.path.abspath(args.truth)]
    for k in ENGINE_OPTS:
        out += ["--" + k.replace("_", "-"), str(getattr(args, k))]
    if args.cupti_out:
        out += ["--cupti-out", os.path.abspath(args.cupti_out)]
    for flag in ("no_graphs", "no_transformers", "keep_trace"):
        if getattr(args, flag):
            out.append("--" + flag.replace("_", "-"))
    return out


def main():
    argv = sys.argv[1:]
    if argv[:1] == ["vllm"]:
        argv = argv[1:]  # `gpu_engine.py vllm serve`: the word is for node-probe, not for us
    ap = argparse.ArgumentParser(prog="gpu_engine.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    def engine_opts(p, truth_required=True):
        p.add_argument("--truth", required=truth_required, help="JSON-lines truth (appended)")
        p.add_argument("--device", default="cuda")
        p.add_argument("--max-batch", type=int, default=8)
        p.add_argument("--max-num-batched-tokens", type=int, default=8192)
        p.add_argument("--max-len", type=int, default=1152, help="KV cache positions per slot")
        p.add_argument("--max-prompt", type=int, default=1024, help="longer prompts are cut")
        p.add_argument("--hidden", type=int, default=256)
        p.add_argument("--intermediate", type=int, default=0, help="0: ~8/3 hidden")
        p.add_argument("--layers", type=int, default=4)
        p.add_argument("--heads", type=int, default=4)
        p.add_argument("--vocab", type=int, default=4096)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-graphs", action="store_true", help="decode eagerly too")
        p.add_argument("--no-transformers", action="store_true",
                       help="use the hand-written decoder even if transformers imports")
        p.add_argument("--cupti-out", default="", help="where SIGUSR1's profile goes")
        p.add_argument("--profile-steps", type=int, default=20)
        p.add_argument("--keep-trace", action="store_true",
                       help="keep the profiler's chrome trace beside --cupti-out")

    s = sub.add_parser("serve", help="the API server (starts the engine core)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--model", default="gpu-check-tiny-llama")
    engine_opts(s)
    c = sub.add_parser("core", help="the engine core (started by serve)")
    c.add_argument("--fd", type=int, required=True)
    engine_opts(c)
    d = sub.add_parser("dry-run", help="a few steps without IPC (no GPU needed)")
    d.add_argument("--steps", type=int, default=3)
    engine_opts(d, truth_required=False)
    args = ap.parse_args(argv)
    args.graphs = not args.no_graphs
    if args.max_batch < 1 or args.layers < 1 or args.hidden % args.heads:
        ap.error("need --max-batch >= 1, --layers >= 1 and --hidden divisible by --heads")
    if args.cmd == "serve":
        return serve_main(args)
    if args.cmd == "core":
        return core_main(args)
    return dry_run_main(args)


if __name__ == "__main__":
    sys.exit(main())
