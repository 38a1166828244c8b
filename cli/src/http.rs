//! The query-API client: one GET per call, errors that say what to do, a spinner on a terminal.
use std::io::{IsTerminal as _, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// Largest response read (`/api/v1/samples` at its limit is about 8 MB; ureq's own
/// `into_string` stops at 10 MB).
const MAX_BODY: u64 = 64 << 20;

fn read_body(resp: ureq::Response) -> anyhow::Result<String> {
    use std::io::Read as _;
    let mut s = String::new();
    resp.into_reader()
        .take(MAX_BODY + 1)
        .read_to_string(&mut s)?;
    if s.len() as u64 > MAX_BODY {
        bail!("the response is larger than {} MiB", MAX_BODY >> 20);
    }
    Ok(s)
}

pub(crate) struct Api {
    base: String,
    agent: ureq::Agent,
    token: Option<String>,
}

impl Api {
    pub(crate) fn new(base: &str, timeout: Duration, token: Option<String>) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()),
            base: base.trim_end_matches('/').to_string(),
            agent: ureq::AgentBuilder::new()
                .timeout_connect(Duration::from_secs(5).min(timeout))
                .timeout(timeout)
                .build(),
        }
    }

    /// GETs `path` and returns the body; errors say what to do.
    pub(crate) fn get(
        &self,
        path: &str,
        query: &[(&'static str, String)],
    ) -> anyhow::Result<String> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.get(&url);
        if let Some(t) = &self.token {
            req = req.set("Authorization", &format!("Bearer {t}"));
        }
        for (k, v) in query {
            req = req.query(k, v);
        }
        tracing::debug!(%url, ?query, "GET");
        let spinner = Spinner::start(format!("querying {path}"));
        let res = req.call();
        drop(spinner);
        match res {
            Ok(resp) => read_body(resp).with_context(|| format!("reading the response of {url}")),
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| body.trim().chars().take(500).collect());
                let hint = match code {
                    503 => "\n(the aggregator cannot query ClickHouse right now: is ClickHouse running? `scripts/clickhouse.sh start`)",
                    404 if !path.starts_with("/api/v1/traces/") => {
                        "\n(is --api pointing at an inferscope aggregator?)"
                    }
                    _ => "",
                };
                bail!("{msg} (HTTP {code}){hint}")
            }
            Err(ureq::Error::Transport(t)) => {
                use ureq::ErrorKind as K;
                match t.kind() {
                    K::ConnectionFailed | K::Dns | K::Io | K::ProxyConnect => bail!(
                        "cannot reach the aggregator at {}: {t}\n\
                         Is it running? Start it with `aggregator --http-listen 127.0.0.1:7071` \
                         (it needs ClickHouse: `scripts/clickhouse.sh start`), or point --api \
                         (or INFERSCOPE_API) at the right address.",
                        self.base
                    ),
                    K::InvalidUrl | K::UnknownScheme => bail!(
                        "--api {:?} is not a usable URL ({t}); use http://HOST:PORT",
                        self.base
                    ),
                    _ => bail!("calling {url}: {t}"),
                }
            }
        }
    }
}

/// A progress line on stderr for calls that take over a second (only on a terminal).
pub(crate) struct Spinner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Spinner {
    pub(crate) fn start(label: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::io::stderr().is_terminal().then(|| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let t0 = Instant::now();
                let frames = ['|', '/', '-', '\\'];
                let mut shown = false;
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    if t0.elapsed() < Duration::from_secs(1) {
                        continue;
                    }
                    let mut e = std::io::stderr().lock();
                    let _ = write!(
                        e,
                        "\r{} {label} ({:.1} s)",
                        frames[i % frames.len()],
                        t0.elapsed().as_secs_f64()
                    );
                    let _ = e.flush();
                    shown = true;
                    i += 1;
                }
                if shown {
                    let _ = write!(std::io::stderr(), "\r\x1b[2K");
                }
            })
        });
        Self { stop, thread }
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
