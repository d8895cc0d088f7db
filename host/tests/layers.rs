//! The host's modules form layers, and each layer uses only the layers
//! below it: no import circle, no reaching up. This test reads every
//! `crate::<module>` path in `host/src` (test code aside) and fails, naming
//! the file and the path, when a module uses one that is not below it, or
//! when a module is not placed in a layer at all.
//!
//! To add a module, place it in [`LAYERS`]: as low as what it uses allows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// From the bottom up. A module may use the modules of the layers below
/// its own, never its own layer's or those above.
const LAYERS: &[&[&str]] = &[
    // Leaves: text, time, futures, files, OS confinement.
    &["text", "clock", "task", "files", "confine"],
    // Names of functions, queues and buckets; the host's own queues.
    &["names", "audit"],
    // The backend seams (traits and their data), the registry, grants.
    &["queue", "blobs", "registry", "capabilities", "state"],
    // Job records (a seam over the queue's types).
    &["jobs", "tokens"],
    // What runs: the execution seam's data and trait.
    &["exec"],
    // The manifest; the stores behind the seams; the sandbox.
    &["manifest", "backends", "sandbox"],
    // The stores as delivery and the API use them, built once.
    &["services"],
    // Which version answers an event; the trusted worker (an executor in
    // a process of its own).
    &["dispatcher", "trusted"],
    // Events in: background triggers; the HTTP server.
    &["triggers", "records"],
    // Metrics: from the event stream, the stores and the records.
    &["telemetry"],
    &["server"],
    // The composition root, then the command line.
    &["host"],
    &["cli"],
];

/// Files that are not part of the layering: the crate roots and test code.
const OUTSIDE: &[&str] = &["lib.rs", "main.rs", "proptests.rs"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file without its test module and comments.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| {
            let t = l.trim_start();
            if t.starts_with("//") { "" } else { l }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `crate::<module>` a file's code names, with a line that shows it.
fn uses(code: &str) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    for line in code.lines() {
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                found.entry(name).or_insert_with(|| line.trim().to_string());
            }
            rest = after;
        }
    }
    found
}

#[test]
fn each_layer_uses_only_the_layers_below_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut problems = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let rel = file.strip_prefix(&src).unwrap();
        let rel_text = rel.to_string_lossy().to_string();
        if OUTSIDE.contains(&rel_text.as_str()) || rel.file_name().is_some_and(|n| n == "tests.rs")
        {
            continue;
        }
        let module = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "module `{module}` ({rel_text}) is in no layer: add it to LAYERS in host/tests/layers.rs"
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (used, line) in uses(&code(&text)) {
            if used == module {
                continue;
            }
            graph
                .entry(module.clone())
                .or_default()
                .insert(used.clone());
            match layer_of(&used) {
                Some(l) if l < own => {}
                Some(_) => problems.push(format!(
                    "{rel_text}: `{module}` uses `{used}`, which is not in a layer below it: `{line}`"
                )),
                None => problems.push(format!(
                    "{rel_text}: `{module}` uses `{used}`, which is in no layer: `{line}`"
                )),
            }
        }
    }
    assert!(
        problems.is_empty(),
        "the module layers are broken:\n{}\n(module graph: {graph:?})",
        problems.join("\n")
    );
}

#[test]
fn the_check_sees_a_use_and_ignores_comments_and_tests() {
    let code = code(
        "use crate::queue::X;\n// crate::server in a comment\nfn f() { crate::names::valid_name(\"a\"); }\n#[cfg(test)]\nmod tests { use crate::cli; }\n",
    );
    let found: Vec<String> = uses(&code).into_keys().collect();
    assert_eq!(found, ["names", "queue"]);
}
