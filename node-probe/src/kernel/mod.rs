//! What node-probe learns from the running kernel before it loads anything: privileges, BTF
//! layouts and tracepoint formats.
pub mod btf;
pub mod preflight;
pub mod tracefs;
