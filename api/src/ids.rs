//! Typed trace and span ids: W3C trace-context ids held as bytes, written as lowercase hex.
//!
//! Everything that carries an id (node-probe's records, the wire, the query API) holds one of
//! these; hex text exists only at the edges (JSON, SQL, `traceparent`), where [`FromStr`] checks
//! it once.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// Not exactly the id's number of hex characters.
    #[error("{what} {text:?}: want {want} hex characters")]
    Shape {
        /// `trace id` or `span id`.
        what: &'static str,
        /// The text.
        text: String,
        /// Hex characters wanted.
        want: usize,
    },
    /// All zero (invalid in W3C trace context).
    #[error("{what} {text:?} is all zero")]
    Zero {
        /// `trace id` or `span id`.
        what: &'static str,
        /// The text.
        text: String,
    },
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `bytes` as lowercase hex in `out` (twice as long), returned as text. Ids are written on
/// every exported request and step, so this avoids the formatter's per-byte work.
pub fn encode_hex<'a>(bytes: &[u8], out: &'a mut [u8]) -> &'a str {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = DIGITS[usize::from(b >> 4)];
        out[2 * i + 1] = DIGITS[usize::from(b & 0xf)];
    }
    let out = &out[..2 * bytes.len()];
    // Only ASCII hex digits were written.
    std::str::from_utf8(out).unwrap_or_default()
}

/// `N` bytes from exactly `2 * N` hex characters (either case).
pub fn decode_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let b = s.as_bytes();
    if b.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = (nibble(b[2 * i])? << 4) | nibble(b[2 * i + 1])?;
    }
    Some(out)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $n:literal, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
        pub struct $name([u8; $n]);

        impl $name {
            /// Length in bytes.
            pub const LEN: usize = $n;

            /// From raw bytes (any value, including zero).
            pub const fn from_bytes(b: [u8; $n]) -> Self {
                Self(b)
            }

            /// From a byte slice of exactly the right length.
            pub fn from_slice(b: &[u8]) -> Option<Self> {
                <[u8; $n]>::try_from(b).ok().map(Self)
            }

            /// The raw bytes.
            pub const fn to_bytes(self) -> [u8; $n] {
                self.0
            }

            /// The raw bytes, borrowed.
            pub fn as_bytes(&self) -> &[u8; $n] {
                &self.0
            }

            /// Not all zero (valid in W3C trace context).
            pub fn is_valid(&self) -> bool {
                self.0.iter().any(|&b| b != 0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut buf = [0u8; 2 * $n];
                f.write_str(encode_hex(&self.0, &mut buf))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({self})", stringify!($name))
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            /// Exactly the right number of hex characters (either case), not all zero.
            fn from_str(s: &str) -> Result<Self, IdError> {
                let b = decode_hex::<$n>(s).ok_or_else(|| IdError::Shape {
                    what: $what,
                    text: s.to_owned(),
                    want: 2 * $n,
                })?;
                let id = Self(b);
                if !id.is_valid() {
                    return Err(IdError::Zero {
                        what: $what,
                        text: s.to_owned(),
                    });
                }
                Ok(id)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                other.parse::<Self>().is_ok_and(|o| o == *self)
            }
        }

        impl PartialEq<String> for $name {
            fn eq(&self, other: &String) -> bool {
                *self == **other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self == **other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// A W3C trace id: 16 bytes, 32 lowercase hex characters in text.
    TraceId,
    16,
    "trace id"
);
id_type!(
    /// A W3C span id: 8 bytes, 16 lowercase hex characters in text.
    SpanId,
    8,
    "span id"
);

/// The span context of engine step `step_id` of engine instance `instance` (its process's
/// `pid:start_ticks`) on the host whose kernel boot id is `scope` (older rows: the node name).
///
/// Each step is exported once, as a span of its own trace (the OpenTelemetry batch pattern);
/// every request of its batch links to it. The ids are a fixed function of the three values
/// (FNV-1a over `scope \0 instance \0 step_id`, then the SplitMix64 finaliser, three seeds), so
/// node-probe, the aggregator and any exporter compute the same ids without coordination. This
/// function is part of the wire contract: changing it breaks the links of stored data.
pub fn step_context(scope: &str, instance: &str, step_id: u64) -> (TraceId, SpanId) {
    StepScope::new(scope, instance).context(step_id)
}

/// [`step_context`] for many steps of one `(scope, instance)`: the FNV-1a states after
/// `scope \0 instance \0` are computed once, each step then hashes only its 8 id bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepScope {
    states: [u64; 3],
}

const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut h: u64, bytes: impl IntoIterator<Item = u8>) -> u64 {
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(FNV_PRIME);
    }
    h
}

impl StepScope {
    /// The prefix states of `scope` and `instance`.
    pub fn new(scope: &str, instance: &str) -> Self {
        let prefix = |seed: u64| {
            let bytes = scope.bytes().chain([0]).chain(instance.bytes()).chain([0]);
            fnv(0xcbf2_9ce4_8422_2325 ^ seed, bytes)
        };
        Self {
            states: [prefix(1), prefix(2), prefix(3)],
        }
    }

    /// The trace and span id of step `step_id`.
    pub fn context(&self, step_id: u64) -> (TraceId, SpanId) {
        let hash = |k: usize| {
            let mut h = fnv(self.states[k], step_id.to_le_bytes());
            h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (h ^ (h >> 31)).max(1)
        };
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&hash(0).to_be_bytes());
        t[8..].copy_from_slice(&hash(1).to_be_bytes());
        (TraceId(t), SpanId(hash(2).to_be_bytes()))
    }
}

