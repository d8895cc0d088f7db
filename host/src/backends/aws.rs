//! Where an AWS backend connects: the SDK config that the SQS and S3
//! backends share, from what the host config names and the standard AWS
//! chain (environment, profile, instance role, `AWS_ENDPOINT_URL*`) for
//! the rest.

use crate::task::ErrorSource;

/// What a host config says about reaching one AWS service.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// The region; else the chain's (`AWS_REGION`, the profile).
    pub region: Option<String>,
    /// The endpoint; else the chain's (`AWS_ENDPOINT_URL_<SERVICE>`,
    /// `AWS_ENDPOINT_URL`), else the service's public one.
    pub endpoint: Option<String>,
    /// An access key id and secret (for a local test server); else the
    /// chain's credentials.
    pub keys: Option<(String, String)>,
}

/// The SDK config for `target`; an error, naming `section` of the host
/// config, when no region can be found.
/// Why an AWS client could not be set up, or a bucket made.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No region is configured for the host config's `section`: set one
    /// and try again.
    #[error("no AWS region: set `region` under [{section}] in the host config, or AWS_REGION")]
    NoRegion {
        /// The host config's section.
        section: String,
    },
    /// The service refused or failed: what was tried and what it said.
    #[error("{message}")]
    Service {
        /// What was tried, and the service's answer in a line.
        message: String,
        /// The SDK's error.
        #[source]
        source: ErrorSource,
    },
}

impl AwsError {
    /// The SDK's error, for a store error's source.
    pub fn source_of(&self) -> Option<ErrorSource> {
        match self {
            AwsError::Service { source, .. } => Some(source.clone()),
            AwsError::NoRegion { .. } => None,
        }
    }
}

pub async fn sdk_config(target: Target, section: &str) -> Result<aws_config::SdkConfig, AwsError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some((id, secret)) = target.keys {
        let keys = aws_sdk_sqs::config::Credentials::new(id, secret, None, None, "fnhost");
        loader = loader.credentials_provider(keys);
    }
    if let Some(region) = target.region {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some(endpoint) = target.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return Err(AwsError::NoRegion {
            section: section.to_string(),
        });
    }
    Ok(sdk)
}

/// An S3 client for `target`, with path-style addressing (which every
/// S3-compatible server understands); `section` names the host config's
/// section in errors.
pub async fn s3_client(target: Target, section: &str) -> Result<aws_sdk_s3::Client, AwsError> {
    let sdk = sdk_config(target, section).await?;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .build();
    Ok(aws_sdk_s3::Client::from_conf(config))
}

/// Create `bucket` unless it exists (a dev convenience: `create = true`),
/// in the client's region: S3 refuses a bucket whose location is left out
/// anywhere but in us-east-1, where it refuses one that names it.
pub async fn create_bucket(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), AwsError> {
    use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
    let mut create = client.create_bucket().bucket(bucket);
    if let Some(region) = client.config().region().map(|r| r.as_ref())
        && region != "us-east-1"
    {
        create = create.create_bucket_configuration(
            CreateBucketConfiguration::builder()
                .location_constraint(BucketLocationConstraint::from(region))
                .build(),
        );
    }
    match create.send().await {
        Ok(_) => Ok(()),
        Err(e)
            if e.as_service_error().is_some_and(|s| {
                s.is_bucket_already_owned_by_you() || s.is_bucket_already_exists()
            }) =>
        {
            Ok(())
        }
        Err(e) => Err(AwsError::Service {
            message: describe(&format!("cannot create bucket {bucket:?}"), &e),
            source: std::sync::Arc::new(e),
        }),
    }
}

/// An SDK error as one line: what was tried, and what the service said.
pub fn describe<E, R>(what: &str, e: &aws_sdk_s3::error::SdkError<E, R>) -> String
where
    E: std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let detail = aws_sdk_s3::error::DisplayErrorContext(e).to_string();
    format!("{what}: {}", crate::text::cut(&detail, 512))
}
