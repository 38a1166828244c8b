//! Server-side HTTP/1.1 exchanges reconstructed from the bytes a server reads and writes.
//!
//! [`HttpConn`] follows one accepted connection: request heads are parsed with httparse, bodies
//! delimited by Content-Length or chunked framing, responses matched to requests in order
//! (keep-alive and pipelining), and `text/event-stream` bodies scanned line by line so every SSE
//! `data:` event gets the timestamp of the write that carried it. Only a prefix of each syscall's
//! bytes may have been captured: counts always come from the syscall's return value, content from
//! the prefix, and where the missing bytes make the content unknowable the connection records
//! why it gave up ([`HttpConn::gave_up`]) instead of guessing.
//!
//! State per connection is bounded: a head buffer of at most [`MAX_HEAD`] bytes while a head is
//! being read, at most [`MAX_PIPELINE`] requests awaiting responses, at most
//! [`MAX_CHUNK_TIMES`] chunk timestamps per exchange, and the last [`usage::TAIL`] body bytes
//! while a response body streams (released at its end).
pub mod chunked;
pub mod scan;
pub mod token;
pub mod usage;

use std::collections::VecDeque;

use chunked::{Dechunker, Piece};
use scan::{FieldFinder, SseLine, SseScanner};
use usage::{Usage, UsageTail};

/// Largest request or response head followed.
pub const MAX_HEAD: usize = 16 * 1024;
/// Requests awaiting a response on one connection (pipelining depth).
pub const MAX_PIPELINE: usize = 32;
/// SSE event timestamps kept per exchange (counts go on beyond it).
pub const MAX_CHUNK_TIMES: usize = 4096;
/// Body bytes scanned for `model`/`stream` (request) and `id` (response).
const BODY_SCAN: u32 = 4096;

/// How an exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was complete.
    Complete,
    /// The client went away (EOF or reset on read) before the response was complete.
    ClientAbort,
    /// The connection closed before the response was complete, without a client EOF first.
    ServerClose,
    /// Not completed within the configured timeout.
    Timeout,
    /// The connection's bytes could not be followed any further (see `gave_up`).
    Lost,
}

impl Outcome {
    /// Lowercase name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::ClientAbort => "client_abort",
            Outcome::ServerClose => "server_close",
            Outcome::Timeout => "timeout",
            Outcome::Lost => "lost",
        }
    }
}

/// One request and its response, as seen on the wire by the server.
#[derive(Debug, Clone, Default)]
pub struct Exchange {
    /// Request method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Response status.
    pub status: Option<u16>,
    /// `model` from the JSON request body, when it was captured.
    pub model: Option<String>,
    /// `stream` from the JSON request body.
    pub stream_requested: Option<bool>,
    /// Incoming `traceparent` header.
    pub traceparent: Option<String>,
    /// Incoming `x-request-id` header.
    pub x_request_id: Option<String>,
    /// `id` from the response JSON (first SSE event or the body).
    pub response_id: Option<String>,
    /// The tenant as sent (header value or body field, [`TenantFrom`]), before bounding.
    pub tenant: Option<String>,
    /// Token counts from the response's last `usage` object, when it was captured ([`usage`]).
    pub usage: Option<Usage>,
    /// First read that carried bytes of this request (monotonic ns, syscall exit).
    pub req_first_read_ns: u64,
    /// TCP sequence number of the request's first byte, when known.
    pub req_first_seq: Option<u32>,
    /// Read that completed the request.
    pub req_done_ns: u64,
    /// Request bytes (head + body).
    pub req_bytes: u64,
    /// First write of the response (syscall exit).
    pub resp_first_ns: Option<u64>,
    /// TCP sequence number of the response's first byte, when known.
    pub resp_first_seq: Option<u32>,
    /// Write that completed the response.
    pub resp_last_ns: Option<u64>,
    /// Response bytes (head + body, as written).
    pub resp_bytes: u64,
    /// Response is `text/event-stream`.
    pub sse: bool,
    /// SSE token events seen (`data:` events carrying a generated token, [`token`]).
    pub chunks: u64,
    /// Time of the first SSE event with visible text (or a tool call).
    pub first_text_ns: Option<u64>,
    /// Timestamps of the first [`MAX_CHUNK_TIMES`] token events.
    pub chunk_ns: Vec<u64>,
    /// `data: [DONE]` seen.
    pub done_marker: bool,
    /// Time of `data: [DONE]`.
    pub done_ns: Option<u64>,
    /// How it ended.
    pub outcome: Option<Outcome>,
    /// Why content following stopped, if it did.
    pub gave_up: Option<&'static str>,
    /// Digest of the request body's first bytes, when they were all captured: what links a
    /// gateway's outbound call to the inbound request whose body it forwards verbatim.
    pub body_digest: Option<BodyDigest>,
}

