//! Bounded, allocation-free scanners over streamed body bytes: SSE line classification (with what
//! each event carries, [`super::token`]) and a JSON field finder. Both keep constant-size state and
//! can be fed any split of the input.
pub use super::token::Payload;
use super::token::TokenScan;

/// Kind of an SSE line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseLine {
    /// `data: …` other than `[DONE]`, with what it carries.
    Content(Payload),
    /// `data: [DONE]`.
    Done,
}

/// What a `data:` line whose bytes were partly lost is taken to carry: a token (the event count
/// stays right for servers that send one token per event), of unknown visibility.
pub const UNKNOWN_PAYLOAD: Payload = Payload {
    token: true,
    visible: false,
};

/// Bytes kept of a line before it is classified: one more than `data: [DONE]\r`, so that a
/// CRLF-terminated `[DONE]` line reaches its `\n` before it could be taken for content.
const PREFIX: usize = 14;

/// Classifies SSE lines as they stream by; reports each `data:` line once, at its end, with the
/// timestamp of the feed in which the line began.
#[derive(Debug, Clone)]
pub struct SseScanner {
    buf: [u8; PREFIX],
    len: u8,
    /// The line is known to be content (`data:`, not `[DONE]`), or known not to matter.
    classified: Option<bool>,
    line_start_ts: u64,
    tokens: TokenScan,
}

impl Default for SseScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl SseScanner {
    /// A scanner at a line start.
    pub fn new() -> Self {
        Self {
            buf: [0; PREFIX],
            len: 0,
            classified: None,
            line_start_ts: 0,
            tokens: TokenScan::new(),
        }
    }

    /// Bytes of the current line were lost: a `data:` line still counts as a content event
    /// carrying [`UNKNOWN_PAYLOAD`] (a `[DONE]` line is too short to be cut); the next byte
    /// starts a line.
    pub fn resync(&mut self, on: &mut impl FnMut(SseLine, u64)) {
        let data = match self.classified {
            Some(content) => content,
            None => self.buf[..self.len as usize].starts_with(b"data:"),
        };
        if data {
            on(SseLine::Content(UNKNOWN_PAYLOAD), self.line_start_ts);
        }
        self.new_line();
    }

    fn new_line(&mut self) {
        self.len = 0;
        self.classified = None;
        self.tokens = TokenScan::new();
    }

    fn classify(&self) -> Option<SseLine> {
        let b = &self.buf[..self.len as usize];
        let rest = b.strip_prefix(b"data:")?;
        let rest = rest.strip_prefix(b" ").unwrap_or(rest);
        if rest == b"[DONE]" {
            Some(SseLine::Done)
        } else {
            Some(SseLine::Content(self.tokens.payload()))
        }
    }

    /// Feeds bytes written at `ts`; calls `on` for each `data:` line recognised.
    pub fn feed(&mut self, ts: u64, data: &[u8], on: &mut impl FnMut(SseLine, u64)) {
        for &b in data {
            if b == b'\n' {
                self.end_line(on);
                continue;
            }
            match self.classified {
                Some(true) => {
                    self.tokens.feed(&[b]);
                    continue;
                }
                Some(false) => continue,
                None => {}
            }
            if self.len == 0 {
                self.line_start_ts = ts;
            }
            self.tokens.feed(&[b]);
            self.buf[self.len as usize] = b;
            self.len += 1;
            if self.len as usize == PREFIX {
                // Long enough to decide; a longer line is never [DONE].
                self.classified = Some(self.buf.starts_with(b"data:"));
            }
        }
    }

    fn end_line(&mut self, on: &mut impl FnMut(SseLine, u64)) {
        let kind = match self.classified {
            Some(true) => Some(SseLine::Content(self.tokens.payload())),
            Some(false) => None,
            None => {
                if let Some(l) = self.buf[..self.len as usize]
                    .strip_suffix(b"\r")
                    .map(|s| s.len())
                {
                    self.len = l as u8;
                }
                self.classify()
            }
        };
        if let Some(kind) = kind {
            on(kind, self.line_start_ts);
        }
        self.new_line();
    }
}

