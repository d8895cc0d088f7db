//! The manifest's parsing and every check, with the field each error names.

use super::*;
use std::time::Duration;

fn parse(text: &str) -> Result<Manifest, ManifestError> {
    Manifest::parse("fnhost.toml", text)
}

#[test]
fn a_full_manifest_parses_with_defaults_filled() {
    let m = parse(
        r#"
        name = "hello"
        component = "hello.wasm"
        [[triggers.http]]
        path = "/hello/{name}"
        methods = ["GET"]
        [limits]
        memory_mb = 32
        timeout = "2s"
        [grants]
        queues = ["outbox"]
        [[grants.storage]]
        bucket = "thumbnails"
        access = "write"
        prefix = "small/"
        [config]
        greeting = "Hi"
        "#,
    )
    .unwrap();
    assert_eq!(m.name, "hello");
    let limits = m.limits();
    assert_eq!(limits.memory_bytes, 32 << 20);
    assert_eq!(limits.timeout, Duration::from_secs(2));
    assert_eq!(limits.fuel, Limits::default().fuel);
    assert_eq!(m.profile(1, "d").config["greeting"], "Hi");
}

#[test]
fn errors_name_the_file_the_field_and_the_reason() {
    let e = parse("name = \"Hello\"").unwrap_err();
    assert_eq!((e.file.as_str(), e.field.as_str()), ("fnhost.toml", "name"));
    assert!(e.reason.contains("lower-case"), "{e}");

    let e = parse("name = \"a\"\nmemory = 3").unwrap_err();
    assert_eq!(e.field, "unknown field `memory`", "{e}");

    let e = parse("name = \"a\"\n[limits]\ntimeout = \"soon\"").unwrap_err();
    assert_eq!(e.field, "limits.timeout");

    for (limit, field) in [
        ("fuel = 0", "limits.fuel"),
        ("fuel = 18_446_744_073_709_551_615", "limits.fuel"),
        ("log_bytes = 1_073_741_824", "limits.log_bytes"),
    ] {
        let e = parse(&format!("name = \"a\"\n[limits]\n{limit}")).unwrap_err();
        assert_eq!(e.field, field, "{limit}: {e}");
        assert!(e.reason.contains("out of range; use"), "{e}");
    }
    assert!(
        parse("name = \"a\"\n[limits]\nfuel = 1_000_000_000_000\nlog_bytes = 1_048_576").is_ok()
    );

    let e = parse("name = \"a\"\n[limits]\nmemory_mb = 4096").unwrap_err();
    assert_eq!(e.field, "limits.memory_mb");
    assert!(e.reason.contains("1 to 1024"), "{e}");

    let e =
        parse("name = \"a\"\n[[triggers.http]]\npath = \"/x\"\nmethods = [\"FETCH\"]").unwrap_err();
    assert_eq!(e.field, "triggers.http[0].methods[0]");

    let e = parse("name = [").unwrap_err();
    assert_eq!(e.field, "(syntax)");
    assert!(e.to_string().starts_with("fnhost.toml: (syntax): "), "{e}");
}

