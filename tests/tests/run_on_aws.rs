//! The README's "Run on AWS", true to the letter: its walkthrough run as
//! written with the AWS CLI (from PyPI) against moto, and what the host
//! config promises there — `create = true` sets up what the walkthrough's
//! step 2 does (in a region that needs a bucket's location named), and S3
//! calls go to S3's endpoint, never to `[queues]`'s, which is SQS's.

#[path = "support/walkthrough.rs"]
mod walkthrough;

use fnhost_tests::{Host, Moto, guests, moto, png_size, repo_root};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use walkthrough::{Aws, Block, Service, Shell, allows};

/// What the walkthrough promises at its end (README, "Run on AWS", step 5).
const THUMBNAIL: (&str, &str) = ("acme-prod-thumbs", "cats/landscape.png");
const ORDER: &str = "o-1";

/// The environment every machine of the walkthrough has: the variables an
/// AWS user sets for moto (`aws`), `fnhost` and `aws` on the PATH, and what
/// the Rust toolchain needs (`fnhost deploy` asks cargo where a crate's
/// component is); nothing else of the test's.
fn machine_env(aws: &Aws, bin: &Path) -> Vec<(String, String)> {
    let mut env = aws.env();
    for keep in [
        "HOME",
        "USER",
        "LANG",
        "TMPDIR",
        "CARGO_HOME",
        "RUSTUP_HOME",
        "RUSTUP_TOOLCHAIN",
    ] {
        if let Ok(v) = std::env::var(keep) {
            env.push((keep.into(), v));
        }
    }
    let path = std::env::var("PATH").unwrap_or_default();
    env.push(("PATH".into(), format!("{}:{path}", bin.display())));
    env.push(("NO_COLOR".into(), "1".into()));
    env
}

fn with(env: &[(String, String)], more: &[(&str, &Path)]) -> Vec<(String, String)> {
    let mut env = env.to_vec();
    env.extend(
        more.iter()
            .map(|(k, v)| (k.to_string(), v.display().to_string())),
    );
    env
}

fn one<'a>(blocks: &'a [Block], marker: &str) -> &'a Block {
    let found: Vec<&Block> = blocks.iter().filter(|b| b.marker == marker).collect();
    assert_eq!(
        found.len(),
        1,
        "the walkthrough needs one {marker:?} block: {found:?}"
    );
    found[0]
}