const MAX_VALUE: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fs {
    Key(u8),
    Colon,
    ValueStart,
    Str,
    StrEsc,
    Lit,
    Found,
}

/// Finds the first `"key": value` in a JSON byte stream, where value is a string (unescaped up to
/// 128 bytes) or a literal (number, true, false). Not a JSON parser: it is bounded, never fails,
/// and ignores keys that appear inside escaped strings.
#[derive(Debug, Clone)]
pub struct FieldFinder {
    key: &'static [u8],
    st: Fs,
    val: [u8; MAX_VALUE],
    len: u8,
    is_str: bool,
    seen: u32,
    limit: u32,
}

impl FieldFinder {
    /// A finder for `key` (without quotes) that gives up after `limit` bytes.
    pub fn new(key: &'static [u8], limit: u32) -> Self {
        Self {
            key,
            st: Fs::Key(0),
            val: [0; MAX_VALUE],
            len: 0,
            is_str: false,
            seen: 0,
            limit,
        }
    }

    /// The value once found.
    pub fn value(&self) -> Option<&str> {
        (self.st == Fs::Found)
            .then(|| std::str::from_utf8(&self.val[..self.len as usize]).ok())
            .flatten()
    }

    /// Whether the found value was a JSON string.
    pub fn is_string(&self) -> bool {
        self.is_str
    }