/// Request-body bytes a [`BodyDigest`] covers at most.
pub const DIGEST_SPAN: usize = 1024;

/// FNV-1a of the first `len` (≤ [`DIGEST_SPAN`]) bytes of a request body (de-chunked).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyDigest {
    /// Bytes hashed: the body's length when shorter than the span.
    pub len: u16,
    /// The hash.
    pub hash: u64,
}

/// A [`BodyDigest`] being computed as the body streams by; a byte missed before the span is
/// full spoils it.
#[derive(Debug, Clone, Copy)]
struct Digester {
    hash: u64,
    len: usize,
    spoiled: bool,
}

impl Digester {
    fn new() -> Self {
        Self {
            hash: 0xcbf2_9ce4_8422_2325,
            len: 0,
            spoiled: false,
        }
    }

    fn feed(&mut self, data: &[u8]) {
        let take = data.len().min(DIGEST_SPAN - self.len);
        for &b in &data[..take] {
            self.hash = (self.hash ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self.len += take;
    }

    /// `n` body bytes went by uncaptured.
    fn skip(&mut self, n: u64) {
        if n > 0 && self.len < DIGEST_SPAN {
            self.spoiled = true;
        }
    }

    fn result(&self) -> Option<BodyDigest> {
        (!self.spoiled && self.len > 0).then_some(BodyDigest {
            len: self.len as u16,
            hash: self.hash,
        })
    }
}

/// Where a request's tenant (application, user) label comes from; off unless configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantFrom {
    /// A request header, e.g. `x-tenant-id`.
    Header(&'static str),
    /// A top-level field of the JSON body within its first 4 KiB, e.g. OpenAI's `user`.
    BodyField(&'static [u8]),
}

/// The request-body fields looked for while a body streams by.
#[derive(Debug)]
struct BodyFields {
    model: FieldFinder,
    stream: FieldFinder,
    tenant: Option<FieldFinder>,
    digest: Digester,
}

impl BodyFields {
    fn new(tenant: Option<TenantFrom>) -> Self {
        Self {
            model: FieldFinder::new(b"model", BODY_SCAN),
            stream: FieldFinder::new(b"stream", BODY_SCAN),
            tenant: match tenant {
                Some(TenantFrom::BodyField(k)) => Some(FieldFinder::new(k, BODY_SCAN)),
                _ => None,
            },
            digest: Digester::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) {
        self.digest.feed(data);
        self.model.feed(data);
        self.stream.feed(data);
        if let Some(t) = self.tenant.as_mut() {
            t.feed(data);
        }
    }

    /// What was found, onto the exchange.
    fn apply(&self, ex: &mut Exchange) {
        let m = &self.model;
        ex.model = m.value().filter(|_| m.is_string()).map(str::to_string);
        ex.stream_requested = self.stream.value().and_then(|v| v.parse().ok());
        if let Some(t) = &self.tenant {
            ex.tenant = t.value().filter(|_| t.is_string()).map(str::to_string);
        }
        ex.body_digest = self.digest.result();
    }
}

#[derive(Debug)]
enum ReqState {
    Head,
    Body { left: u64 },
    ChunkedBody(Dechunker),
}

#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Dechunker),
    UntilClose,
}

#[derive(Debug)]
enum RespState {
    Head,
    Body(Framing),
}

/// One direction's bytes from one syscall.
#[derive(Debug, Clone, Copy)]
pub struct Bytes<'a> {
    /// Syscall exit, monotonic ns.
    pub ts_ns: u64,
    /// Bytes the syscall moved (its return value).
    pub total: usize,
    /// The captured prefix (`captured.len() <= total`).
    pub captured: &'a [u8],
    /// TCP sequence number of the first byte, when known.
    pub seq: Option<u32>,
}

/// Follows one server-side connection.
#[derive(Debug)]
pub struct HttpConn {
    req: ReqState,
    head: Vec<u8>,
    /// Exchange whose request is being read.
    reading: Option<Exchange>,
    req_finders: Option<BodyFields>,
    /// Where the tenant label comes from (none: not extracted).
    tenant_from: Option<TenantFrom>,
    /// Requests read, awaiting or receiving their response (front = being answered).
    pending: VecDeque<Exchange>,
    resp: RespState,
    resp_head: Vec<u8>,
    sse: SseScanner,
    id_finder: FieldFinder,
    /// The end of the current response body, for its `usage`.
    usage_tail: UsageTail,
    /// Chunk data of the current response was skipped since the last chunk boundary.
    body_skipped: bool,
    /// Set when the client's read side reported EOF or reset.
    pub client_eof_ns: Option<u64>,
    /// Why following stopped.
    pub gave_up: Option<&'static str>,
    /// Bytes written with no request to answer.
    pub unsolicited_bytes: u64,
    /// Bytes read while following had stopped (requests lost to a give-up).
    pub ignored_bytes: u64,
    /// Times following restarted on an idle connection after a give-up.
    pub resyncs: u64,
    /// Responses that began before their request's body was read.
    pub early_responses: u64,
}

impl Default for HttpConn {
    fn default() -> Self {
        Self::new()
    }
}

fn header<'a>(h: &'a [httparse::Header<'a>], name: &str) -> Option<&'a [u8]> {
    h.iter()
        .find(|x| x.name.eq_ignore_ascii_case(name))
        .map(|x| x.value)
}

fn header_str(h: &[httparse::Header<'_>], name: &str) -> Option<String> {
    header(h, name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .map(|s| s.trim().chars().take(256).collect())
}

/// Whether `b` starts like an HTTP/1.x request line (`METHOD SP`).
fn looks_like_request(b: &[u8]) -> bool {
    let method_len = b.iter().take(16).position(|&c| c == b' ').unwrap_or(0);
    method_len > 0 && b[..method_len].iter().all(u8::is_ascii_uppercase)
}

/// Whether `b` starts like an HTTP/1.x request line to a path or an absolute URL
/// (`METHOD SP /…` or `METHOD SP http…`): what makes an outbound connection followed.
pub fn starts_request_line(b: &[u8]) -> bool {
    let method_len = b.iter().take(16).position(|&c| c == b' ').unwrap_or(0);
    looks_like_request(b) && matches!(b.get(method_len + 1), Some(b'/' | b'h'))
}

fn is_chunked(h: &[httparse::Header<'_>]) -> bool {
    header(h, "transfer-encoding")
        .and_then(|v| std::str::from_utf8(v).ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
}

fn content_length(h: &[httparse::Header<'_>]) -> Option<u64> {
    header(h, "content-length")
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// End of the head in `b` (just past its blank line), searching only from where the bytes
/// added since the last search (`before` of them were already searched) could complete it.
fn find_head_end(b: &[u8], before: usize) -> Option<usize> {
    let from = before.saturating_sub(3);
    b[from..]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| from + p + 4)
}

impl HttpConn {
    /// A connection with nothing seen yet.
    pub fn new() -> Self {
        Self {
            req: ReqState::Head,
            head: Vec::new(),
            reading: None,
            req_finders: None,
            tenant_from: None,
            pending: VecDeque::new(),
            resp: RespState::Head,
            resp_head: Vec::new(),
            sse: SseScanner::new(),
            id_finder: FieldFinder::new(b"id", BODY_SCAN),
            usage_tail: UsageTail::default(),
            body_skipped: false,
            client_eof_ns: None,
            gave_up: None,
            unsolicited_bytes: 0,
            ignored_bytes: 0,
            resyncs: 0,
            early_responses: 0,
        }
    }

    /// A connection that also extracts each request's tenant label from `from`.
    pub fn with_tenant(from: Option<TenantFrom>) -> Self {
        Self {
            tenant_from: from,
            ..Self::new()
        }
    }

    /// No request in progress and none awaiting a response.
    pub fn idle(&self) -> bool {
        self.reading.is_none() && self.pending.is_empty() && self.head.is_empty()
    }

    /// Earliest request start among exchanges in flight (for timeouts).
    pub fn oldest_start_ns(&self) -> Option<u64> {
        self.pending
            .front()
            .map(|e| e.req_first_read_ns)
            .or(self.reading.as_ref().map(|e| e.req_first_read_ns))
    }

    fn give_up(&mut self, why: &'static str) {
        if self.gave_up.is_none() {
            self.gave_up = Some(why);
        }
    }

    /// Bytes the server read. Completed exchanges are not emitted here (a request completes
    /// with its response); malformed input marks the connection lost.
    pub fn on_read(&mut self, b: Bytes<'_>) {
        if b.total == 0 {
            return;
        }
        if self.gave_up.is_some() {
            // With nothing in flight, a read that starts like a request head starts afresh.
            if self.idle() && looks_like_request(b.captured) {
                self.gave_up = None;
                self.resp = RespState::Head;
                self.resp_head.clear();
                self.resyncs += 1;
            } else {
                self.ignored_bytes += b.total as u64;
                return;
            }
        }
        let uncaptured = b.total - b.captured.len().min(b.total);
        let mut data = &b.captured[..b.captured.len().min(b.total)];
        let mut seq = b.seq;
        loop {
            match &mut self.req {
                ReqState::Head => {
                    if data.is_empty() {
                        if uncaptured > 0 {
                            self.give_up("request head not captured");
                        }
                        return;
                    }
                    if self.reading.is_none() {
                        self.reading = Some(Exchange {
                            req_first_read_ns: b.ts_ns,
                            req_first_seq: seq,
                            ..Default::default()
                        });
                    }
                    let before = self.head.len();
                    let take = data.len().min(MAX_HEAD - before);
                    self.head.extend_from_slice(&data[..take]);
                    let Some(end) = find_head_end(&self.head, before) else {
                        if self.head.len() >= MAX_HEAD {
                            self.give_up("request head larger than 16 KiB");
                        } else if uncaptured > 0 {
                            self.give_up("request head not captured");
                        }
                        if let Some(r) = self.reading.as_mut() {
                            r.req_bytes += data.len() as u64;
                        }
                        return;
                    };
                    let used = end - before;
                    let mut hdrs = [httparse::EMPTY_HEADER; 64];
                    let mut req = httparse::Request::new(&mut hdrs);
                    match req.parse(&self.head[..end]) {
                        Ok(httparse::Status::Complete(_)) => {}
                        _ => {
                            self.give_up("malformed request head");
                            return;
                        }
                    }
                    let ex = self.reading.as_mut().expect("set above");
                    ex.method = req.method.unwrap_or("").to_string();
                    ex.path = req.path.unwrap_or("").chars().take(512).collect();
                    ex.traceparent = header_str(req.headers, "traceparent");
                    ex.x_request_id = header_str(req.headers, "x-request-id");
                    if let Some(TenantFrom::Header(h)) = self.tenant_from {
                        ex.tenant = header_str(req.headers, h);
                    }
                    ex.req_bytes += used as u64;
                    let next = if is_chunked(req.headers) {
                        ReqState::ChunkedBody(Dechunker::new())
                    } else {
                        ReqState::Body {
                            left: content_length(req.headers).unwrap_or(0),
                        }
                    };
                    self.head.clear();
                    self.req = next;
                    self.req_finders = Some(BodyFields::new(self.tenant_from));
                    data = &data[used..];
                    seq = seq.map(|s| s.wrapping_add(used as u32));
                    if matches!(self.req, ReqState::Body { left: 0 }) {
                        self.finish_request(b.ts_ns);
                    }
                }
                ReqState::Body { left } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    let total_n = (*left).min((data.len() + uncaptured) as u64);
                    if let Some(f) = self.req_finders.as_mut() {
                        f.feed(&data[..n]);
                        f.digest.skip(total_n - n as u64);
                    }
                    *left -= total_n;
                    if let Some(r) = self.reading.as_mut() {
                        r.req_bytes += total_n;
                    }
                    let done = *left == 0;
                    if done {
                        self.finish_request(b.ts_ns);
                    }
                    if n < data.len() {
                        // Pipelined: the next request begins in this read.
                        data = &data[n..];
                        seq = seq.map(|s| s.wrapping_add(n as u32));
                        if uncaptured > 0 {
                            self.give_up("pipelined request not captured");
                            return;
                        }
                        continue;
                    }
                    let extra = (data.len() + uncaptured) as u64 - total_n;
                    if extra > 0 {
                        self.give_up("pipelined request not captured");
                    }
                    return;
                }
                ReqState::ChunkedBody(d) => {
                    let finders = &mut self.req_finders;
                    if let (true, Some(f)) = (uncaptured > 0, finders.as_mut()) {
                        f.digest.skip(uncaptured as u64);
                    }
                    let used = d.feed(data, uncaptured, &mut |p| {
                        if let (Piece::Data(x), Some(f)) = (p, finders.as_mut()) {
                            f.feed(x);
                        }
                    });
                    let (done, lost) = (d.done(), d.lost());
                    if let Some(r) = self.reading.as_mut() {
                        r.req_bytes += used as u64;
                    }
                    if lost {
                        self.give_up("request chunk framing lost");
                        return;
                    }
                    if done {
                        self.finish_request(b.ts_ns);
                        let rest_total = data.len() + uncaptured - used;
                        let used_captured = used.min(data.len());
                        data = &data[used_captured..];
                        seq = seq.map(|s| s.wrapping_add(used_captured as u32));
                        if data.is_empty() {
                            if rest_total > 0 {
                                // The next request's bytes were not captured.
                                self.give_up("pipelined request not captured");
                            }
                            return;
                        }
                        continue;
                    }
                    return;
                }
            }
        }
    }

    fn finish_request(&mut self, ts: u64) {
        self.req = ReqState::Head;
        let Some(mut ex) = self.reading.take() else {
            return;
        };
        ex.req_done_ns = ts;
        if let Some(f) = self.req_finders.take() {
            f.apply(&mut ex);
        }
        if self.pending.len() >= MAX_PIPELINE {
            self.give_up("too many pipelined requests");
            return;
        }
        self.pending.push_back(ex);
    }

    /// Bytes the server wrote; completed exchanges are pushed to `out`.
    pub fn on_write(&mut self, b: Bytes<'_>, out: &mut Vec<Exchange>) {
        if b.total == 0 {
            return;
        }
        if self.gave_up.is_some() {
            if let Some(front) = self.pending.front_mut() {
                front.resp_bytes += b.total as u64;
                // A response that began after following stopped still has a first write (fuzzing
                // found exchanges with a last write and no first).
                front.resp_first_ns.get_or_insert(b.ts_ns);
                front.resp_last_ns = Some(b.ts_ns);
            }
            return;
        }
        let uncaptured = b.total - b.captured.len().min(b.total);
        let mut data = &b.captured[..b.captured.len().min(b.total)];
        let mut unc = uncaptured;
        // An interim `100 Continue` asks for the body; anything else answers the request.
        let interim = data.len() > 9 && data.starts_with(b"HTTP/1.") && data[9] == b'1';
        if self.pending.is_empty() && matches!(self.resp, RespState::Head) && !interim {
            self.answer_early(b.ts_ns);
        }
        loop {
            let Some(front) = self.pending.front_mut() else {
                self.unsolicited_bytes += (data.len() + unc) as u64;
                return;
            };
            if front.resp_first_ns.is_none() {
                front.resp_first_ns = Some(b.ts_ns);
                // Bytes of this write before the response (the end of the previous one).
                let before = b.total - (data.len() + unc);
                front.resp_first_seq = b.seq.map(|s| s.wrapping_add(before as u32));
            }
            front.resp_last_ns = Some(b.ts_ns);
            match &mut self.resp {
                RespState::Head => {
                    if data.is_empty() {
                        if unc > 0 {
                            front.resp_bytes += unc as u64;
                            self.give_up("response head not captured");
                        }
                        return;
                    }
                    let before = self.resp_head.len();
                    let take = data.len().min(MAX_HEAD - before);
                    self.resp_head.extend_from_slice(&data[..take]);
                    let Some(end) = find_head_end(&self.resp_head, before) else {
                        front.resp_bytes += (data.len() + unc) as u64;
                        if self.resp_head.len() >= MAX_HEAD {
                            self.give_up("response head larger than 16 KiB");
                        } else if unc > 0 {
                            self.give_up("response head not captured");
                        }
                        return;
                    };
                    let used = end - before;
                    let mut hdrs = [httparse::EMPTY_HEADER; 64];
                    let mut resp = httparse::Response::new(&mut hdrs);
                    match resp.parse(&self.resp_head[..end]) {
                        Ok(httparse::Status::Complete(_)) => {}
                        _ => {
                            front.resp_bytes += (data.len() + unc) as u64;
                            self.give_up("malformed response head");
                            return;
                        }
                    }
                    let code = resp.code.unwrap_or(0);
                    front.resp_bytes += used as u64;
                    data = &data[used..];
                    if (100..200).contains(&code) {
                        // Interim response (100 Continue): the real head follows.
                        self.resp_head.clear();
                        continue;
                    }
                    front.status = Some(code);
                    front.sse = header(resp.headers, "content-type").is_some_and(|v| {
                        v.windows(17)
                            .any(|w| w.eq_ignore_ascii_case(b"text/event-stream"))
                    });
                    let head_request = front.method.eq_ignore_ascii_case("HEAD");
                    let framing = if head_request || code == 204 || code == 304 {
                        Framing::Length(0)
                    } else if is_chunked(resp.headers) {
                        Framing::Chunked(Dechunker::new())
                    } else if let Some(n) = content_length(resp.headers) {
                        Framing::Length(n)
                    } else {
                        Framing::UntilClose
                    };
                    self.resp_head.clear();
                    self.sse = SseScanner::new();
                    self.id_finder = FieldFinder::new(b"id", BODY_SCAN);
                    self.usage_tail.gap();
                    self.body_skipped = false;
                    self.resp = RespState::Body(framing);
                    if matches!(self.resp, RespState::Body(Framing::Length(0))) {
                        self.finish_response(b.ts_ns, Outcome::Complete, out);
                        if data.is_empty() && unc == 0 {
                            return;
                        }
                    }
                }
                RespState::Body(framing) => {
                    let ts = b.ts_ns;
                    let sse = &mut self.sse;
                    let idf = &mut self.id_finder;
                    let tail = &mut self.usage_tail;
                    let is_sse = front.sse;
                    let mut content = |x: &[u8], front: &mut Exchange, resync: bool| {
                        let mut on = |kind, t| match kind {
                            SseLine::Content(p) => {
                                if p.token {
                                    front.chunks += 1;
                                    if front.chunk_ns.len() < MAX_CHUNK_TIMES {
                                        front.chunk_ns.push(t);
                                    }
                                }
                                if p.visible && front.first_text_ns.is_none() {
                                    front.first_text_ns = Some(t);
                                }
                            }
                            SseLine::Done => {
                                front.done_marker = true;
                                front.done_ns = Some(t);
                            }
                        };
                        if resync {
                            tail.gap();
                            if is_sse {
                                sse.resync(&mut on);
                            }
                        }
                        idf.feed(x);
                        tail.feed(x);
                        if is_sse {
                            sse.feed(ts, x, &mut on);
                        }
                    };
                    match framing {
                        Framing::Length(left) => {
                            let n = (*left).min(data.len() as u64) as usize;
                            content(&data[..n], front, false);
                            let total_n = (*left).min((data.len() + unc) as u64);
                            if total_n as usize > n {
                                // Skipped bytes inside an event: its line is unknown.
                                content(&[], front, true);
                            }
                            *left -= total_n;
                            front.resp_bytes += total_n;
                            let rest_c = data.len() - n;
                            let rest_total = (data.len() + unc) as u64 - total_n;
                            if *left == 0 {
                                self.finish_response(ts, Outcome::Complete, out);
                            }
                            if rest_total == 0 {
                                return;
                            }
                            data = &data[n..];
                            unc = rest_total as usize - rest_c;
                        }
                        Framing::UntilClose => {
                            content(data, front, false);
                            if unc > 0 {
                                content(&[], front, true);
                            }
                            front.resp_bytes += (data.len() + unc) as u64;
                            return;
                        }
                        Framing::Chunked(d) => {
                            // After skipped chunk data, the next chunk starts a new SSE line
                            // (servers write one event per chunk).
                            let mut skipped = self.body_skipped;
                            let mut resync = false;
                            let used = d.feed(data, unc, &mut |p| match p {
                                Piece::Data(x) => content(x, front, std::mem::take(&mut resync)),
                                Piece::Skipped(_) => skipped = true,
                                Piece::Boundary if skipped => {
                                    resync = true;
                                    skipped = false;
                                }
                                _ => {}
                            });
                            self.body_skipped = skipped;
                            front.resp_bytes += used as u64;
                            let (done, lost) = (d.done(), d.lost());
                            if lost {
                                self.give_up("response chunk framing lost");
                                return;
                            }
                            if done {
                                self.finish_response(ts, Outcome::Complete, out);
                                let used_c = used.min(data.len());
                                let rest_total = data.len() + unc - used;
                                if rest_total == 0 {
                                    return;
                                }
                                data = &data[used_c..];
                                unc = rest_total - data.len();
                                continue;
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// The server answers a request whose head was parsed but whose body is still arriving
    /// (a 401 or 413 sent before reading the body, say): the response belongs to that request,
    /// which moves to `pending` now; the rest of its body is consumed without a new exchange.
    fn answer_early(&mut self, ts: u64) {
        if !matches!(self.req, ReqState::Body { .. } | ReqState::ChunkedBody(_)) {
            return;
        }
        let Some(mut ex) = self.reading.take() else {
            return;
        };
        ex.req_done_ns = ts;
        if let Some(f) = self.req_finders.as_ref() {
            f.apply(&mut ex);
        }
        self.early_responses += 1;
        self.pending.push_back(ex);
    }

    fn finish_response(&mut self, _ts: u64, outcome: Outcome, out: &mut Vec<Exchange>) {
        self.resp = RespState::Head;
        let Some(mut ex) = self.pending.pop_front() else {
            return;
        };
        // Only an exchange whose response head was seen has a response id: the finder holds
        // the last response's, and is cleared with it.
        let finder = std::mem::replace(&mut self.id_finder, FieldFinder::new(b"id", BODY_SCAN));
        let usage = self.usage_tail.take();
        if ex.status.is_some() {
            ex.response_id = finder.value().map(str::to_string);
            ex.usage = usage;
        }
        ex.outcome = Some(outcome);
        ex.gave_up = self.gave_up;
        out.push(ex);
    }

    /// The client side reported EOF or reset (a read returned 0 or an error).
    pub fn on_client_eof(&mut self, ts_ns: u64) {
        self.client_eof_ns.get_or_insert(ts_ns);
    }

    /// The connection closed: everything in flight ends now.
    pub fn on_close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>) {
        if matches!(self.resp, RespState::Body(Framing::UntilClose)) && !self.pending.is_empty() {
            self.finish_response(ts_ns, Outcome::Complete, out);
        }
        let abort = if self.client_eof_ns.is_some() {
            Outcome::ClientAbort
        } else {
            Outcome::ServerClose
        };
        self.flush(abort, out);
    }

    /// Ends everything in flight with `outcome` (timeouts, eviction).
    pub fn flush(&mut self, outcome: Outcome, out: &mut Vec<Exchange>) {
        let oc = if self.gave_up.is_some() && outcome != Outcome::Timeout {
            Outcome::Lost
        } else {
            outcome
        };
        while !self.pending.is_empty() {
            self.finish_response(0, oc, out);
        }
        if let Some(mut ex) = self.reading.take() {
            if !ex.method.is_empty() {
                ex.outcome = Some(oc);
                ex.gave_up = self.gave_up;
                out.push(ex);
            }
        }
        self.head.clear();
        self.req = ReqState::Head;
    }
}

#[cfg(test)]
mod tests;