#[test]
fn the_readme_run_on_aws_walks_as_written_with_the_aws_cli_against_moto() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let blocks = walkthrough::blocks(&readme, "Run on AWS");
    let known = [
        "host.toml",
        "IAM policy",
        "on the api host",
        "serve on the api host",
        "serve on each worker host",
    ];
    for b in &blocks {
        assert!(
            known.contains(&b.marker.as_str()),
            "README.md line {}: the walkthrough has no block {:?}; it knows {known:?}",
            b.line,
            b.marker
        );
    }
    let config = one(&blocks, "host.toml");
    let iam: Value = serde_json::from_str(&one(&blocks, "IAM policy").text)
        .expect("the IAM policy block is JSON");
    one(&blocks, "serve on the api host");
    one(&blocks, "serve on each worker host");

    // The components `fnhost deploy functions/…` finds, built as
    // `fnhost build` builds them; a server of the walkthrough's own, so
    // that everything on it is the walkthrough's.
    guests();
    let server = Moto::start();
    let tmp = tempfile::tempdir().unwrap();
    let (api_dir, worker_dir) = (tmp.path().join("api"), tmp.path().join("worker"));
    for dir in [&api_dir, &worker_dir] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("host.toml"), &config.text).unwrap();
    }
    let file = fnhost::host::config::HostFile::load(&api_dir.join("host.toml")).unwrap();
    let aws = Aws {
        endpoint: server.endpoint.clone(),
        region: file
            .queues
            .region
            .clone()
            .expect("host.toml names a region"),
        home: tmp.path().join("aws"),
    };
    let bin = Aws::bin_dir(tmp.path());
    std::os::unix::fs::symlink(fnhost_tests::fnhost_bin(), bin.join("fnhost")).unwrap();
    let env = machine_env(&aws, &bin);

    // Each host on a machine of its own (its directory, data dir and
    // port); the user's terminal on the api host, in this repository.
    let host_env = |dir: &Path| {
        let mut env = with(&env, &[("FNHOST_DATA_DIR", &dir.join("data"))]);
        env.push(("FNHOST_LISTEN".into(), "127.0.0.1:0".into()));
        env
    };
    let mut shell = Shell::start(
        &repo_root(),
        &with(&env, &[("FNHOST_DATA_DIR", &api_dir.join("data"))]),
    );
    let (mut api, mut worker): (Option<Service>, Option<Service>) = (None, None);
    for b in &blocks {
        match b.marker.as_str() {
            "on the api host" => {
                shell.run(b, Duration::from_secs(300));
            }
            "serve on the api host" => {
                let host = Service::start(b, &api_dir, &host_env(&api_dir));
                shell.export("FNHOST_HOST", &host.url);
                api = Some(host);
            }
            "serve on each worker host" => {
                worker = Some(Service::start(b, &worker_dir, &host_env(&worker_dir)));
            }
            _ => {}
        }
    }
    let (api, worker) = (api.unwrap(), worker.unwrap());
    let logs = || format!("api host:\n{}\nworker host:\n{}", api.log(), worker.log());

    // The order's confirmation, which the walkthrough read from the outbox.
    let confirmation = shell
        .transcript
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["order_id"] == ORDER)
        .unwrap_or_else(|| {
            panic!(
                "the walkthrough read no confirmation of {ORDER:?}; it printed:\n{}\nthe hosts' logs:\n{}",
                shell.transcript,
                logs()
            )
        });
    assert_eq!(confirmation["total_cents"], 900, "{confirmation}");

    // The thumbnail, read with the CLI.
    let thumb = tmp.path().join("thumb.png");
    let s3_url = format!("s3://{}/{}", THUMBNAIL.0, THUMBNAIL.1);
    aws.run(&["s3", "cp", &s3_url, thumb.to_str().unwrap()]);
    assert_eq!(png_size(&std::fs::read(&thumb).unwrap()), (128, 85));

    // The notification queue's policy, as step 2 set it, is what
    // `create = true` would write.
    let queue = format!("{}{}", file.queues.prefix, file.blobs.notifications);
    let url = aws.json(&["sqs", "get-queue-url", "--queue-name", &queue])["QueueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let attributes = &aws.json(&[
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        &url,
        "--attribute-names",
        "Policy",
        "QueueArn",
    ])["Attributes"];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let patterns = rt
        .block_on(file.s3_blobs())
        .unwrap()
        .unwrap()
        .name_patterns();
    let differs = fnhost::backends::s3blobs::queue_policy::with_statement(
        attributes["Policy"].as_str(),
        attributes["QueueArn"].as_str().unwrap(),
        &patterns,
    )
    .unwrap();
    assert_eq!(
        differs, None,
        "step 2's queue policy is not the one `create = true` writes"
    );

    // The IAM policy lets the hosts reach every queue, bucket and object
    // the walkthrough made (on a server of its own: all there is).
    let urls = aws.json(&["sqs", "list-queues"]);
    let urls: Vec<&str> = urls["QueueUrls"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(urls.len() >= 4, "{urls:?}");
    for url in urls {
        let mut path = url.rsplit('/');
        let (name, account) = (path.next().unwrap(), path.next().unwrap());
        let arn = format!("arn:aws:sqs:{}:{account}:{name}", aws.region);
        for action in ["sqs:ReceiveMessage", "sqs:SendMessage", "sqs:DeleteMessage"] {
            assert!(
                allows(&iam, action, &arn),
                "the IAM policy does not allow {action} on {arn}"
            );
        }
    }
    let buckets = aws.json(&["s3api", "list-buckets"]);
    for bucket in buckets["Buckets"].as_array().unwrap() {
        let bucket = bucket["Name"].as_str().unwrap();
        let arn = format!("arn:aws:s3:::{bucket}");
        assert!(
            allows(&iam, "s3:ListBucket", &arn),
            "the IAM policy does not allow s3:ListBucket on {arn}"
        );
        let objects = aws.json(&["s3api", "list-objects-v2", "--bucket", bucket]);
        for object in objects["Contents"].as_array().into_iter().flatten() {
            let arn = format!("{arn}/{}", object["Key"].as_str().unwrap());
            for action in ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"] {
                assert!(
                    allows(&iam, action, &arn),
                    "the IAM policy does not allow {action} on {arn}"
                );
            }
        }
    }

    // Each host's bootstrap token is its own; the token the walkthrough
    // made on the api host is the fleet's.
    let token = |dir: &Path| std::fs::read_to_string(dir.join("data/token")).unwrap();
    let client = reqwest::blocking::Client::new();
    let worker = &worker.url;
    let r = client
        .get(format!("{worker}/v1/functions"))
        .bearer_auth(token(&api_dir).trim())
        .send()
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "the worker took the api host's bootstrap token"
    );
    let tokens: Value = client
        .get(format!("{worker}/v1/tokens"))
        .bearer_auth(token(&worker_dir).trim())
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(
        tokens["tokens"].as_array().map(Vec::len),
        Some(1),
        "{tokens}"
    );
}