    /// Feeds bytes.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.st == Fs::Found || self.seen >= self.limit {
                return;
            }
            self.seen += 1;
            self.st = match self.st {
                Fs::Key(i) => {
                    let i = i as usize;
                    // pattern: '"' key '"'
                    let want = if i == 0 || i == self.key.len() + 1 {
                        b'"'
                    } else {
                        self.key[i - 1]
                    };
                    if b == want {
                        if i == self.key.len() + 1 {
                            Fs::Colon
                        } else {
                            Fs::Key(i as u8 + 1)
                        }
                    } else if b == b'"' {
                        Fs::Key(1)
                    } else {
                        Fs::Key(0)
                    }
                }
                Fs::Colon => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => Fs::Colon,
                    b':' => Fs::ValueStart,
                    b'"' => Fs::Key(1),
                    _ => Fs::Key(0),
                },
                Fs::ValueStart => match b {
                    b' ' | b'\t' | b'\r' | b'\n' => Fs::ValueStart,
                    b'"' => {
                        self.is_str = true;
                        self.len = 0;
                        Fs::Str
                    }
                    b'-' | b'0'..=b'9' | b't' | b'f' | b'n' => {
                        self.is_str = false;
                        self.val[0] = b;
                        self.len = 1;
                        Fs::Lit
                    }
                    _ => Fs::Key(0),
                },
                Fs::Str => match b {
                    b'"' => Fs::Found,
                    b'\\' => Fs::StrEsc,
                    _ => self.push(b, Fs::Str),
                },
                Fs::StrEsc => self.push(b, Fs::Str),
                Fs::Lit => match b {
                    b',' | b'}' | b' ' | b'\r' | b'\n' | b']' => Fs::Found,
                    _ => self.push(b, Fs::Lit),
                },
                Fs::Found => Fs::Found,
            };
        }
    }

    fn push(&mut self, b: u8, next: Fs) -> Fs {
        if (self.len as usize) < MAX_VALUE {
            self.val[self.len as usize] = b;
            self.len += 1;
            next
        } else {
            // Too long to be an id or a model name we keep: stop looking.
            self.limit = 0;
            Fs::Key(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<(SseLine, u64)> {
        let mut s = SseScanner::new();
        let mut v = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            s.feed(i as u64, c, &mut |k, t| v.push((k, t)));
        }
        v
    }

    /// A content line carrying no token.
    const C: SseLine = SseLine::Content(Payload {
        token: false,
        visible: false,
    });

    #[test]
    fn sse_lines() {
        let v = lines(&[b"data: {\"id\":1}\n\n", b"data: [DONE]\n\n"]);
        assert_eq!(v, [(C, 0), (SseLine::Done, 1)]);
        // split mid-prefix, CRLF line ends, no space after colon, comments and event lines
        let v = lines(&[b"da", b"ta:[DONE]\r\n", b": ping\n", b"event: x\ndata: y\n"]);
        assert_eq!(v, [(SseLine::Done, 0), (C, 3)]);
        // a content line that starts like DONE
        let v = lines(&[b"data: [DONE]x\n"]);
        assert_eq!(v, [(C, 0)]);
        // CRLF events with a space (sse-starlette's default), in one write or split at the CR
        let v = lines(&[b"data: {\"a\":1}\r\n\r\ndata: [DONE]\r\n\r\n"]);
        assert_eq!(v, [(C, 0), (SseLine::Done, 0)]);
        let v = lines(&[b"data: [DONE]\r", b"\n\r\n"]);
        assert_eq!(v, [(SseLine::Done, 0)]);
        let v = lines(&[b"data: [DONE]\rx\n"]);
        assert_eq!(v, [(C, 0)]);
        let v = lines(&[b"data: [DONE"]);
        assert!(v.is_empty());
    }

    /// Each event's payload is reported at its line's end, whatever the split.
    #[test]
    fn sse_payloads() {
        let stream: &[u8] = b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\r\n\r\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"\"}}]}\n\n\
            data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
            data: [DONE]\n\n";
        let empty = Payload {
            token: true,
            visible: false,
        };
        let text = Payload {
            token: true,
            visible: true,
        };
        let want = [
            SseLine::Content(Payload::default()),
            SseLine::Content(empty),
            SseLine::Content(text),
            SseLine::Done,
        ];
        for cut in 0..=stream.len() {
            let v: Vec<SseLine> = lines(&[&stream[..cut], &stream[cut..]])
                .into_iter()
                .map(|(k, _)| k)
                .collect();
            assert_eq!(v, want, "cut at {cut}");
        }
        // A cut line counts as a token of unknown visibility.
        let mut s = SseScanner::new();
        let mut v = Vec::new();
        s.feed(7, b"data: {\"choices\":[{\"te", &mut |k, t| v.push((k, t)));
        s.resync(&mut |k, t| v.push((k, t)));
        assert_eq!(v, [(SseLine::Content(UNKNOWN_PAYLOAD), 7)]);
    }

    fn find(key: &'static [u8], parts: &[&[u8]]) -> Option<String> {
        let mut f = FieldFinder::new(key, 4096);
        for p in parts {
            f.feed(p);
        }
        f.value().map(str::to_string)
    }

    #[test]
    fn fields() {
        assert_eq!(
            find(b"model", &[br#"{"model":"tiny-llm","x":1}"#]).as_deref(),
            Some("tiny-llm")
        );
        assert_eq!(
            find(b"model", &[br#"{"prompt": "a", "mo"#, br#"del" : "m\"x"}"#]).as_deref(),
            Some("m\"x")
        );
        assert_eq!(
            find(b"stream", &[br#"{"stream": true}"#]).as_deref(),
            Some("true")
        );
        assert_eq!(
            find(b"stream", &[br#"{"stream":false,"#]).as_deref(),
            Some("false")
        );
        assert_eq!(
            find(b"id", &[br#"{"object":"x","id":"cmpl-12"}"#]).as_deref(),
            Some("cmpl-12")
        );
        // key inside an escaped string is not matched
        assert_eq!(
            find(
                b"model",
                &[br#"{"prompt":"say \"model\": \"x\"","model":"y"}"#]
            )
            .as_deref(),
            Some("y")
        );
        assert_eq!(find(b"model", &[b"garbage \x00\xff"]), None);
        let long = format!(r#"{{"model":"{}"}}"#, "a".repeat(300));
        assert_eq!(find(b"model", &[long.as_bytes()]), None);
    }
}
