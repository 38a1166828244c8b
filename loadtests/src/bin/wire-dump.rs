//! Prints what a packet capture says about the HTTP/SSE traffic of one server port: per
//! connection and response, the request's first byte, the response's first byte, every SSE
//! `data:` event and `[DONE]`, and the last byte, all as capture times.
//!
//!   tcpdump -i lo -U -w /tmp/x.pcap 'tcp port 8765' &   # ... requests ...; kill -INT it
//!   wire-dump /tmp/x.pcap --port 8765           # readable, times in ms after the request
//!   wire-dump /tmp/x.pcap --port 8765 --json    # one JSON line per response, ns since epoch
use std::io::Write;

use anyhow::Context;
use clap::Parser;
use inferscope_loadtests::wire::{self, SseKind};

#[derive(Parser)]
struct Args {
    /// Classic pcap file (tcpdump -w).
    pcap: std::path::PathBuf,
    /// The server's TCP port.
    #[arg(long)]
    port: u16,
    /// Payload bytes kept per server segment (default: all).
    #[arg(long)]
    head_bytes: Option<usize>,
    /// One JSON line per response instead of text.
    #[arg(long)]
    json: bool,
}

fn ms(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e6
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    match dump(&a, &mut out).and_then(|()| Ok(out.flush()?)) {
        // `wire-dump ... | head` is fine.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            Ok(())
        }
        r => r,
    }
}

fn dump(a: &Args, out: &mut impl Write) -> anyhow::Result<()> {
    let cap = wire::read_pcap_file(&a.pcap, a.port, a.head_bytes.unwrap_or(usize::MAX))
        .with_context(|| format!("wire-dump {}", a.pcap.display()))?;
    let s = &cap.stats;
    if !a.json {
        writeln!(
            out,
            "{}: {:?}, {} timestamps, {} packets, {} to/from port {}, {} undecoded, {} other ports{}; {} connections ({} earlier on reused ports)",
            a.pcap.display(),
            cap.link_type,
            if cap.nanosecond { "ns" } else { "µs" },
            s.packets,
            s.matched,
            a.port,
            s.undecoded,
            s.other_ports,
            if s.truncated_file { ", file cut short" } else { "" },
            cap.connections.len(),
            cap.reused.len(),
        )?;
    }
    for c in cap.reused.iter().chain(cap.connections.values()) {
        let tl = wire::sse_timeline(&c.server);
        let reqs = wire::request_times(&c.client, &tl.responses);
        if !a.json {
            writeln!(
                out,
                "conn {} -> {}:{} client port {}: {} client / {} server segments, {} responses, stream {} B{}{}",
                c.client_ip,
                c.server_ip,
                a.port,
                c.client_port,
                c.client.len(),
                c.server.len(),
                tl.responses.len(),
                tl.stream_len,
                if tl.missing_bytes > 0 { format!(", {} B never captured", tl.missing_bytes) } else { String::new() },
                tl.lost_sync_at.map(|o| format!(", framing lost at byte {o}")).unwrap_or_default(),
            )?;
        }
        for (i, (r, req)) in tl.responses.iter().zip(&reqs).enumerate() {
            let data: Vec<u64> = r.data_events().map(|e| e.ts_unix_ns).collect();
            let done = r.done().map(|e| e.ts_unix_ns);
            if a.json {
                let line = serde_json::json!({
                    "client_port": c.client_port,
                    "response": i,
                    "status": r.status,
                    "event_stream": r.event_stream,
                    "chunked": r.chunked,
                    "complete": r.complete,
                    "resynced": r.resynced,
                    "request_first_byte_unix_ns": req.map(|q| q.first_byte_unix_ns),
                    "request_last_byte_unix_ns": req.map(|q| q.last_byte_unix_ns),
                    "request_bytes": req.map(|q| q.bytes),
                    "first_byte_unix_ns": r.first_byte_unix_ns,
                    "last_byte_unix_ns": r.last_byte_unix_ns,
                    "body_bytes": r.body_len,
                    "data_unix_ns": data,
                    "done_unix_ns": done,
                    "stream_lost_sync_at": tl.lost_sync_at,
                });
                writeln!(out, "{line}")?;
                continue;
            }
            let t0 = req.map_or(r.first_byte_unix_ns, |q| q.first_byte_unix_ns);
            writeln!(
                out,
                "  response {i}: status {}{}{}{}{}, request at {} ns ({} B), first byte +{:.3} ms, last byte +{:.3} ms, {} data events{}",
                r.status,
                if r.event_stream { ", text/event-stream" } else { "" },
                if r.chunked { ", chunked" } else { "" },
                if r.complete { "" } else { ", INCOMPLETE" },
                if r.resynced { ", resynced after a capture gap" } else { "" },
                t0,
                req.map_or(0, |q| q.bytes),
                ms(t0, r.first_byte_unix_ns),
                ms(t0, r.last_byte_unix_ns),
                data.len(),
                done.map(|d| format!(", [DONE] +{:.3} ms", ms(t0, d))).unwrap_or_default(),
            )?;
            if !r.events.is_empty() {
                let times: Vec<String> = r
                    .events
                    .iter()
                    .map(|e| match e.kind {
                        SseKind::Data => format!("{:.3}", ms(t0, e.ts_unix_ns)),
                        SseKind::Done => format!("[DONE]@{:.3}", ms(t0, e.ts_unix_ns)),
                    })
                    .collect();
                writeln!(out, "    events (ms after request): {}", times.join(" "))?;
            }
        }
    }
    Ok(())
}
