//! Byte-counting HTTP/1.1 chunked-transfer decoder.
//!
//! It is fed the bytes a syscall moved, of which only a prefix may have been captured. Chunk data
//! it has not seen is skipped by count; chunk *framing* it has not seen loses sync, which is
//! reported once (`Lost`) and ends decoding for that message.

/// What one call to [`Dechunker::feed`] produced, in order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Captured chunk data.
    Data(&'a [u8]),
    /// `n` bytes of chunk data that were moved but not captured.
    Skipped(usize),
    /// A chunk boundary (the start of a new chunk's data).
    Boundary,
    /// The zero-length last chunk and its trailer were read: the message is complete.
    End,
    /// Framing was not captured or is malformed; decoding stops here.
    Lost(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    /// Reading the hex size line; `size` accumulated so far, `ext` true after ';'.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
        cr: bool,
    },
    /// Inside chunk data.
    Data {
        left: u64,
    },
    /// Expecting CRLF after chunk data (`got` bytes of it seen).
    DataEnd {
        got: u8,
    },
    /// After the last chunk: trailer lines until an empty line. `line_len` of current line.
    Trailer {
        line_len: u32,
        cr: bool,
    },
    Done,
    Lost,
}

/// Incremental chunked decoder with constant state.
#[derive(Debug, Clone)]
pub struct Dechunker {
    st: St,
}

impl Default for Dechunker {
    fn default() -> Self {
        Self::new()
    }
}

const MAX_SIZE_DIGITS: u8 = 16;

impl Dechunker {
    /// A decoder at the start of a chunked body.
    pub fn new() -> Self {
        Self {
            st: St::Size {
                size: 0,
                digits: 0,
                ext: false,
                cr: false,
            },
        }
    }

    /// True once the last chunk has been read.
    pub fn done(&self) -> bool {
        self.st == St::Done
    }

    /// True once sync was lost.
    pub fn lost(&self) -> bool {
        self.st == St::Lost
    }

