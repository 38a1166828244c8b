//! Query isolation: at most `N` query-API calls run at once (the rest are answered 429 at once,
//! never queued), and every query runs with ClickHouse limits of its own (time, memory, a lower
//! priority than ingest: see [`super::sql`]), so that a burst of month-wide queries cannot
//! starve the inserts that every node depends on.
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::error::{ApiError, ErrorCode};

/// Query-API calls at once when not configured.
pub const DEFAULT_MAX_QUERIES: usize = 8;

/// The concurrency cap of the query API.
#[derive(Debug, Clone)]
pub struct QueryLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl QueryLimit {
    /// At most `max` calls at once (at least 1).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }
}

impl Default for QueryLimit {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_QUERIES)
    }
}

/// The middleware (`axum::middleware::from_fn_with_state`) on the `/api/v1` routes.
pub async fn limit(State(l): State<QueryLimit>, req: Request, next: Next) -> Response {
    let Ok(_permit) = l.permits.clone().try_acquire_owned() else {
        return ApiError::new(
            ErrorCode::ResourceExhausted,
            format!(
                "{} queries are running (the most at once): retry in a moment, or narrow the window",
                l.max
            ),
        )
        .into_response();
    };
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};
    use std::time::Duration;

    use axum::routing::get;
    use axum::Router;

    use super::*;

    fn status(addr: std::net::SocketAddr) -> u16 {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_beyond_the_cap_get_429_at_once() {
        let app = Router::new()
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(600)).await;
                    "done"
                }),
            )
            .layer(axum::middleware::from_fn_with_state(
                QueryLimit::new(1),
                limit,
            ));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(l, app).await });
        let first = std::thread::spawn(move || status(addr));
        tokio::time::sleep(Duration::from_millis(150)).await;
        let t = std::time::Instant::now();
        let second = tokio::task::spawn_blocking(move || status(addr))
            .await
            .unwrap();
        assert_eq!(second, 429);
        assert!(
            t.elapsed() < Duration::from_millis(400),
            "refused at once, not queued"
        );
        assert_eq!(first.join().unwrap(), 200);
        // The permit is back.
        let third = tokio::task::spawn_blocking(move || status(addr))
            .await
            .unwrap();
        assert_eq!(third, 200);
    }
}
