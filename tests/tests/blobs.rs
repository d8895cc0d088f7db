//! The blob API and CLI: objects in buckets, atomic replaces, listing by
//! prefix, and keys that try to escape are refused with nothing written.

use fnhost_tests::Host;
use std::io::{Read, Write};

/// Send a raw request (no client-side path normalisation); returns the status code.
fn raw(host: &Host, method: &str, path: &str, body: &[u8]) -> u16 {
    let addr = host.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        host.token,
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn objects_are_put_read_listed_and_removed() {
    let host = Host::start();
    let r = host.admin("PUT", "/v1/buckets/uploads/objects/img/cat.txt", "meow");
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["size"], 4);
    let r = host.admin("PUT", "/v1/buckets/uploads/objects/img/cat.txt", "purr!");
    assert_eq!(r.status, 200, "a replace");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dog.json");
    std::fs::write(&file, br#"{"woof": true}"#).unwrap();
    let out = host.cli_ok(&[
        "blob",
        "put",
        "uploads",
        "img/dog.json",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("14 bytes"), "{out}");

    let r = host.admin("GET", "/v1/buckets/uploads/objects/img/dog.json", "");
    assert_eq!((r.status, r.text().as_str()), (200, r#"{"woof": true}"#));
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    assert!(r.header("etag").unwrap().starts_with('"'));
    assert_eq!(
        host.cli_ok(&["blob", "get", "uploads", "img/cat.txt"]),
        "purr!"
    );
    let r = host.admin("HEAD", "/v1/buckets/uploads/objects/img/cat.txt", "");
    assert_eq!(
        (r.status, r.header("content-length").as_deref()),
        (200, Some("5"))
    );

    host.admin("PUT", "/v1/buckets/uploads/objects/doc/a.txt", "a");
    let listed = host
        .admin("GET", "/v1/buckets/uploads/objects?prefix=img/", "")
        .json();
    let keys: Vec<&str> = listed["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["img/cat.txt", "img/dog.json"]);
    let ls = host.cli_ok(&["blob", "ls", "uploads"]);
    assert_eq!(ls.lines().count(), 3, "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&host.cli_ok(&["blob", "ls", "uploads", "--output", "json"])).unwrap();
    assert_eq!(json["objects"].as_array().unwrap().len(), 3, "{json}");

    // Long listings come in pages, with where to continue.
    let page = host
        .admin("GET", "/v1/buckets/uploads/objects?limit=2", "")
        .json();
    assert_eq!(page["objects"].as_array().unwrap().len(), 2);
    assert_eq!(page["next_start_after"], "img/cat.txt");
    let rest = host
        .admin(
            "GET",
            "/v1/buckets/uploads/objects?limit=2&start_after=img/cat.txt",
            "",
        )
        .json();
    assert_eq!(rest["objects"][0]["key"], "img/dog.json");
    assert!(rest["next_start_after"].is_null(), "{rest}");

    host.cli_ok(&["blob", "rm", "uploads", "img/cat.txt"]);
    assert_eq!(
        host.admin("GET", "/v1/buckets/uploads/objects/img/cat.txt", "")
            .status,
        404
    );
    assert_eq!(
        host.admin("DELETE", "/v1/buckets/uploads/objects/img/cat.txt", "")
            .status,
        404
    );
    assert_eq!(
        host.get("/v1/buckets/uploads/objects").status,
        401,
        "the blob API needs the token"
    );
}

#[test]
fn keys_that_try_to_escape_get_400_and_nothing_is_written() {
    let host = Host::start();
    for path in [
        "/v1/buckets/uploads/objects/a/../../../etc/passwd",
        "/v1/buckets/uploads/objects//etc/passwd",
        "/v1/buckets/uploads/objects/a/./b",
        "/v1/buckets/Up%20Loads/objects/a",
    ] {
        assert_eq!(raw(&host, "PUT", path, b"evil"), 400, "{path}");
    }
    let r = host.admin("PUT", "/v1/buckets/uploads/objects/a%00b", "x");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"]["code"], "invalid_key");
    let blobs = host.data_dir.join("blobs");
    let written: Vec<_> = walk(&blobs);
    assert!(written.is_empty(), "nothing may be written: {written:?}");
    assert!(!host.data_dir.join("../etc/passwd").exists());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = entry.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