/// The host config of a fleet named `name` on moto, in `region`, that
/// creates what it needs.
fn creating_config(name: &str, region: &str) -> String {
    format!(
        "[queues]\nbackend = \"sqs\"\nregion = \"{region}\"\nprefix = \"{name}-\"\ncreate = true\n\
         [state]\nbackend = \"s3\"\nbucket = \"{name}-state\"\ncreate = true\n\
         [blobs]\nbackend = \"s3\"\nprefix = \"{name}-\"\nnotifications = \"s3-events\"\ncreate = true\n"
    )
}

#[test]
fn create_true_lets_s3_send_to_the_notification_queue_keeping_its_other_statements() {
    let g = guests();
    let (server, name) = (moto(), format!("ct{}", std::process::id()));
    let region = "eu-west-1";
    let home = tempfile::tempdir().unwrap();
    let aws = Aws {
        endpoint: server.endpoint.clone(),
        region: region.into(),
        home: home.path().to_path_buf(),
    };
    // The queue is there already, with a statement of its owner's.
    let queue = format!("{name}-s3-events");
    let url = aws.json(&["sqs", "create-queue", "--queue-name", &queue])["QueueUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let arn = format!("arn:aws:sqs:{region}:123456789012:{queue}");
    let owners = json!({"Sid": "owner", "Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sqs:*", "Resource": arn});
    let policy = json!({"Version": "2012-10-17", "Statement": [owners]});
    let attributes = json!({"Policy": policy.to_string()}).to_string();
    aws.json(&[
        "sqs",
        "set-queue-attributes",
        "--queue-url",
        &url,
        "--attributes",
        &attributes,
    ]);

    // A host that creates what it needs, with a bucket mapped outside its
    // prefix; in eu-west-1, where S3 takes a bucket only with its location.
    let dir = tempfile::tempdir().unwrap();
    let mapped = format!("{name}x-thumbs");
    let config = dir.path().join("host.toml");
    let text =
        creating_config(&name, region) + &format!("[blobs.buckets]\nthumbnails = \"{mapped}\"\n");
    std::fs::write(&config, text).unwrap();
    let host = Host::start_env(
        dir.path(),
        &["--config", config.to_str().unwrap()],
        &server.env(),
    );
    let manifest =
        std::fs::read_to_string(repo_root().join("functions/thumbnail/fnhost.toml")).unwrap();
    host.deploy_ok(&manifest, &g.thumbnail);

    let attributes = aws.json(&[
        "sqs",
        "get-queue-attributes",
        "--queue-url",
        &url,
        "--attribute-names",
        "Policy",
    ]);
    let policy: Value =
        serde_json::from_str(attributes["Attributes"]["Policy"].as_str().unwrap()).unwrap();
    let statements = policy["Statement"].as_array().unwrap();
    assert_eq!(statements.len(), 2, "{policy}");
    assert_eq!(statements[0], owners, "the owner's statement is kept");
    let ours = &statements[1];
    assert_eq!(ours["Principal"]["Service"], "s3.amazonaws.com", "{ours}");
    assert_eq!(ours["Action"], "sqs:SendMessage", "{ours}");
    assert_eq!(ours["Resource"], arn, "{ours}");
    assert_eq!(
        ours["Condition"]["ArnLike"]["aws:SourceArn"],
        json!([
            format!("arn:aws:s3:::{name}-*"),
            format!("arn:aws:s3:::{mapped}")
        ]),
        "{ours}"
    );
    assert_eq!(
        ours["Condition"]["StringEquals"]["aws:SourceAccount"],
        "123456789012"
    );

    // The buckets are in the region, and an upload gets its thumbnail.
    for bucket in [format!("{name}-state"), format!("{name}-uploads")] {
        let location = aws.json(&["s3api", "get-bucket-location", "--bucket", &bucket]);
        assert_eq!(location["LocationConstraint"], region, "{bucket}");
    }
    let png = repo_root().join("tests/fixtures/landscape-300x200.png");
    let upload = format!("s3://{name}-uploads/in/a.png");
    aws.run(&["s3", "cp", png.to_str().unwrap(), &upload]);
    host.wait_for(90, "the thumbnail", |_| {
        let listed = aws.json(&["s3api", "list-objects-v2", "--bucket", &mapped]);
        (listed["Contents"][0]["Key"] == "in/a.png").then_some(())
    });
}

#[test]
fn s3_calls_go_to_s3s_endpoint_never_to_the_sqs_endpoint_of_queues() {
    let g = guests();
    // SQS on one server, S3 on another.
    let (sqs, s3) = (moto(), &Moto::start());
    let name = format!("ep{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("host.toml");
    let text = creating_config(&name, "us-east-1").replacen(
        "[queues]\n",
        &format!("[queues]\nendpoint = \"{}\"\n", sqs.endpoint),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let on = |server: &Moto| Aws {
        endpoint: server.endpoint.clone(),
        region: "us-east-1".into(),
        home: dir.path().join("aws"),
    };
    let buckets = |server: &Moto| -> Vec<String> {
        on(server).json(&["s3api", "list-buckets"])["Buckets"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|b| b["Name"].as_str().map(str::to_string))
            .filter(|b| b.starts_with(&name))
            .collect()
    };
    let has = |server: &Moto, bucket: &str, key: &str| {
        let listed = on(server).json(&["s3api", "list-objects-v2", "--bucket", bucket]);
        listed["Contents"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|o| o["Key"] == key)
    };
    let hello = std::fs::read_to_string(repo_root().join("functions/hello/fnhost.toml")).unwrap();
    let args = ["--config", config.to_str().unwrap()];

    // AWS_ENDPOINT_URL_S3 names S3's server; [queues] and
    // AWS_ENDPOINT_URL name SQS's.
    let mut env = sqs.env();
    env.push(("AWS_ENDPOINT_URL_S3".into(), s3.endpoint.clone()));
    let host = Host::start_env(dir.path(), &args, &env);
    host.deploy_ok(&hello, &g.hello);
    let r = host.admin("PUT", "/v1/buckets/uploads/objects/a.txt", "a");
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    assert!(has(s3, &format!("{name}-state"), "deployments/hello.json"));
    assert!(has(s3, &format!("{name}-uploads"), "a.txt"));
    assert_eq!(
        buckets(sqs),
        Vec::<String>::new(),
        "S3 calls went to the SQS endpoint"
    );
    assert!(host.stop());

    // [state]'s endpoint is [blobs]'s too (both S3's).
    let text = std::fs::read_to_string(&config).unwrap().replacen(
        "[state]\n",
        &format!("[state]\nendpoint = \"{}\"\n", s3.endpoint),
        1,
    );
    std::fs::write(&config, text).unwrap();
    let host = Host::start_env(dir.path(), &args, &sqs.env());
    let r = host.admin("PUT", "/v1/buckets/uploads/objects/b.txt", "b");
    assert!(matches!(r.status, 200 | 201), "{}", r.text());
    assert!(has(s3, &format!("{name}-uploads"), "b.txt"));
    assert_eq!(
        buckets(sqs),
        Vec::<String>::new(),
        "S3 calls went to the SQS endpoint"
    );
}
