//! Buckets on Amazon S3: each fnhost bucket is one S3 bucket, named
//! `<prefix><bucket>` or mapped one by one in the host config. Objects are
//! whole S3 objects; writes are atomic as S3's are (a reader sees the old
//! object or the new one).
//!
//! What differs from the embedded store, and how it is bridged:
//! - the etag is S3's `ETag` without its quotes (an MD5 for a single-part
//!   put, opaque otherwise), not a SHA-256;
//! - a listing carries no content types (S3's `ListObjectsV2` has none);
//! - S3 does not say whether a put replaced or a delete found an object: a
//!   `HeadObject` first answers it (one more request, and a race with a
//!   writer in between can make the answer stale);
//! - there is no change feed ([`BlobBackend::feed`] is `None`): blob
//!   triggers follow the buckets' event notifications on an SQS queue
//!   (`triggers::blob::s3`).

pub mod queue_policy;

use crate::blobs::{BlobBackend, BlobError, Object, ObjectMeta, Stored, validate, validate_put};
use crate::task::BoxFuture;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Buckets on S3.
pub struct S3Blobs {
    client: aws_sdk_s3::Client,
    prefix: String,
    names: BTreeMap<String, String>,
    create: bool,
}

impl S3Blobs {
    /// Buckets at `target`, named `<prefix><bucket>` unless `names` maps
    /// them one by one.
    pub async fn connect(
        target: super::aws::Target,
        prefix: String,
        names: BTreeMap<String, String>,
    ) -> Result<S3Blobs, BlobError> {
        let client = super::aws::s3_client(target, "blobs")
            .await
            .map_err(|e| BlobError::InvalidBucket(e.to_string()))?;
        Ok(S3Blobs {
            client,
            prefix,
            names,
            create: false,
        })
    }

    /// Create a bucket that a put finds missing (a dev convenience:
    /// `create = true` in the host config).
    pub fn creating_buckets(mut self, create: bool) -> S3Blobs {
        self.create = create;
        self
    }

    /// The S3 bucket that holds `bucket`.
    pub fn s3_bucket(&self, bucket: &str) -> String {
        self.names
            .get(bucket)
            .cloned()
            .unwrap_or_else(|| format!("{}{bucket}", self.prefix))
    }

    /// The fnhost bucket an S3 bucket holds, if it is one of this host's.
    pub fn bucket_of(&self, s3_bucket: &str) -> Option<String> {
        self.names
            .iter()
            .find(|(_, s3)| *s3 == s3_bucket)
            .map(|(b, _)| b.clone())
            .or_else(|| {
                let b = s3_bucket.strip_prefix(&self.prefix)?;
                crate::blobs::validate_bucket(b).ok()?;
                (!self.names.contains_key(b)).then(|| b.to_string())
            })
    }

    /// The client, for the event feed and the test's setup.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Create the S3 bucket of `bucket` unless it exists (`create = true`).
    pub async fn create_bucket(&self, bucket: &str) -> Result<(), BlobError> {
        super::aws::create_bucket(&self.client, &self.s3_bucket(bucket))
            .await
            .map_err(|e| BlobError::backend(e.to_string(), e.source_of()))
    }
}

fn s3_error<E, R>(what: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> BlobError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let message = super::aws::describe(what, &e);
    match e.code() {
        Some("SlowDown" | "ThrottlingException" | "RequestLimitExceeded") => BlobError::Throttled {
            message,
            source: Some(Arc::new(e)),
        },
        _ => BlobError::backend(message, Some(Arc::new(e))),
    }
}

/// Is this "the bucket or the key is not there"?
fn missing<E: ProvideErrorMetadata>(
    e: &aws_sdk_s3::error::SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> bool {
    matches!(e.code(), Some("NoSuchKey" | "NoSuchBucket" | "NotFound"))
        || e.raw_response().is_some_and(|r| r.status().as_u16() == 404)
}

fn etag(raw: Option<&str>) -> String {
    raw.unwrap_or_default().trim_matches('"').to_string()
}

fn millis(t: Option<&aws_sdk_s3::primitives::DateTime>) -> u64 {
    t.and_then(|t| t.to_millis().ok())
        .and_then(|ms| u64::try_from(ms).ok())
        .unwrap_or(0)
}

fn refuse<'a, T: Send + 'a>(e: BlobError) -> BoxFuture<'a, Result<T, BlobError>> {
    Box::pin(async move { Err(e) })
}

