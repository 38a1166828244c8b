//! One small set of error codes, mapped to both gRPC status codes and HTTP statuses, so a client
//! of either interface sees the same classification.

/// What went wrong, as far as a client needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The input is malformed or out of bounds; do not retry unchanged.
    InvalidArgument,
    /// Missing or wrong credentials.
    Unauthenticated,
    /// No such trace (or other object).
    NotFound,
    /// Too much at once (message too large, queue full); retry later or smaller.
    ResourceExhausted,
    /// Storage is unavailable; retry later.
    Unavailable,
    /// A bug or an unexpected server failure.
    Internal,
}

impl ErrorCode {
    /// The gRPC status code.
    pub fn grpc(self) -> tonic::Code {
        match self {
            ErrorCode::InvalidArgument => tonic::Code::InvalidArgument,
            ErrorCode::Unauthenticated => tonic::Code::Unauthenticated,
            ErrorCode::NotFound => tonic::Code::NotFound,
            ErrorCode::ResourceExhausted => tonic::Code::ResourceExhausted,
            ErrorCode::Unavailable => tonic::Code::Unavailable,
            ErrorCode::Internal => tonic::Code::Internal,
        }
    }

    /// The HTTP status.
    pub fn http(self) -> axum::http::StatusCode {
        use axum::http::StatusCode as S;
        match self {
            ErrorCode::InvalidArgument => S::BAD_REQUEST,
            ErrorCode::Unauthenticated => S::UNAUTHORIZED,
            ErrorCode::NotFound => S::NOT_FOUND,
            ErrorCode::ResourceExhausted => S::TOO_MANY_REQUESTS,
            ErrorCode::Unavailable => S::SERVICE_UNAVAILABLE,
            ErrorCode::Internal => S::INTERNAL_SERVER_ERROR,
        }
    }

    /// A tonic status with this code.
    pub fn status(self, msg: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc(), msg)
    }
}

/// Whether a presented secret equals the expected one, in time independent of where they differ
/// (for equal lengths): the one comparison of tokens, for ingest and the HTTP side alike.
pub fn same_secret(presented: &str, want: &str) -> bool {
    presented.len() == want.len()
        && presented
            .bytes()
            .zip(want.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// An error with its code, for HTTP handlers (renders as `{"error": {"code", "message"}}`).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// Classification.
    pub code: ErrorCode,
    /// Human-readable, says what to do.
    pub message: String,
}

impl ApiError {
    /// A new error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl axum::response::IntoResponse for ApiError {
    fn into_response(self) -> axum::response::Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.code.http(), axum::Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_consistently() {
        assert_eq!(
            ErrorCode::InvalidArgument.grpc(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(ErrorCode::InvalidArgument.http().as_u16(), 400);
        assert_eq!(ErrorCode::Unauthenticated.http().as_u16(), 401);
        assert_eq!(ErrorCode::NotFound.http().as_u16(), 404);
        assert_eq!(
            ErrorCode::ResourceExhausted.grpc(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(ErrorCode::Unavailable.http().as_u16(), 503);
    }
}