#[test]
fn queue_bindings_take_defaults_and_are_checked() {
    let m =
        parse("name = \"a\"\n[[triggers.queue]]\nqueue = \"orders\"\nmax_attempts = 3\n").unwrap();
    let p = m.triggers.queue[0].policy();
    assert_eq!(
        (p.max_attempts, p.batch_size, p.max_concurrency),
        (3, 16, 8)
    );
    assert_eq!(p.visibility_timeout, Duration::from_secs(30));
    for (extra, field) in [
        ("max_attempts = 0", "triggers.queue[0].max_attempts"),
        (
            "visibility_timeout = \"10ms\"",
            "triggers.queue[0].visibility_timeout",
        ),
        ("min_concurrency = 9", "triggers.queue[0].min_concurrency"),
        (
            "visibility_timeout = \"13h\"",
            "triggers.queue[0].visibility_timeout",
        ),
        (
            "backoff_max = \"100000000y\"",
            "triggers.queue[0].backoff_max",
        ),
        (
            "scale_down_cooldown = \"2h\"",
            "triggers.queue[0].scale_down_cooldown",
        ),
        ("backoff_max = \"soon\"", "triggers.queue[0].backoff_max"),
    ] {
        let text = format!("name = \"a\"\n[[triggers.queue]]\nqueue = \"orders\"\n{extra}\n");
        assert_eq!(parse(&text).unwrap_err().field, field, "{extra}");
    }
    let jobs =
        parse("name = \"a\"\n[jobs]\nmax_attempts = 2\nscale_down_cooldown = \"1m\"\n").unwrap();
    let p = jobs.queue_policies().pop().unwrap();
    assert_eq!((p.queue.as_str(), p.max_attempts), ("fnhost-jobs-a", 2));
    assert_eq!(p.scale_down_cooldown, Duration::from_secs(60));
    let e = parse("name = \"a\"\n[jobs]\nqueue = \"x\"\n").unwrap_err();
    assert_eq!(e.field, "jobs.queue");
    let e = parse("name = \"a\"\n[jobs]\nmax_concurrency = 0\n").unwrap_err();
    assert_eq!(e.field, "jobs.max_concurrency");
    let e = parse("name = \"a\"\n[[triggers.queue]]\nbatch_size = 3\n").unwrap_err();
    assert_eq!(
        e.field, "triggers.queue[0].queue",
        "the queue name is required in a binding"
    );
    let twice =
        "name = \"a\"\n[[triggers.queue]]\nqueue = \"q\"\n[[triggers.queue]]\nqueue = \"q\"\n";
    assert!(parse(twice).unwrap_err().reason.contains("bound twice"));
}

#[test]
fn blob_triggers_are_checked_and_may_not_feed_themselves() {
    let m = parse(
        "name = \"t\"\n[[triggers.blob]]\nbucket = \"uploads\"\nsuffix = \".png\"\ndelivery = { max_attempts = 2 }\n[[grants.storage]]\nbucket = \"uploads\"\naccess = \"read\"\n[[grants.storage]]\nbucket = \"thumbnails\"\naccess = \"write\"\n",
    )
    .unwrap();
    let p = m
        .queue_policies()
        .into_iter()
        .find(|p| matches!(p.source, Source::Blob(_)))
        .unwrap();
    assert_eq!(
        (p.queue.as_str(), p.max_attempts),
        ("fnhost-blob-t.uploads", 2)
    );
    let t = &m.triggers.blob[0];
    let change = |key: &str, kind| {
        crate::blobs::Change::written(
            "uploads",
            crate::blobs::ObjectMeta {
                key: key.into(),
                size: 1,
                etag: "e".into(),
                content_type: None,
                modified_ms: 0,
            },
            kind,
        )
    };
    use crate::blobs::ChangeKind::*;
    assert!(t.matches(&change("a.png", Created)));
    assert!(t.matches(&change("a.png", Updated)));
    assert!(!t.matches(&change("a.png", Deleted)), "not by default");
    assert!(!t.matches(&change("a.jpg", Created)));

    let selfish = "name = \"t\"\n[[triggers.blob]]\nbucket = \"uploads\"\nprefix = \"in/\"\n[[grants.storage]]\nbucket = \"uploads\"\naccess = \"read-write\"\n";
    let e = parse(selfish).unwrap_err();
    assert_eq!(e.field, "triggers.blob[0].bucket");
    assert!(e.reason.contains("allow_self_trigger"), "{e}");
    assert!(
        parse(&selfish.replace(
            "prefix = \"in/\"",
            "prefix = \"in/\"\nallow_self_trigger = true"
        ))
        .is_ok()
    );
    let elsewhere = selfish.replace(
        "access = \"read-write\"",
        "access = \"write\"\nprefix = \"out/\"",
    );
    assert!(
        parse(&elsewhere).is_ok(),
        "writes under another prefix cannot trigger it"
    );

    let e = parse("name = \"t\"\n[[triggers.blob]]\nbucket = \"u\"\nevents = [\"moved\"]\n")
        .unwrap_err();
    assert!(e.reason.contains("moved"), "{e}");
    let e =
        parse("name = \"t\"\n[[triggers.blob]]\nbucket = \"u\"\ndelivery = { queue = \"x\" }\n")
            .unwrap_err();
    assert_eq!(e.field, "triggers.blob[0].delivery.queue");
}

