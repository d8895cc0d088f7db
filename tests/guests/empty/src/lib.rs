//! The cheapest possible job: the benchmark's measure of per-invocation cost.
use fnhost_sdk::{Event, Output, Result, job};

#[job]
fn empty(_event: Event) -> Result<Output> {
    Ok(Output::empty())
}
