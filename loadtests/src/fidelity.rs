//! The real-engine fidelity harness: a loopback packet capture, node-probe printing requests,
//! concurrent OpenAI load against one or more engines, and the checks every engine's requests
//! must pass against the capture (`loadtests/tests/real_engine.rs`).
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::harness::bin;
use crate::wire::{read_pcap_file, request_times, sse_timeline, stream_base_seq};

/// Prints a measured figure and appends it to the file `$INFERSCOPE_FIGURES` when set
/// (`scripts/test.sh` prints that file at the end, so CI logs carry the figures of tests that
/// passed).
pub fn figure(line: &str) {
    eprintln!("{line}");
    if let Some(path) = std::env::var_os("INFERSCOPE_FIGURES") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// One engine server under test.
#[derive(Debug, Clone)]
pub struct Engine {
    /// Base URL.
    pub url: String,
    /// Its TCP port.
    pub port: u16,
    /// The server (API-server) pid.
    pub pid: u32,
}

impl Engine {
    /// From a base URL and pid.
    pub fn new(url: &str, pid: u32) -> Self {
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .expect("URL with a port");
        Self {
            url: url.to_string(),
            port,
            pid,
        }
    }
}

/// Sends SIGINT, then kills after 10 s.
pub fn stop(mut c: Child) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// Percentage of `diffs` within `tol` (absolute).
pub fn pct_within(diffs: &[f64], tol: f64) -> f64 {
    diffs.iter().filter(|d| d.abs() <= tol).count() as f64 * 100.0 / diffs.len().max(1) as f64
}

/// Nearest-rank quantile (NaN when empty).
pub fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    if s.is_empty() {
        return f64::NAN;
    }
    s[((s.len() - 1) as f64 * q).round() as usize]
}

/// A tcpdump on loopback for the engines' ports, started and listening.
pub fn start_capture(ports: &[u16], pcap: &Path) -> Child {
    let filter = ports
        .iter()
        .map(|p| format!("tcp port {p}"))
        .collect::<Vec<_>>()
        .join(" or ");
    let mut tcpdump = Command::new("tcpdump")
        .args([
            "-i",
            "lo",
            "-U",
            "-s",
            "0",
            "--time-stamp-precision=nano",
            "-w",
        ])
        .arg(pcap)
        .arg(filter)
        .stderr(Stdio::piped())
        .spawn()
        .expect("tcpdump (scripts/setup.sh installs it)");
    let err = tcpdump.stderr.take().unwrap();
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            if l.contains("listening on") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(20))
        .expect("tcpdump listening");
    tcpdump
}

/// node-probe with `--requests` on `pids` (plus `extra` flags); its JSON lines on the receiver.
pub fn start_probe(pids: &[u32], extra: &[&str]) -> (Child, Receiver<Value>) {
    let mut cmd = Command::new(bin("node-probe"));
    for p in pids {
        cmd.args(["--pid", &p.to_string()]);
    }
    let mut probe = cmd
        .args(["--requests", "--poll-ms", "5"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node-probe");
    let out = probe.stdout.take().unwrap();
    let (tx, rx) = channel::<Value>();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&l) {
                let _ = tx.send(v);
            }
        }
    });
    // node-probe prints nothing before the first request: give it a moment to attach.
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        probe.try_wait().unwrap().is_none(),
        "node-probe exited early"
    );
    (probe, rx)
}

/// Runs `loadgen` against every engine at the same time (`concurrency` clients each); the
/// requests each one sent, from its trace log.
pub fn load_all(
    engines: &[Engine],
    requests: usize,
    concurrency: usize,
    max_tokens: u32,
    dir: &Path,
) -> Vec<Vec<Value>> {
    let runs: Vec<(PathBuf, Child)> = engines
        .iter()
        .map(|e| {
            let log = dir.join(format!("loadgen-{}.jsonl", e.port));
            let child = Command::new(bin("loadgen"))
                .args(["--url", &e.url])
                .args(["--requests", &requests.to_string()])
                .args(["--concurrency", &concurrency.to_string()])
                .args(["--max-tokens", &max_tokens.to_string()])
                .arg("--trace-log")
                .arg(&log)
                .spawn()
                .expect("loadgen");
            (log, child)
        })
        .collect();
    runs.into_iter()
        .map(|(log, mut c)| {
            assert!(c.wait().unwrap().success(), "loadgen failed");
            std::fs::read_to_string(&log)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        })
        .collect()
}

