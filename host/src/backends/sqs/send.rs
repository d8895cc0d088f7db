//! Sends: fnhost messages as SQS entries, checked against what SQS
//! carries, and delays past SQS's 15 minutes held by sending again.

use super::*;

impl SqsQueues {
    /// Send one message (checked) to `queue`, with `meta` beside the body.
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
        let fifo = self.is_fifo(queue);
        let delay_ms = crate::queue::visible_at(msg.delay_ms, msg.not_before_ms, now) - now;
        if fifo && delay_ms > 0 {
            return Err(QueueError::Invalid(format!(
                "queue {} is a FIFO queue on SQS, which takes no delay per message; send without one",
                crate::text::quote(queue)
            )));
        }
        let (delay_secs, due) = if delay_ms <= MAX_SQS_DELAY.as_millis() as u64 {
            (delay_ms.div_ceil(1000) as i32, None)
        } else {
            (MAX_SQS_DELAY.as_secs() as i32, Some(now + delay_ms))
        };
        let (body, base64) = codec::encode_body(&msg.body);
        let mut meta = codec::meta_of(msg, now, due, base64);
        extra(&mut meta);
        let json = serde_json::to_string(&meta).map_err(|e| QueueError::Invalid(e.to_string()))?;
        let size = body.len() + json.len() + META.len() + "String".len();
        if size > MAX_SQS_MESSAGE {
            return Err(QueueError::Invalid(format!(
                "the message is {size} bytes as SQS would carry it (its body{} and fnhost's metadata), over SQS's limit of {MAX_SQS_MESSAGE}",
                if base64 { " in base64" } else { "" }
            )));
        }
        let attribute = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(json)
            .build()
            .map_err(|e| QueueError::Invalid(e.to_string()))?;
        let mut entry = SendMessageBatchRequestEntry::builder()
            .id(id)
            .message_body(body)
            .message_attributes(META, attribute);
        if fifo {
            // Without a group, each message is its own group: no order to keep.
            let group = msg
                .group
                .clone()
                .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
            let dedup = match &msg.dedup_id {
                Some(d) => crate::files::sha256_hex(
                    format!("{}/{d}", msg.dedup_scope.as_deref().unwrap_or("")).as_bytes(),
                ),
                None => uuid::Uuid::now_v7().to_string(),
            };
            entry = entry
                .message_group_id(group)
                .message_deduplication_id(dedup);
        } else if delay_secs > 0 {
            entry = entry.delay_seconds(delay_secs);
        }
        entry
            .build()
            .map_err(|e| QueueError::Invalid(e.to_string()))
    }

    /// A message received before it is due (a delay longer than SQS's 15
    /// minutes): sent again with the time left, and the copy received now
    /// deleted, so the receive count of the one finally delivered is its own.
    pub(super) async fn hold(&self, queue: &str, url: &str, handle: &str, r: &Received, due: u64) {
        let now = self.clock.now_ms();
        let msg = NewMessage {
            not_before_ms: Some(due),
            ..codec::resend(r)
        };
        let meta = r.meta.clone();
        let sent = self
            .send_one(queue, msg, |m| {
                m.sent_at_ms = meta.sent_at_ms;
                m.dedup_id = meta.dedup_id.clone();
            })
            .await;
        match sent {
            Ok(_) => {
                let _ = self.deletes.delete(url, handle).await;
            }
            Err(e) => {
                // Left to come back after its visibility timeout.
                tracing::warn!(queue = %queue, error = %e, due_ms = due, now_ms = now, "cannot hold a delayed message; it comes back later");
            }
        }
    }
}
