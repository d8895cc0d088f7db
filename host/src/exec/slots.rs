//! Fair shares of the host's instance slots: the host-wide cap on
//! invocations at once (`--max-concurrency`) and the line of HTTP callers
//! waiting for one (`--max-pending-requests`), shared out between
//! functions so that one function's flood cannot starve the others.
//!
//! - **Work-conserving.** A free slot goes to whoever asks: while only one
//!   function has work, it may use every slot.
//! - **Fewest running first.** When a slot frees and callers wait, it goes
//!   to the function with the fewest invocations running among those with
//!   callers waiting (on a tie, the one whose first caller has waited
//!   longest); within a function, first come first served. So while
//!   another function waits, a busy function's share shrinks towards an
//!   even split as its invocations end. Nothing is preempted: a newcomer
//!   waits at most until one running invocation ends.
//! - **The line is shared too.** Callers that would rather hear "busy"
//!   than wait long ([`Wait::AtMost`]`(max)`, HTTP requests) may wait only
//!   while fewer than `max` such callers wait host-wide *and* fewer than
//!   `max(1, max / 2)` wait for the same function: half the line is always
//!   left for the others. Callers that wait as long as it takes
//!   ([`Wait::Always`], queue triggers, whose queue is their line) are not
//!   counted in it; their bindings lease only for the instances they may
//!   run, which bounds them.
//! - **Cancellation-safe.** A caller that stops waiting (its client went
//!   away) leaves the line; a slot handed to it just then goes to the next.
//!
//! Keyed by function name only; knows nothing of wasm, HTTP or queues.
//! Memory is bounded: the functions running or waiting and their waiters,
//! and up to [`IDLE_KEPT`] functions with neither (kept so that taking a
//! free slot costs one lock and no allocation).

use super::{Busy, Wait};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::oneshot;

/// The most functions with nothing running or waiting that are
/// remembered; past it, they are forgotten.
pub const IDLE_KEPT: usize = 1024;

/// The host's instance slots, shared fairly between functions.
pub struct Slots {
    state: Mutex<State>,
}

struct State {
    capacity: usize,
    free: usize,
    /// [`Wait::AtMost`] callers waiting, all functions together.
    line: usize,
    /// Callers waiting, all functions together.
    waiting: usize,
    /// Numbers callers in the order they came.
    next_ticket: u64,
    /// Functions with invocations running or callers waiting, and some
    /// idle ones (at most [`IDLE_KEPT`]).
    functions: HashMap<Arc<str>, Tenant>,
    /// The functions with callers waiting.
    queued: Vec<Arc<str>>,
}

struct Tenant {
    /// Its name (the map's key), for the slots it holds.
    name: Arc<str>,
    running: usize,
    /// Its [`Wait::AtMost`] callers waiting.
    line: usize,
    /// Its callers waiting, first come first.
    waiters: VecDeque<Waiter>,
}

struct Waiter {
    ticket: u64,
    /// Counted in the line ([`Wait::AtMost`]).
    in_line: bool,
    grant: oneshot::Sender<()>,
}

/// One instance slot, held until dropped.
pub struct Slot<'a> {
    slots: &'a Slots,
    function: Arc<str>,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.slots.lock().release(&self.function);
    }
}

impl Slots {
    /// `capacity` slots, all free.
    pub fn new(capacity: usize) -> Slots {
        Slots {
            state: Mutex::new(State {
                capacity,
                free: capacity,
                line: 0,
                waiting: 0,
                next_ticket: 0,
                functions: HashMap::new(),
                queued: Vec::new(),
            }),
        }
    }

    /// Slots held now.
    pub fn in_use(&self) -> usize {
        let state = self.lock();
        state.capacity - state.free
    }

