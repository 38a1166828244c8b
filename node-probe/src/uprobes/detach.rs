//! Detaching off the main loop. Closing a uprobe link waits for RCU grace periods in the
//! kernel (measured here: 30–90 ms per link, 3 s for NCCL's 36 links), and the main loop must
//! keep draining the rings and following forks meanwhile: a 3 s stall there once meant that a
//! tensor-parallel worker's libraries were attached after its communicator and graph capture.
use std::collections::HashSet;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use aya::programs::uprobe::UProbeLink;
use tracing::warn;

use super::FileKey;

/// Files handed over at once before the main loop detaches inline (a bounded queue).
const QUEUE: usize = 64;

struct Job {
    key: FileKey,
    links: Vec<UProbeLink>,
}

/// A thread that drops (detaches) uprobe links handed to it.
pub struct Detacher {
    tx: Option<SyncSender<Job>>,
    /// Files whose links are still being detached: not attached again until done, or both
    /// the old and the new links would fire.
    pending: Arc<Mutex<HashSet<FileKey>>>,
    thread: Option<JoinHandle<()>>,
}

impl Detacher {
    /// Starts the thread (`uprobe-detach`). Without a thread (spawn failed), links are
    /// detached inline.
    pub fn start() -> Self {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let pending: Arc<Mutex<HashSet<FileKey>>> = Arc::default();
        let done = Arc::clone(&pending);
        let thread = std::thread::Builder::new()
            .name("uprobe-detach".into())
            .spawn(move || {
                for job in rx {
                    drop(job.links);
                    lock(&done).remove(&job.key);
                }
            });
        match thread {
            Ok(t) => Self {
                tx: Some(tx),
                pending,
                thread: Some(t),
            },
            Err(e) => {
                warn!(error = %e, "no detach thread: uprobes are detached inline");
                Self {
                    tx: None,
                    pending,
                    thread: None,
                }
            }
        }
    }

    /// Hands `links` (all of file `key`) over; returns false when they were detached here
    /// because the queue was full.
    pub fn detach(&self, key: FileKey, links: Vec<UProbeLink>) -> bool {
        let Some(tx) = &self.tx else {
            drop(links);
            return false;
        };
        lock(&self.pending).insert(key);
        match tx.try_send(Job { key, links }) {
            Ok(()) => true,
            Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                drop(job.links);
                lock(&self.pending).remove(&key);
                false
            }
        }
    }

    /// Whether links of `key` are still being detached.
    pub fn is_pending(&self, key: &FileKey) -> bool {
        lock(&self.pending).contains(key)
    }

    /// Detaches everything handed over, then stops the thread.
    pub fn shutdown(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Detacher {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock(m: &Mutex<HashSet<FileKey>>) -> std::sync::MutexGuard<'_, HashSet<FileKey>> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_pending_after_shutdown() {
        let mut d = Detacher::start();
        assert!(d.detach((1, 2), Vec::new()));
        d.shutdown();
        assert!(!d.is_pending(&(1, 2)));
        // After shutdown, links are detached inline.
        assert!(!d.detach((1, 3), Vec::new()));
        assert!(!d.is_pending(&(1, 3)));
    }
}
