//! Who may use the HTTP side (query API, UI, `/metrics`): a middleware in front of every route.
//!
//! * **Host check** (always): the `Host` (or HTTP/2 authority) must be an IP literal, `localhost`,
//!   or a name given with `--allowed-host`. A DNS-rebinding page (a name of the attacker's that
//!   resolves to 127.0.0.1) is refused with 403 before any handler runs; so is a request whose
//!   `Origin` names a host that is not allowed.
//! * **Read-only credential** (when `--api-token` is set): `Authorization: Bearer TOKEN` (CLI,
//!   Grafana, scripts) or the `inferscope_session` cookie that `POST /login` sets for browsers
//!   (HttpOnly, SameSite=Strict). Without it an API call gets 401 and a page is sent to
//!   `/login`. `/healthz` and `/readyz` stay open (liveness and readiness probes).
//!
//! The server refuses to listen on a non-loopback address without a token unless told to
//! (`--insecure-open-http`; see `server.rs`).
use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use crate::error::{ApiError, ErrorCode};

/// The cookie a browser login sets.
pub const SESSION_COOKIE: &str = "inferscope_session";

/// Access rules of the HTTP side.
#[derive(Debug, Clone, Default)]
pub struct Access {
    token: Option<Arc<str>>,
    allowed_hosts: Arc<[String]>,
}

impl Access {
    /// Requires `token` (when set) on every route but `/healthz` and `/login`; accepts `Host`s
    /// that are IP literals, `localhost` or one of `allowed_hosts` (names, without port).
    pub fn new(token: Option<String>, allowed_hosts: &[String]) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()).map(Into::into),
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
        }
    }

    /// Whether a credential is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    /// Whether `host` (as in a `Host` header, port allowed) may be served.
    pub fn host_allowed(&self, host: &str) -> bool {
        let h = strip_port(host).to_ascii_lowercase();
        let bare = h.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || h == "localhost"
            || h.ends_with(".localhost")
            || self.allowed_hosts.contains(&h)
    }

    /// Whether `presented` is the token (constant time for equal lengths).
    fn token_ok(&self, presented: Option<&str>) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        presented.is_some_and(|g| crate::error::same_secret(g, want))
    }
}

/// `host:port` → `host` (`[v6]:port` → `[v6]`).
fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|r| r.find(']')) {
        return &host[..end + 2];
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

fn bearer(h: &HeaderMap) -> Option<&str> {
    h.get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            let (k, v) = kv.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

/// The middleware (`axum::middleware::from_fn_with_state`).
pub async fn check(State(a): State<Access>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|x| x.to_string()));
    let Some(host) = host else {
        return ApiError::new(ErrorCode::InvalidArgument, "no Host header").into_response();
    };
    if !a.host_allowed(&host) {
        return forbidden(format!(
            "host {host:?} is not served here (DNS rebinding guard): use an IP address or localhost, \
             or start the aggregator with --allowed-host NAME"
        ));
    }
    if let Some(origin) = req
        .headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
    {
        let o = origin.split_once("://").map_or(origin, |(_, r)| r);
        if origin != "null" && !a.host_allowed(o) {
            return forbidden(format!("origin {origin:?} is not allowed"));
        }
    }
    let path = req.uri().path();
    if path == "/healthz" || path == "/readyz" || path == "/login" || !a.has_token() {
        return next.run(req).await;
    }
    let h = req.headers();
    if a.token_ok(bearer(h)) || a.token_ok(cookie(h, SESSION_COOKIE)) {
        return next.run(req).await;
    }
    let api = path.starts_with("/api/") || path == "/metrics" || path == "/openapi.yaml";
    if api || bearer(h).is_some() {
        ApiError::new(
            ErrorCode::Unauthenticated,
            "this aggregator requires its API token: send `Authorization: Bearer TOKEN` \
             (inferscope --api-token, INFERSCOPE_API_TOKEN) or log in at /login",
        )
        .into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

fn forbidden(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({"error": {"code": "permission_denied", "message": message}})),
    )
        .into_response()
}

const LOGIN_PAGE: &str = "<!doctype html><html><head><meta charset=\"utf-8\"><title>inferscope: log in</title></head>\
<body style=\"font-family:sans-serif;max-width:28em;margin:4em auto\"><h1>inferscope</h1>\
<form method=\"post\" action=\"/login\"><p><label>API token <input type=\"password\" name=\"token\" autofocus></label></p>\
<p><button type=\"submit\">Log in</button></p></form></body></html>";

/// `GET /login`: the form.
pub async fn login_page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        LOGIN_PAGE,
    )
}

/// `POST /login` (form `token=…`): sets the session cookie when the token is right.
pub async fn login(State(a): State<Access>, method: Method, body: String) -> Response {
    debug_assert_eq!(method, Method::POST);
    let token = body.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == "token").then(|| percent_decode(v))
    });
    if !a.has_token() {
        return Redirect::to("/").into_response();
    }
    match token {
        Some(t) if a.token_ok(Some(&t)) => (
            StatusCode::SEE_OTHER,
            [
                (header::LOCATION, "/".to_string()),
                (
                    header::SET_COOKIE,
                    format!("{SESSION_COOKIE}={t}; HttpOnly; SameSite=Strict; Path=/"),
                ),
            ],
        )
            .into_response(),
        _ => ApiError::new(ErrorCode::Unauthenticated, "wrong token").into_response(),
    }
}

/// `application/x-www-form-urlencoded` value → text (`+` is a space).
fn percent_decode(v: &str) -> String {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        let a = Access::new(None, &["inferscope.example".into()]);
        for ok in [
            "127.0.0.1:7071",
            "localhost:7071",
            "[::1]:7071",
            "10.1.2.3",
            "inferscope.example:443",
            "INFERSCOPE.example",
        ] {
            assert!(a.host_allowed(ok), "{ok}");
        }
        for bad in [
            "attacker.example:7071",
            "rebind.127.0.0.1.nip.io",
            "example",
        ] {
            assert!(!a.host_allowed(bad), "{bad}");
        }
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("::1"), "::1");
    }

    #[test]
    fn tokens_and_cookies() {
        let a = Access::new(Some("s3cret".into()), &[]);
        assert!(a.token_ok(Some("s3cret")) && !a.token_ok(Some("s3cre")) && !a.token_ok(None));
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            "a=1; inferscope_session=s3cret".parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("s3cret"));
        assert_eq!(percent_decode("a%2Fb+c%zz"), "a/b c%zz");
        assert!(Access::new(Some(String::new()), &[]).token.is_none());
    }
}