    /// The number of places in the line one function may take when it
    /// holds `max`: half, and at least one.
    pub fn share_of(max: usize) -> usize {
        (max / 2).max(1)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves counts that are still consistent
        // (every change is made before anything that can panic).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for an invocation of `function`: at once when one is free
    /// (nobody waits then), else when its turn comes, as `wait` allows.
    pub async fn acquire(&self, function: &str, wait: Wait) -> Result<Slot<'_>, Busy> {
        let (function, ticket, granted) = {
            let mut state = self.lock();
            if state.free > 0 {
                state.free -= 1;
                let tenant = state.tenant(function);
                tenant.running += 1;
                return Ok(Slot {
                    slots: self,
                    function: tenant.name.clone(),
                });
            }
            let in_line = match wait {
                Wait::Always => false,
                Wait::AtMost(max) => {
                    if state.line >= max {
                        return Err(Busy {
                            waiting: max,
                            share: None,
                        });
                    }
                    let share = Slots::share_of(max);
                    if state
                        .functions
                        .get(function)
                        .is_some_and(|t| t.line >= share)
                    {
                        return Err(Busy {
                            waiting: max,
                            share: Some(share),
                        });
                    }
                    true
                }
            };
            let ticket = state.next_ticket;
            state.next_ticket += 1;
            let (grant, granted) = oneshot::channel();
            let tenant = state.tenant(function);
            let first = tenant.waiters.is_empty();
            tenant.waiters.push_back(Waiter {
                ticket,
                in_line,
                grant,
            });
            tenant.line += usize::from(in_line);
            let key = tenant.name.clone();
            if first {
                state.queued.push(key.clone());
            }
            state.line += usize::from(in_line);
            state.waiting += 1;
            (key, ticket, granted)
        };
        let mut waiting = Waiting {
            slots: self,
            function,
            ticket,
            granted: Some(granted),
        };
        let granted = waiting.granted.as_mut().expect("armed");
        granted
            .await
            .expect("a waiter leaves the line granted, or by its own drop");
        waiting.granted = None;
        Ok(Slot {
            slots: self,
            function: waiting.function.clone(),
        })
    }
}

impl State {
    /// The function's entry, made when missing.
    fn tenant(&mut self, function: &str) -> &mut Tenant {
        if !self.functions.contains_key(function) {
            // Those with work are at most one per slot held and one per
            // function queued: past that many more, forget the idle ones.
            let busy = self.capacity - self.free + self.queued.len();
            if self.functions.len() >= IDLE_KEPT + busy {
                self.functions
                    .retain(|_, t| t.running > 0 || !t.waiters.is_empty());
            }
            let name: Arc<str> = Arc::from(function);
            let tenant = Tenant {
                name: name.clone(),
                running: 0,
                line: 0,
                waiters: VecDeque::new(),
            };
            self.functions.insert(name, tenant);
        }
        self.functions.get_mut(function).expect("just made")
    }

    /// A slot of `function` is free again: hand it on.
    fn release(&mut self, function: &str) {
        if let Some(tenant) = self.functions.get_mut(function) {
            tenant.running -= 1;
        }
        self.free += 1;
        self.hand_out();
    }

    /// Give free slots to waiting callers, fewest running first.
    fn hand_out(&mut self) {
        while self.free > 0 {
            let functions = &self.functions;
            let Some(at) = (0..self.queued.len()).min_by_key(|&i| {
                let t = &functions[&self.queued[i]];
                (t.running, t.waiters.front().map(|w| w.ticket))
            }) else {
                return;
            };
            let tenant = self
                .functions
                .get_mut(&self.queued[at])
                .expect("queued functions are kept");
            let waiter = tenant.waiters.pop_front().expect("queued: has waiters");
            tenant.line -= usize::from(waiter.in_line);
            if tenant.waiters.is_empty() {
                self.queued.swap_remove(at);
            }
            self.line -= usize::from(waiter.in_line);
            self.waiting -= 1;
            if waiter.grant.send(()).is_ok() {
                tenant.running += 1;
                self.free -= 1;
            }
            // Else: cannot happen (a waiter leaves the line before its
            // receiver goes), and costs nothing to handle.
        }
    }
}

/// A caller in the line; dropped before its turn came, it leaves, and
/// dropped just after, it hands its slot on.
struct Waiting<'a> {
    slots: &'a Slots,
    function: Arc<str>,
    ticket: u64,
    /// `None` once the slot is the caller's.
    granted: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut granted) = self.granted.take() else {
            return;
        };
        let mut state = self.slots.lock();
        // Grants are made under the lock, so this is the whole truth.
        if granted.try_recv().is_ok() {
            state.release(&self.function);
            return;
        }
        let Some(tenant) = state.functions.get_mut(&self.function) else {
            return;
        };
        if let Some(at) = tenant.waiters.iter().position(|w| w.ticket == self.ticket) {
            let waiter = tenant.waiters.remove(at).expect("found");
            tenant.line -= usize::from(waiter.in_line);
            let emptied = tenant.waiters.is_empty();
            state.line -= usize::from(waiter.in_line);
            state.waiting -= 1;
            if emptied {
                state.queued.retain(|f| *f != self.function);
            }
        }
    }
}

#[cfg(test)]
mod tests;
