//! Fault injection: the state the services consult on every call (dropped
//! connections, injected append failures, the pause, the write gate) and
//! [`FaultHandle`], through which tests drive it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Fault state: which connections are alive, pending injected failures, pause,
/// the write gate.
pub(crate) struct FaultState {
    generation: Mutex<CancellationToken>,
    fail_appends: AtomicUsize,
    paused: watch::Sender<bool>,
    /// Calls waiting for [`FaultHandle::resume`] now.
    held_by_pause: watch::Sender<usize>,
    gate: watch::Sender<WriteGate>,
    /// Batch-append calls the server is serving now.
    pub(crate) batch_calls: watch::Sender<usize>,
}

/// A write waiting at the gate, counted in [`WriteGate::held`] until it
/// leaves, whichever way.
struct Waiting<'g> {
    gate: &'g watch::Sender<WriteGate>,
    held: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.held {
            self.gate.send_modify(|gate| {
                gate.held -= 1;
                gate.dropped += 1;
            });
        }
    }
}

/// [`FaultHandle::hold_writes_after`]'s state.
#[derive(Clone, Copy, Debug, Default)]
struct WriteGate {
    /// Writes that may still pass; `None`: the gate is open.
    budget: Option<usize>,
    /// Writes waiting at the gate now.
    held: usize,
    /// Held writes that left the gate because the server dropped their
    /// connection, writing nothing: since the server started.
    dropped: usize,
}

impl FaultState {
    pub(crate) fn new() -> Self {
        FaultState {
            generation: Mutex::new(CancellationToken::new()),
            fail_appends: AtomicUsize::new(0),
            paused: watch::Sender::new(false),
            held_by_pause: watch::Sender::new(0),
            gate: watch::Sender::new(WriteGate::default()),
            batch_calls: watch::Sender::new(0),
        }
    }

    /// Lets a write of `events` events (a deletion counts as one) through the
    /// gate, waiting while the gate holds writes. False when the connection is
    /// dropped meanwhile (nothing may then be written). A write of no events
    /// (a permission check) always passes and is not counted.
    pub(crate) async fn pass_gate(&self, events: usize, token: &CancellationToken) -> bool {
        if events == 0 {
            return true;
        }
        let mut changes = self.gate.subscribe();
        // Counted as held while it waits; a call dropped while waiting (its
        // client went away and the HTTP/2 server dropped it) leaves the
        // count too.
        let mut waiting = Waiting {
            gate: &self.gate,
            held: false,
        };
        loop {
            let mut passed = false;
            let was_held = waiting.held;
            self.gate.send_if_modified(|gate| {
                passed = match &mut gate.budget {
                    None => true,
                    Some(0) => false,
                    Some(budget) => {
                        *budget -= 1;
                        true
                    }
                };
                let spent = passed && gate.budget.is_some();
                // Arriving at the gate, or leaving it after a wait.
                let held_changed = passed == was_held;
                if passed && was_held {
                    gate.held -= 1;
                } else if !passed && !was_held {
                    gate.held += 1;
                }
                spent || held_changed
            });
            waiting.held = !passed;
            if passed {
                return true;
            }
            tokio::select! {
                changed = changes.changed() => {
                    // The sender lives as long as `self`, so this cannot fail.
                    let _ = changed;
                }
                () = token.cancelled() => {
                    waiting.held = false;
                    self.gate.send_modify(|gate| {
                        gate.held -= 1;
                        gate.dropped += 1;
                    });
                    return false;
                }
            }
        }
    }

    /// Token cancelled when the connections open now must be dropped.
    pub(crate) fn token(&self) -> CancellationToken {
        self.generation
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn drop_all(&self) {
        let old = std::mem::replace(
            &mut *self
                .generation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            CancellationToken::new(),
        );
        old.cancel();
    }

    /// Consumes one injected append failure, if any is pending.
    pub(crate) fn take_append_failure(&self) -> bool {
        self.fail_appends
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }

    /// Waits while replies are paused, counted in
    /// [`FaultHandle::paused_calls`] meanwhile.
    pub(crate) async fn wait_unpaused(&self) {
        /// Uncounts a waiter however its wait ends: resumed, or given up by a
        /// caller whose connection is dropped.
        struct Waiting<'a>(&'a watch::Sender<usize>);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.send_modify(|n| *n -= 1);
            }
        }
        let mut paused = self.paused.subscribe();
        if !*paused.borrow_and_update() {
            return;
        }
        self.held_by_pause.send_modify(|n| *n += 1);
        let _waiting = Waiting(&self.held_by_pause);
        // The sender lives as long as `self`, so this cannot fail.
        let _ = paused.wait_for(|p| !*p).await;
    }
}

/// Injects faults into a running [`EsdbServer`](crate::EsdbServer). Cheap to clone;
/// usable from any task.
#[derive(Clone)]
pub struct FaultHandle {
    pub(crate) state: Arc<FaultState>,
}

impl std::fmt::Debug for FaultHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultHandle")
            .field(
                "pending_append_failures",
                &self.state.fail_appends.load(Ordering::SeqCst),
            )
            .field("paused", &*self.state.paused.borrow())
            .field("paused_calls", &*self.state.held_by_pause.borrow())
            .field("write_gate", &*self.state.gate.borrow())
            .finish()
    }
}

