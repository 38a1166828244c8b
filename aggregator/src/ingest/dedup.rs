//! Recognising resent batches. A batch id (`node/boot/sequence`) is *in flight* from the moment
//! it is queued until its commit succeeds (then *stored*) or fails (then forgotten, so that the
//! resend is written). Stored ids are remembered in memory (bounded, oldest forgotten first) and
//! reloaded from `ingested_batches` at start, so a resend after an aggregator restart is still
//! recognised.
use std::collections::{HashSet, VecDeque};
use std::sync::Mutex;

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Never seen: queue it.
    New,
    /// Already stored: acknowledge as duplicate.
    Stored,
    /// Being written right now: ask the node to retry later.
    InFlight,
}

#[derive(Default)]
struct Inner {
    stored: HashSet<String>,
    order: VecDeque<String>,
    inflight: HashSet<String>,
}

/// The shared dedup state.
pub struct Dedup {
    inner: Mutex<Inner>,
    capacity: usize,
}

impl Dedup {
    /// Remembers up to `capacity` stored batch ids.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            capacity: capacity.max(1),
        }
    }

    /// Classifies `id` and, when new, marks it in flight.
    pub fn check_and_claim(&self, id: &str) -> Seen {
        let mut g = self.inner.lock().expect("dedup lock");
        if g.stored.contains(id) {
            Seen::Stored
        } else if !g.inflight.insert(id.to_string()) {
            Seen::InFlight
        } else {
            Seen::New
        }
    }

    /// The batch was committed.
    pub fn mark_stored(&self, id: &str) {
        let mut g = self.inner.lock().expect("dedup lock");
        g.inflight.remove(id);
        if g.stored.insert(id.to_string()) {
            g.order.push_back(id.to_string());
            while g.order.len() > self.capacity {
                if let Some(old) = g.order.pop_front() {
                    g.stored.remove(&old);
                }
            }
        }
    }

    /// The batch was not stored (it will be resent).
    pub fn unmark_inflight(&self, id: &str) {
        self.inner.lock().expect("dedup lock").inflight.remove(id);
    }

    /// Stored ids remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().expect("dedup lock").stored.len()
    }

    /// Nothing remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let d = Dedup::new(2);
        assert_eq!(d.check_and_claim("a"), Seen::New);
        assert_eq!(d.check_and_claim("a"), Seen::InFlight);
        d.unmark_inflight("a");
        assert_eq!(d.check_and_claim("a"), Seen::New);
        d.mark_stored("a");
        assert_eq!(d.check_and_claim("a"), Seen::Stored);
        d.mark_stored("b");
        d.mark_stored("c");
        assert_eq!(d.len(), 2, "bounded");
        assert_eq!(d.check_and_claim("a"), Seen::New, "oldest forgotten");
    }
}
