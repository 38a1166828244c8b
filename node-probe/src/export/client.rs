//! The gRPC side: endpoint and TLS set-up, opening an `Export` stream (bearer token,
//! compression), and the reconnect backoff.
use std::future::Future;
use std::time::Duration;

use inferscope_proto::v1::{ingest_client::IngestClient, Ack, Batch};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::Streaming;

use super::{Compression, ExportConfig, ExportError};

/// Opening a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// TCP/TLS/HTTP2 connection failed.
    #[error("connect: {0}")]
    Transport(String),
    /// The aggregator answered the `Export` call with an error status.
    #[error("aggregator: {code:?}: {message}")]
    Status {
        /// gRPC status code.
        code: tonic::Code,
        /// Its message.
        message: String,
    },
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    /// The aggregator refused the bearer token.
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Self::Status {
                code: tonic::Code::Unauthenticated,
                ..
            }
        )
    }
}

impl From<tonic::Status> for ConnectError {
    fn from(s: tonic::Status) -> Self {
        Self::Status {
            code: s.code(),
            message: s.message().to_owned(),
        }
    }
}

/// An error and its sources, `: `-separated (tonic's transport errors say little at the top);
/// a source whose text is already there is left out.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = c.source();
    }
    s
}

/// An open `Export` stream: batches go into `tx`, acks come out of `acks`.
#[derive(Debug)]
pub struct Stream {
    /// Request side (bounded by the in-flight window).
    pub tx: mpsc::Sender<Batch>,
    /// Response side.
    pub acks: Streaming<Ack>,
}

/// Everything needed to open streams to the aggregators: one endpoint at a time, the next one
/// after a failure ([`Connector::fail_over`]).
#[derive(Debug, Clone)]
pub struct Connector {
    endpoints: Vec<Endpoint>,
    current: usize,
    auth: Option<MetadataValue<Ascii>>,
    compression: Compression,
    queue: usize,
    timeout: Duration,
}

impl Connector {
    /// Validates the URLs, TLS and token settings of `cfg`. The first endpoint tried is picked
    /// by the node name, so that the nodes of a fleet spread over the replicas.
    pub fn new(cfg: &ExportConfig) -> Result<Self, ExportError> {
        if cfg.urls.is_empty() {
            return Err(ExportError::Url {
                url: String::new(),
                reason: "no aggregator URL".into(),
            });
        }
        let endpoints = cfg
            .urls
            .iter()
            .map(|u| endpoint(cfg, u))
            .collect::<Result<Vec<_>, _>>()?;
        let auth = match &cfg.token {
            Some(t) if !t.is_empty() => Some(
                MetadataValue::try_from(format!("Bearer {t}")).map_err(|_| ExportError::Token)?,
            ),
            _ => None,
        };
        let current = (fnv1a(cfg.node_name.as_bytes()) % endpoints.len() as u64) as usize;
        Ok(Self {
            endpoints,
            current,
            auth,
            compression: cfg.compression,
            queue: cfg.window.max(1),
            timeout: cfg.connect_timeout + Duration::from_secs(5),
        })
    }

    /// The URL of the aggregator in use.
    pub fn uri(&self) -> String {
        self.endpoints[self.current].uri().to_string()
    }

    /// How many aggregator endpoints there are.
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }

    /// Moves on to the next endpoint (round robin); returns whether it is another one.
    pub fn fail_over(&mut self) -> bool {
        self.current = (self.current + 1) % self.endpoints.len();
        self.endpoints.len() > 1
    }

    /// Connects and opens an `Export` stream (a fresh connection per call).
    pub fn connect(&self) -> impl Future<Output = Result<Stream, ConnectError>> + Send + 'static {
        let this = self.clone();
        async move {
            let timeout = this.timeout;
            match tokio::time::timeout(timeout, this.open()).await {
                Ok(r) => r,
                Err(_) => Err(ConnectError::Timeout(timeout)),
            }
        }
    }

    async fn open(self) -> Result<Stream, ConnectError> {
        let channel = self.endpoints[self.current]
            .connect()
            .await
            .map_err(|e| ConnectError::Transport(error_chain(&e)))?;
        let mut client = IngestClient::new(channel)
            .accept_compressed(CompressionEncoding::Gzip)
            .accept_compressed(CompressionEncoding::Zstd)
            .max_encoding_message_size(usize::MAX);
        client = match self.compression {
            Compression::Zstd => client.send_compressed(CompressionEncoding::Zstd),
            Compression::Gzip => client.send_compressed(CompressionEncoding::Gzip),
            Compression::None => client,
        };
        let (tx, rx) = mpsc::channel(self.queue);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(v) = &self.auth {
            req.metadata_mut().insert("authorization", v.clone());
        }
        let acks = client.export(req).await?.into_inner();
        Ok(Stream { tx, acks })
    }
}

