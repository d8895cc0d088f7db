//! Timers across a fleet. Every host runs the same schedulers, so each due
//! tick must be claimed by one of them: the timer's state is one document
//! in the fleet's state store (`timers/<function>.json`), and a host fires
//! a tick only after a conditional write has recorded it as the claimer
//! (S3's `If-Match`), which exactly one host's write passes, whatever the
//! clocks say. The tick then goes on the timer's queue, on SQS for a
//! fleet, where any host runs it.
//!
//! - **Once per tick**: the document's `last_run_ms` (or `last_skipped_ms`)
//!   at or past a due time means another host has handled that tick.
//! - **Never overlapping**: `running` names the tick in flight anywhere in
//!   the fleet (queued, running, waiting to retry); it is cleared when that
//!   tick's message is settled for good (done or dead-lettered), and a due
//!   tick meanwhile is skipped and counted, as on one host. A claim older
//!   than [`STALE_CLAIM`] (a host died between claiming and enqueuing) no
//!   longer holds the timer.
//! - **Past due**: the document's `next_run_ms` is written with each claim,
//!   so after the whole fleet was down the first host back runs the missed
//!   tick once, past due; the others find it claimed.

use crate::registry::TimerState;
use crate::state::{StateError, StateStore, Write};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A claim this old no longer keeps other ticks from running.
pub const STALE_CLAIM: Duration = Duration::from_secs(60 * 60);

/// The timer's state as the fleet shares it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct SharedTimer {
    #[serde(flatten)]
    state: TimerState,
    /// The due time of the tick in flight, if one is.
    #[serde(default)]
    running: Option<u64>,
    /// When that tick was claimed.
    #[serde(default)]
    claimed_at_ms: Option<u64>,
}

/// How a claim on a tick ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Claim {
    /// This host fires the tick.
    Won,
    /// Another host has handled the tick.
    #[default]
    Taken,
    /// The previous tick is still in flight: skipped and counted.
    Skipped,
}

async fn read(
    fleet: &dyn StateStore,
    function: &str,
) -> Result<Option<(SharedTimer, String)>, StateError> {
    let Some(doc) = fleet.get(&crate::names::timer_state_key(function)).await? else {
        return Ok(None);
    };
    let timer = serde_json::from_slice(&doc.bytes).map_err(|e| {
        StateError::Invalid(format!(
            "the fleet's timer state of {function:?} is unreadable: {e}"
        ))
    })?;
    Ok(Some((timer, doc.version)))
}