/// Finished request records of server process `pid`, by trace id.
pub fn by_trace(records: &[Value], pid: u32) -> HashMap<&str, Vec<&Value>> {
    let mut m: HashMap<&str, Vec<&Value>> = HashMap::new();
    for r in records.iter().filter(|r| r["pid"] == pid) {
        m.entry(r["trace_id"].as_str().unwrap())
            .or_default()
            .push(r);
    }
    m
}

/// Every request sent appears exactly once, complete, with `spans` among its span names
/// (`engine.step`: the record lists steps, each linked from its root span).
pub fn check_once(sent: &[Value], traces: &HashMap<&str, Vec<&Value>>, spans: &[&str]) {
    for s in sent {
        let t = s["trace_id"].as_str().unwrap();
        let rs = traces.get(t).map(Vec::as_slice).unwrap_or(&[]);
        assert_eq!(rs.len(), 1, "trace {t} seen {} times", rs.len());
        let r = rs[0];
        assert_eq!(
            (r["status"].as_u64(), r["outcome"].as_str()),
            (Some(200), Some("complete")),
            "{r}"
        );
        let names: Vec<&str> = r["spans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        for want in spans {
            if *want == "engine.step" {
                check_step_links(t, r);
                continue;
            }
            assert!(
                names.contains(want),
                "trace {t} lacks span {want}: {names:?}"
            );
        }
        assert_eq!(r["stream"].as_bool(), s["stream"].as_bool());
    }
}

