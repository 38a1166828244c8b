//! Ring-buffer records as the kernel side would write them, or corrupted: decoding never panics,
//! a socket record's payload never exceeds the record or the kernel's cap, and every decoded
//! record renders as JSON.
#![no_main]
use inferscope_common::MAX_PAYLOAD;
use libfuzzer_sys::fuzz_target;
use node_probe::event::{decode, peek_kind, Event, EventJson};

fuzz_target!(|bytes: &[u8]| {
    let _ = peek_kind(bytes);
    let Ok(ev) = decode(bytes) else {
        return;
    };
    if let Event::Sock(s) = &ev {
        assert!(s.payload.len() <= MAX_PAYLOAD, "payload over the cap");
        assert!(
            s.payload.len() <= bytes.len(),
            "payload larger than the record"
        );
    }
    let json = serde_json::to_string(&EventJson::new(&ev, |t| t, true));
    assert!(json.is_ok(), "JSON rendering failed: {json:?}");
});
