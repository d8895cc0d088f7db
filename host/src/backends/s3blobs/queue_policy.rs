//! What `[blobs] create = true` puts in the notification queue's access
//! policy so that S3 may send the fleet's buckets' events to it: S3 sends
//! nothing to a queue whose policy does not let it, and AWS refuses to
//! point a bucket at such a queue. One statement, found by its `Sid` and
//! the same on every host (derived from the host config, never from what
//! one host happens to watch), so hosts setting it up at once cannot undo
//! each other; the policy's other statements are kept. Knows IAM policy
//! documents and ARNs; nothing of messages, triggers or wasm.

use super::S3Events;
use crate::blobs::BlobError;
use serde_json::{Value, json};
use std::sync::Arc;

/// The `Sid` of fnhost's statement in a notification queue's policy.
pub const SID: &str = "fnhost-s3-notifications";

impl S3Events {
    /// Let the fleet's buckets send their events to the notification
    /// queue (changing its policy only when it does not say so already);
    /// the queue's ARN.
    pub(super) async fn let_buckets_send(&self) -> Result<String, BlobError> {
        let backend =
            |e: crate::queue::QueueError| BlobError::backend(e.to_string(), Some(Arc::new(e)));
        let (arn, policy) = self
            .sqs
            .arn_and_policy(&self.queue)
            .await
            .map_err(backend)?;
        let buckets = self.blobs.name_patterns();
        let changed = with_statement(policy.as_deref(), &arn, &buckets).map_err(|why| {
            BlobError::backend(
                format!("cannot let S3 send to the notification queue {arn}: {why}"),
                None,
            )
        })?;
        if let Some(policy) = changed {
            self.sqs
                .set_policy(&self.queue, &policy)
                .await
                .map_err(backend)?;
            tracing::info!(queue = %arn, buckets = ?buckets, "the notification queue's policy now lets S3 send the buckets' events");
        }
        Ok(arn)
    }
}

impl super::S3Blobs {
    /// The names of every S3 bucket this host may hold, `*` standing for
    /// any characters: `<prefix>*` and the buckets mapped one by one; `*`
    /// alone without a prefix (every name is then a bucket's).
    pub fn name_patterns(&self) -> Vec<String> {
        if self.prefix.is_empty() {
            return vec!["*".into()];
        }
        let mut names = vec![format!("{}*", self.prefix)];
        names.extend(
            self.names
                .values()
                .filter(|s3| !s3.starts_with(&self.prefix))
                .cloned(),
        );
        names.sort();
        names.dedup();
        names
    }
}

/// `current` (a queue's `Policy`, if it has one) with fnhost's statement
/// letting S3 send `queue_arn` the events of the buckets named by
/// `buckets` (see [`S3Blobs::name_patterns`](super::S3Blobs::name_patterns))
/// in the queue's own account: added, or put in place of the one there.
/// `None` when `current` holds it already, as it should be.
pub fn with_statement(
    current: Option<&str>,
    queue_arn: &str,
    buckets: &[String],
) -> Result<Option<String>, String> {
    let statement = statement(queue_arn, buckets)?;
    let mut policy: Value = match current.map(str::trim).filter(|p| !p.is_empty()) {
        None => json!({"Version": "2012-10-17", "Statement": []}),
        Some(text) => serde_json::from_str(text).map_err(|e| {
            format!("its policy is not JSON ({e}); correct or remove it, or set [blobs] create = false and set up the notifications yourself")
        })?,
    };
    let Some(doc) = policy.as_object_mut() else {
        return Err("its policy is not a JSON object; correct or remove it".into());
    };
    let statements = match doc.remove("Statement") {
        None => Vec::new(),
        Some(Value::Array(all)) => all,
        Some(one) => vec![one],
    };
    if statements.contains(&statement) {
        return Ok(None);
    }
    let mut kept: Vec<Value> = statements
        .into_iter()
        .filter(|s| s.get("Sid").and_then(Value::as_str) != Some(SID))
        .collect();
    kept.push(statement);
    doc.insert("Statement".into(), Value::Array(kept));
    Ok(Some(policy.to_string()))
}

