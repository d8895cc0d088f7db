//! Tests of the host config: parsing, validation and where each backend
//! points.

use super::*;

fn parse(text: &str) -> anyhow::Result<HostFile> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("host.toml");
    std::fs::write(&path, text).unwrap();
    HostFile::load(&path)
}

#[test]
fn a_host_file_names_where_queues_live_and_errors_name_the_field() {
    let f = parse("[queues]\nbackend = \"sqs\"\nregion = \"eu-west-1\"\nprefix = \"prod-\"\nfifo = [\"outbox\"]\n").unwrap();
    assert_eq!(f.queues.backend, QueueKind::Sqs);
    assert_eq!(parse("").unwrap().queues.backend, QueueKind::Embedded);
    for (text, says) in [
        ("[queues]\nbackend = \"kafka\"\n", "unknown variant"),
        (
            "[queues]\nbackend = \"sqs\"\nprefix = \"a.b\"\n",
            "queues.prefix",
        ),
        (
            "[queues]\nbackend = \"sqs\"\nfifo = [\"fnhost-jobs-a\"]\n",
            "queues.fifo[0]",
        ),
        (
            "[queues]\nbackend = \"sqs\"\nendpoint = \"localhost:4566\"\n",
            "queues.endpoint",
        ),
        ("[queues]\nregion = \"eu-west-1\"\n", "queues.backend"),
        ("[queue]\n", "unknown field"),
        (
            "[state]\nbackend = \"s3\"\nbucket = \"b-1\"\n",
            "state.backend",
        ),
        (
            "[queues]\nbackend = \"sqs\"\n[state]\nbackend = \"s3\"\nbucket = \"B\"\n",
            "state.bucket",
        ),
    ] {
        let e = parse(text).unwrap_err().to_string();
        assert!(e.contains("host.toml") && e.contains(says), "{text}: {e}");
    }
}

#[test]
fn an_sqs_endpoint_is_never_s3s_but_a_region_is_every_services() {
    let sqs = "[queues]\nbackend = \"sqs\"\nregion = \"eu-west-1\"\nendpoint = \"https://sqs.eu-west-1.amazonaws.com\"\n";
    let s3 = "[state]\nbackend = \"s3\"\nbucket = \"b-1\"\n[blobs]\nbackend = \"s3\"\nnotifications = \"events\"\n";
    let f = parse(&format!("{sqs}{s3}")).unwrap();
    for target in [f.state_target(), f.blobs_target()] {
        // S3 takes the AWS chain's endpoint for S3, not SQS's.
        assert_eq!(target.endpoint, None);
        assert_eq!(target.region.as_deref(), Some("eu-west-1"));
    }
    // [state]'s endpoint and region are [blobs]'s too (both are S3's)...
    let state = "[state]\nbackend = \"s3\"\nbucket = \"b-1\"\nregion = \"us-west-2\"\nendpoint = \"http://127.0.0.1:9000\"\n";
    let blobs = "[blobs]\nbackend = \"s3\"\nnotifications = \"events\"\n";
    let f = parse(&format!("{sqs}{state}{blobs}")).unwrap();
    for target in [f.state_target(), f.blobs_target()] {
        assert_eq!(target.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(target.region.as_deref(), Some("us-west-2"));
    }
    // ...unless [blobs] names its own.
    let own = "endpoint = \"http://127.0.0.1:9001\"\nregion = \"ap-south-1\"\n";
    let f = parse(&format!("{sqs}{state}{blobs}{own}")).unwrap();
    let target = f.blobs_target();
    assert_eq!(target.endpoint.as_deref(), Some("http://127.0.0.1:9001"));
    assert_eq!(target.region.as_deref(), Some("ap-south-1"));
    assert_eq!(
        f.state_target().endpoint.as_deref(),
        Some("http://127.0.0.1:9000")
    );
}

#[test]
fn every_endpoint_is_an_http_or_https_url_with_a_host_and_no_credentials() {
    let with = |section: &str, endpoint: &str| {
        let queues = "[queues]\nbackend = \"sqs\"\n";
        let text = match section {
            "queues" => format!("{queues}endpoint = \"{endpoint}\"\n"),
            "state" => format!(
                "{queues}[state]\nbackend = \"s3\"\nbucket = \"b-1\"\nendpoint = \"{endpoint}\"\n"
            ),
            _ => format!(
                "{queues}[state]\nbackend = \"s3\"\nbucket = \"b-1\"\n[blobs]\nbackend = \"s3\"\nnotifications = \"events\"\nendpoint = \"{endpoint}\"\n"
            ),
        };
        parse(&text)
    };
    for section in ["queues", "state", "blobs"] {
        for (endpoint, says) in [
            ("file:///etc", "has the scheme \"file\""),
            ("gopher://x", "has the scheme \"gopher\""),
            ("http://", "is not a URL"),
            ("localhost:4566", "has the scheme \"localhost\""),
            ("sqs.amazonaws.com", "is not a URL"),
            (
                "https://user:secret@sqs.amazonaws.com",
                "user name or password",
            ),
            ("https://AKIA@sqs.amazonaws.com", "user name or password"),
            ("http://127.0.0.1:4566/?x=1", "query or a fragment"),
            ("http://127.0.0.1:4566/#top", "query or a fragment"),
            ("http://127.0.0.1:99999", "is not a URL"),
            ("http://exa mple.com", "is not a URL"),
            ("", "is not a URL"),
        ] {
            let e = with(section, endpoint).unwrap_err().to_string();
            let field = format!("host.toml: {section}.endpoint: ");
            assert!(e.contains(&field) && e.contains(says), "{endpoint}: {e}");
            assert!(e.contains("write e.g."), "{e}");
        }
        for good in [
            "http://127.0.0.1:4566",
            "https://sqs.eu-west-1.amazonaws.com",
            "https://s3.example.com/base",
        ] {
            with(section, good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
    }
}
