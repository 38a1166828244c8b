//! The web UI (`query-ui/`), embedded at compile time: `GET /` answers `index.html`,
//! `GET /assets/{path}` the hashed scripts and styles Vite emitted.
//!
//! `aggregator/build.rs` lists the files of `query-ui/dist` and includes them with
//! `include_bytes!`, so the aggregator is one binary. Without a built UI (no `query-ui/dist` when
//! the aggregator was compiled) `/` answers a page that says how to build it, and the API works
//! as before.
//!
//! Every UI response carries a Content-Security-Policy that allows scripts only from this origin
//! (no inline scripts, no `eval`), so even a rendering bug could not execute text that came from
//! traced requests; the UI itself renders such text only as text.
use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

include!(concat!(env!("OUT_DIR"), "/ui_assets.rs"));

/// The Content-Security-Policy of UI responses.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; \
form-action 'self'";

/// Answered at `/` when the UI was not built.
pub const NOT_BUILT_HTML: &str = "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>inferscope: UI not built</title></head><body style=\"font-family: sans-serif; margin: 2em\">\
<h1>inferscope aggregator</h1>\
<p><strong>UI assets not built</strong>: this aggregator was compiled without <code>query-ui/dist</code>. \
Run <code>scripts/setup.sh ui</code>, then rebuild the aggregator \
(<code>cargo build -p inferscope-aggregator</code>).</p>\
<p>The query API works without the UI: <a href=\"/openapi.yaml\">/openapi.yaml</a>, \
<a href=\"/api/v1/breakdown\">/api/v1/breakdown</a>, <a href=\"/api/v1/requests\">/api/v1/requests</a>, \
<a href=\"/metrics\">/metrics</a>.</p></body></html>\n";

/// The embedded file at `path` (relative to `dist`).
pub fn asset(path: &str) -> Option<&'static [u8]> {
    ASSETS
        .binary_search_by(|(p, _)| (*p).cmp(path))
        .ok()
        .map(|i| ASSETS[i].1)
}

/// Content type by file extension.
pub fn content_type(path: &str) -> &'static str {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("html") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("ico") => "image/x-icon",
        Some("json" | "map") => "application/json",
        Some("woff2") => "font/woff2",
        Some("txt") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

fn respond(
    status: StatusCode,
    ctype: &'static str,
    cache: &'static str,
    body: Vec<u8>,
) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// `GET /`: the UI's `index.html` (never cached, so a new build is picked up), or the
/// "not built" page.
pub async fn index() -> Response {
    match asset("index.html") {
        Some(b) => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            "no-cache",
            b.to_vec(),
        ),
        None => respond(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/html; charset=utf-8",
            "no-cache",
            NOT_BUILT_HTML.as_bytes().to_vec(),
        ),
    }
}

/// `GET /assets/{*path}`: a hashed asset, cached for a year (its name changes with its content).
pub async fn assets(Path(path): Path<String>) -> Response {
    let rel = format!("assets/{path}");
    match asset(&rel) {
        Some(b) => respond(
            StatusCode::OK,
            content_type(&rel),
            "public, max-age=31536000, immutable",
            b.to_vec(),
        ),
        None => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "no-cache",
            if UI_BUILT {
                format!("no UI asset {rel}\n").into_bytes()
            } else {
                b"UI assets not built: run scripts/setup.sh ui, then rebuild the aggregator\n"
                    .to_vec()
            },
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_are_sorted_and_index_matches_build_state() {
        assert!(ASSETS.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(UI_BUILT, asset("index.html").is_some());
        assert!(asset("../Cargo.toml").is_none());
        assert_eq!(
            content_type("assets/index-abc.js"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(content_type("assets/x.css"), "text/css; charset=utf-8");
        assert_eq!(content_type("noext"), "application/octet-stream");
    }

    #[tokio::test]
    async fn index_answers_the_ui_or_a_clear_message() {
        let r = index().await;
        let csp = r.headers().get(header::CONTENT_SECURITY_POLICY).cloned();
        assert_eq!(csp.as_ref().and_then(|v| v.to_str().ok()), Some(CSP));
        let status = r.status();
        let body = axum::body::to_bytes(r.into_body(), 1 << 24).await.unwrap();
        let text = String::from_utf8_lossy(&body);
        if UI_BUILT {
            assert_eq!(status, StatusCode::OK);
            assert!(text.contains("<div id=\"app\""), "{text}");
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(text.contains("scripts/setup.sh ui"), "{text}");
        }
        let r = assets(Path("nope.js".into())).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
}