/// One aggregator endpoint: URL scheme, timeouts and TLS.
fn endpoint(cfg: &ExportConfig, url: &str) -> Result<Endpoint, ExportError> {
    let url = url.trim();
    let endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| ExportError::Url {
        url: url.to_owned(),
        reason: error_chain(&e),
    })?;
    let https = match endpoint.uri().scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(ExportError::Url {
                url: url.to_owned(),
                reason: "want http://HOST:PORT or https://HOST:PORT".into(),
            })
        }
    };
    let endpoint = endpoint
        .connect_timeout(cfg.connect_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true);
    match (https, &cfg.tls_ca) {
        (true, Some(ca)) => {
            let pem = std::fs::read(ca).map_err(|source| ExportError::TlsCa {
                path: ca.clone(),
                source,
            })?;
            if !pem
                .windows(b"-----BEGIN CERTIFICATE-----".len())
                .any(|w| w == b"-----BEGIN CERTIFICATE-----")
            {
                return Err(ExportError::Tls(format!(
                    "{} holds no PEM certificate",
                    ca.display()
                )));
            }
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint
                .tls_config(tls)
                .map_err(|e| ExportError::Tls(error_chain(&e)))
        }
        (true, None) => Err(ExportError::Tls(
            "an https:// export URL needs --export-tls-ca (the PEM CA that signed the \
             aggregator's certificate)"
                .into(),
        )),
        (false, Some(_)) => Err(ExportError::Tls(
            "--export-tls-ca needs an https:// export URL".into(),
        )),
        (false, None) => Ok(endpoint),
    }
}

/// FNV-1a, 64 bits: a stable spread of node names over endpoints.
fn fnv1a(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// 62 random bits (the low half of a UUID v4), enough for jitter.
fn random_u64() -> u64 {
    uuid::Uuid::new_v4().as_u128() as u64
}

/// `d` with equal jitter: uniformly in `[d/2, d]`.
pub fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    let span = (d - half).as_nanos() as u64;
    half + Duration::from_nanos(if span == 0 {
        0
    } else {
        random_u64() % (span + 1)
    })
}

/// Exponential backoff with jitter: `initial`, doubling up to `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The next delay (jittered); doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(d)
    }

    /// The first delay (jittered), leaving the backoff where it is.
    pub fn first(&self) -> Duration {
        jitter(self.initial)
    }

    /// Back to `initial` (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    /// The delay before attempt `n` (1-based) of one batch, jittered.
    pub fn nth(&self, n: u32) -> Duration {
        let d = self
            .initial
            .saturating_mul(1u32 << n.saturating_sub(1).min(20))
            .min(self.max);
        jitter(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_max_with_jitter() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(30_000));
        let mut bounds = Vec::new();
        for _ in 0..12 {
            bounds.push(b.next_delay());
        }
        let want = [
            100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000,
        ];
        for (d, w) in bounds.iter().zip(want) {
            assert!(*d >= ms(w) / 2 && *d <= ms(w), "{d:?} vs {w}");
        }
        b.reset();
        assert!(b.next_delay() <= ms(100));
        assert!(b.nth(1) <= ms(100));
        assert!(b.nth(3) >= ms(200) && b.nth(3) <= ms(400));
        assert!(b.nth(1000) <= ms(30_000) && b.nth(1000) >= ms(15_000));
    }

    #[test]
    fn config_errors() {
        let cfg = |url: &str| ExportConfig::new(url, "n");
        assert!(matches!(
            Connector::new(&cfg("not a url")),
            Err(ExportError::Url { .. })
        ));
        assert!(matches!(
            Connector::new(&cfg("ftp://x:1")),
            Err(ExportError::Url { .. })
        ));
        assert!(Connector::new(&cfg("http://127.0.0.1:7070")).is_ok());
        assert!(matches!(
            Connector::new(&cfg("https://127.0.0.1:7070")),
            Err(ExportError::Tls(_))
        ));
        let mut c = cfg("http://127.0.0.1:7070");
        c.tls_ca = Some("/nonexistent/ca.pem".into());
        assert!(matches!(Connector::new(&c), Err(ExportError::Tls(_))));
        c.urls = vec!["https://127.0.0.1:7070".into()];
        assert!(matches!(Connector::new(&c), Err(ExportError::TlsCa { .. })));
        let d = tempfile::tempdir().expect("tempdir");
        let bad = d.path().join("ca.pem");
        std::fs::write(&bad, b"not a certificate").expect("write");
        c.tls_ca = Some(bad);
        assert!(matches!(Connector::new(&c), Err(ExportError::Tls(_))));
        let mut c = cfg("http://127.0.0.1:7070");
        c.token = Some("bad\ntoken".into());
        assert!(matches!(Connector::new(&c), Err(ExportError::Token)));
        c.urls.clear();
        c.token = None;
        assert!(matches!(Connector::new(&c), Err(ExportError::Url { .. })));
    }

    #[test]
    fn fails_over_round_robin_from_a_node_dependent_start() {
        let mut c = ExportConfig::new("http://127.0.0.1:1", "n");
        c.urls.push("http://127.0.0.1:2".into());
        c.urls.push("http://127.0.0.1:3".into());
        let mut conn = Connector::new(&c).expect("connector");
        let first = conn.uri();
        let mut seen = vec![first.clone()];
        for _ in 0..2 {
            assert!(conn.fail_over());
            seen.push(conn.uri());
        }
        seen.sort();
        assert_eq!(
            seen,
            [
                "http://127.0.0.1:1/",
                "http://127.0.0.1:2/",
                "http://127.0.0.1:3/"
            ]
        );
        assert!(conn.fail_over());
        assert_eq!(conn.uri(), first);
        // Nodes start on different replicas.
        let starts: std::collections::HashSet<String> = (0..32)
            .map(|i| {
                c.node_name = format!("node-{i}");
                Connector::new(&c).expect("connector").uri()
            })
            .collect();
        assert_eq!(starts.len(), 3);
        let mut one = Connector::new(&ExportConfig::new("http://127.0.0.1:1", "n")).expect("one");
        assert!(!one.fail_over());
    }
}
