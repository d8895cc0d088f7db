//! Property tests of everything that parses or checks what a caller sends:
//! the manifest, bucket and key names, content types, messages and their
//! times, and the admin API's request bodies. Each property holds for any
//! input: no panic, nothing past a limit accepted, no error longer than a
//! few hundred bytes whatever the input's size.
//!
//! They run briefly with the suite (proptest's 256 cases each); run them
//! longer by hand with `PROPTEST_CASES=100000 cargo test -p fnhost prop_`.

use crate::blobs::{self, BlobError, MAX_CONTENT_TYPE_BYTES, MAX_KEY_BYTES};
use crate::manifest::Manifest;
use crate::queue::{self, LATEST_MS, NewMessage};
use proptest::prelude::*;

/// The longest error any check may answer with, whatever it was given.
const MAX_ERROR: usize = 1024;

/// Text of any kind: short, long, with controls, quotes and non-ASCII.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z0-9/._-]{0,80}",
        "\\PC{0,300}",
        (0usize..3, 1usize..200_000).prop_map(|(c, n)| ["k", "/", "é"][c].repeat(n)),
        // A number and a long unit: duration parsers quote the unit.
        (1usize..200_000).prop_map(|n| format!("1{}", "k".repeat(n))),
    ]
}

/// A TOML string literal for `s`.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

