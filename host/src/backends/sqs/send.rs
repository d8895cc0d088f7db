//! Sends: fnhost messages as SQS messages (see [`codec`]), checked against
//! what SQS carries; received messages sent on as they came (to the dead
//! letters, back from them); and delays past SQS's 15 minutes held by
//! sending again.
//!
//! On a FIFO queue a message's group and dedup id are the sender's, as
//! given, when SQS takes them as they are (1 to 128 printable ASCII
//! characters); otherwise their SHA-256 (the given group is then kept in
//! the metadata). A function's dedup ids are its own: they go to SQS as
//! `<function>:<id>` (the id hashed if that is too long), so one
//! function's dedup ids never suppress another's messages; the admin
//! API's go as they are.

use super::*;
use codec::Outgoing;

/// Where a message goes on a FIFO queue.
struct Fifo {
    group: String,
    dedup: String,
}

impl SqsQueues {
    /// Send one message (checked) to `queue`, with `extra` added to its
    /// metadata.
    pub(super) async fn send_one(
        &self,
        queue: &str,
        msg: NewMessage,
        extra: impl FnOnce(&mut Meta),
    ) -> Result<Sent, QueueError> {
        let entry = self.entry(queue, "0", &msg, extra)?;
        let url = self.url(queue).await?;
        let mut send = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(entry.message_body())
            .set_message_attributes(entry.message_attributes().cloned())
            .set_message_group_id(entry.message_group_id().map(str::to_string))
            .set_message_deduplication_id(entry.message_deduplication_id().map(str::to_string));
        if let Some(d) = entry.delay_seconds() {
            send = send.delay_seconds(d);
        }
        let out = send
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot send to {queue:?}"), e))?;
        Ok(Sent {
            id: out.message_id().unwrap_or_default().to_string(),
            duplicate: false,
        })
    }

    /// `msg` as an SQS batch entry for `queue`, checked against what SQS
    /// can carry; `extra` adds to its metadata.
    pub(super) fn entry(
        &self,
        queue: &str,
        id: &str,
        msg: &NewMessage,
        extra: impl FnOnce(&mut Meta),
    ) -> Result<SendMessageBatchRequestEntry, QueueError> {
        let now = self.clock.now_ms();
        self.features(queue).check(queue, msg, "SQS")?;
        codec::check_attributes(queue, msg)?;
        let fifo = self.is_fifo(queue);
        let delay_ms = crate::queue::visible_at(msg.delay_ms, msg.not_before_ms, now) - now;
        if fifo && delay_ms > 0 {
            return Err(QueueError::Invalid(format!(
                "queue {} is a FIFO queue on SQS, which takes no delay per message; send without one",
                crate::text::quote(queue)
            )));
        }
        let (delay_secs, due) = delay(delay_ms, now);
        let mut meta = codec::meta_of(msg, now, due);
        extra(&mut meta);
        let fifo = fifo.then(|| {
            let group = match &msg.group {
                Some(g) if codec::sqs_id(g) => g.clone(),
                Some(g) => {
                    meta.group = Some(g.clone());
                    crate::files::sha256_hex(g.as_bytes())
                }
                // Without a group, each message is its own group: no
                // order to keep.
                None => uuid::Uuid::now_v7().to_string(),
            };
            Fifo {
                group,
                dedup: dedup_id(msg),
            }
        });
        let out = codec::outgoing(msg, meta);
        self.carried(queue, &out)?;
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body(out.body)
            .set_message_attributes(Some(out.attributes));
        match fifo {
            Some(f) => {
                entry = entry
                    .message_group_id(f.group)
                    .message_deduplication_id(f.dedup)
            }
            None if delay_secs > 0 => entry = entry.delay_seconds(delay_secs),
            None => {}
        }
        entry
            .build()
            .map_err(|e| QueueError::Invalid(e.to_string()))
    }

    /// Refuse `out` when SQS cannot carry it, naming the limit.
    pub(super) fn carried(&self, queue: &str, out: &Outgoing) -> Result<(), QueueError> {
        let size = codec::sqs_size(&out.body, &out.attributes);
        if size > MAX_SQS_MESSAGE {
            let base64 = out.attributes.contains_key(codec::ENCODING);
            return Err(QueueError::Invalid(format!(
                "the message to {} is {size} bytes as SQS would carry it (its body{}, its attributes and fnhost's metadata), over SQS's limit of {MAX_SQS_MESSAGE}",
                crate::text::quote(queue),
                if base64 { " in base64" } else { "" }
            )));
        }
        if out.attributes.len() > codec::MAX_SQS_ATTRIBUTES {
            return Err(QueueError::Invalid(format!(
                "the message to {} has {} attributes, fnhost's included, over SQS's {}",
                crate::text::quote(queue),
                out.attributes.len(),
                codec::MAX_SQS_ATTRIBUTES
            )));
        }
        Ok(())
    }

