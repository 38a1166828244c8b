//! Bounded decoding: the `Ingest` service's codec checks the wire form of every `Batch` before
//! prost decodes it, so that a small message cannot become a large allocation.
//!
//! Protobuf lets a sender write an empty sub-message in two bytes; decoded, each is a whole
//! struct (a `Request` is several hundred bytes), pushed into a `Vec` that doubles as it grows.
//! An 8 MB message of 4 M empty requests decoded to about 2 GB before any validation could see
//! it. [`scan_batch`] walks the encoded message once, allocating nothing: it counts rows (requests,
//! spans, engine steps) and estimates the decoded size (struct sizes, doubled for `Vec` growth,
//! plus string and byte lengths, plus 16 bytes per packed integer). [`BoundedCodec`] refuses a
//! batch over [`DecodeLimits`] with `RESOURCE_EXHAUSTED` and a message that starts with
//! `batch_too_large:` (the aggregator counts it under that reason); everything else decodes as
//! with `tonic_prost::ProstCodec`.
use std::marker::PhantomData;
use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prost::Message;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::v1;

/// What [`BoundedCodec`] accepts for one `Batch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Requests + spans + engine steps.
    pub max_rows: u64,
    /// Estimated decoded size in bytes.
    pub max_decoded_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_rows: 200_000,
            max_decoded_bytes: 48 << 20,
        }
    }
}

static MAX_ROWS: AtomicU64 = AtomicU64::new(200_000);
static MAX_DECODED: AtomicU64 = AtomicU64::new(48 << 20);
static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Sets the limits of every [`BoundedCodec`] in the process (the aggregator, at start).
pub fn set_decode_limits(l: DecodeLimits) {
    MAX_ROWS.store(l.max_rows, Relaxed);
    MAX_DECODED.store(l.max_decoded_bytes, Relaxed);
}

/// The limits in force.
pub fn decode_limits() -> DecodeLimits {
    DecodeLimits {
        max_rows: MAX_ROWS.load(Relaxed),
        max_decoded_bytes: MAX_DECODED.load(Relaxed),
    }
}

/// Batches refused before decoding since the process started.
pub fn refused_before_decode() -> u64 {
    REFUSED.load(Relaxed)
}

/// What a batch would decode to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchShape {
    /// `ResourceData` entries.
    pub resources: u64,
    /// Requests + spans + engine steps.
    pub rows: u64,
    /// Estimated bytes of the decoded `Batch`.
    pub decoded_bytes: u64,
}

/// Why the wire form is not a well-formed `Batch`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A length or varint runs past the end.
    #[error("truncated message")]
    Truncated,
    /// A varint longer than 10 bytes.
    #[error("bad varint")]
    BadVarint,
    /// Groups (wire types 3 and 4) or an unknown wire type.
    #[error("unsupported wire type {0}")]
    WireType(u8),
}

/// One field of a message.
enum Val<'a> {
    Varint,
    Fixed,
    Bytes(&'a [u8]),
}

fn varint(b: &[u8], i: &mut usize) -> Result<u64, ScanError> {
    let mut v = 0u64;
    for k in 0..10 {
        let byte = *b.get(*i).ok_or(ScanError::Truncated)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << (7 * k);
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(ScanError::BadVarint)
}

/// Calls `f(field number, value)` for each field of the message `b`.
fn fields<'a>(
    b: &'a [u8],
    mut f: impl FnMut(u64, Val<'a>) -> Result<(), ScanError>,
) -> Result<(), ScanError> {
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let (field, wt) = (key >> 3, (key & 7) as u8);
        let v = match wt {
            0 => {
                varint(b, &mut i)?;
                Val::Varint
            }
            1 | 5 => {
                i += if wt == 1 { 8 } else { 4 };
                if i > b.len() {
                    return Err(ScanError::Truncated);
                }
                Val::Fixed
            }
            2 => {
                let n = varint(b, &mut i)?;
                let end = usize::try_from(n)
                    .ok()
                    .and_then(|n| i.checked_add(n))
                    .filter(|&e| e <= b.len())
                    .ok_or(ScanError::Truncated)?;
                let s = &b[i..end];
                i = end;
                Val::Bytes(s)
            }
            other => return Err(ScanError::WireType(other)),
        };
        f(field, v)?;
    }
    Ok(())
}

/// Bytes of one element of a repeated message field once decoded (`Vec` growth doubles).
fn element<T>() -> u64 {
    2 * size_of::<T>() as u64
}

/// A message with string/bytes fields only below it: its struct (`own`) plus their lengths.
fn flat(b: &[u8], own: u64) -> Result<u64, ScanError> {
    let mut n = own;
    fields(b, |_, v| {
        if let Val::Bytes(s) = v {
            n += s.len() as u64;
        }
        Ok(())
    })?;
    Ok(n)
}