impl BlobBackend for S3Blobs {
    fn put(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
    ) -> BoxFuture<'_, Result<Stored, BlobError>> {
        if let Err(e) = validate_put(bucket, key, body.len(), content_type.as_deref()) {
            return refuse(e);
        }
        let (s3, key) = (self.s3_bucket(bucket), key.to_string());
        Box::pin(async move {
            let replaced = self.head_in(&s3, &key).await?.is_some();
            let size = body.len() as u64;
            let body = bytes::Bytes::from(body);
            let put = || {
                let mut put = self
                    .client
                    .put_object()
                    .bucket(&s3)
                    .key(&key)
                    .body(ByteStream::from(body.clone()));
                if let Some(t) = &content_type {
                    put = put.content_type(t);
                }
                put.send()
            };
            let out = match put().await {
                Err(e) if self.create && e.code() == Some("NoSuchBucket") => {
                    super::aws::create_bucket(&self.client, &s3)
                        .await
                        .map_err(|e| BlobError::backend(e.to_string(), e.source_of()))?;
                    put().await
                }
                other => other,
            }
            .map_err(|e| s3_error(&format!("cannot put {key:?} in {s3:?}"), e))?;
            Ok(Stored {
                meta: ObjectMeta {
                    key,
                    size,
                    etag: etag(out.e_tag()),
                    content_type,
                    modified_ms: crate::clock::now_ms(),
                },
                replaced,
            })
        })
    }

    fn replace_if(
        &self,
        bucket: &str,
        key: &str,
        body: Vec<u8>,
        content_type: Option<String>,
        etag_now: String,
    ) -> BoxFuture<'_, Result<Option<Stored>, BlobError>> {
        if let Err(e) = validate_put(bucket, key, body.len(), content_type.as_deref()) {
            return refuse(e);
        }
        let (s3, key) = (self.s3_bucket(bucket), key.to_string());
        Box::pin(async move {
            let size = body.len() as u64;
            let mut put = self
                .client
                .put_object()
                .bucket(&s3)
                .key(&key)
                .if_match(format!("\"{etag_now}\""))
                .body(ByteStream::from(body));
            if let Some(t) = &content_type {
                put = put.content_type(t);
            }
            match put.send().await {
                Ok(out) => Ok(Some(Stored {
                    meta: ObjectMeta {
                        key,
                        size,
                        etag: etag(out.e_tag()),
                        content_type,
                        modified_ms: crate::clock::now_ms(),
                    },
                    replaced: true,
                })),
                // Changed (412), or gone (404): nothing written.
                Err(e)
                    if e.raw_response()
                        .is_some_and(|r| matches!(r.status().as_u16(), 404 | 409 | 412)) =>
                {
                    Ok(None)
                }
                Err(e) => Err(s3_error(&format!("cannot replace {key:?} in {s3:?}"), e)),
            }
        })
    }

    fn get(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<Option<Object>, BlobError>> {
        if let Err(e) = validate(bucket, key) {
            return refuse(e);
        }
        let (s3, key) = (self.s3_bucket(bucket), key.to_string());
        Box::pin(async move {
            let out = match self.client.get_object().bucket(&s3).key(&key).send().await {
                Ok(out) => out,
                Err(e) if missing(&e) => return Ok(None),
                Err(e) => return Err(s3_error(&format!("cannot get {key:?} from {s3:?}"), e)),
            };
            let meta = ObjectMeta {
                key: key.clone(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: etag(out.e_tag()),
                content_type: out.content_type().map(str::to_string),
                modified_ms: millis(out.last_modified()),
            };
            let body = out
                .body
                .collect()
                .await
                .map_err(|e| {
                    BlobError::backend(format!("cannot read {key:?} from {s3:?}: {e}"), None)
                })?
                .into_bytes()
                .to_vec();
            Ok(Some((meta, body)))
        })
    }

    fn head(
        &self,
        bucket: &str,
        key: &str,
    ) -> BoxFuture<'_, Result<Option<ObjectMeta>, BlobError>> {
        if let Err(e) = validate(bucket, key) {
            return refuse(e);
        }
        let (s3, key) = (self.s3_bucket(bucket), key.to_string());
        Box::pin(async move { self.head_in(&s3, &key).await })
    }

    fn delete(&self, bucket: &str, key: &str) -> BoxFuture<'_, Result<bool, BlobError>> {
        if let Err(e) = validate(bucket, key) {
            return refuse(e);
        }
        let (s3, key) = (self.s3_bucket(bucket), key.to_string());
        Box::pin(async move {
            if self.head_in(&s3, &key).await?.is_none() {
                return Ok(false);
            }
            match self
                .client
                .delete_object()
                .bucket(&s3)
                .key(&key)
                .send()
                .await
            {
                Ok(_) => Ok(true),
                Err(e) if missing(&e) => Ok(false),
                Err(e) => Err(s3_error(&format!("cannot delete {key:?} from {s3:?}"), e)),
            }
        })
    }

    fn list(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<ObjectMeta>, BlobError>> {
        if let Err(e) = crate::blobs::validate_bucket(bucket) {
            return refuse(e);
        }
        let (s3, prefix) = (self.s3_bucket(bucket), prefix.to_string());
        Box::pin(async move {
            let mut out = Vec::new();
            let mut token: Option<String> = None;
            while out.len() < max {
                let mut list = self
                    .client
                    .list_objects_v2()
                    .bucket(&s3)
                    .prefix(&prefix)
                    .max_keys((max - out.len()).min(1000) as i32);
                list = match (&token, &start_after) {
                    (Some(t), _) => list.continuation_token(t),
                    (None, Some(after)) => list.start_after(after),
                    (None, None) => list,
                };
                let page = match list.send().await {
                    Ok(page) => page,
                    Err(e) if missing(&e) => return Ok(Vec::new()),
                    Err(e) => return Err(s3_error(&format!("cannot list {s3:?}"), e)),
                };
                out.extend(page.contents().iter().filter_map(|o| {
                    Some(ObjectMeta {
                        key: o.key()?.to_string(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                        etag: etag(o.e_tag()),
                        content_type: None,
                        modified_ms: millis(o.last_modified()),
                    })
                }));
                token = page.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            Ok(out)
        })
    }
}

impl S3Blobs {
    async fn head_in(&self, s3: &str, key: &str) -> Result<Option<ObjectMeta>, BlobError> {
        match self.client.head_object().bucket(s3).key(key).send().await {
            Ok(out) => Ok(Some(ObjectMeta {
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: etag(out.e_tag()),
                content_type: out.content_type().map(str::to_string),
                modified_ms: millis(out.last_modified()),
            })),
            Err(e) if missing(&e) => Ok(None),
            Err(e) => Err(s3_error(&format!("cannot look up {key:?} in {s3:?}"), e)),
        }
    }
}

/// Where S3 buckets send their event notifications: an SQS queue, read by
/// every host of the fleet (`triggers::blob::s3`).
pub struct S3Events {
    /// The fnhost queue name of the notification queue (on SQS, under
    /// `[queues]`'s prefix).
    pub queue: String,
    /// The buckets.
    pub blobs: Arc<S3Blobs>,
    /// The queues, to find the notification queue's ARN.
    pub sqs: Arc<super::sqs::SqsQueues>,
    /// Create a watched bucket that is missing and point its notifications
    /// at the queue (a dev convenience: in production, set them up once).
    pub create: bool,
}

impl S3Events {
    /// Create `bucket` if it is missing, let S3 send the fleet's buckets'
    /// events to the notification queue ([`queue_policy`]), and send the
    /// bucket's object-created and object-removed events there.
    pub async fn set_up(&self, bucket: &str) -> Result<(), BlobError> {
        use aws_sdk_s3::types::{Event, NotificationConfiguration, QueueConfiguration};
        self.blobs.create_bucket(bucket).await?;
        let arn = self.let_buckets_send().await?;
        let target = QueueConfiguration::builder()
            .queue_arn(arn)
            .events(Event::S3ObjectCreated)
            .events(Event::S3ObjectRemoved)
            .build()
            .map_err(|e| BlobError::backend(e.to_string(), None))?;
        let s3 = self.blobs.s3_bucket(bucket);
        self.blobs
            .client
            .put_bucket_notification_configuration()
            .bucket(&s3)
            .notification_configuration(
                NotificationConfiguration::builder()
                    .queue_configurations(target)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| s3_error(&format!("cannot set up the notifications of {s3:?}"), e))?;
        Ok(())
    }
}

/// One object event from an S3 notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Event {
    /// The S3 bucket.
    pub s3_bucket: String,
    /// The key, decoded.
    pub key: String,
    /// Created (S3 does not tell created from updated) or deleted; `None`
    /// for events blob triggers do not follow (restores, tagging, …).
    pub kind: Option<crate::blobs::ChangeKind>,
    /// The object's ETag, unquoted, for a created object.
    pub etag: Option<String>,
    /// When it happened, ms since the epoch, if the event says.
    pub at_ms: Option<u64>,
}

#[derive(serde::Deserialize)]
struct Notification {
    #[serde(rename = "Records", default)]
    records: Vec<Record>,
    #[serde(rename = "Event")]
    event: Option<String>,
}

#[derive(serde::Deserialize)]
struct Record {
    #[serde(rename = "eventName")]
    event_name: String,
    #[serde(rename = "eventTime")]
    event_time: Option<String>,
    s3: Entity,
}

#[derive(serde::Deserialize)]
struct Entity {
    bucket: BucketEntity,
    object: ObjectEntity,
}

#[derive(serde::Deserialize)]
struct BucketEntity {
    name: String,
}

#[derive(serde::Deserialize)]
struct ObjectEntity {
    key: String,
    #[serde(rename = "eTag")]
    e_tag: Option<String>,
}

/// A message on the notification queue that is not an S3 event
/// notification (what it lacks, in its message): it will never read as
/// one, so it is dead-lettered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct NotANotification(String);

/// The object events in an S3 event notification (the body of a message
/// S3 sent to SQS). S3's test event, sent when notifications are set up,
/// has none. Keys arrive form-encoded (`+` for a space, `%XX` bytes).
pub fn parse_notification(body: &[u8]) -> Result<Vec<S3Event>, NotANotification> {
    let n: Notification = serde_json::from_slice(body).map_err(|e| {
        NotANotification(format!(
            "not an S3 event notification: {}",
            crate::text::cut(&e.to_string(), 256)
        ))
    })?;
    if n.records.is_empty() && n.event.is_none() {
        return Err(NotANotification(
            "not an S3 event notification: it has no Records".into(),
        ));
    }
    Ok(n.records
        .into_iter()
        .map(|r| {
            use crate::blobs::ChangeKind;
            let kind = if r.event_name.starts_with("ObjectCreated:") {
                Some(ChangeKind::Created)
            } else if r.event_name.starts_with("ObjectRemoved:") {
                Some(ChangeKind::Deleted)
            } else {
                None
            };
            let key = form_urlencoded::parse(format!("k={}", r.s3.object.key).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            S3Event {
                s3_bucket: r.s3.bucket.name,
                key,
                kind,
                etag: r.s3.object.e_tag.map(|t| t.trim_matches('"').to_string()),
                at_ms: r
                    .event_time
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                    .and_then(|t| u64::try_from(t.timestamp_millis()).ok()),
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::ChangeKind;

    #[test]
    fn notifications_become_events_with_decoded_keys() {
        let body = br#"{"Records":[
            {"eventVersion":"2.1","eventSource":"aws:s3","eventTime":"2026-12-02T10:00:00.000Z",
             "eventName":"ObjectCreated:Put",
             "s3":{"bucket":{"name":"prod-uploads"},"object":{"key":"in/my+cat%C3%A9.png","size":3,"eTag":"abc","sequencer":"0A"}}},
            {"eventName":"ObjectRemoved:Delete",
             "s3":{"bucket":{"name":"prod-uploads"},"object":{"key":"a%2Bb","sequencer":"0B"}}},
            {"eventName":"ObjectTagging:Put",
             "s3":{"bucket":{"name":"prod-uploads"},"object":{"key":"t"}}}
        ]}"#;
        let events = parse_notification(body).unwrap();
        assert_eq!(events[0].key, "in/my caté.png");
        assert_eq!(events[0].kind, Some(ChangeKind::Created));
        assert_eq!(events[0].etag.as_deref(), Some("abc"));
        assert_eq!(events[0].at_ms, Some(1_796_205_600_000));
        assert_eq!(
            (events[1].key.as_str(), events[1].kind),
            ("a+b", Some(ChangeKind::Deleted))
        );
        assert_eq!(events[2].kind, None);
    }

    #[test]
    fn the_test_event_has_none_and_anything_else_is_refused_by_name() {
        let test = br#"{"Service":"Amazon S3","Event":"s3:TestEvent","Bucket":"b"}"#;
        assert!(parse_notification(test).unwrap().is_empty());
        for bad in [&b"hello"[..], b"{}", br#"{"Records":"x"}"#] {
            let e = parse_notification(bad).unwrap_err().to_string();
            assert!(e.starts_with("not an S3 event notification"), "{e}");
        }
    }
}
