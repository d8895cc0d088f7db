//! The timer trigger: one [`Scheduler`] per function with a
//! `[triggers.timer]` turns its cron schedule into ticks on the host-owned
//! queue `fnhost-timer-<function>`, where its queue binding loop delivers them
//! with the usual retries and dead letters.
//!
//! - **Singleton**: a due tick is skipped (and counted) while the previous
//!   tick is still queued, running or waiting to retry.
//! - **Past due**: the next due time is persisted; after downtime the
//!   function runs once, with `past_due = true`, not once per missed tick.
//! - **run_on_startup**: one extra tick whenever the scheduler starts.
//! - **From its deploy**: a new or changed schedule starts from when its
//!   version was deployed (at most [`CATCH_UP`] back), not from when this
//!   host took it: on a fleet whose workers take a deploy seconds after it
//!   answered, or start after it, a tick due in between runs (once, like
//!   downtime) instead of being dropped.
//!
//! The decisions are pure functions of the saved state and the time
//! ([`on_start`], [`next_after`]), tested without sleeping. On a fleet the
//! state is shared and each tick is claimed by one host ([`fleet`]).

pub mod fleet;

use crate::clock::Clock;
use crate::dispatcher::Functions;
use crate::manifest::TimerTrigger;
use crate::queue::NewMessage;
use crate::registry::TimerState;
use crate::services::Services;
use chrono::TimeZone;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A tick as it travels on the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// The schedule that produced it (`once` for one-off runs).
    pub schedule: String,
    /// When it was due.
    pub scheduled_at_ms: u64,
    /// True when it is delivered late, after downtime.
    pub past_due: bool,
}

/// A tick that fires this much after it was due, while the host was up
/// (a suspended machine, a stalled runtime), is flagged past due too.
const LATE: Duration = Duration::from_secs(5);
/// How far back a new schedule looks for a tick due since its version was
/// deployed: far enough for any host that is behind, short enough that a
/// rollback to a version deployed long ago does not fire an old tick.
pub const CATCH_UP: Duration = Duration::from_secs(10 * 60);
/// The longest sleep between checks, so a changed clock is noticed.
const MAX_SLEEP: Duration = Duration::from_secs(60);

/// The schedule's identity: a different schedule or zone starts afresh.
pub fn spec(trigger: &TimerTrigger) -> String {
    format!(
        "{} {}",
        trigger.schedule,
        trigger.timezone.as_deref().unwrap_or("UTC")
    )
}

/// The first due time strictly after `after_ms`, if the schedule has one.
pub fn next_after(schedule: &cron::Schedule, tz: chrono_tz::Tz, after_ms: u64) -> Option<u64> {
    let at = tz.timestamp_millis_opt(after_ms as i64).single()?;
    let next = schedule.after(&at).next()?;
    u64::try_from(next.timestamp_millis()).ok()
}

/// What a (re)starting scheduler does: the tick to fire now, if any, and
/// the next due time. A saved due time in the past means the host was down
/// then: run once, past due. A new or changed schedule starts from when its
/// version was deployed (`deployed_at_ms`, if at most [`CATCH_UP`] ago;
/// else from now): a tick due since then runs once, at once.
pub fn on_start(
    trigger: &TimerTrigger,
    saved: Option<&TimerState>,
    deployed_at_ms: u64,
    now_ms: u64,
) -> (Option<Tick>, Option<u64>) {
    let Ok((schedule, tz)) = trigger.parse() else {
        return (None, None);
    };
    let next = next_after(&schedule, tz, now_ms);
    let same = saved.filter(|s| s.spec == spec(trigger));
    let tick = |at: u64, past_due: bool| Tick {
        schedule: trigger.schedule.clone(),
        scheduled_at_ms: at,
        past_due,
    };
    let late = |due: u64| now_ms.saturating_sub(due) > LATE.as_millis() as u64;
    match same.and_then(|s| s.next_run_ms) {
        Some(due) if due <= now_ms => (Some(tick(due, true)), next),
        Some(due) if !trigger.run_on_startup => (None, Some(due)),
        _ if trigger.run_on_startup => (Some(tick(now_ms, false)), next),
        None if same.is_none()
            && now_ms.saturating_sub(deployed_at_ms) <= CATCH_UP.as_millis() as u64 =>
        {
            match next_after(&schedule, tz, deployed_at_ms.min(now_ms)) {
                Some(due) if due <= now_ms => (Some(tick(due, late(due))), next),
                _ => (None, next),
            }
        }
        _ => (None, next),
    }
}