#[test]
fn timer_triggers_need_six_fields_and_a_real_zone() {
    let m = parse("name = \"c\"\n[triggers.timer]\nschedule = \"*/5 * * * * *\"\ntimezone = \"Europe/Paris\"\n").unwrap();
    let p = m.queue_policies().pop().unwrap();
    assert_eq!(p.queue, "fnhost-timer-c");
    assert!(matches!(p.source, Source::Timer(_)));
    let e = parse("name = \"c\"\n[triggers.timer]\nschedule = \"0 3 * * *\"\n").unwrap_err();
    assert_eq!(e.field, "triggers.timer.schedule");
    assert!(e.reason.contains("use 6"), "{e}");
    let e = parse("name = \"c\"\n[triggers.timer]\nschedule = \"0 0 25 * * *\"\n").unwrap_err();
    assert_eq!(e.field, "triggers.timer.schedule", "{e}");
    let e = parse(
        "name = \"c\"\n[triggers.timer]\nschedule = \"0 0 3 * * *\"\ntimezone = \"Mars/Olympus\"\n",
    )
    .unwrap_err();
    assert_eq!(e.field, "triggers.timer.timezone");
}

#[test]
fn storage_grant_prefixes_are_folders() {
    let grant = |prefix: &str| {
        format!(
            "name = \"a\"\n[[grants.storage]]\nbucket = \"files\"\naccess = \"read\"\nprefix = \"{prefix}\"\n"
        )
    };
    let e = parse(&grant("user1")).unwrap_err();
    assert_eq!(e.field, "grants.storage[0].prefix");
    assert!(
        e.reason.contains("\"user10/\"") && e.reason.contains("write \"user1/\""),
        "{e}"
    );
    assert!(parse(&grant("user1/")).is_ok());
    assert!(
        parse(&grant("")).is_ok(),
        "an empty prefix is the whole bucket"
    );
    let m = parse(&grant("user1/")).unwrap();
    let g = m.grants;
    use crate::capabilities::Access;
    assert!(g.check_storage("files", "user1/a", Access::Read).is_ok());
    assert!(g.check_storage("files", "user10/a", Access::Read).is_err());
}

#[test]
fn host_queues_cannot_be_bound_or_granted() {
    let e = parse("name = \"a\"\n[[triggers.queue]]\nqueue = \"fnhost-jobs-b\"\n").unwrap_err();
    assert_eq!(e.field, "triggers.queue[0].queue");
    let e = parse("name = \"a\"\n[grants]\nqueues = [\"fnhost-timer-b\"]\n").unwrap_err();
    assert_eq!(e.field, "grants.queues[0]");
}

#[test]
fn routes_may_not_shadow_the_host() {
    for path in ["/v1/functions", "/v1", "/healthz", "/{any}", "hello"] {
        let text = format!("name = \"a\"\n[[triggers.http]]\npath = \"{path}\"");
        let e = parse(&text).unwrap_err();
        assert_eq!(e.field, "triggers.http[0].path", "{path}: {e}");
    }
    assert!(parse("name = \"a\"\n[[triggers.http]]\npath = \"/v1x\"").is_ok());
    let e =
        parse("name = \"a\"\n[[triggers.http]]\npath = \"/a\"\n[[triggers.http]]\npath = \"/a\"")
            .unwrap_err();
    assert!(e.reason.contains("not a valid route"), "{e}");
}

#[test]
fn only_trusted_functions_reach_sensitive_data_and_none_is_triggered_by_it() {
    let sensitive = Sensitive {
        buckets: ["vault".to_string()].into(),
        queues: ["vault-in".to_string()].into(),
    };
    let check = |text: &str| parse(text).unwrap().check_isolation("f.toml", &sensitive);
    let grant = "[[grants.storage]]\nbucket = \"vault\"\naccess = \"read\"\n";
    let bound = "[[triggers.queue]]\nqueue = \"vault-in\"\n";
    let watched = "[[triggers.blob]]\nbucket = \"vault\"\n";
    let public = |rest: &str| format!("name = \"f\"\n{rest}");
    let trusted = |rest: &str| format!("name = \"f\"\nisolation = \"trusted\"\n{rest}");
    assert_eq!(
        check(&public(grant)).unwrap_err().field,
        "grants.storage[0].bucket"
    );
    assert_eq!(
        check(&public(bound)).unwrap_err().field,
        "triggers.queue[0].queue"
    );
    check(&trusted(&format!("{grant}{bound}"))).unwrap();
    // The worker keeps no change feed: no one is triggered by its buckets.
    let err = check(&trusted(&format!("{grant}{watched}"))).unwrap_err();
    assert_eq!(err.field, "triggers.blob[0].bucket");
    assert!(
        err.reason.contains("runs no blob triggers"),
        "{}",
        err.reason
    );
    // Other buckets and queues are anyone's.
    check(&public(
        "[[grants.storage]]\nbucket = \"views\"\naccess = \"read\"\n[[triggers.queue]]\nqueue = \"q\"\n",
    ))
    .unwrap();
}

