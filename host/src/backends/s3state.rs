//! Shared state as S3 objects (`<prefix><key>` in one bucket): a
//! conditional write is a `PutObject` with `If-None-Match: *` (create) or
//! `If-Match: <etag>` (replace), and S3 answers `412` to the loser of a
//! race, which becomes [`StateError::Conflict`]. S3 is strongly consistent
//! for reads after writes and for listings, so every host sees a write as
//! soon as it is acknowledged.

use crate::state::{Listed, StateError, StateStore, Versioned, Write, validate_key};
use crate::task::BoxFuture;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use std::sync::Arc;

/// State documents in an S3 bucket.
pub struct S3State {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl S3State {
    /// A store in `bucket`, under `prefix`, at `target` (see
    /// [`aws::Target`](super::aws::Target)). Path-style addressing, which
    /// works with every S3-compatible server.
    pub async fn connect(
        target: super::aws::Target,
        bucket: String,
        prefix: String,
    ) -> Result<S3State, StateError> {
        let client = super::aws::s3_client(target, "state")
            .await
            .map_err(|e| StateError::Invalid(e.to_string()))?;
        Ok(S3State {
            client,
            bucket,
            prefix,
        })
    }

    /// Create the bucket if it does not exist (a dev convenience).
    pub async fn create_bucket(&self) -> Result<(), StateError> {
        super::aws::create_bucket(&self.client, &self.bucket)
            .await
            .map_err(|e| StateError::backend(e.to_string(), e.source_of()))
    }

    /// Check that the bucket answers.
    pub async fn check(&self) -> Result<(), StateError> {
        self.client
            .head_bucket()
            .bucket(&self.bucket)
            .send()
            .await
            .map(drop)
            .map_err(|e| s3_error(&format!("cannot reach bucket {:?}", self.bucket), e))
    }

    fn object(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

fn s3_error<E, R>(what: &str, e: aws_sdk_s3::error::SdkError<E, R>) -> StateError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    StateError::backend(super::aws::describe(what, &e), Some(Arc::new(e)))
}

fn refuse<'a, T: Send + 'a>(e: StateError) -> BoxFuture<'a, Result<T, StateError>> {
    Box::pin(async move { Err(e) })
}

impl StateStore for S3State {
    fn get(&self, key: &str) -> BoxFuture<'_, Result<Option<Versioned>, StateError>> {
        if let Err(e) = validate_key(key) {
            return refuse(e);
        }
        let object = self.object(key);
        Box::pin(async move {
            match self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&object)
                .send()
                .await
            {
                Ok(out) => {
                    let version = out.e_tag().unwrap_or_default().to_string();
                    let bytes = out
                        .body
                        .collect()
                        .await
                        .map_err(|e| {
                            StateError::backend(format!("cannot read {object:?}: {e}"), None)
                        })?
                        .into_bytes()
                        .to_vec();
                    Ok(Some(Versioned { bytes, version }))
                }
                Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
                Err(e) => Err(s3_error(&format!("cannot get {object:?}"), e)),
            }
        })
    }

    fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        condition: Write,
    ) -> BoxFuture<'_, Result<String, StateError>> {
        if let Err(e) = validate_key(key) {
            return refuse(e);
        }
        if bytes.len() > crate::state::MAX_DOCUMENT_BYTES {
            return refuse(StateError::Invalid(format!(
                "the document is {} bytes, over the limit of {}",
                bytes.len(),
                crate::state::MAX_DOCUMENT_BYTES
            )));
        }
        let object = self.object(key);
        Box::pin(async move {
            let mut put = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&object)
                .body(ByteStream::from(bytes));
            put = match &condition {
                Write::Create => put.if_none_match("*"),
                Write::Replace(v) => put.if_match(v),
                Write::Overwrite => put,
            };
            match put.send().await {
                Ok(out) => Ok(out.e_tag().unwrap_or_default().to_string()),
                Err(e)
                    if e.raw_response()
                        .is_some_and(|r| matches!(r.status().as_u16(), 409 | 412)) =>
                {
                    Err(StateError::Conflict(crate::text::quote(&object)))
                }
                Err(e) => Err(s3_error(&format!("cannot put {object:?}"), e)),
            }
        })
    }

    fn delete(&self, key: &str) -> BoxFuture<'_, Result<bool, StateError>> {
        let object = self.object(key);
        Box::pin(async move {
            let existed = self
                .client
                .head_object()
                .bucket(&self.bucket)
                .key(&object)
                .send()
                .await
                .is_ok();
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(&object)
                .send()
                .await
                .map_err(|e| s3_error(&format!("cannot delete {object:?}"), e))?;
            Ok(existed)
        })
    }

    fn list(
        &self,
        prefix: &str,
        after: Option<String>,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<Listed>, StateError>> {
        let full = self.object(prefix);
        Box::pin(async move {
            let mut list = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full)
                .max_keys(max.clamp(1, 1000) as i32);
            if let Some(after) = after {
                list = list.start_after(self.object(&after));
            }
            let out = list
                .send()
                .await
                .map_err(|e| s3_error(&format!("cannot list {full:?}"), e))?;
            Ok(out
                .contents()
                .iter()
                .filter_map(|o| {
                    let key = o.key()?.strip_prefix(&self.prefix)?;
                    Some(Listed {
                        key: key.to_string(),
                        version: o.e_tag().unwrap_or_default().to_string(),
                    })
                })
                .collect())
        })
    }
}