/// The id of one HTTP exchange on one TCP connection (a *hop*), from the TCP sequence numbers of
/// the request's first byte and of the response's first byte (`None`: no response byte).
///
/// Both ends of a connection see the same two numbers, and NAT rewrites addresses and ports but
/// not sequence numbers, so the client's node and the server's node compute the same id without
/// talking to each other: the client half uses it as its `http.client` span id, the server half
/// stores it beside its request (`requests.hop_id`), and the aggregator joins the two on it.
/// Part of the wire contract, like [`step_context`]: changing it breaks the joins of stored
/// data. (SplitMix64 finaliser over both numbers and a domain constant; never zero.)
pub fn hop_id(req_tcp_seq: u32, resp_tcp_seq: Option<u32>) -> SpanId {
    // One domain constant with a response, another without; the finaliser is a bijection, so
    // two exchanges of one domain never share an id.
    let domain = match resp_tcp_seq {
        Some(_) => 0x686f_7020_6964_2031,
        None => 0x686f_7020_6964_2030,
    };
    let mut h = (u64::from(req_tcp_seq) << 32 | u64::from(resp_tcp_seq.unwrap_or(0))) ^ domain;
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    SpanId((h ^ (h >> 31)).max(1).to_be_bytes())
}

/// Serde for an optional span id written as `""` when absent (the API's `parent_span_id`).
pub mod empty_is_none {
    use serde::{Deserialize, Deserializer, Serializer};

    use super::SpanId;

    /// `None` → `""`.
    pub fn serialize<S: Serializer>(v: &Option<SpanId>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(id) => s.collect_str(id),
            None => s.serialize_str(""),
        }
    }

    /// `""` → `None`.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SpanId>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        if s.is_empty() {
            return Ok(None);
        }
        s.parse().map(Some).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_errors() {
        let t: TraceId = "0AF7651916CD43DD8448EB211C80319C".parse().unwrap();
        assert_eq!(t.to_string(), "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(t, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"0af7651916cd43dd8448eb211c80319c\""
        );
        let back: TraceId = serde_json::from_str("\"0af7651916cd43dd8448eb211c80319c\"").unwrap();
        assert_eq!(back, t);
        assert!(matches!(
            "00".repeat(8).parse::<SpanId>(),
            Err(IdError::Zero { .. })
        ));
        assert!(matches!(
            "abc".parse::<SpanId>(),
            Err(IdError::Shape { want: 16, .. })
        ));
        assert!("zz".repeat(8).parse::<SpanId>().is_err());
        assert!(serde_json::from_str::<SpanId>("\"0000000000000000\"").is_err());
        assert_eq!(
            SpanId::from_slice(&[1; 8]).unwrap().to_string(),
            "01".repeat(8)
        );
        assert!(SpanId::from_slice(&[1; 7]).is_none());
    }

    const PINNED_HOP: &str = "6d22b5574c4b2b43";

    #[test]
    fn hop_id_is_fixed_and_tells_responses_apart() {
        let h = hop_id(0x1234_5678, Some(0x9abc_def0));
        assert_eq!(h, hop_id(0x1234_5678, Some(0x9abc_def0)));
        assert_eq!(
            h.to_string(),
            hop_id(0x1234_5678, Some(0x9abc_def0)).to_string()
        );
        assert_ne!(h, hop_id(0x1234_5678, None));
        assert_ne!(hop_id(0, None), hop_id(0, Some(0)));
        assert_ne!(h, hop_id(0x9abc_def0, Some(0x1234_5678)));
        assert!(hop_id(0, None).is_valid());
        // Pinned: stored joins depend on it.
        assert_eq!(hop_id(1, Some(2)).to_string(), PINNED_HOP);
    }

    #[test]
    fn step_context_is_fixed() {
        let (t, s) = step_context("boot", "12:34", 7);
        assert_eq!((t, s), step_context("boot", "12:34", 7));
        assert!(t.is_valid() && s.is_valid());
        assert_ne!(step_context("boot", "12:34", 8).1, s);
        assert_ne!(
            step_context("boot", "12:3", 47).1,
            step_context("boot", "12:34", 7).1
        );
        assert_ne!(step_context("other", "12:34", 7).0, t);
        // The contract: these exact ids (stored links depend on them).
        assert_eq!(t.to_string().len(), 32);
        let pinned = step_context("0e3f", "100:200", 1);
        assert_eq!(pinned.0, "5f57f750322f53585bf30b2698aa8387");
        assert_eq!(pinned.1, "7dc9ae054de83a85");
    }

    #[test]
    fn optional_parent_is_empty_text() {
        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct P {
            #[serde(with = "empty_is_none")]
            p: Option<SpanId>,
        }
        let none = P { p: None };
        assert_eq!(serde_json::to_string(&none).unwrap(), r#"{"p":""}"#);
        assert_eq!(serde_json::from_str::<P>(r#"{"p":""}"#).unwrap(), none);
        let some = P {
            p: Some(SpanId::from_bytes([2; 8])),
        };
        let j = serde_json::to_string(&some).unwrap();
        assert_eq!(serde_json::from_str::<P>(&j).unwrap(), some);
    }
}
