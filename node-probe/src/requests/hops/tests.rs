use super::*;

fn ms(n: u64) -> u64 {
    n * 1_000_000
}

fn outbound(pid: u32, start: u64, end: u64) -> Outbound {
    Outbound {
        pid,
        tuple: None,
        ex: Exchange {
            method: "POST".into(),
            path: "/v1/completions".into(),
            req_first_read_ns: ms(start),
            req_first_seq: Some(start as u32),
            resp_first_seq: Some(end as u32),
            resp_last_ns: Some(ms(end)),
            ..Default::default()
        },
        done_ns: ms(end),
    }
}

fn inbound(pid: u32, start: u64, end: u64) -> Inbound {
    Inbound {
        pid,
        trace_id: TraceId::from_bytes([start as u8 + 1; 16]),
        root: SpanId::from_bytes([start as u8 + 1; 8]),
        x_request_id: None,
        trace_in_header: None,
        response_id: None,
        body: None,
        start_ns: ms(start),
        end_ns: ms(end),
    }
}

fn digest(h: u64) -> Option<BodyDigest> {
    Some(BodyDigest { len: 100, hash: h })
}

const ALONE: &dyn Fn(u32) -> bool = &|_| true;
const BUSY: &dyn Fn(u32) -> bool = &|_| false;

#[test]
fn parses_methods() {
    assert_eq!(
        LinkMethods::parse("header,response-id,body,timing").unwrap(),
        LinkMethods::default()
    );
    let m = LinkMethods::parse("body").unwrap();
    assert!(m.body && !m.header && !m.response_id && !m.timing);
    assert_eq!(
        LinkMethods::parse("none").unwrap(),
        LinkMethods::parse("").unwrap()
    );
    assert!(LinkMethods::parse("guess").unwrap_err().contains("guess"));
}

#[test]
fn header_links_retries_and_leaves_strangers() {
    let mut l = Linker::new(LinkMethods::default());
    let mut ev = Vec::new();
    for (s, e, id) in [(11, 20, "a"), (21, 30, "a"), (12, 25, "b")] {
        let mut ob = outbound(7, s, e);
        ob.ex.x_request_id = Some(id.into());
        assert!(l.on_outbound(ob, ALONE, &mut ev).is_none());
    }
    let mut ib = inbound(7, 10, 40);
    ib.x_request_id = Some("a".into());
    let got = l.claim(ib, ms(40), BUSY);
    let starts: Vec<u64> = got.iter().map(|(o, _)| o.start_ns()).collect();
    assert_eq!(starts, [ms(11), ms(21)]);
    assert!(got.iter().all(|(_, h)| *h == LinkMethod::Header));
    assert_eq!(l.pending(), 1, "the other request's call stays");
    assert!(ev.is_empty());
}

#[test]
fn response_id_and_body_rank_below_header() {
    let mut l = Linker::new(LinkMethods::default());
    let mut ev = Vec::new();
    let mut a = outbound(7, 11, 20);
    a.ex.response_id = Some("cmpl-1".into());
    a.ex.body_digest = digest(5);
    l.on_outbound(a, ALONE, &mut ev);
    let mut ib = inbound(7, 10, 40);
    ib.response_id = Some("cmpl-1".into());
    ib.body = digest(5);
    let got = l.claim(ib, ms(40), ALONE);
    assert_eq!(got[0].1, LinkMethod::ResponseId);
}

#[test]
fn body_links_sequential_calls_only() {
    let mut l = Linker::new(LinkMethods::parse("body").unwrap());
    let mut ev = Vec::new();
    // Two side by side with the same body (two clients sent the same prompt), then a retry.
    for (s, e) in [(11, 20), (12, 19), (21, 30)] {
        let mut ob = outbound(7, s, e);
        ob.ex.body_digest = digest(9);
        l.on_outbound(ob, ALONE, &mut ev);
    }
    let mut ib = inbound(7, 10, 40);
    ib.body = digest(9);
    let got: Vec<u64> = l
        .claim(ib, ms(40), ALONE)
        .iter()
        .map(|(o, _)| o.start_ns())
        .collect();
    assert_eq!(got, [ms(11), ms(21)]);
    assert_eq!(l.pending(), 1);
}

#[test]
fn outside_the_window_or_another_process_is_never_linked() {
    let mut l = Linker::new(LinkMethods::default());
    let mut ev = Vec::new();
    let mut early = outbound(7, 5, 20);
    early.ex.x_request_id = Some("a".into());
    let mut other = outbound(8, 11, 20);
    other.ex.x_request_id = Some("a".into());
    l.on_outbound(early, ALONE, &mut ev);
    l.on_outbound(other, ALONE, &mut ev);
    let mut ib = inbound(7, 10, 40);
    ib.x_request_id = Some("a".into());
    assert!(l.claim(ib, ms(40), ALONE).is_empty());
}

#[test]
fn timing_needs_one_call_and_no_other_request_in_flight() {
    let mut l = Linker::new(LinkMethods::parse("timing").unwrap());
    let mut ev = Vec::new();
    l.on_outbound(outbound(7, 11, 20), ALONE, &mut ev);
    assert!(l.claim(inbound(7, 10, 40), ms(40), BUSY).is_empty());
    assert_eq!(l.stats.ambiguous, 1);
    let got = l.claim(inbound(7, 10, 40), ms(40), ALONE);
    assert_eq!(got[0].1, LinkMethod::Timing);
    l.on_outbound(outbound(7, 51, 60), ALONE, &mut ev);
    l.on_outbound(outbound(7, 52, 61), ALONE, &mut ev);
    assert!(l.claim(inbound(7, 50, 70), ms(70), ALONE).is_empty());
}

#[test]
fn a_call_finishing_after_its_request_is_linked_late() {
    let mut l = Linker::new(LinkMethods::default());
    let mut ev = Vec::new();
    let mut ib = inbound(7, 10, 40);
    ib.x_request_id = Some("a".into());
    assert!(l.claim(ib.clone(), ms(40), ALONE).is_empty());
    let mut ob = outbound(7, 30, 45);
    ob.ex.x_request_id = Some("a".into());
    let (_, got, how) = l.on_outbound(ob, ALONE, &mut ev).expect("linked");
    assert_eq!((got.trace_id, how), (ib.trace_id, LinkMethod::Header));
}

#[test]
fn waiting_is_bounded_and_expires_unlinked() {
    let mut l = Linker::new(LinkMethods::default());
    let mut ev = Vec::new();
    for i in 0..=MAX_PENDING as u64 {
        l.on_outbound(outbound(7, i, i + 1), ALONE, &mut ev);
    }
    assert_eq!((ev.len(), l.stats.pending_full), (1, 1));
    assert_eq!(l.pending(), MAX_PENDING);
    let mut out = Vec::new();
    l.expire(ms(MAX_PENDING as u64) + LINGER_NS + ms(2), &mut out);
    assert_eq!(out.len(), MAX_PENDING);
    assert_eq!(l.pending(), 0);
}

#[test]
fn client_span_id_is_the_hop_id() {
    let ob = outbound(7, 11, 20);
    let s = client_span(&ob, LinkMethod::Body, 0, None, &WallClock::new());
    assert_eq!(s.span_id, hop_id(11, Some(20)));
    assert_eq!(s.attributes["inferscope.hop.link"], "body");
    assert_eq!(s.name, "http.client");
}
