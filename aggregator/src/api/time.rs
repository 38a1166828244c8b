//! Time parameters (moved to `inferscope_api::time`, shared with the CLI).
pub use inferscope_api::time::*;