    /// Feeds `data` (captured) followed by `uncaptured` bytes that were moved but not seen.
    /// Calls `out` for every piece, in order. Returns the number of bytes (captured + uncaptured)
    /// consumed; fewer than offered only when the message ended (the rest belongs to the next
    /// message on the connection).
    pub fn feed(
        &mut self,
        data: &[u8],
        uncaptured: usize,
        out: &mut impl FnMut(Piece<'_>),
    ) -> usize {
        let mut i = 0;
        while i < data.len() {
            match self.st {
                St::Done => return i,
                St::Lost => return data.len() + uncaptured,
                St::Data { left } => {
                    let n = (left.min((data.len() - i) as u64)) as usize;
                    out(Piece::Data(&data[i..i + n]));
                    i += n;
                    let left = left - n as u64;
                    self.st = if left == 0 {
                        St::DataEnd { got: 0 }
                    } else {
                        St::Data { left }
                    };
                }
                St::DataEnd { got } => {
                    let want = if got == 0 { b'\r' } else { b'\n' };
                    if data[i] != want {
                        self.st = St::Lost;
                        out(Piece::Lost("missing CRLF after chunk data"));
                        return data.len() + uncaptured;
                    }
                    i += 1;
                    self.st = if got == 0 {
                        St::DataEnd { got: 1 }
                    } else {
                        St::Size {
                            size: 0,
                            digits: 0,
                            ext: false,
                            cr: false,
                        }
                    };
                }
                St::Size {
                    size,
                    digits,
                    ext,
                    cr,
                } => {
                    let b = data[i];
                    i += 1;
                    if cr {
                        if b != b'\n' {
                            self.st = St::Lost;
                            out(Piece::Lost("malformed chunk size line"));
                            return data.len() + uncaptured;
                        }
                        if digits == 0 {
                            self.st = St::Lost;
                            out(Piece::Lost("empty chunk size"));
                            return data.len() + uncaptured;
                        }
                        if size == 0 {
                            self.st = St::Trailer {
                                line_len: 0,
                                cr: false,
                            };
                        } else {
                            out(Piece::Boundary);
                            self.st = St::Data { left: size };
                        }
                        continue;
                    }
                    match b {
                        b'\r' => {
                            self.st = St::Size {
                                size,
                                digits,
                                ext,
                                cr: true,
                            }
                        }
                        _ if ext => {}
                        b';' | b' ' | b'\t' => {
                            self.st = St::Size {
                                size,
                                digits,
                                ext: true,
                                cr,
                            }
                        }
                        _ => {
                            let Some(d) = (b as char).to_digit(16) else {
                                self.st = St::Lost;
                                out(Piece::Lost("non-hex chunk size"));
                                return data.len() + uncaptured;
                            };
                            if digits >= MAX_SIZE_DIGITS {
                                self.st = St::Lost;
                                out(Piece::Lost("chunk size too long"));
                                return data.len() + uncaptured;
                            }
                            self.st = St::Size {
                                size: size * 16 + u64::from(d),
                                digits: digits + 1,
                                ext,
                                cr,
                            };
                        }
                    }
                }
                St::Trailer { line_len, cr } => {
                    let b = data[i];
                    i += 1;
                    match (cr, b) {
                        (true, b'\n') if line_len == 0 => {
                            self.st = St::Done;
                            out(Piece::End);
                            return i;
                        }
                        (true, b'\n') => {
                            self.st = St::Trailer {
                                line_len: 0,
                                cr: false,
                            }
                        }
                        (_, b'\r') => self.st = St::Trailer { line_len, cr: true },
                        _ => {
                            if line_len > 8192 {
                                self.st = St::Lost;
                                out(Piece::Lost("trailer too long"));
                                return data.len() + uncaptured;
                            }
                            self.st = St::Trailer {
                                line_len: line_len + 1,
                                cr: false,
                            }
                        }
                    }
                }
            }
        }
        if uncaptured == 0 {
            return data.len();
        }
        match self.st {
            St::Data { left } if (uncaptured as u64) <= left => {
                out(Piece::Skipped(uncaptured));
                let left = left - uncaptured as u64;
                self.st = if left == 0 {
                    St::DataEnd { got: 0 }
                } else {
                    St::Data { left }
                };
                data.len() + uncaptured
            }
            // The rest of the chunk data and (part of) its CRLF, which the protocol fixes.
            St::Data { left } if (uncaptured as u64) <= left + 2 => {
                out(Piece::Skipped(left as usize));
                let crlf = uncaptured as u64 - left;
                self.st = if crlf == 2 {
                    St::Size {
                        size: 0,
                        digits: 0,
                        ext: false,
                        cr: false,
                    }
                } else {
                    St::DataEnd { got: crlf as u8 }
                };
                data.len() + uncaptured
            }
            St::DataEnd { got } if got as usize + uncaptured <= 2 => {
                let got = got as usize + uncaptured;
                self.st = if got == 2 {
                    St::Size {
                        size: 0,
                        digits: 0,
                        ext: false,
                        cr: false,
                    }
                } else {
                    St::DataEnd { got: got as u8 }
                };
                data.len() + uncaptured
            }
            St::Done => data.len(),
            St::Lost => data.len() + uncaptured,
            _ => {
                self.st = St::Lost;
                out(Piece::Lost("chunk framing not captured"));
                data.len() + uncaptured
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(d: &mut Dechunker, data: &[u8], unc: usize) -> (Vec<String>, usize) {
        let mut v = Vec::new();
        let n = d.feed(data, unc, &mut |p| {
            v.push(match p {
                Piece::Data(b) => format!("D:{}", String::from_utf8_lossy(b)),
                Piece::Skipped(n) => format!("S:{n}"),
                Piece::Boundary => "B".into(),
                Piece::End => "E".into(),
                Piece::Lost(r) => format!("L:{r}"),
            })
        });
        (v, n)
    }

    #[test]
    fn whole_and_split() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nNEXT";
        let mut d = Dechunker::new();
        let (v, n) = run(&mut d, body, 0);
        assert_eq!(v, ["B", "D:hello", "B", "D: world", "E"]);
        assert_eq!(n, body.len() - 4);
        assert!(d.done());
        // byte by byte gives the same data
        let mut d = Dechunker::new();
        let mut all = String::new();
        for b in body[..body.len() - 4].chunks(1) {
            let (v, _) = run(&mut d, b, 0);
            for p in v {
                if let Some(s) = p.strip_prefix("D:") {
                    all.push_str(s);
                }
            }
        }
        assert_eq!(all, "hello world");
        assert!(d.done());
    }

    #[test]
    fn uncaptured_data_is_skipped_by_count() {
        let mut d = Dechunker::new();
        // a 10-byte chunk of which 4 were captured, the other 6 not
        let (v, _) = run(&mut d, b"a\r\nabcd", 6);
        assert_eq!(v, ["B", "D:abcd", "S:6"]);
        let (v, _) = run(&mut d, b"\r\n0\r\n\r\n", 0);
        assert_eq!(v, ["E"]);
        // the missing part ends with the chunk's CRLF: still in sync
        let mut d = Dechunker::new();
        let (v, _) = run(&mut d, b"a\r\nabcd", 8);
        assert_eq!(v, ["B", "D:abcd", "S:6"]);
        let (v, _) = run(&mut d, b"1\r\nz\r\n", 0);
        assert_eq!(v, ["B", "D:z"]);
        // the missing part runs into the next chunk's size line: lost
        let mut d = Dechunker::new();
        let (v, _) = run(&mut d, b"a\r\nabcd", 9);
        assert_eq!(v.last().unwrap(), "L:chunk framing not captured");
        assert!(d.lost());
    }

    #[test]
    fn garbage_loses_sync_once() {
        for g in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"\r\n",
            b"12345678901234567\r\n",
        ] {
            let mut d = Dechunker::new();
            let (v, _) = run(&mut d, g, 0);
            assert!(v.last().unwrap().starts_with("L:"), "{g:?} -> {v:?}");
            let (v, _) = run(&mut d, b"5\r\nhello\r\n", 0);
            assert!(v.is_empty());
        }
    }
}
