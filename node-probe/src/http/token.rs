//! What one SSE `data:` event of an OpenAI-compatible stream carries: a generated token or not,
//! and visible text or not. Bounded and allocation-free: a few bytes of state, fed any split of
//! the line.
//!
//! Definitions (README "What the timings mean"):
//! * a **token event** holds a generation field: `text`, `content`, `reasoning_content` or
//!   `reasoning` with a string value (empty or not), or a non-empty `tool_calls` array. A chat
//!   stream's role-only first event (`{"delta":{"role":"assistant"}}`), a usage-only final event
//!   (`"choices":[]`) and `null` values are not. Time to first token is the first token event;
//! * a token event is **visible** when one of those strings is non-empty or it has a tool call.
//!   vLLM sends empty strings while a character's UTF-8 bytes are incomplete; time to first
//!   visible text is the first visible event.
//!
//! Keys are matched at any depth, outside strings only; `content` whose value is not a string
//! (chat `logprobs.content` is an array) does not count.

/// Longest key of interest (`reasoning_content`).
const KEY_MAX: usize = 17;

/// What an event carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Payload {
    /// It holds a generated token (possibly an empty string).
    pub token: bool,
    /// It holds visible output: a non-empty string or a tool call.
    pub visible: bool,
}

/// Which generation field a key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// A string field: `text`, `content`, `reasoning_content`, `reasoning`.
    Text,
    /// `tool_calls`.
    ToolCalls,
    /// Any other key.
    Other,
}

