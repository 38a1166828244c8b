//! The `--otlp-*` flags, the same in every binary that exports (the aggregator, node-probe).
use std::path::PathBuf;
use std::time::Duration;

use crate::{OtlpConfig, Protocol};

/// OTLP export flags (flatten into a clap parser).
#[derive(Debug, Clone, clap::Args)]
pub struct OtlpArgs {
    /// Also export every trace to this OpenTelemetry collector (`http://host:4317` for gRPC,
    /// `http://host:4318` for HTTP; off when unset).
    #[arg(long, env = "INFERSCOPE_OTLP_ENDPOINT", value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// OTLP transport: `grpc` or `http/protobuf`.
    #[arg(long, default_value = "grpc", value_parser = ["grpc", "http/protobuf"])]
    pub otlp_protocol: String,
    /// A header (gRPC metadata) sent with every export, `NAME=VALUE` (repeatable).
    #[arg(long = "otlp-header", value_name = "NAME=VALUE", value_parser = header)]
    pub otlp_headers: Vec<(String, String)>,
    /// Longest wait for one OTLP export call (seconds).
    #[arg(long, default_value_t = 10)]
    pub otlp_timeout_s: u64,
    /// Spans waiting for OTLP export at most; beyond, they are dropped and counted.
    #[arg(long, default_value_t = 200_000)]
    pub otlp_queue_spans: usize,
    /// CA certificate (PEM) to trust for an `https://` gRPC collector.
    #[arg(long, value_name = "FILE")]
    pub otlp_ca_file: Option<PathBuf>,
    /// Send OTLP bodies uncompressed (default: gzip).
    #[arg(long)]
    pub otlp_no_gzip: bool,
}

/// `NAME=VALUE` of `--otlp-header`.
fn header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{s:?}: want NAME=VALUE")),
    }
}

impl OtlpArgs {
    /// The export configuration of the flags (none without an endpoint).
    pub fn config(&self) -> Option<OtlpConfig> {
        let url = self.otlp_endpoint.clone().filter(|u| !u.is_empty())?;
        let protocol = self.otlp_protocol.parse().unwrap_or(Protocol::Grpc);
        Some(OtlpConfig {
            headers: self.otlp_headers.clone(),
            timeout: Duration::from_secs(self.otlp_timeout_s.max(1)),
            queue_spans: self.otlp_queue_spans.max(1),
            ca_file: self.otlp_ca_file.clone(),
            gzip: !self.otlp_no_gzip,
            ..OtlpConfig::new(url, protocol)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        otlp: OtlpArgs,
    }

    #[test]
    fn flags_make_the_configuration() {
        let none = Cli::try_parse_from(["x"]).unwrap();
        assert!(none.otlp.config().is_none() || std::env::var("INFERSCOPE_OTLP_ENDPOINT").is_ok());
        let c = Cli::try_parse_from([
            "x",
            "--otlp-endpoint",
            "http://c:4318",
            "--otlp-protocol",
            "http/protobuf",
            "--otlp-header",
            "x-api-key = k",
            "--otlp-no-gzip",
        ])
        .unwrap()
        .otlp
        .config()
        .unwrap();
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        assert_eq!(c.headers, [("x-api-key".to_string(), "k".to_string())]);
        assert!(!c.gzip);
        assert!(Cli::try_parse_from(["x", "--otlp-header", "novalue"]).is_err());
    }
}