/// fnhost's statement: S3 may send `queue_arn` the events of `buckets`
/// in the queue's account (an ARN `arn:<partition>:sqs:<region>:<account>:<name>`).
fn statement(queue_arn: &str, buckets: &[String]) -> Result<Value, String> {
    let parts: Vec<&str> = queue_arn.split(':').collect();
    let [_, partition, "sqs", _, account, _] = parts[..] else {
        return Err(format!("{queue_arn:?} is not an SQS queue's ARN"));
    };
    let sources: Vec<String> = buckets
        .iter()
        .map(|b| format!("arn:{partition}:s3:::{b}"))
        .collect();
    Ok(json!({
        "Sid": SID,
        "Effect": "Allow",
        "Principal": {"Service": "s3.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {
            "ArnLike": {"aws:SourceArn": sources},
            "StringEquals": {"aws:SourceAccount": account},
        },
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:sqs:eu-west-1:123456789012:prod-s3-events";

    fn statements(policy: &str) -> Vec<Value> {
        let v: Value = serde_json::from_str(policy).unwrap();
        v["Statement"].as_array().unwrap().clone()
    }

    #[test]
    fn s3_may_send_the_fleets_buckets_events_from_the_queues_own_account() {
        let buckets = vec!["acme-prod-*".to_string(), "acme-thumbs".to_string()];
        let policy = with_statement(None, ARN, &buckets).unwrap().unwrap();
        let all = statements(&policy);
        assert_eq!(all.len(), 1);
        let s = &all[0];
        assert_eq!(s["Sid"], SID);
        assert_eq!(s["Effect"], "Allow");
        assert_eq!(s["Principal"]["Service"], "s3.amazonaws.com");
        assert_eq!(s["Action"], "sqs:SendMessage");
        assert_eq!(s["Resource"], ARN);
        assert_eq!(
            s["Condition"]["ArnLike"]["aws:SourceArn"],
            json!(["arn:aws:s3:::acme-prod-*", "arn:aws:s3:::acme-thumbs"])
        );
        assert_eq!(
            s["Condition"]["StringEquals"]["aws:SourceAccount"],
            "123456789012"
        );
        // Another partition's queue names that partition's buckets.
        let cn = "arn:aws-cn:sqs:cn-north-1:123456789012:q";
        let policy = with_statement(None, cn, &buckets).unwrap().unwrap();
        assert_eq!(
            statements(&policy)[0]["Condition"]["ArnLike"]["aws:SourceArn"][0],
            "arn:aws-cn:s3:::acme-prod-*"
        );
    }

    #[test]
    fn the_statement_is_written_once_and_the_queues_other_statements_are_kept() {
        let buckets = vec!["acme-prod-*".to_string()];
        let ours = with_statement(None, ARN, &buckets).unwrap().unwrap();
        // Already there: nothing to write (every host finds it so).
        assert_eq!(with_statement(Some(&ours), ARN, &buckets).unwrap(), None);
        // A user's statement, and an older one of ours, in a single-statement
        // policy and in a list.
        let user = json!({"Sid": "ops", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sqs:*", "Resource": ARN});
        let old = json!({"Sid": SID, "Effect": "Allow", "Principal": {"Service": "s3.amazonaws.com"}, "Action": "sqs:SendMessage", "Resource": ARN});
        for current in [
            json!({"Version": "2012-10-17", "Statement": user.clone()}),
            json!({"Version": "2012-10-17", "Id": "x", "Statement": [user.clone(), old]}),
        ] {
            let policy = with_statement(Some(&current.to_string()), ARN, &buckets)
                .unwrap()
                .unwrap();
            let all = statements(&policy);
            assert_eq!(all.len(), 2, "{policy}");
            assert_eq!(all[0], user);
            assert_eq!(all[1], statements(&ours)[0]);
            // The bucket names changed: replaced, not added.
            let more = vec!["acme-prod-*".to_string(), "acme-other".to_string()];
            let again = with_statement(Some(&policy), ARN, &more).unwrap().unwrap();
            assert_eq!(statements(&again).len(), 2, "{again}");
        }
    }

    #[test]
    fn the_buckets_are_every_name_under_the_prefix_and_each_mapped_one() {
        let blobs = |prefix: &str, names: &[(&str, &str)]| super::super::S3Blobs {
            client: aws_sdk_s3::Client::from_conf(
                aws_sdk_s3::Config::builder()
                    .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
                    .build(),
            ),
            prefix: prefix.into(),
            names: names
                .iter()
                .map(|(b, s3)| (b.to_string(), s3.to_string()))
                .collect(),
            create: false,
        };
        let mapped = [("thumbnails", "acme-thumbs"), ("in", "acme-prod-in")];
        assert_eq!(
            blobs("acme-prod-", &mapped).name_patterns(),
            ["acme-prod-*", "acme-thumbs"]
        );
        assert_eq!(blobs("", &mapped).name_patterns(), ["*"]);
    }

    #[test]
    fn a_policy_fnhost_cannot_read_or_a_queue_that_is_not_sqss_is_refused_saying_so() {
        let b = vec!["*".to_string()];
        let e = with_statement(Some("{not json"), ARN, &b).unwrap_err();
        assert!(
            e.contains("not JSON") && e.contains("create = false"),
            "{e}"
        );
        let e = with_statement(Some("[1]"), ARN, &b).unwrap_err();
        assert!(e.contains("not a JSON object"), "{e}");
        let e = with_statement(None, "arn:aws:sns:eu-west-1:1:t", &b).unwrap_err();
        assert!(e.contains("not an SQS queue's ARN"), "{e}");
    }
}