impl FaultHandle {
    /// Closes every open connection; open subscriptions end with `Unavailable` first.
    /// The server keeps accepting new connections.
    pub fn drop_connections(&self) {
        self.state.drop_all();
    }

    /// Makes the next `n` appends (plain or batch) fail with `Unavailable` without
    /// writing anything. A batch-append request so failed ends its whole call
    /// (every request after it on the call fails unwritten too), as when a
    /// real server loses leadership or its connection.
    pub fn fail_next_appends(&self, n: usize) {
        self.state.fail_appends.store(n, Ordering::SeqCst);
    }

    /// Holds every reply (including subscription events) until [`FaultHandle::resume`].
    pub fn pause(&self) {
        self.state.paused.send_replace(true);
    }

    /// Releases replies held by [`FaultHandle::pause`].
    pub fn resume(&self) {
        self.state.paused.send_replace(false);
    }

    /// How many calls wait for [`FaultHandle::resume`] now: requests that
    /// arrived while paused (held before they do anything), and live
    /// subscriptions holding their next events.
    pub fn paused_calls(&self) -> usize {
        *self.state.held_by_pause.borrow()
    }

    /// Returns once `n` or more calls wait for [`FaultHandle::resume`] (at
    /// once if they do): how a test knows that a request reached the server
    /// and is held, without waiting a while for a reply that does not come.
    pub async fn wait_for_paused_calls(&self, n: usize) {
        let mut waiting = self.state.held_by_pause.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = waiting.wait_for(|waiting| *waiting >= n).await;
    }

    /// Lets the next `writes` writes through, then holds every further write
    /// before it writes anything, until [`FaultHandle::release_writes`]. A write
    /// is one append call, one batch-append batch (when its last request
    /// arrives), one delete or one tombstone; an append of no events (a
    /// permission check) is neither counted nor held.
    ///
    /// This is how a test decides where a copy is when it acts (a kill, a
    /// freeze), whatever the machine's speed: with the gate closed after `n`
    /// writes, the copier cannot finish, and exactly `n` writes are in the
    /// store once the budget is spent ([`FaultHandle::wait_for_gate_spent`])
    /// and a write waits ([`FaultHandle::held_writes`]). A held write whose
    /// connection the server drops ([`FaultHandle::drop_connections`], a
    /// stop) writes nothing, and counts in [`FaultHandle::dropped_writes`];
    /// so does a plain append whose client went away (the HTTP/2 server
    /// drops its call). A batch-append request whose client went away is
    /// written when released, as a real server commits a request it has
    /// received.
    pub fn hold_writes_after(&self, writes: usize) {
        self.state
            .gate
            .send_modify(|gate| gate.budget = Some(writes));
    }

    /// Opens the gate closed by [`FaultHandle::hold_writes_after`]: held
    /// writes go on, in the order they arrived at the server is not promised.
    pub fn release_writes(&self) {
        self.state.gate.send_modify(|gate| gate.budget = None);
    }

    /// How many writes are waiting at the gate now.
    pub fn held_writes(&self) -> usize {
        self.state.gate.borrow().held
    }

    /// Returns once the server serves no batch-append call (at once if it
    /// serves none): a client that went away (a killed process, a dropped
    /// sink) has had its call ended, and nothing it sent can be written any
    /// more. Tests that restart a writer wait for this, as an operator's
    /// restart comes after the old process's connection is gone.
    pub async fn wait_for_no_batch_calls(&self) {
        let mut calls = self.state.batch_calls.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = calls.wait_for(|n| *n == 0).await;
    }

    /// How many writes the gate still lets through: `None` when it is open.
    pub fn gate_budget(&self) -> Option<usize> {
        self.state.gate.borrow().budget
    }

    /// Returns once the gate closed by [`FaultHandle::hold_writes_after`]
    /// has let through every write it allowed (at once if it has, or if the
    /// gate is open).
    pub async fn wait_for_gate_spent(&self) {
        let mut gate = self.state.gate.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = gate
            .wait_for(|gate| gate.budget.is_none_or(|b| b == 0))
            .await;
    }

    /// Returns once `n` or more writes wait at the gate (at once if they do).
    pub async fn wait_for_held_writes(&self, n: usize) {
        let mut gate = self.state.gate.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = gate.wait_for(|gate| gate.held >= n).await;
    }

    /// How many held writes have left the gate writing nothing because the
    /// server dropped their connection ([`FaultHandle::drop_connections`], a
    /// stop), since the server started.
    ///
    /// With the gate still closed, a client retries on a new connection and
    /// is held again, so [`FaultHandle::held_writes`] may never be seen at 0
    /// after a drop; waiting for this count to grow by the writes held before
    /// the drop tells when they are gone, so that
    /// [`FaultHandle::release_writes`] cannot let one of them through.
    pub fn dropped_writes(&self) -> usize {
        self.state.gate.borrow().dropped
    }

    /// Returns once [`FaultHandle::dropped_writes`] is `n` or more (at once if
    /// it is).
    pub async fn wait_for_dropped_writes(&self, n: usize) {
        let mut gate = self.state.gate.subscribe();
        // The sender lives as long as the state, so this cannot fail.
        let _ = gate.wait_for(|gate| gate.dropped >= n).await;
    }
}
