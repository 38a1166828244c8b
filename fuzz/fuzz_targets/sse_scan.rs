//! The streamed-body scanners and the chunked decoder: no panic on any bytes, and the same result
//! for every split of the same input (they promise constant state and any-split feeding).
#![no_main]
use libfuzzer_sys::fuzz_target;
use node_probe::http::chunked::{Dechunker, Piece};
use node_probe::http::scan::{FieldFinder, SseLine, SseScanner};

/// Split points from the first byte: input = [n splits][splits...][data].
fn split(input: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&n, rest)) = input.split_first() else {
        return (Vec::new(), input);
    };
    let n = (n as usize % 16).min(rest.len());
    let (cuts, data) = rest.split_at(n);
    let mut at: Vec<usize> = cuts
        .iter()
        .map(|&c| {
            if data.is_empty() {
                0
            } else {
                c as usize % (data.len() + 1)
            }
        })
        .collect();
    at.sort_unstable();
    (at, data)
}

fn pieces<'a>(data: &'a [u8], at: &[usize]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut prev = 0;
    for &c in at {
        out.push(&data[prev..c]);
        prev = c;
    }
    out.push(&data[prev..]);
    out
}

fn sse(parts: &[&[u8]]) -> Vec<SseLine> {
    let mut s = SseScanner::new();
    let mut lines = Vec::new();
    for p in parts {
        s.feed(0, p, &mut |l, _| lines.push(l));
    }
    lines
}

fn field(parts: &[&[u8]]) -> Option<(String, bool)> {
    let mut f = FieldFinder::new(b"model", 4096);
    for p in parts {
        f.feed(p);
    }
    f.value().map(|v| (v.to_owned(), f.is_string()))
}

/// Data bytes, boundaries, end or loss, merged so that splits of data do not matter.
fn dechunk(parts: &[&[u8]]) -> (Vec<u8>, usize, bool, Option<&'static str>, usize) {
    let mut d = Dechunker::new();
    let (mut data, mut boundaries, mut end, mut lost, mut consumed) =
        (Vec::new(), 0, false, None, 0);
    for p in parts {
        if end || lost.is_some() {
            break;
        }
        consumed += d.feed(p, 0, &mut |piece| match piece {
            Piece::Data(b) => data.extend_from_slice(b),
            Piece::Skipped(_) => {}
            Piece::Boundary => boundaries += 1,
            Piece::End => end = true,
            Piece::Lost(why) => lost = Some(why),
        });
    }
    assert!(consumed <= parts.iter().map(|p| p.len()).sum::<usize>());
    // After a loss the decoder takes whatever it is offered: only where the message ended (or
    // that it has not) is a fact of the bytes.
    if lost.is_some() {
        consumed = 0;
    }
    (data, boundaries, end, lost, consumed)
}

fuzz_target!(|input: &[u8]| {
    let (at, data) = split(input);
    let whole = [data];
    let parts = pieces(data, &at);
    assert_eq!(sse(&whole), sse(&parts), "SSE lines depend on the split");
    assert_eq!(
        field(&whole),
        field(&parts),
        "field value depends on the split"
    );
    let (a, b) = (dechunk(&whole), dechunk(&parts));
    assert_eq!(a, b, "chunked decoding depends on the split");
});