fn key_value(b: &[u8]) -> Result<u64, ScanError> {
    let mut n = element::<v1::KeyValue>();
    fields(b, |f, v| {
        match (f, v) {
            (1, Val::Bytes(s)) => n += s.len() as u64,
            (2, Val::Bytes(s)) => n += flat(s, size_of::<v1::AnyValue>() as u64)?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(n)
}

/// A message whose field `attrs` (and `nested`, each with attributes at field 3) are repeated
/// `KeyValue`s, the rest strings or scalars.
fn with_attributes(
    b: &[u8],
    own: u64,
    attrs: u64,
    nested: &[(u64, u64)],
) -> Result<u64, ScanError> {
    let mut n = own;
    fields(b, |f, v| {
        if let Val::Bytes(s) = v {
            if f == attrs {
                n += key_value(s)?;
            } else if let Some(&(_, size)) = nested.iter().find(|(nf, _)| *nf == f) {
                n += with_attributes(s, size, 3, &[])?;
            } else {
                n += s.len() as u64;
            }
        }
        Ok(())
    })?;
    Ok(n)
}

/// Packed repeated integers: one element per byte without the continuation bit.
fn packed(s: &[u8]) -> u64 {
    16 * s.iter().filter(|&&b| b < 0x80).count() as u64
}

fn request(b: &[u8]) -> Result<u64, ScanError> {
    let mut n = element::<v1::Request>();
    fields(b, |f, v| {
        match (f, v) {
            (31 | 32, Val::Bytes(s)) => n += packed(s),
            (31 | 32, _) => n += 16,
            (36 | 37, Val::Bytes(s)) => n += flat(s, size_of::<v1::Endpoint>() as u64)?,
            (_, Val::Bytes(s)) => n += s.len() as u64,
            _ => {}
        }
        Ok(())
    })?;
    Ok(n)
}

fn resource_data(b: &[u8], shape: &mut BatchShape) -> Result<(), ScanError> {
    shape.decoded_bytes += element::<v1::ResourceData>();
    fields(b, |f, v| {
        let Val::Bytes(s) = v else { return Ok(()) };
        shape.decoded_bytes += match f {
            1 => with_attributes(s, size_of::<v1::Resource>() as u64, 5, &[])?,
            2 => {
                shape.rows += 1;
                request(s)?
            }
            3 => {
                shape.rows += 1;
                with_attributes(
                    s,
                    element::<v1::Span>(),
                    7,
                    &[
                        (8, element::<v1::SpanEvent>()),
                        (9, element::<v1::SpanLink>()),
                    ],
                )?
            }
            4 => {
                shape.rows += 1;
                flat(s, element::<v1::EngineStep>())?
            }
            _ => s.len() as u64,
        };
        Ok(())
    })
}

/// The shape of the encoded `Batch` `b`, without decoding it.
pub fn scan_batch(b: &[u8]) -> Result<BatchShape, ScanError> {
    let mut shape = BatchShape {
        decoded_bytes: size_of::<v1::Batch>() as u64,
        ..BatchShape::default()
    };
    fields(b, |f, v| {
        match (f, v) {
            (4, Val::Bytes(s)) => {
                shape.resources += 1;
                resource_data(s, &mut shape)?;
            }
            (_, Val::Bytes(s)) => shape.decoded_bytes += s.len() as u64,
            _ => {}
        }
        Ok(())
    })?;
    Ok(shape)
}

/// A message type [`BoundedCodec`] can decode: `check` sees its wire form first.
pub trait DecodeBound {
    /// `Err` refuses the message before it is decoded.
    fn check(_wire: &[u8]) -> Result<(), Status> {
        Ok(())
    }
}

impl DecodeBound for v1::Ack {}

impl DecodeBound for v1::Batch {
    fn check(wire: &[u8]) -> Result<(), Status> {
        let l = decode_limits();
        let refuse = |m: String| {
            REFUSED.fetch_add(1, Relaxed);
            Status::resource_exhausted(m)
        };
        let shape = scan_batch(wire)
            .map_err(|e| Status::invalid_argument(format!("cannot decode batch: {e}")))?;
        if shape.rows > l.max_rows {
            return Err(refuse(format!(
                "batch_too_large: {} rows (max {})",
                shape.rows, l.max_rows
            )));
        }
        if shape.decoded_bytes > l.max_decoded_bytes {
            return Err(refuse(format!(
                "batch_too_large: would decode to about {} MiB (max {} MiB)",
                shape.decoded_bytes >> 20,
                l.max_decoded_bytes >> 20
            )));
        }
        Ok(())
    }
}

/// `tonic_prost::ProstCodec` with [`DecodeBound::check`] before each decode (the codec of the
/// generated `Ingest` client and server).
#[derive(Debug)]
pub struct BoundedCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BoundedCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BoundedCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + DecodeBound + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = BoundedEncoder<T>;
    type Decoder = BoundedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        BoundedEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        BoundedDecoder(PhantomData)
    }
}

/// Encodes `T` with prost.
#[derive(Debug)]
pub struct BoundedEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for BoundedEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encode: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

/// Checks, then decodes `U` with prost.
#[derive(Debug)]
pub struct BoundedDecoder<U>(PhantomData<U>);

impl<U: Message + Default + DecodeBound> Decoder for BoundedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use prost::bytes::Buf as _;
        // A DecodeBuf is one contiguous message.
        U::check(buf.chunk())?;
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(requests: usize, spans: usize) -> v1::Batch {
        v1::Batch {
            node_id: "n".into(),
            boot_id: "b".into(),
            sequence: 1,
            resend: false,
            resources: vec![v1::ResourceData {
                resource: Some(v1::Resource {
                    node: "n".into(),
                    attributes: vec![v1::KeyValue::default(); 3],
                    ..Default::default()
                }),
                requests: vec![
                    v1::Request {
                        step_ids: vec![1, 2, 300],
                        path: "/v1/completions".into(),
                        ..Default::default()
                    };
                    requests
                ],
                spans: vec![
                    v1::Span {
                        attributes: vec![v1::KeyValue::default(); 2],
                        links: vec![v1::SpanLink::default()],
                        ..Default::default()
                    };
                    spans
                ],
                steps: vec![v1::EngineStep::default(); 4],
            }],
        }
    }

    #[test]
    fn counts_rows_and_bounds_the_decoded_size() {
        let b = batch(10, 7);
        let wire = b.encode_to_vec();
        let s = scan_batch(&wire).unwrap();
        assert_eq!((s.resources, s.rows), (1, 10 + 7 + 4));
        // The estimate is an upper bound of what decoding allocates, within a small factor.
        let structs = 10 * size_of::<v1::Request>() + 7 * size_of::<v1::Span>();
        assert!(s.decoded_bytes as usize >= structs, "{s:?}");
        assert!((s.decoded_bytes as usize) < 8 * structs, "{s:?}");
        assert!(v1::Batch::check(&wire).is_ok());
    }

    #[test]
    fn empty_requests_are_refused_before_decoding() {
        // 4 M empty requests: 8 MB on the wire, ~2 GB decoded.
        let mut wire = v1::Batch {
            node_id: "n".into(),
            ..Default::default()
        }
        .encode_to_vec();
        let mut rd = Vec::with_capacity(8 << 20);
        for _ in 0..4_000_000 {
            rd.extend_from_slice(&[0x12, 0x00]); // field 2 (requests), length 0
        }
        wire.push(0x22); // field 4 (resources), length-delimited
        prost::encoding::encode_varint(rd.len() as u64, &mut wire);
        wire.extend_from_slice(&rd);
        let s = scan_batch(&wire).unwrap();
        assert_eq!(s.rows, 4_000_000);
        let e = v1::Batch::check(&wire).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(
            e.message().starts_with("batch_too_large:"),
            "{}",
            e.message()
        );
        // Under the row limit, but every span holds a million empty attributes.
        let mut span = Vec::new();
        for _ in 0..1_000_000 {
            span.extend_from_slice(&[0x3a, 0x00]); // field 7 (attributes), length 0
        }
        let mut rd = vec![0x1a];
        prost::encoding::encode_varint(span.len() as u64, &mut rd);
        rd.extend_from_slice(&span);
        let mut wire = vec![0x22];
        prost::encoding::encode_varint(rd.len() as u64, &mut wire);
        wire.extend_from_slice(&rd);
        let e = v1::Batch::check(&wire).unwrap_err();
        assert!(e.message().contains("would decode to"), "{}", e.message());
    }

    #[test]
    fn malformed_wire_is_an_error_not_a_panic() {
        let wire = batch(3, 3).encode_to_vec();
        for cut in 1..wire.len() {
            let _ = scan_batch(&wire[..cut]);
        }
        assert_eq!(scan_batch(&[0x22, 0x05, 0x00]), Err(ScanError::Truncated));
        assert_eq!(scan_batch(&[0x23]), Err(ScanError::WireType(3)));
        assert_eq!(scan_batch(&[0xff; 12]), Err(ScanError::BadVarint));
        assert_eq!(
            v1::Batch::check(&[0x22, 0x05]).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }
}
