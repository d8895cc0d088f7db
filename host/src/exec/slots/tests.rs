//! The scheduler's rules, each shown by polling callers by hand in a
//! chosen order: no runtime, no sleeps.

use super::*;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

type Acquiring<'a> = Pin<Box<dyn Future<Output = Result<Slot<'a>, Busy>> + 'a>>;

/// A caller: its acquire, polled once so it takes its place.
fn ask<'a>(slots: &'a Slots, function: &'a str, wait: Wait) -> Acquiring<'a> {
    let mut f: Acquiring<'a> = Box::pin(slots.acquire(function, wait));
    assert!(poll(&mut f).is_none(), "{function} was to wait");
    f
}

/// Poll once: the slot (or busy) when it is ready.
fn poll<'a>(f: &mut Acquiring<'a>) -> Option<Result<Slot<'a>, Busy>> {
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => Some(r),
        Poll::Pending => None,
    }
}

/// A slot that must be free now.
fn take<'a>(slots: &'a Slots, function: &'a str) -> Slot<'a> {
    let mut f: Acquiring<'a> = Box::pin(slots.acquire(function, Wait::Always));
    poll(&mut f)
        .expect("a free slot is taken at once")
        .expect("not busy")
}

fn granted<'a>(f: &mut Acquiring<'a>) -> Slot<'a> {
    poll(f).expect("its turn came").expect("not busy")
}

fn running(slots: &Slots, function: &str) -> usize {
    slots
        .lock()
        .functions
        .get(function)
        .map_or(0, |t| t.running)
}

#[test]
fn one_function_alone_may_use_every_slot() {
    let slots = Slots::new(3);
    let held: Vec<Slot> = (0..3).map(|_| take(&slots, "a")).collect();
    assert_eq!((slots.in_use(), running(&slots, "a")), (3, 3));
    let mut fourth = ask(&slots, "a", Wait::Always);
    drop(held);
    let _fourth = granted(&mut fourth);
    assert_eq!(slots.in_use(), 1);
}

#[test]
fn a_freed_slot_goes_to_the_function_with_the_fewest_running() {
    let slots = Slots::new(2);
    let (a1, a2) = (take(&slots, "a"), take(&slots, "a"));
    // a's third caller came first, but b runs nothing.
    let mut a3 = ask(&slots, "a", Wait::Always);
    let mut b1 = ask(&slots, "b", Wait::Always);
    drop(a1);
    let b1 = granted(&mut b1);
    assert!(poll(&mut a3).is_none(), "a runs 1, b ran 0: b's turn");
    assert_eq!((running(&slots, "a"), running(&slots, "b")), (1, 1));
    // Both run one now: a's caller has waited longest.
    let mut b2 = ask(&slots, "b", Wait::Always);
    drop(a2);
    let _a3 = granted(&mut a3);
    assert!(poll(&mut b2).is_none());
    drop(b1);
    let _b2 = granted(&mut b2);
    assert_eq!(slots.in_use(), 2);
}

#[test]
fn a_busy_functions_share_shrinks_to_an_even_split_while_others_wait() {
    let slots = Slots::new(4);
    let mut a: VecDeque<Slot> = (0..4).map(|_| take(&slots, "a")).collect();
    let mut a_more: Vec<Acquiring> = (0..4).map(|_| ask(&slots, "a", Wait::Always)).collect();
    let mut b: Vec<Acquiring> = (0..4).map(|_| ask(&slots, "b", Wait::Always)).collect();
    let mut b_held = Vec::new();
    // As a's invocations end, b gets slots until both run two.
    for waiting in b.iter_mut().take(2) {
        drop(a.pop_front());
        b_held.push(granted(waiting));
    }
    assert_eq!((running(&slots, "a"), running(&slots, "b")), (2, 2));
    // From there they alternate: a tie goes to the longest waiting (a's).
    drop(a.pop_front());
    a.push_back(granted(&mut a_more[0]));
    assert!(poll(&mut b[2]).is_none());
    drop(b_held.pop());
    b_held.push(granted(&mut b[2]));
    assert!(poll(&mut a_more[1]).is_none());
}

#[test]
fn within_a_function_first_come_first_served() {
    let slots = Slots::new(1);
    let held = take(&slots, "a");
    let mut first = ask(&slots, "a", Wait::AtMost(10));
    let mut second = ask(&slots, "a", Wait::Always);
    drop(held);
    let first = granted(&mut first);
    assert!(poll(&mut second).is_none());
    drop(first);
    let _second = granted(&mut second);
}

#[test]
fn one_function_takes_at_most_half_the_line_and_the_whole_line_is_capped() {
    let slots = Slots::new(1);
    let _held = take(&slots, "a");
    let max = 5; // a share of 2
    let _a: Vec<Acquiring> = (0..2)
        .map(|_| ask(&slots, "a", Wait::AtMost(max)))
        .collect();
    let mut third = Box::pin(slots.acquire("a", Wait::AtMost(max))) as Acquiring;
    assert_eq!(
        poll(&mut third).map(|r| r.err()),
        Some(Some(Busy {
            waiting: 5,
            share: Some(2)
        }))
    );
    // Callers that wait as long as it takes are not in the line.
    let _a_queue = ask(&slots, "a", Wait::Always);
    // The rest of the line is the others'.
    let _b: Vec<Acquiring> = (0..2)
        .map(|_| ask(&slots, "b", Wait::AtMost(max)))
        .collect();
    let _c = ask(&slots, "c", Wait::AtMost(max));
    let mut d = Box::pin(slots.acquire("d", Wait::AtMost(max))) as Acquiring;
    assert_eq!(
        poll(&mut d).map(|r| r.err()),
        Some(Some(Busy {
            waiting: 5,
            share: None
        }))
    );
    // A line of one is one function's whole share; of none, nobody waits.
    assert_eq!(Slots::share_of(1), 1);
    let mut none = Box::pin(slots.acquire("e", Wait::AtMost(0))) as Acquiring;
    assert!(matches!(poll(&mut none), Some(Err(_))));
}

#[test]
fn a_caller_that_goes_away_leaves_nothing_behind() {
    let slots = Slots::new(1);
    let held = take(&slots, "a");
    // Gone before its turn: its place in the line is free again.
    let gone = ask(&slots, "b", Wait::AtMost(2));
    drop(gone);
    assert_eq!(slots.lock().line, 0);
    let b = ask(&slots, "b", Wait::AtMost(2));
    let mut c = ask(&slots, "c", Wait::AtMost(2));
    // Gone just as the slot was handed to it: the next caller gets it.
    drop(held);
    assert_eq!(slots.lock().waiting, 1, "b was granted");
    drop(b);
    let c = granted(&mut c);
    assert_eq!((slots.in_use(), running(&slots, "b")), (1, 0));
    drop(c);
    let state = slots.lock();
    assert_eq!((state.free, state.line, state.waiting), (1, 0, 0));
    assert!(state.queued.is_empty());
    assert!(
        state
            .functions
            .values()
            .all(|t| t.running == 0 && t.waiters.is_empty() && t.line == 0)
    );
}

#[test]
fn idle_functions_are_remembered_up_to_a_bound() {
    let slots = Slots::new(2);
    let held = take(&slots, "kept");
    for i in 0..IDLE_KEPT * 3 {
        drop(take(&slots, &format!("f{i}")));
        assert!(slots.lock().functions.len() <= IDLE_KEPT + 2);
    }
    assert_eq!(running(&slots, "kept"), 1, "a function with work is kept");
    drop(held);
}