/// A manifest with one route whose path is `path`, every character that
/// is not printable ASCII written as a TOML escape.
fn with_route(path: &str) -> Result<Manifest, ManifestError> {
    let escaped: String = path
        .chars()
        .map(|c| match c {
            ' '..='~' if c != '"' && c != '\\' => c.to_string(),
            c => format!("\\U{:08X}", c as u32),
        })
        .collect();
    parse(&format!(
        "name = \"a\"\n[[triggers.http]]\npath = \"{escaped}\"\n"
    ))
}

#[test]
fn routes_hold_only_visible_characters() {
    let bidi = "\u{200E}\u{200F}\u{202A}\u{202B}\u{202C}\u{202D}\u{202E}\u{2066}\u{2067}\u{2068}\u{2069}\u{061C}";
    // Controls, zero-width and other format characters, spaces and
    // separators, characters drawn as nothing.
    let others = "\u{7}\u{7F}\u{85}\u{AD}\u{200B}\u{2060}\u{FEFF}\u{E0041}\u{A0}\u{2028}\u{3000}\u{3164}\u{FE0F}";
    for c in bidi.chars().chain(others.chars()) {
        let e = with_route(&format!("/pay/{c}admin/{{id}}")).unwrap_err();
        assert_eq!(e.field, "triggers.http[0].path", "{c:?}: {e}");
        assert!(
            e.reason.contains(&format!("U+{:04X}", c as u32))
                && e.reason.contains("only visible characters"),
            "{e}"
        );
        assert_eq!(
            e.reason.contains("bidirectional control"),
            bidi.contains(c),
            "{e}"
        );
    }
    // Visible text, in any script, is fine.
    for path in [
        "/café/{id}",
        "/заказы/{id}",
        "/a-b_c.d~e/{x}",
        "/x/{{literal}}",
    ] {
        with_route(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[test]
fn a_route_names_each_parameter_once() {
    for path in ["/a/{x}/{x}", "/a/{x}/b/{*x}", "/a/{id}/{n}/{id}"] {
        let e = with_route(path).unwrap_err();
        assert_eq!(e.field, "triggers.http[0].path", "{path}: {e}");
        assert!(e.reason.contains("twice"), "{e}");
    }
    with_route("/a/{x}/{y}/{*rest}").unwrap();
}

#[test]
fn routes_overlap_when_one_request_path_could_reach_both() {
    for (a, b) in [
        ("/orders/{id}", "/orders/export"),
        ("/orders/{id}", "/orders/{id}/"),
        ("/orders/{id}", "/orders/{key}"),
        ("/orders/export", "/orders/export/"),
        ("/orders/{*rest}", "/orders/export"),
        ("/orders/{*rest}", "/orders/{id}/items/{n}"),
        ("/orders/{*rest}", "/orders/{*all}"),
        ("/orders/{id}/items", "/orders/7/{item}"),
        ("/files/x{name}", "/files/readme"),
        ("/files/x{name}", "/files/{id}"),
    ] {
        assert!(overlap(a, b), "{a} and {b}");
        assert!(overlap(b, a), "{b} and {a}");
    }
    for (a, b) in [
        ("/orders/{id}", "/orders"),
        ("/orders/{id}", "/orders/{id}/items"),
        ("/orders/{*rest}", "/orders"),
        ("/orders/{*rest}", "/orders/"),
        ("/orders/export", "/orders/import"),
        ("/orders/{id}", "/invoices/{id}"),
        ("/a/{x}", "/a//"),
        ("/files/x{name}", "/files/a/b"),
    ] {
        assert!(!overlap(a, b), "{a} and {b}");
        assert!(!overlap(b, a), "{b} and {a}");
    }
}
