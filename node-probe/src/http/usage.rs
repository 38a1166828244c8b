//! Token counts a server reports in a response's `usage` object (OpenAI's `prompt_tokens` and
//! `completion_tokens`): at the end of a JSON body, and in the last event of a stream whose
//! request asked for `stream_options.include_usage` (vLLM's `continuous_usage_stats` puts one in
//! every event; the last one holds the totals).
//!
//! Both places are at the end of the response, so [`UsageTail`] keeps only the last
//! [`TAIL`] captured body bytes (contiguous ones: a gap clears it) and [`UsageTail::usage`]
//! reads the last complete `usage` object in them. Nothing is kept between responses, and no
//! memory is held by a connection between them.

/// Body bytes kept from the end of a response.
pub const TAIL: usize = 1024;

/// What a `usage` object reported. A count the object lacks is `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// `prompt_tokens`: tokens of the prompt.
    pub prompt_tokens: Option<u32>,
    /// `completion_tokens`: tokens generated.
    pub completion_tokens: Option<u32>,
}

/// The last [`TAIL`] contiguous captured bytes of one response body.
#[derive(Debug, Default)]
pub struct UsageTail {
    buf: Vec<u8>,
}

impl UsageTail {
    /// Appends body bytes; at most `2 * TAIL` are held at any time.
    pub fn feed(&mut self, data: &[u8]) {
        let data = &data[data.len().saturating_sub(TAIL)..];
        if self.buf.len() + data.len() > 2 * TAIL {
            let keep = TAIL.saturating_sub(data.len()).min(self.buf.len());
            self.buf.drain(..self.buf.len() - keep);
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes are missing here: what came before cannot be joined to what follows.
    pub fn gap(&mut self) {
        self.buf.clear();
    }

    /// Reads the usage and releases the buffer.
    pub fn take(&mut self) -> Option<Usage> {
        let u = usage(&self.buf);
        self.buf = Vec::new();
        u
    }
}

/// The last complete `"usage": {…}` object in `tail` with at least one count.
pub fn usage(tail: &[u8]) -> Option<Usage> {
    const KEY: &[u8] = b"\"usage\"";
    let mut end = tail.len();
    while let Some(at) = rfind(&tail[..end], KEY) {
        end = at;
        // A key, not the text `"usage"` inside a string (escaped there: `\"usage\"`).
        if at > 0 && tail[at - 1] == b'\\' {
            continue;
        }
        let Some(obj) = object_after_colon(&tail[at + KEY.len()..]) else {
            continue;
        };
        let u = Usage {
            prompt_tokens: count(obj, b"\"prompt_tokens\""),
            completion_tokens: count(obj, b"\"completion_tokens\""),
        };
        if u.prompt_tokens.is_some() || u.completion_tokens.is_some() {
            return Some(u);
        }
    }
    None
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn skip_ws(s: &[u8]) -> &[u8] {
    let n = s
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
        .count();
    &s[n..]
}

/// After a key: `: {…}` → the object's bytes (braces included), when it ends within `s`.
fn object_after_colon(s: &[u8]) -> Option<&[u8]> {
    let s = skip_ws(s).strip_prefix(b":")?;
    let s = skip_ws(s);
    if s.first() != Some(&b'{') {
        return None;
    }
    let (mut depth, mut in_str, mut esc) = (0u32, false, false);
    for (i, &b) in s.iter().enumerate() {
        if in_str {
            match (esc, b) {
                (true, _) => esc = false,
                (false, b'\\') => esc = true,
                (false, b'"') => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&s[..=i]);
                }
            }
            _ => {}
        }
    }
    None
}

/// `"key": N` inside `obj` → N (a non-negative integer that fits u32).
fn count(obj: &[u8], key: &[u8]) -> Option<u32> {
    let at = obj.windows(key.len()).position(|w| w == key)?;
    let s = skip_ws(&obj[at + key.len()..]).strip_prefix(b":")?;
    let s = skip_ws(s);
    let digits = s.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 10 {
        return None;
    }
    std::str::from_utf8(&s[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(p: Option<u32>, c: Option<u32>) -> Option<Usage> {
        Some(Usage {
            prompt_tokens: p,
            completion_tokens: c,
        })
    }

    /// Recorded shapes: vLLM and OpenAI non-streamed bodies, the usage-only last event of a
    /// stream, vLLM's continuous usage (the last event's totals), `usage: null`, the text
    /// `"usage"` inside generated output, and an object cut by the start of the tail.
    #[test]
    fn shapes() {
        let cases: [(&str, Option<Usage>); 8] = [
            (
                r#"{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" a b"}],"usage":{"prompt_tokens":9,"total_tokens":17,"completion_tokens":8,"prompt_tokens_details":null},"kv_transfer_params":null}"#,
                u(Some(9), Some(8)),
            ),
            (
                r#"{"id":"chatcmpl-1","choices":[],"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42,"prompt_tokens_details":{"cached_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}}}"#,
                u(Some(12), Some(30)),
            ),
            (
                "data: {\"id\":\"c\",\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":null}\n\ndata: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":8,\"total_tokens\":13}}\n\ndata: [DONE]\n\n",
                u(Some(5), Some(8)),
            ),
            (
                "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\ndata: {\"choices\":[{\"text\":\"b\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
                u(Some(5), Some(2)),
            ),
            (
                "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1}}\n\ndata: {\"choices\":[],\"usage\":null}\n\n",
                u(Some(5), Some(1)),
            ),
            ("data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n", None),
            (
                r#"{"choices":[{"text":"say \"usage\": {\"prompt_tokens\": 3} ok"}],"usage":{"prompt_tokens":4,"completion_tokens":6}}"#,
                u(Some(4), Some(6)),
            ),
            (r#"ompt_tokens":4,"completion_tokens":6}}"#, None),
        ];
        for (body, want) in cases {
            assert_eq!(usage(body.as_bytes()), want, "{body}");
        }
        // Only one count present; a count that is not a number.
        assert_eq!(usage(br#"{"usage":{"prompt_tokens":7}}"#), u(Some(7), None));
        assert_eq!(usage(br#"{"usage":{"prompt_tokens":"7"}}"#), None);
        assert_eq!(usage(br#"{"usage":{"prompt_tokens":99999999999}}"#), None);
    }

    /// Any split of the body gives the same answer, and the tail stays bounded.
    #[test]
    fn tail_is_bounded_and_split_invariant() {
        let mut body = String::new();
        for i in 0..200 {
            body.push_str(&format!(
                "data: {{\"choices\":[{{\"text\":\"t{i}\"}}],\"usage\":null}}\n\n"
            ));
        }
        body.push_str("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":200}}\n\ndata: [DONE]\n\n");
        let want = u(Some(3), Some(200));
        for step in [1, 7, 100, 1023, 1024, 1025, 5000, body.len()] {
            let mut t = UsageTail::default();
            for part in body.as_bytes().chunks(step) {
                t.feed(part);
                assert!(t.buf.len() <= 2 * TAIL);
            }
            assert_eq!(t.take(), want, "step {step}");
            assert_eq!(t.buf.capacity(), 0, "released");
        }
        // A gap before the usage event's end loses it; one before its start does not.
        let mut t = UsageTail::default();
        t.feed(&body.as_bytes()[..body.len() - 40]);
        t.gap();
        t.feed(&body.as_bytes()[body.len() - 40..]);
        assert_eq!(t.take(), None);
        let cut = body.len() - 100;
        let mut t = UsageTail::default();
        t.feed(&body.as_bytes()[..cut]);
        t.gap();
        t.feed(&body.as_bytes()[cut..]);
        assert_eq!(t.take(), want);
    }
}