    /// Send a message as it was built (a received one sent on) to
    /// `queue`, delayed `delay_secs` (not on FIFO), in group `group` on a
    /// FIFO queue (its own when none); answers its id.
    pub(super) async fn send_out(
        &self,
        queue: &str,
        out: Outgoing,
        group: Option<String>,
        delay_secs: i32,
    ) -> Result<String, QueueError> {
        self.carried(queue, &out)?;
        let url = self.url(queue).await?;
        let mut send = self
            .client
            .send_message()
            .queue_url(url)
            .message_body(out.body)
            .set_message_attributes(Some(out.attributes));
        if self.is_fifo(queue) {
            // A fresh dedup id: a dead letter or a redrive is never a
            // duplicate of what was sent before.
            let own = uuid::Uuid::now_v7().to_string();
            send = send
                .message_group_id(group.unwrap_or_else(|| own.clone()))
                .message_deduplication_id(own);
        } else if delay_secs > 0 {
            send = send.delay_seconds(delay_secs);
        }
        let sent = send
            .send()
            .await
            .map_err(|e| sqs_error(&format!("cannot send to {queue:?}"), e))?;
        Ok(sent.message_id().unwrap_or_default().to_string())
    }

    /// A message received before it is due (a delay longer than SQS's 15
    /// minutes): sent again with the time left, and the copy received now
    /// deleted, so the receive count of the one finally delivered is its own.
    pub(super) async fn hold(&self, queue: &str, url: &str, handle: &str, r: &Received, due: u64) {
        let now = self.clock.now_ms();
        let (delay_secs, due_ms) = delay(due.saturating_sub(now), now);
        let meta = Meta {
            due_ms,
            ..r.meta.clone()
        };
        let sent = self
            .send_out(
                queue,
                codec::forward(r, &meta),
                r.sqs_group.clone(),
                delay_secs,
            )
            .await;
        match sent {
            Ok(_) => {
                if let Err(e) = self.deletes.delete(url, handle).await {
                    tracing::warn!(queue = %queue, error = %e, "a delayed message was sent again but its earlier copy cannot be deleted; that copy is delivered too (at least once)");
                }
            }
            Err(e) => {
                // Left to come back after its visibility timeout.
                tracing::warn!(queue = %queue, error = %e, due_ms = due, now_ms = now, "cannot hold a delayed message; it comes back later");
            }
        }
    }
}

/// A delay of `delay_ms` from `now` as SQS's delay in seconds, and the due
/// time to keep when it is longer than SQS's 15 minutes.
fn delay(delay_ms: u64, now: u64) -> (i32, Option<u64>) {
    if delay_ms <= MAX_SQS_DELAY.as_millis() as u64 {
        (delay_ms.div_ceil(1000) as i32, None)
    } else {
        (MAX_SQS_DELAY.as_secs() as i32, Some(now + delay_ms))
    }
}

/// The SQS dedup id of `msg` on a FIFO queue: the sender's, scoped by the
/// sending function (see the module docs); a fresh one when it has none.
fn dedup_id(msg: &NewMessage) -> String {
    let Some(id) = &msg.dedup_id else {
        return uuid::Uuid::now_v7().to_string();
    };
    let hashed = || crate::files::sha256_hex(id.as_bytes());
    match &msg.dedup_scope {
        None if codec::sqs_id(id) => id.clone(),
        None => hashed(),
        Some(function) => {
            let scoped = format!("{function}:{id}");
            if codec::sqs_id(&scoped) {
                scoped
            } else {
                // Function names are at most 63 bytes: 63 + 1 + 64 ≤ 128.
                format!("{function}:{}", hashed())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_ids_are_the_senders_scoped_by_function() {
        let msg = |id: &str, scope: Option<&str>| NewMessage {
            dedup_id: Some(id.into()),
            dedup_scope: scope.map(str::to_string),
            ..NewMessage::default()
        };
        assert_eq!(dedup_id(&msg("order-7", None)), "order-7");
        assert_eq!(
            dedup_id(&msg("order-7", Some("billing"))),
            "billing:order-7"
        );
        let spaced = dedup_id(&msg("has space", None));
        assert_eq!(spaced.len(), 64);
        let long = dedup_id(&msg(&"x".repeat(128), Some("billing")));
        assert!(
            long.starts_with("billing:") && long.len() == 8 + 64,
            "{long}"
        );
        assert_ne!(
            dedup_id(&NewMessage::default()),
            dedup_id(&NewMessage::default())
        );
    }
}