/// A record's steps: at least one, each exported once and linked from the root span.
fn check_step_links(t: &str, r: &Value) {
    let steps = r["steps"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    assert!(!steps.is_empty(), "trace {t} has no engine steps: {r}");
    assert_eq!(r["engine_steps"].as_u64(), Some(steps.len() as u64), "{r}");
    let links = r["spans"][0]["links"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for s in steps {
        assert!(
            links
                .iter()
                .any(|l| l["span_id"] == s["span_id"] && l["trace_id"] == s["trace_id"]),
            "trace {t}: step {} not linked from the root span",
            s["step_id"]
        );
    }
}

/// Our TTFT, E2E and start minus the capture's, in ms, for the records of one server port.
#[derive(Debug, Default)]
pub struct WireDiffs {
    /// TTFT differences.
    pub ttft: Vec<f64>,
    /// E2E differences.
    pub e2e: Vec<f64>,
    /// Time-to-first-visible-text differences (streamed responses with visible text).
    pub first_text: Vec<f64>,
    /// Streamed responses where one side saw visible text and the other did not.
    pub first_text_unmatched: usize,
    /// Start differences.
    pub start: Vec<f64>,
    /// Requests whose request and response first-byte TCP sequence numbers equal the
    /// capture's.
    pub seq_matched: usize,
}

impl WireDiffs {
    /// Compares `records` (of the server on `port`) with the capture in `pcap`.
    pub fn compute(pcap: &Path, port: u16, records: &[&Value]) -> Self {
        // Whole segments: with keep-alive, the next response is found only after the previous
        // chunked body was parsed to its end.
        let cap = read_pcap_file(pcap, port, usize::MAX).expect("read pcap");
        let mut wire: HashMap<(u16, usize), (u64, u64, u64)> = HashMap::new();
        let mut wire_seq: HashMap<(u16, usize), (u32, u32)> = HashMap::new();
        let mut wire_text: HashMap<(u16, usize), Option<u64>> = HashMap::new();
        for (cport, conn) in &cap.connections {
            let tl = sse_timeline(&conn.server);
            let reqs = request_times(&conn.client, &tl.responses);
            let server_base = stream_base_seq(
                &conn
                    .server
                    .iter()
                    .map(|s| (s.ts_unix_ns, s.seq, s.len))
                    .collect::<Vec<_>>(),
            )
            .unwrap_or(0);
            for (i, (resp, req)) in tl.responses.iter().zip(reqs).enumerate() {
                let Some(req) = req else { continue };
                let first = if resp.event_stream {
                    resp.first_data()
                        .map(|e| e.ts_unix_ns)
                        .unwrap_or(resp.first_byte_unix_ns)
                } else {
                    resp.first_byte_unix_ns
                };
                wire.insert(
                    (*cport, i),
                    (req.first_byte_unix_ns, first, resp.last_byte_unix_ns),
                );
                wire_text.insert(
                    (*cport, i),
                    resp.event_stream
                        .then(|| resp.first_text().map(|e| e.ts_unix_ns))
                        .flatten(),
                );
                wire_seq.insert(
                    (*cport, i),
                    (req.first_seq, server_base.wrapping_add(resp.offset as u32)),
                );
            }
        }
        let mut per_conn: HashMap<u16, Vec<&Value>> = HashMap::new();
        for r in records {
            let cport: u16 = r["client"]
                .as_str()
                .unwrap()
                .rsplit(':')
                .next()
                .unwrap()
                .parse()
                .unwrap();
            per_conn.entry(cport).or_default().push(r);
        }
        let mut d = Self::default();
        for (cport, rs) in per_conn.iter_mut() {
            rs.sort_by_key(|r| r["start_unix_ns"].as_u64().unwrap());
            for (i, r) in rs.iter().enumerate() {
                let Some(&(w0, wf, wl)) = wire.get(&(*cport, i)) else {
                    continue;
                };
                let ms = |x: i128| x as f64 / 1e6;
                let g = |k: &str| r[k].as_u64().unwrap() as i128;
                d.ttft.push(ms(g("ttft_ns") - (wf as i128 - w0 as i128)));
                d.e2e.push(ms(g("e2e_ns") - (wl as i128 - w0 as i128)));
                if d.e2e.last().is_some_and(|x| x.abs() > 0.5) {
                    eprintln!(
                        "E2E off by {:.3} ms: conn {cport} #{i} stream {} chunks {} wire last {} ours end {}",
                        d.e2e.last().unwrap(),
                        r["stream"],
                        r["chunks"],
                        wl,
                        g("end_unix_ns")
                    );
                }
                d.start.push(ms(g("start_unix_ns") - w0 as i128));
                match (r["first_text_ns"].as_u64(), wire_text[&(*cport, i)]) {
                    (Some(ours), Some(wt)) => d
                        .first_text
                        .push(ms(ours as i128 - (wt as i128 - w0 as i128))),
                    (None, None) => {}
                    (ours, wt) => {
                        d.first_text_unmatched += 1;
                        eprintln!("first text: conn {cport} #{i}: ours {ours:?}, wire {wt:?}");
                    }
                }
                // The first bytes' sequence numbers name the same bytes as the capture's.
                let (rq, rs) = wire_seq[&(*cport, i)];
                let seq = |k: &str| r[k].as_u64().map(|v| v as u32);
                if seq("req_tcp_seq") == Some(rq) && seq("resp_tcp_seq") == Some(rs) {
                    d.seq_matched += 1;
                } else {
                    eprintln!(
                        "TCP seq differs: conn {cport} #{i}: ours {:?}/{:?}, wire {rq}/{rs}",
                        seq("req_tcp_seq"),
                        seq("resp_tcp_seq")
                    );
                }
            }
        }
        d
    }

    /// Prints the figures and asserts: every request matched, TTFT and E2E within 0.5 ms for
    /// at least 99 %.
    pub fn assert_fidelity(&self, label: &str, requests: usize) {
        let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let (ttft_ok, e2e_ok) = (pct_within(&self.ttft, 0.5), pct_within(&self.e2e, 0.5));
        figure(&format!(
            "[{label}] wire fidelity over {} requests: TTFT within 0.5 ms {ttft_ok:.1}% (|diff| p50 {:.3} ms, p99 {:.3} ms); \
             E2E within 0.5 ms {e2e_ok:.1}% (|diff| p50 {:.3}, p99 {:.3}; signed min {:.3}, max {:.3}); start offset p50 {:.3} ms",
            self.ttft.len(),
            quantile(&abs(&self.ttft), 0.5),
            quantile(&abs(&self.ttft), 0.99),
            quantile(&abs(&self.e2e), 0.5),
            quantile(&abs(&self.e2e), 0.99),
            quantile(&self.e2e, 0.0),
            quantile(&self.e2e, 1.0),
            quantile(&self.start, 0.5),
        ));
        assert_eq!(
            self.ttft.len(),
            requests,
            "[{label}] every request matched to the capture"
        );
        assert!(
            ttft_ok >= 99.0,
            "[{label}] TTFT within 0.5 ms of the wire for only {ttft_ok:.1}%"
        );
        assert!(
            e2e_ok >= 99.0,
            "[{label}] E2E within 0.5 ms of the wire for only {e2e_ok:.1}%"
        );
        let text_ok = pct_within(&self.first_text, 0.5);
        figure(&format!(
            "[{label}] time to first visible text within 0.5 ms of the wire {text_ok:.1}% of {} streamed requests (|diff| p50 {:.3} ms, p99 {:.3} ms); {} seen on one side only",
            self.first_text.len(),
            quantile(&abs(&self.first_text), 0.5),
            quantile(&abs(&self.first_text), 0.99),
            self.first_text_unmatched
        ));
        assert_eq!(
            self.first_text_unmatched, 0,
            "[{label}] visible text seen by one side only"
        );
        assert!(
            self.first_text.is_empty() || text_ok >= 99.0,
            "[{label}] first visible text within 0.5 ms of the wire for only {text_ok:.1}%"
        );
        figure(&format!(
            "[{label}] TCP sequence numbers of the first request and response bytes equal the capture's for {} of {}",
            self.seq_matched,
            self.ttft.len()
        ));
        assert_eq!(
            self.seq_matched,
            self.ttft.len(),
            "[{label}] every request's TCP sequence numbers match the capture"
        );
    }
}

/// vLLM's own `llm_request` spans (OTLP, collected by `scripts/test.sh`), by trace id.
pub fn otlp_spans(path: &Path) -> HashMap<String, Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["name"] == "llm_request")
        .map(|v| (v["trace_id"].as_str().unwrap().to_string(), v))
        .collect()
}