/// One function's schedule.
pub struct Scheduler {
    functions: Arc<dyn Functions>,
    services: Arc<Services>,
    function: String,
    trigger: TimerTrigger,
    clock: Arc<dyn Clock>,
    shutdown: CancellationToken,
}

impl Scheduler {
    /// A scheduler for `function`'s `trigger`.
    pub fn new(
        functions: Arc<dyn Functions>,
        services: Arc<Services>,
        function: String,
        trigger: TimerTrigger,
        clock: Arc<dyn Clock>,
        shutdown: CancellationToken,
    ) -> Self {
        Scheduler {
            functions,
            services,
            function,
            trigger,
            clock,
            shutdown,
        }
    }

    /// Fire ticks until the host stops or the function's timer changes.
    pub async fn run(self) {
        // Before anything else, so a redeploy during start-up is not missed.
        let mut changes = self.functions.subscribe();
        let Ok((schedule, tz)) = self.trigger.parse() else {
            return; // validated at deploy; a stored manifest from elsewhere
        };
        let mut state = match self.load().await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(function = %self.function, error = %e, "cannot read the timer's state; the timer does not run");
                return;
            }
        };
        let now = self.clock.now_ms();
        // When the version was made, on whichever host deployed it.
        let deployed_at = self
            .functions
            .get(&self.function)
            .map_or(now, |d| d.record.created_at_ms);
        let (tick, next) = on_start(&self.trigger, state.as_ref(), deployed_at, now);
        let mut state = match state.take() {
            Some(s) if s.spec == spec(&self.trigger) => s,
            _ => TimerState {
                spec: spec(&self.trigger),
                ..TimerState::default()
            },
        };
        state.next_run_ms = next;
        if let Some(tick) = tick {
            if tick.past_due {
                tracing::info!(function = %self.function, due_at_ms = tick.scheduled_at_ms, "a timer run was missed (the host was down, or took the deploy late); running it once, past due");
            }
            self.fire(&mut state, tick, next).await;
            state.next_run_ms = next;
        }
        if !self.current() {
            return; // replaced while starting: the state is the new version's to keep or forget
        }
        self.save(&state, true).await;
        tracing::info!(function = %self.function, schedule = %self.trigger.schedule, next_run_ms = ?state.next_run_ms, "timer started");
        loop {
            if !self.current() {
                break; // replaced or removed; a new scheduler takes over
            }
            let Some(due) = state.next_run_ms else {
                tracing::warn!(function = %self.function, "the schedule has no further runs");
                break;
            };
            let now = self.clock.now_ms();
            if now < due {
                let wait = Duration::from_millis(due - now).min(MAX_SLEEP);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    changed = changes.changed() => if changed.is_err() { break },
                    () = self.shutdown.cancelled() => break,
                }
                continue;
            }
            let tick = Tick {
                schedule: self.trigger.schedule.clone(),
                scheduled_at_ms: due,
                past_due: now.saturating_sub(due) > LATE.as_millis() as u64,
            };
            let next = next_after(&schedule, tz, now.max(due));
            self.fire(&mut state, tick, next).await;
            state.next_run_ms = next;
            self.save(&state, false).await;
        }
    }

    /// Is this still the function's timer?
    fn current(&self) -> bool {
        self.functions
            .get(&self.function)
            .is_some_and(|d| d.manifest.triggers.timer.as_ref() == Some(&self.trigger))
    }

    /// Enqueue a tick, unless the previous one has not finished: then skip
    /// it. On a fleet, only once this host has claimed it; `next` is the
    /// due time after it.
    async fn fire(&self, state: &mut TimerState, tick: Tick, next: Option<u64>) {
        let queues = self.services.delivery();
        let queue = TimerTrigger::queue(&self.function);
        let fleet = self.services.fleet().cloned();
        if let Some(fleet) = &fleet {
            let due = tick.scheduled_at_ms;
            let now = self.clock.now_ms();
            let spec = spec(&self.trigger);
            match fleet::claim(fleet.as_ref(), &self.function, &spec, state, due, next, now).await {
                Ok(fleet::Claim::Won) => {}
                Ok(fleet::Claim::Taken) => {
                    tracing::debug!(function = %self.function, due_at_ms = due, "timer tick claimed by another host");
                    return;
                }
                Ok(fleet::Claim::Skipped) => {
                    tracing::warn!(function = %self.function, due_at_ms = due, skipped = state.skipped, "timer tick skipped: the previous run has not finished on the fleet");
                    return;
                }
                Err(e) => {
                    tracing::error!(function = %self.function, error = %e, "cannot claim the timer tick; skipping it");
                    return;
                }
            }
            return self.send(state, tick, Some(fleet.as_ref())).await;
        }
        // Asked of the writer, after the previous tick's settlement if that
        // was handed over already: a tick that has just finished is not
        // mistaken for one still running.
        match queues.pending(&queue, 1).await {
            Ok(n) if n > 0 => {
                state.skipped += 1;
                state.last_skipped_ms = Some(tick.scheduled_at_ms);
                tracing::warn!(function = %self.function, due_at_ms = tick.scheduled_at_ms, skipped = state.skipped, "timer tick skipped: the previous run has not finished");
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!(function = %self.function, error = %e, "cannot check the timer's queue; skipping this tick");
                return;
            }
        }
        self.send(state, tick, None).await
    }

    /// Put a tick on the timer's queue; a fleet's claim is released when
    /// the send fails.
    async fn send(
        &self,
        state: &mut TimerState,
        tick: Tick,
        fleet: Option<&dyn crate::state::StateStore>,
    ) {
        let queues = self.services.delivery();
        let queue = TimerTrigger::queue(&self.function);
        let msg = NewMessage {
            body: serde_json::to_vec(&tick).expect("a tick serializes"),
            // A restart that fires the same due time again adds nothing
            // (where the queue has dedup ids; a fleet's claim does this).
            dedup_id: queues
                .features(&queue)
                .dedup
                .then(|| format!("tick-{}", tick.scheduled_at_ms)),
            ..NewMessage::default()
        };
        match queues.send(&queue, msg).await {
            Ok(_) => {
                state.last_run_ms = Some(tick.scheduled_at_ms);
                tracing::debug!(function = %self.function, due_at_ms = tick.scheduled_at_ms, past_due = tick.past_due, "timer tick enqueued");
            }
            Err(e) => {
                tracing::error!(function = %self.function, error = %e, "cannot enqueue a timer tick; it is missed");
                if let Some(fleet) = fleet
                    && let Err(e) =
                        fleet::release(fleet, &self.function, tick.scheduled_at_ms).await
                {
                    tracing::error!(function = %self.function, error = %e, "cannot release the timer's claim; it holds the timer until it is stale");
                }
            }
        }
    }

    async fn load(&self) -> Result<Option<TimerState>, String> {
        if let Some(fleet) = self.services.fleet() {
            return fleet::load(fleet.as_ref(), &self.function)
                .await
                .map_err(|e| e.to_string());
        }
        let registry = self.services.registry().clone();
        let function = self.function.clone();
        tokio::task::spawn_blocking(move || registry.timer(&function))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())
    }

    async fn save(&self, state: &TimerState, create: bool) {
        let registry = self.services.registry().clone();
        let (function, state) = (self.function.clone(), state.clone());
        let saved =
            tokio::task::spawn_blocking(move || registry.save_timer(&function, &state, create))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
        if let Err(e) = saved {
            tracing::error!(function = %self.function, error = %e, "cannot save the timer's state");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trigger(schedule: &str, run_on_startup: bool) -> TimerTrigger {
        TimerTrigger {
            schedule: schedule.into(),
            timezone: None,
            run_on_startup,
            delivery: None,
        }
    }

    const T0: u64 = 1_800_000_000_000; // 2027-01-15T08:00:00Z

    #[test]
    fn due_times_follow_the_schedule_and_its_time_zone() {
        let every_5s = trigger("*/5 * * * * *", false);
        let (s, tz) = every_5s.parse().unwrap();
        assert_eq!(next_after(&s, tz, T0), Some(T0 + 5_000));
        assert_eq!(next_after(&s, tz, T0 + 1), Some(T0 + 5_000));
        let daily = TimerTrigger {
            timezone: Some("Europe/Paris".into()),
            ..trigger("0 0 3 * * *", false)
        };
        let (s, tz) = daily.parse().unwrap();
        let next = next_after(&s, tz, T0).unwrap();
        // 03:00 in Paris in January is 02:00 UTC, the next day.
        assert_eq!(next % 86_400_000, 2 * 3_600_000);
        assert!(next > T0 && next - T0 < 86_400_000);
    }

    #[test]
    fn a_new_schedule_starts_from_now() {
        let t = trigger("*/5 * * * * *", false);
        assert_eq!(on_start(&t, None, T0, T0), (None, Some(T0 + 5_000)));
        let other = TimerState {
            spec: "0 0 * * * * UTC".into(),
            next_run_ms: Some(T0 - 60_000),
            ..TimerState::default()
        };
        assert_eq!(
            on_start(&t, Some(&other), T0, T0),
            (None, Some(T0 + 5_000)),
            "a changed schedule is not past due"
        );
    }

    #[test]
    fn a_new_schedule_taken_late_runs_the_tick_due_since_its_deploy_once() {
        let t = trigger("*/5 * * * * *", false);
        // Taken 12 s after the deploy: the ticks at +5 s and +10 s were
        // missed; the first runs, once, past due; then on the schedule.
        let (tick, next) = on_start(&t, None, T0 + 1, T0 + 12_000);
        let tick = tick.expect("the missed tick");
        assert_eq!((tick.scheduled_at_ms, tick.past_due), (T0 + 5_000, true));
        assert_eq!(next, Some(T0 + 15_000));
        // Taken 2 s late: the tick due 1 s ago runs, not flagged late.
        let (tick, _) = on_start(&t, None, T0 + 3_000, T0 + 6_000);
        assert_eq!(
            tick.map(|t| (t.scheduled_at_ms, t.past_due)),
            Some((T0 + 5_000, false))
        );
        // Nothing due yet since the deploy: nothing runs.
        assert_eq!(
            on_start(&t, None, T0 + 1, T0 + 4_000),
            (None, Some(T0 + 5_000))
        );
        // A version deployed long ago (a rollback, say) starts from now.
        let long_ago = T0 + 5_000 - CATCH_UP.as_millis() as u64 - 1_000;
        assert_eq!(
            on_start(&t, None, long_ago, T0 + 6_000),
            (None, Some(T0 + 10_000))
        );
    }

    #[test]
    fn downtime_over_many_ticks_runs_once_past_due() {
        let t = trigger("*/5 * * * * *", false);
        let saved = TimerState {
            spec: spec(&t),
            last_run_ms: Some(T0 - 3_600_000),
            next_run_ms: Some(T0 - 3_595_000),
            ..TimerState::default()
        };
        let (tick, next) = on_start(&t, Some(&saved), T0, T0 + 1_000);
        let tick = tick.expect("one run");
        assert!(tick.past_due);
        assert_eq!(tick.scheduled_at_ms, T0 - 3_595_000);
        assert_eq!(next, Some(T0 + 5_000), "then back on the schedule");
    }

    #[test]
    fn a_restart_before_the_due_time_keeps_it() {
        let t = trigger("0 0 3 * * *", false);
        let saved = TimerState {
            spec: spec(&t),
            next_run_ms: Some(T0 + 1_000),
            ..TimerState::default()
        };
        assert_eq!(on_start(&t, Some(&saved), T0, T0), (None, Some(T0 + 1_000)));
    }

    #[test]
    fn run_on_startup_runs_at_once_and_not_twice_when_also_past_due() {
        let t = trigger("*/5 * * * * *", true);
        let (tick, next) = on_start(&t, None, T0, T0 + 1);
        let tick = tick.unwrap();
        assert_eq!((tick.scheduled_at_ms, tick.past_due), (T0 + 1, false));
        assert_eq!(next, Some(T0 + 5_000));
        let saved = TimerState {
            spec: spec(&t),
            next_run_ms: Some(T0 - 10_000),
            ..TimerState::default()
        };
        let (tick, _) = on_start(&t, Some(&saved), T0, T0);
        assert!(tick.unwrap().past_due, "one run, flagged past due");
    }
}
