//! `order-processor`: a queue-triggered order workflow.
//!
//! For each message on `orders` (also as an async job):
//! 1. validate the order; an order that can never be valid is a permanent
//!    failure (`fail`), so it goes straight to the dead-letter queue;
//! 2. price it;
//! 3. enqueue a confirmation to the `outbox` queue (pipes and filters) with a
//!    dedup id derived from the order id, so a redelivered order, or the same
//!    order sent twice, confirms once;
//! 4. report progress along the way.
//!
//! `"fail_until_attempt": N` in an order simulates a flaky dependency: the job
//! asks to be retried (`retry`) until attempt N, then succeeds.

use fnhost_sdk::queue::SendOptions;
use fnhost_sdk::{Error, Event, Invocation, Output, Result, ResultExt, job};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Order {
    id: String,
    customer: String,
    items: Vec<Item>,
    #[serde(default)]
    fail_until_attempt: u32,
}

#[derive(Deserialize, Serialize)]
struct Item {
    sku: String,
    quantity: u32,
    price_cents: u64,
}

#[derive(Serialize)]
struct Confirmation<'a> {
    order_id: &'a str,
    customer: &'a str,
    total_cents: u64,
    items: &'a [Item],
}

fn validate(order: &Order) -> Result<()> {
    let invalid = |why: &str| {
        Err(Error::fail(format!(
            "order {:?} is invalid: {why}",
            order.id
        )))
    };
    if order.id.trim().is_empty() {
        return invalid("it has no id");
    }
    if order.customer.trim().is_empty() {
        return invalid("it has no customer");
    }
    if order.items.is_empty() {
        return invalid("it has no items");
    }
    if let Some(item) = order.items.iter().find(|i| i.quantity == 0) {
        return invalid(&format!("item {:?} has quantity 0", item.sku));
    }
    Ok(())
}

#[job]
fn process(inv: Invocation, event: Event) -> Result<Output> {
    let order: Order = event.json()?;
    validate(&order)?;
    fnhost_sdk::progress(25, "validated")?;

    if inv.attempt < order.fail_until_attempt {
        return Err(Error::retry(format!(
            "the payment service did not answer (simulated, attempt {} of {})",
            inv.attempt, order.fail_until_attempt
        )));
    }
    let total_cents = order
        .items
        .iter()
        .try_fold(0u64, |sum, i| {
            sum.checked_add(i.price_cents.checked_mul(u64::from(i.quantity))?)
        })
        .ok_or_else(|| Error::fail(format!("order {:?} overflows the total", order.id)))?;
    fnhost_sdk::progress(60, "priced")?;

    let confirmation = Confirmation {
        order_id: &order.id,
        customer: &order.customer,
        total_cents,
        items: &order.items,
    };
    let body = serde_json::to_vec(&confirmation)?;
    let options = SendOptions {
        delay_ms: None,
        // The same order confirms once, however often it is delivered.
        dedup_id: Some(format!("order-confirmed-{}", order.id)),
        group: None,
        priority: None,
        correlation_id: Some(order.id.clone()),
        reply_to: None,
        attributes: vec![("kind".into(), "order-confirmed".into())],
    };
    let confirmation_id = fnhost_sdk::queue::send("outbox", &body, &options)
        .or_retry("cannot enqueue the confirmation")?;
    fnhost_sdk::progress(100, "confirmed")?;
    Output::json(&serde_json::json!({
        "order_id": order.id,
        "status": "confirmed",
        "total_cents": total_cents,
        "confirmation_id": confirmation_id,
    }))
}