proptest! {
    #[test]
    fn prop_manifest_text_never_panics_and_errors_stay_short(text in any_text()) {
        if let Err(e) = Manifest::parse("fnhost.toml", &text) {
            prop_assert!(e.reason.len() <= MAX_ERROR + 64, "{} bytes", e.reason.len());
            prop_assert!(e.to_string().starts_with("fnhost.toml: "));
        }
    }

    #[test]
    fn prop_manifest_fields_are_checked_and_errors_name_them(
        name in any_text(),
        path in any_text(),
        queue in any_text(),
        bucket in any_text(),
        prefix in any_text(),
        timeout in any_text(),
    ) {
        let text = format!(
            "name = {}\n[[triggers.http]]\npath = {}\n[[triggers.queue]]\nqueue = {}\nvisibility_timeout = {}\n[[grants.storage]]\nbucket = {}\naccess = \"read\"\nprefix = {}\n",
            toml_str(&name), toml_str(&path), toml_str(&queue), toml_str(&timeout), toml_str(&bucket), toml_str(&prefix)
        );
        match Manifest::parse("fnhost.toml", &text) {
            Ok(m) => {
                prop_assert!(crate::names::valid_name(&m.name));
                prop_assert!(m.triggers.http[0].path.starts_with('/'));
                let p = m.grants.storage[0].prefix.as_deref().unwrap_or("");
                prop_assert!(p.is_empty() || (p.ends_with('/') && p.len() <= MAX_KEY_BYTES));
                let policy = m.triggers.queue[0].policy();
                prop_assert!(policy.visibility_timeout <= std::time::Duration::from_secs(12 * 3600));
            }
            Err(e) => {
                prop_assert!(e.reason.len() <= MAX_ERROR, "{} bytes: {}", e.reason.len(), e);
                prop_assert!(!e.field.is_empty());
            }
        }
    }

    #[test]
    fn prop_manifest_limits_are_in_range_once_accepted(
        fuel in any::<i64>(),
        memory_mb in any::<i64>(),
        log_bytes in any::<i64>(),
        batch_size in any::<i64>(),
    ) {
        let text = format!(
            "name = \"a\"\n[limits]\nfuel = {fuel}\nmemory_mb = {memory_mb}\nlog_bytes = {log_bytes}\n[[triggers.queue]]\nqueue = \"q\"\nbatch_size = {batch_size}\n"
        );
        if let Ok(m) = Manifest::parse("fnhost.toml", &text) {
            let l = m.limits();
            prop_assert!((1..=crate::exec::MAX_FUEL).contains(&l.fuel));
            prop_assert!((1..=crate::exec::MAX_MEMORY_BYTES).contains(&l.memory_bytes));
            prop_assert!(l.log_bytes <= crate::exec::MAX_LOG_BYTES);
            prop_assert!((1..=1000).contains(&m.triggers.queue[0].policy().batch_size));
        }
    }

    #[test]
    fn prop_keys_that_pass_cannot_escape_and_errors_stay_short(bucket in any_text(), key in any_text()) {
        match blobs::validate(&bucket, &key) {
            Ok(()) => {
                prop_assert!(crate::names::valid_name(&bucket));
                prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_BYTES);
                prop_assert!(!key.starts_with('/') && !key.contains('\0') && !key.contains('\\'));
                prop_assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."));
            }
            Err(e @ (BlobError::InvalidBucket(_) | BlobError::InvalidKey(_))) => {
                prop_assert!(e.to_string().len() <= MAX_ERROR, "{} bytes", e.to_string().len());
            }
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
    }

    #[test]
    fn prop_relative_paths_of_plain_segments_are_keys(
        segments in prop::collection::vec("[A-Za-z0-9_-][A-Za-z0-9_.-]{0,15}", 1..20)
    ) {
        let key = segments.join("/");
        prop_assume!(key.len() <= MAX_KEY_BYTES);
        prop_assume!(segments.iter().all(|s| s != "." && s != ".."));
        prop_assert!(blobs::validate("uploads", &key).is_ok(), "{key}");
    }

    #[test]
    fn prop_content_types_that_pass_fit_a_header(ct in any_text()) {
        match blobs::validate_content_type(&ct) {
            Ok(()) => {
                prop_assert!(!ct.is_empty() && ct.len() <= MAX_CONTENT_TYPE_BYTES);
                prop_assert!(ct.bytes().all(|b| (0x20..0x7f).contains(&b)));
            }
            Err(e) => prop_assert!(e.to_string().len() <= MAX_ERROR),
        }
    }

    #[test]
    fn prop_messages_that_pass_are_within_every_cap(
        queue in any_text(),
        body_len in prop_oneof![0usize..64, (queue::MAX_BODY_BYTES - 2)..(queue::MAX_BODY_BYTES + 2)],
        attributes in prop::collection::vec((any_text(), any_text()), 0..20),
        ids in prop::collection::vec(prop::option::of(any_text()), 4),
        delay_ms in prop::option::of(any::<u64>()),
        not_before_ms in prop::option::of(any::<u64>()),
        now in 0u64..=LATEST_MS,
    ) {
        let msg = NewMessage {
            body: vec![b'x'; body_len],
            attributes,
            delay_ms,
            not_before_ms,
            dedup_id: ids[0].clone(),
            group: ids[1].clone(),
            correlation_id: ids[2].clone(),
            reply_to: ids[3].clone(),
            ..Default::default()
        };
        match queue::validate_user(&queue, &msg, now) {
            Ok(()) => {
                prop_assert!(msg.body.len() <= queue::MAX_BODY_BYTES);
                prop_assert!(msg.attributes.len() <= queue::MAX_ATTRIBUTES);
                for (n, v) in &msg.attributes {
                    prop_assert!(!n.is_empty() && n.len() <= queue::MAX_ATTRIBUTE_NAME_BYTES);
                    prop_assert!(!n.starts_with(queue::RESERVED_ATTRIBUTE_PREFIX));
                    prop_assert!(v.len() <= queue::MAX_ATTRIBUTE_VALUE_BYTES);
                }
                let due = queue::visible_at(delay_ms, not_before_ms, now);
                prop_assert!(due >= now && due <= LATEST_MS.max(now));
            }
            Err(e) => prop_assert!(e.to_string().len() <= MAX_ERROR, "{} bytes", e.to_string().len()),
        }
    }

    #[test]
    fn prop_api_send_bodies_never_panic_and_accepted_ones_are_valid(body in api_body()) {
        let now = 1_800_000_000_000;
        match crate::server::parse_send("orders", body.as_bytes(), now) {
            Ok((messages, _)) => {
                prop_assert!(!messages.is_empty() && messages.len() <= 1000);
                for m in &messages {
                    prop_assert!(queue::validate_user("orders", m, now).is_ok());
                }
            }
            Err(e) => prop_assert!(e.len() <= 4 * MAX_ERROR, "{} bytes", e.len()),
        }
    }

    #[test]
    fn prop_api_job_bodies_never_panic_and_accepted_ones_are_valid(body in api_body()) {
        let now = 1_800_000_000_000;
        let policy = crate::jobs::callback::CallbackPolicy::default();
        match crate::server::parse_submit("adv".into(), body.as_bytes(), now, &policy) {
            Ok(job) => {
                prop_assert!(job.payload.len() <= queue::MAX_BODY_BYTES);
                prop_assert!(queue::check_schedule(job.delay_ms, job.not_before_ms, now).is_ok());
                if let Some(url) = &job.callback_url {
                    prop_assert!(policy.check_url(url).is_ok());
                }
            }
            Err(e) => prop_assert!(e.len() <= 4 * MAX_ERROR, "{} bytes", e.len()),
        }
    }
}

/// Request bodies: JSON objects of the fields the API knows (and some it
/// does not) with values of any type, arrays of them, and plain garbage.
fn api_body() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        any_text().prop_map(serde_json::Value::String),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        any::<bool>().prop_map(serde_json::Value::from),
        Just(serde_json::Value::Null),
        prop::collection::btree_map(any_text(), any_text(), 0..20)
            .prop_map(|m| serde_json::json!(m)),
    ];
    let field = prop_oneof![
        Just("body"),
        Just("input"),
        Just("attributes"),
        Just("delay"),
        Just("not_before_ms"),
        Just("not_before"),
        Just("dedup_id"),
        Just("group"),
        Just("priority"),
        Just("correlation_id"),
        Just("reply_to"),
        Just("callback_url"),
        Just("colour"),
    ];
    let object = prop::collection::btree_map(field, value, 0..8).prop_map(|m| {
        serde_json::Value::Object(m.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
    });
    prop_oneof![
        object.clone().prop_map(|o| o.to_string()),
        prop::collection::vec(object, 0..5)
            .prop_map(|v| serde_json::json!({ "messages": v }).to_string()),
        any_text(),
    ]
}