fn field(key: &[u8]) -> Field {
    match key {
        b"text" | b"content" | b"reasoning_content" | b"reasoning" => Field::Text,
        b"tool_calls" => Field::ToolCalls,
        _ => Field::Other,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Outside any string.
    Out,
    /// In a string that may be a key (its first bytes are kept) or, when `keep` is false, in a
    /// value or an escaped/overlong string that cannot be a key of interest.
    Str { keep: bool },
    /// After a backslash in a string.
    StrEsc,
    /// After a string: a `:` makes it a key.
    AfterStr { keep: bool },
    /// After `key:`.
    Value(Field),
    /// Just inside a generation field's string value.
    TextFirst,
    /// Just inside `tool_calls`' array.
    ArrayFirst,
}

/// Classifies one event's bytes (feed them all, then read [`TokenScan::payload`]).
#[derive(Debug, Clone)]
pub struct TokenScan {
    st: St,
    key: [u8; KEY_MAX],
    len: u8,
    found: Payload,
}

impl Default for TokenScan {
    fn default() -> Self {
        Self::new()
    }
}

impl TokenScan {
    /// A scanner at the start of an event.
    pub fn new() -> Self {
        Self {
            st: St::Out,
            key: [0; KEY_MAX],
            len: 0,
            found: Payload::default(),
        }
    }

    /// What the bytes fed so far carry.
    pub fn payload(&self) -> Payload {
        self.found
    }

    /// Feeds bytes of the event.
    pub fn feed(&mut self, data: &[u8]) {
        for &b in data {
            if self.found.visible {
                // Nothing more to learn.
                return;
            }
            self.st = self.step(b);
        }
    }

    fn step(&mut self, b: u8) -> St {
        let ws = matches!(b, b' ' | b'\t' | b'\r' | b'\n');
        match self.st {
            St::Out => self.out(b),
            St::Str { keep } => match b {
                b'"' => St::AfterStr { keep },
                b'\\' => St::StrEsc,
                _ if keep && (self.len as usize) < KEY_MAX => {
                    self.key[self.len as usize] = b;
                    self.len += 1;
                    St::Str { keep: true }
                }
                _ => St::Str { keep: false },
            },
            // An escaped key is never one of ours.
            St::StrEsc => St::Str { keep: false },
            St::AfterStr { .. } if ws => self.st,
            St::AfterStr { keep } if b == b':' => {
                let f = if keep {
                    field(&self.key[..self.len as usize])
                } else {
                    Field::Other
                };
                St::Value(f)
            }
            St::AfterStr { .. } => self.out(b),
            St::Value(_) if ws => self.st,
            St::Value(Field::Text) if b == b'"' => {
                self.found.token = true;
                St::TextFirst
            }
            St::Value(Field::ToolCalls) if b == b'[' => St::ArrayFirst,
            St::Value(_) => self.out(b),
            St::TextFirst => match b {
                b'"' => St::AfterStr { keep: false },
                _ => {
                    self.found.visible = true;
                    St::Str { keep: false }
                }
            },
            St::ArrayFirst if ws => St::ArrayFirst,
            St::ArrayFirst if b == b']' => St::Out,
            St::ArrayFirst => {
                self.found = Payload {
                    token: true,
                    visible: true,
                };
                self.out(b)
            }
        }
    }

    /// A byte outside strings: a quote opens one (a possible key).
    fn out(&mut self, b: u8) -> St {
        if b == b'"' {
            self.len = 0;
            St::Str { keep: true }
        } else {
            St::Out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(s: &str) -> Payload {
        let mut t = TokenScan::new();
        t.feed(s.as_bytes());
        t.payload()
    }

    const NONE: Payload = Payload {
        token: false,
        visible: false,
    };
    const EMPTY: Payload = Payload {
        token: true,
        visible: false,
    };
    const TEXT: Payload = Payload {
        token: true,
        visible: true,
    };

    /// Recorded shapes: vLLM completions and chat, OpenAI's role-only first chat event, tool
    /// calls, usage-only final events, reasoning deltas, logprobs.
    #[test]
    fn event_shapes() {
        let cases = [
            (
                r#"{"id":"cmpl-1","object":"text_completion","choices":[{"index":0,"text":" the","logprobs":null,"finish_reason":null}]}"#,
                TEXT,
            ),
            (
                r#"{"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":null}]}"#,
                EMPTY,
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"role":"assistant"},"logprobs":null,"finish_reason":null}]}"#,
                NONE,
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null}]}"#,
                EMPTY,
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#,
                TEXT,
            ),
            (
                r#"{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0,"function":{"arguments":"{\""}}]}}]}"#,
                TEXT,
            ),
            (r#"{"choices":[{"delta":{"tool_calls":[]}}]}"#, NONE),
            (
                r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":8,"total_tokens":13}}"#,
                NONE,
            ),
            (
                r#"{"choices":[{"delta":{"reasoning_content":"Let"}}]}"#,
                TEXT,
            ),
            (r#"{"choices":[{"delta":{"reasoning":""}}]}"#, EMPTY),
            (r#"{"choices":[{"delta":{"content":"\n"}}]}"#, TEXT),
            (
                r#"{"choices":[{"delta":{"content":""},"logprobs":{"content":[{"token":"x","logprob":-1.0}]}}]}"#,
                EMPTY,
            ),
            (
                r#"{"choices":[{"delta":{"role":"assistant"},"logprobs":{"content":[]}}]}"#,
                NONE,
            ),
            // A key-like string inside a value is not a key.
            (
                r#"{"id":"\"content\":\"x\"","choices":[{"delta":{"role":"assistant"}}]}"#,
                NONE,
            ),
            (r#"{"model":"content","choices":[]}"#, NONE),
            (r#"{ "text" : "a" }"#, TEXT),
            (
                r#"{"content_filter_results":{},"choices":[{"delta":{}}]}"#,
                NONE,
            ),
            ("", NONE),
            ("not json at all \"text\"", NONE),
        ];
        for (s, want) in cases {
            assert_eq!(scan(s), want, "{s}");
        }
    }

    #[test]
    fn any_split_gives_the_same_answer() {
        let s = r#"{"choices":[{"delta":{"role":"assistant","content":"","tool_calls":[ {"id":"c"}]}}]}"#;
        let want = scan(s);
        assert_eq!(want, TEXT);
        for cut in 0..=s.len() {
            let mut t = TokenScan::new();
            t.feed(&s.as_bytes()[..cut]);
            t.feed(&s.as_bytes()[cut..]);
            assert_eq!(t.payload(), want, "cut at {cut}");
        }
    }
}
