//! One server-side HTTP/1.1 connection fed hostile reads and writes (any bytes, any split, any
//! captured prefix shorter than what the syscall moved): no panic, state stays bounded, and
//! counts come from the syscall sizes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use node_probe::http::{Bytes, Exchange, HttpConn, MAX_CHUNK_TIMES, MAX_HEAD};

fuzz_target!(|input: &[u8]| {
    let mut conn = HttpConn::new();
    let mut out: Vec<Exchange> = Vec::new();
    let mut ts = 1_000u64;
    let mut rest = input;
    // Ops: [op][len lo][len hi][extra][data...]: op % 4 = read, write, client EOF, close;
    // `extra` bytes beyond the captured data were moved but not captured.
    while let [op, lo, hi, extra, tail @ ..] = rest {
        let len = (u16::from_le_bytes([*lo, *hi]) as usize).min(tail.len());
        let (data, next) = tail.split_at(len);
        rest = next;
        ts += 1 + u64::from(*extra);
        let b = Bytes {
            ts_ns: ts,
            total: len + usize::from(*extra) * 97,
            captured: data,
            seq: Some(ts as u32),
        };
        match op % 4 {
            0 => conn.on_read(b),
            1 => conn.on_write(b, &mut out),
            2 => conn.on_client_eof(ts),
            _ => conn.on_close(ts, &mut out),
        }
    }
    conn.on_close(ts + 1, &mut out);
    for e in &out {
        assert!(e.chunk_ns.len() <= MAX_CHUNK_TIMES, "chunk times unbounded");
        assert!(
            e.chunk_ns.len() as u64 <= e.chunks,
            "more times than chunks"
        );
        assert!(e.path.len() <= MAX_HEAD, "path longer than a head");
        if let Some(r) = e.resp_last_ns {
            assert!(
                e.resp_first_ns.is_some_and(|f| f <= r),
                "response ends before it starts"
            );
        }
    }
    assert!(conn.idle(), "a closed connection holds state");
});