/// Change the timer's document with `change` (which answers `None` to
/// leave it as it is), at the version read; again on a conflict.
async fn change<T>(
    fleet: &dyn StateStore,
    function: &str,
    mut change: impl FnMut(&mut SharedTimer) -> Option<T>,
) -> Result<(T, TimerState), StateError>
where
    T: Default,
{
    let key = crate::names::timer_state_key(function);
    for _ in 0..16 {
        let (mut timer, condition) = match read(fleet, function).await? {
            Some((t, version)) => (t, Write::Replace(version)),
            None => (SharedTimer::default(), Write::Create),
        };
        let Some(out) = change(&mut timer) else {
            return Ok((T::default(), timer.state));
        };
        let bytes = serde_json::to_vec(&timer).expect("a timer state serializes");
        match fleet.put(&key, bytes, condition).await {
            Ok(_) => return Ok((out, timer.state)),
            Err(StateError::Conflict(_)) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(StateError::Conflict(format!(
        "the fleet's timer state of {function:?} kept changing under 16 tries"
    )))
}

/// The fleet's state of `function`'s timer.
pub async fn load(
    fleet: &dyn StateStore,
    function: &str,
) -> Result<Option<TimerState>, StateError> {
    Ok(read(fleet, function).await?.map(|(t, _)| t.state))
}

/// Claim the tick due at `due` of the schedule `spec` for this host, at
/// `now_ms`; `next` is the due time after it. `state` becomes the fleet's.
pub async fn claim(
    fleet: &dyn StateStore,
    function: &str,
    spec: &str,
    state: &mut TimerState,
    due: u64,
    next: Option<u64>,
    now_ms: u64,
) -> Result<Claim, StateError> {
    let (claim, shared) = change(fleet, function, |timer| {
        if timer.state.spec != spec {
            // A new or changed schedule starts afresh, but a tick in flight
            // still holds it, and a due time handled stays handled: while a
            // deploy reaches every host, hosts on either version may claim.
            timer.state = TimerState {
                spec: spec.to_string(),
                last_run_ms: timer.state.last_run_ms,
                ..TimerState::default()
            };
        }
        let handled = |t: Option<u64>| t.is_some_and(|t| t >= due);
        if handled(timer.state.last_run_ms) || handled(timer.state.last_skipped_ms) {
            return None;
        }
        let held = timer.running.is_some()
            && timer
                .claimed_at_ms
                .is_some_and(|at| now_ms.saturating_sub(at) < STALE_CLAIM.as_millis() as u64);
        timer.state.next_run_ms = next;
        if held {
            timer.state.skipped += 1;
            timer.state.last_skipped_ms = Some(due);
            return Some(Claim::Skipped);
        }
        timer.state.last_run_ms = Some(due);
        timer.running = Some(due);
        timer.claimed_at_ms = Some(now_ms);
        Some(Claim::Won)
    })
    .await?;
    *state = shared;
    Ok(claim)
}

/// The tick due at `due` is over (done, dead-lettered, or never sent):
/// the next one may run.
pub async fn release(fleet: &dyn StateStore, function: &str, due: u64) -> Result<(), StateError> {
    change(fleet, function, |timer| {
        (timer.running == Some(due)).then(|| {
            timer.running = None;
            timer.claimed_at_ms = None;
        })
    })
    .await
    .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::embedded::EmbeddedState;

    const SPEC: &str = "*/5 * * * * * UTC";
    const T0: u64 = 1_800_000_000_000;

    async fn claim_at(fleet: &dyn StateStore, due: u64, now: u64) -> (Claim, TimerState) {
        let mut state = TimerState::default();
        let c = claim(fleet, "tick", SPEC, &mut state, due, Some(due + 5_000), now)
            .await
            .unwrap();
        (c, state)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_tick_is_claimed_once_and_never_while_the_last_is_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let fleet: std::sync::Arc<dyn StateStore> =
            std::sync::Arc::new(EmbeddedState::open(dir.path()).unwrap());

        // Three hosts race for one tick: one wins, the others find it taken.
        let racers: Vec<_> = (0..3)
            .map(|_| {
                let fleet = fleet.clone();
                tokio::spawn(async move { claim_at(fleet.as_ref(), T0, T0).await.0 })
            })
            .collect();
        let mut claims = Vec::new();
        for r in racers {
            claims.push(r.await.unwrap());
        }
        claims.sort_by_key(|c| *c as u8);
        assert_eq!(claims, [Claim::Won, Claim::Taken, Claim::Taken]);

        // The next tick, while the first is in flight: skipped and counted,
        // once, however many hosts ask.
        let (c, state) = claim_at(fleet.as_ref(), T0 + 5_000, T0 + 5_000).await;
        assert_eq!(c, Claim::Skipped);
        assert_eq!(
            (state.skipped, state.last_skipped_ms),
            (1, Some(T0 + 5_000))
        );
        assert_eq!(
            claim_at(fleet.as_ref(), T0 + 5_000, T0 + 5_001).await.0,
            Claim::Taken
        );

        // Once the first is over, the next one runs; releasing a tick that
        // is not the one in flight changes nothing.
        release(fleet.as_ref(), "tick", T0 + 5_000).await.unwrap();
        assert_eq!(
            claim_at(fleet.as_ref(), T0 + 10_000, T0 + 10_000).await.0,
            Claim::Skipped
        );
        release(fleet.as_ref(), "tick", T0).await.unwrap();
        let (c, state) = claim_at(fleet.as_ref(), T0 + 15_000, T0 + 15_000).await;
        assert_eq!(c, Claim::Won);
        assert_eq!(state.last_run_ms, Some(T0 + 15_000));
        assert_eq!(
            state.next_run_ms,
            Some(T0 + 20_000),
            "written for a fleet that goes down"
        );

        // A claim whose host died before enqueuing holds the timer only
        // until it is stale.
        let stale = T0 + 15_000 + STALE_CLAIM.as_millis() as u64;
        assert_eq!(
            claim_at(fleet.as_ref(), T0 + 20_000, stale - 1).await.0,
            Claim::Skipped
        );
        assert_eq!(claim_at(fleet.as_ref(), stale, stale).await.0, Claim::Won);
    }

    #[tokio::test]
    async fn a_changed_schedule_starts_afresh_but_never_overlaps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = EmbeddedState::open(dir.path()).unwrap();
        assert_eq!(claim_at(&fleet, T0, T0).await.0, Claim::Won);
        let mut state = TimerState::default();
        let other = claim(
            &fleet,
            "tick",
            "0 * * * * * UTC",
            &mut state,
            T0 + 1,
            None,
            T0 + 1,
        )
        .await
        .unwrap();
        assert_eq!(
            other,
            Claim::Skipped,
            "the old schedule's tick in flight holds the new one"
        );
        let state = load(&fleet, "tick").await.unwrap().unwrap();
        assert_eq!((state.spec.as_str(), state.skipped), ("0 * * * * * UTC", 1));
        release(&fleet, "tick", T0).await.unwrap();
        let mut state = TimerState::default();
        let next = claim(
            &fleet,
            "tick",
            "0 * * * * * UTC",
            &mut state,
            T0 + 2,
            None,
            T0 + 2,
        )
        .await
        .unwrap();
        assert_eq!(next, Claim::Won);
    }
}