/// vLLM's own span must lie inside our wire-level span and outside our engine-side (IPC) span,
/// with 1 ms slack, for at least 99 % of requests (TTFT and E2E).
pub fn assert_vllm_bracketing(
    label: &str,
    sent: &[Value],
    traces: &HashMap<&str, Vec<&Value>>,
    otlp: &HashMap<String, Value>,
) {
    let (mut n, mut ttft_in, mut e2e_in) = (0, 0, 0);
    let (mut dq, mut dp, mut dd) = (vec![], vec![], vec![]);
    for s in sent {
        let t = s["trace_id"].as_str().unwrap();
        let (Some(span), Some(r)) = (otlp.get(t), traces.get(t).map(|v| v[0])) else {
            continue;
        };
        n += 1;
        let a = &span["attributes"];
        let ns = |k: &str| (a[k].as_f64().unwrap_or(f64::NAN) * 1e9) as i64;
        let g = |k: &str| r[k].as_i64().unwrap_or(i64::MIN);
        let slack = 1_000_000;
        let (v_ttft, v_e2e) = (
            ns("gen_ai.latency.time_to_first_token"),
            ns("gen_ai.latency.e2e"),
        );
        if g("engine_ttft_ns") <= v_ttft + slack && v_ttft <= g("ttft_ns") + slack {
            ttft_in += 1;
        }
        if g("engine_e2e_ns") <= v_e2e + slack && v_e2e <= g("e2e_ns") + slack {
            e2e_in += 1;
        }
        dq.push((g("queue_ns") - ns("gen_ai.latency.time_in_queue")) as f64 / 1e6);
        dp.push((g("prefill_ns") - ns("gen_ai.latency.time_in_model_prefill")) as f64 / 1e6);
        dd.push((g("decode_ns") - ns("gen_ai.latency.time_in_model_decode")) as f64 / 1e6);
    }
    figure(&format!(
        "[{label}] engine bracketing over {n} vLLM spans: TTFT inside {:.1}%, E2E inside {:.1}%; \
         ours minus vLLM: queue p50 {:.2} ms, prefill p50 {:.2} ms, decode p50 {:.2} ms (p90 |diff| {:.2} ms)",
        ttft_in as f64 * 100.0 / n.max(1) as f64,
        e2e_in as f64 * 100.0 / n.max(1) as f64,
        quantile(&dq, 0.5),
        quantile(&dp, 0.5),
        quantile(&dd, 0.5),
        quantile(&dd.iter().map(|x| x.abs()).collect::<Vec<_>>(), 0.9),
    ));
    assert!(
        n as f64 >= sent.len() as f64 * 0.99,
        "[{label}] vLLM exported spans for only {n} of {}",
        sent.len()
    );
    assert!(
        ttft_in as f64 >= n as f64 * 0.99,
        "[{label}] vLLM TTFT bracketed for only {ttft_in}/{n}"
    );
    assert!(
        e2e_in as f64 >= n as f64 * 0.99,
        "[{label}] vLLM E2E bracketed for only {e2e_in}/{n}"
    );
}

