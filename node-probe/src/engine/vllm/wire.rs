//! vLLM's IPC wire format as node-probe reads it: ZMQ (ZMTP 3) frames and the msgpack bodies
//! of the API server's ADD/ABORT messages and EngineCore's output messages, scanned without
//! allocation beyond the ids returned, robust to truncation (payloads are prefixes).
/// ZMQ (ZMTP 3) frames in a byte stream: `(more, body)`; stops at a truncated frame.
pub(super) fn zmq_frames(mut p: &[u8]) -> impl Iterator<Item = (bool, &[u8])> {
    std::iter::from_fn(move || {
        let flags = *p.first()?;
        if flags & !0x07 != 0 {
            return None; // not a frame header (or a command frame)
        }
        let (len, off): (usize, usize) = if flags & 0x02 != 0 {
            let b: [u8; 8] = p.get(1..9)?.try_into().ok()?;
            (u64::from_be_bytes(b) as usize, 9)
        } else {
            (*p.get(1)? as usize, 2)
        };
        let end = off.checked_add(len)?;
        let body = p.get(off..end.min(p.len()))?;
        p = p.get(end..).unwrap_or(&[]);
        Some((flags & 0x01 != 0, body))
    })
}

/// Parses the API-server → EngineCore messages in one send (ZMQ batches several into one write
/// under load): `(type, ids)` per message; for ADD the first id is the request id.
pub fn parse_request_messages(p: &[u8]) -> Vec<(u8, Vec<&[u8]>)> {
    let mut out = Vec::new();
    for (ty, rest) in request_bodies(p) {
        let mut ids = Vec::new();
        let mut s = rest;
        // ADD: the id is the first element. ABORT: an array of ids.
        while let Some((id, next)) = read_str(s) {
            ids.push(id);
            if ty == 0x00 {
                break;
            }
            s = next;
        }
        if !ids.is_empty() {
            out.push((ty, ids));
        }
    }
    out
}

/// The ADD messages in one send: `(request id, prompt length)`. The prompt length is the
/// length of `prompt_token_ids`, the array that follows the id (`None`: not an array, e.g.
/// prompt embeddings, or cut off before its header).
pub fn parse_adds(p: &[u8]) -> Vec<(&[u8], Option<u32>)> {
    request_bodies(p)
        .filter(|(ty, _)| *ty == 0x00)
        .filter_map(|(_, rest)| {
            let (id, next) = read_str(rest)?;
            Some((id, array_len(next)))
        })
        .collect()
}

/// `(message type, body after its array header)` of each API-server → EngineCore message.
pub(super) fn request_bodies(p: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut frames = zmq_frames(p);
    std::iter::from_fn(move || loop {
        let (more, first) = frames.next()?;
        if !more || first.len() != 1 || first[0] > 0x03 {
            continue;
        }
        let ty = first[0];
        let (_, body) = frames.next()?;
        if let Some(rest) = skip_array_header(body) {
            return Some((ty, rest));
        }
    })
}

/// The element count of the msgpack array that starts `b`.
pub(super) fn array_len(b: &[u8]) -> Option<u32> {
    match *b.first()? {
        x @ 0x90..=0x9f => Some(u32::from(x & 0x0f)),
        0xdc => Some(u32::from(u16::from_be_bytes([*b.get(1)?, *b.get(2)?]))),
        0xdd => Some(u32::from_be_bytes(b.get(1..5)?.try_into().ok()?)),
        _ => None,
    }
}

/// The first message of [`parse_request_messages`].
pub fn parse_request_message(p: &[u8]) -> Option<(u8, Vec<&[u8]>)> {
    parse_request_messages(p).into_iter().next()
}

pub(super) fn skip_array_header(b: &[u8]) -> Option<&[u8]> {
    match *b.first()? {
        0x90..=0x9f => b.get(1..),
        0xdc => b.get(3..),
        0xdd => b.get(5..),
        _ => None,
    }
}

pub(super) fn read_str(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, off) = match *b.first()? {
        x @ 0xa0..=0xbf => ((x & 0x1f) as usize, 1),
        0xd9 => (*b.get(1)? as usize, 2),
        0xda => (u16::from_be_bytes([*b.get(1)?, *b.get(2)?]) as usize, 3),
        _ => return None,
    };
    let s = b.get(off..off + len)?;
    Some((s, &b[off + len..]))
}

/// Calls `f` for every msgpack string in `p` (a scan, not a parse: robust to truncation).
pub(super) fn for_each_str(p: &[u8], mut f: impl FnMut(&[u8])) {
    let mut i = 0;
    while i < p.len() {
        let (len, off) = match p[i] {
            x @ 0xa0..=0xbf => ((x & 0x1f) as usize, 1),
            0xd9 if i + 1 < p.len() => (p[i + 1] as usize, 2),
            _ => {
                i += 1;
                continue;
            }
        };
        if len >= 8 {
            if let Some(s) = p.get(i + off..i + off + len) {
                f(s);
            }
        }
        i += 1;
    }
}

/// The HTTP-visible ids an engine request id can belong to: vLLM appends `-{index}-{hex}` to a
/// completion's id (`cmpl-abc-0-1f2e` → `cmpl-abc`) and `-{hex}` to a chat completion's
/// (`chatcmpl-abc-1f2e` → `chatcmpl-abc`).
pub fn response_ids_of(engine_id: &str) -> impl Iterator<Item = &str> {
    let hexish = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let one = engine_id
        .rsplit_once('-')
        .filter(|(_, t)| hexish(t))
        .map(|(h, _)| h);
    // Chat completions carry no choice index; everything else may.
    let two = one
        .filter(|_| !engine_id.starts_with("chatcmpl-"))
        .and_then(|h| h.rsplit_once('-'))
        .filter(|(_, t)| digits(t))
        .map(|(h, _)| h);
    one.into_iter().chain(two)
}
