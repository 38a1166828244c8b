//! node-probe: the inferscope per-node agent.
//!
//! See ARCHITECTURE.md at the repository root for the data flow. Modules:
//! * [`kernel`]: privilege checks, BTF offsets and tracepoint formats read at start;
//! * [`hooks`]: the hook table (every tracepoint and uprobe, declared once);
//! * [`probe`]: loading/attaching the eBPF programs and their maps;
//! * [`uprobes`]: uprobes attached per library file as targets map it ([`entry`]: where in a
//!   function);
//! * [`engine`]: engine followers (vLLM, llama.cpp) behind one interface;
//! * [`targets`]: which processes are traced;
//! * [`event`]: decoding ring-buffer records into typed events;
//! * [`gpu`]: CUDA driver/runtime calls decoded into GPU operations;
//! * [`requests`]: per-request span trees;
//! * [`export`]: shipping finished requests to the aggregator over gRPC;
//! * [`run`]: the event loop tying them together;
//! * [`metrics`]: node-probe's own counters on `GET /metrics`;
//! * [`clock`]: kernel monotonic time to wall time;
pub mod clock;
pub mod engine;
pub mod entry;
pub mod event;
pub mod export;
pub mod gpu;
pub mod hooks;
pub mod http;
pub mod kernel;
pub mod listen;
pub mod metrics;
pub mod probe;
pub mod requests;
pub mod run;
pub mod targets;
pub mod uprobes;