/// The token counts read from each response's `usage` equal vLLM's own
/// (`gen_ai.usage.prompt_tokens`/`completion_tokens` of its span): every non-streamed request
/// has them, and the streams that asked for a usage event (some of them, `openai.rs`) do too.
pub fn assert_usage(
    label: &str,
    sent: &[Value],
    traces: &HashMap<&str, Vec<&Value>>,
    otlp: &HashMap<String, Value>,
) {
    let (mut bodies, mut missing, mut streams, mut with_usage, mut equal) = (0, 0, 0, 0, 0);
    for s in sent {
        let t = s["trace_id"].as_str().unwrap();
        let (Some(span), Some(r)) = (otlp.get(t), traces.get(t).map(|v| v[0])) else {
            continue;
        };
        let a = &span["attributes"];
        let truth = (
            a["gen_ai.usage.prompt_tokens"].as_u64(),
            a["gen_ai.usage.completion_tokens"].as_u64(),
        );
        let ours = (r["prompt_tokens"].as_u64(), r["completion_tokens"].as_u64());
        if s["stream"] == false {
            bodies += 1;
            missing += usize::from(ours.0.is_none());
        } else if ours.0.is_some() {
            streams += 1;
        }
        if ours.0.is_some() || ours.1.is_some() {
            with_usage += 1;
            equal += usize::from(ours == truth);
        }
    }
    let non_streamed = sent.iter().filter(|s| s["stream"] == false).count();
    figure(&format!(
        "[{label}] usage read from {with_usage} responses ({bodies} of {non_streamed} non-streamed \
         with a vLLM span, {streams} streams that asked for it): prompt and completion tokens \
         equal vLLM's for {equal}"
    ));
    assert_eq!(equal, with_usage, "[{label}] usage differs from vLLM's");
    assert!(
        missing == 0 && streams > 0,
        "[{label}] usage missing from {missing} of {bodies} bodies; {streams} streams had it"
    );
}

/// The children of `pid` (from /proc), with their `comm`.
pub fn children(pid: u32) -> Vec<(u32, String)> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let rest = &stat[stat.rfind(')')? + 2..];
            let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (ppid == pid).then(|| {
                let comm = std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default();
                (p, comm.trim().to_string())
            })
        })
        .collect()
}

/// `pid:start_ticks` of a process (the form of `engine_instance`).
pub fn instance_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let start: u64 = rest.split_whitespace().nth(19)?.parse().ok()?;
    Some(format!("{pid}:{start}"))
}
