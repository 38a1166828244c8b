//! Engine-specific followers: what happens to a request between the HTTP frontend handing it over
//! and the tokens coming back. One module per engine; the HTTP layer needs none of them.
pub mod vllm;
