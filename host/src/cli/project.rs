//! Job crates on the local disk: find a function's manifest and component,
//! build a crate for `wasm32-wasip2` (adding the target when missing), and
//! scaffold a new one. A new crate gets the guest SDK this binary was built
//! with, written into it (`fnhost-sdk/`): the binary carries the SDK that
//! matches its WIT, so a crate made by a copy of `fnhost` on another
//! machine builds there, with nothing of this checkout.

use crate::manifest::{FILE_NAME, Manifest};
use anyhow::{Context as _, anyhow, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The target job crates build for.
pub const TARGET: &str = "wasm32-wasip2";

/// The manifest path, its text (validated) and the component path for a
/// function directory or manifest file.
pub fn locate(path: &Path) -> anyhow::Result<(PathBuf, String, PathBuf)> {
    let manifest_path = if path.is_dir() {
        path.join(FILE_NAME)
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&manifest_path).with_context(|| {
        format!("failed to read {manifest_path:?}; a function directory needs a {FILE_NAME} (see `fnhost new`)")
    })?;
    let manifest = Manifest::parse(&manifest_path.display().to_string(), &text)?;
    let dir = manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        dir
    };
    let component = match &manifest.component {
        Some(c) => dir.join(c),
        None => built_component(&dir)?,
    };
    if !component.is_file() {
        bail!(
            "no component at {component:?}; build it first with `fnhost build {}`",
            dir.display()
        );
    }
    Ok((manifest_path, text, component))
}

/// Where `cargo build --release --target wasm32-wasip2` puts the crate's component.
fn built_component(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo_toml = dir.join("Cargo.toml");
    let out = Command::new("cargo")
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(&cargo_toml)
        .output()
        .context("failed to run `cargo metadata`; is the Rust toolchain installed?")?;
    if !out.status.success() {
        bail!(
            "`cargo metadata` failed for {cargo_toml:?}: {}; set `component` in {FILE_NAME} to the .wasm path instead",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout)
        .context("`cargo metadata` printed something unexpected")?;
    let target_dir = meta["target_directory"]
        .as_str()
        .ok_or_else(|| anyhow!("`cargo metadata` gave no target_directory"))?;
    let wanted = std::fs::canonicalize(&cargo_toml).unwrap_or(cargo_toml.clone());
    let package = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["manifest_path"].as_str().map(PathBuf::from).as_deref() == Some(wanted.as_path()))
        .ok_or_else(|| anyhow!("{cargo_toml:?} is not a package (a workspace root?); point at the job crate's directory"))?;
    let lib = package["targets"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "cdylib")))
        .ok_or_else(|| anyhow!("{cargo_toml:?} has no cdylib target; a job crate needs `[lib] crate-type = [\"cdylib\"]`"))?;
    let name = lib["name"].as_str().unwrap_or_default().replace('-', "_");
    Ok(Path::new(target_dir)
        .join(TARGET)
        .join("release")
        .join(format!("{name}.wasm")))
}

/// Add the wasm target with rustup when it is missing.
pub fn ensure_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("failed to run `rustup`; install Rust with rustup to build jobs")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        return Ok(());
    }
    eprintln!("adding the {TARGET} target with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status()?;
    if !status.success() {
        bail!("`rustup target add {TARGET}` failed; run it by hand and try again");
    }
    Ok(())
}

/// `fnhost build DIR`: compile the crate and check the component is an fnhost job.
pub fn build(dir: &Path) -> anyhow::Result<PathBuf> {
    ensure_target()?;
    let cargo_toml = dir.join("Cargo.toml");
    if !cargo_toml.is_file() {
        bail!("{dir:?} has no Cargo.toml; point `fnhost build` at a job crate (see `fnhost new`)");
    }
    let status = Command::new("cargo")
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(&cargo_toml)
        .status()
        .context("failed to run cargo")?;
    if !status.success() {
        bail!("cargo build failed for {cargo_toml:?} (see the errors above)");
    }
    let (_, _, component) = locate(dir)?;
    let wasm = std::fs::read(&component)?;
    let cache = tempfile::tempdir()?;
    let sandbox = crate::sandbox::Sandbox::new(crate::sandbox::SandboxConfig {
        pooling: false,
        ..crate::sandbox::SandboxConfig::new(cache.path().to_path_buf())
    })?;
    sandbox
        .load(&wasm)
        .map_err(|e| anyhow!("{component:?}: {e}"))?;
    println!(
        "built {} ({} bytes): an fnhost:job@0.1.0 component",
        component.display(),
        wasm.len()
    );
    Ok(component)
}

/// `fnhost new NAME`: a job crate with a manifest and an HTTP route.
pub fn new(name: &str, dir: Option<PathBuf>) -> anyhow::Result<()> {
    if !crate::names::valid_name(name) {
        bail!(
            "{name:?} is not a valid function name; use lower-case letters, digits and '-', starting with a letter"
        );
    }
    let dir = dir.unwrap_or_else(|| PathBuf::from(name));
    if dir.exists() && std::fs::read_dir(&dir)?.next().is_some() {
        bail!("{dir:?} already exists and is not empty; choose another --dir");
    }
    std::fs::create_dir_all(dir.join("src"))?;
    for (file, text) in sdk::files()? {
        let path = dir.join(SDK_DIR).join(file);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, text).with_context(|| format!("failed to write {path:?}"))?;
    }
    let files = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
# The guest SDK of the fnhost that made this crate, kept beside it.
fnhost-sdk = {{ path = "{SDK_DIR}/sdk" }}
serde = {{ version = "1", features = ["derive"] }}

# A job crate stands alone; delete this line to add it to a workspace.
[workspace]
"#
            ),
        ),
        (
            "src/lib.rs",
            r#"use fnhost_sdk::{Event, Output, Result, job};
use serde::Serialize;

#[derive(Serialize)]
struct Reply {
    message: String,
}

/// Answers every event with a greeting.
#[job]
fn handle(event: Event) -> Result<Output> {
    let who = match &event {
        Event::Http(req) => req.query_param("name").unwrap_or_else(|| "world".into()),
        other => other.kind().to_string(),
    };
    Output::json(&Reply { message: format!("Hello, {who}!") })
}
"#
            .to_string(),
        ),
        (
            FILE_NAME,
            format!(
                r#"name = "{name}"

[[triggers.http]]
path = "/{name}"
methods = ["GET", "POST"]

[limits]
memory_mb = 64
timeout = "10s"
"#
            ),
        ),
        (".gitignore", "/target\n".to_string()),
    ];
    for (file, text) in files {
        std::fs::write(dir.join(file), text)
            .with_context(|| format!("failed to write {:?}", dir.join(file)))?;
    }
    println!(
        "created {}; next: `fnhost build {0}` then `fnhost deploy {0}`",
        dir.display()
    );
    Ok(())
}

/// Where a new job crate keeps its copy of the guest SDK.
const SDK_DIR: &str = "fnhost-sdk";

/// The guest SDK this binary was built from: its sources, the WIT, and
/// manifests whose dependencies are the workspace's own pins.
mod sdk {
    use anyhow::{Context as _, anyhow};

    const WORKSPACE: &str = include_str!("../../../Cargo.toml");
    const SDK: &str = include_str!("../../../guest-sdk/src/lib.rs");
    const MACRO: &str = include_str!("../../../guest-sdk/macro/src/lib.rs");
    const WIT: &str = include_str!("../../../wit/job.wit");

    /// The SDK's files, by path under the crate's SDK directory (the SDK
    /// generates its bindings from `../wit`, so the WIT sits beside it).
    pub(super) fn files() -> anyhow::Result<Vec<(&'static str, String)>> {
        let sdk = manifest(
            "fnhost-sdk",
            false,
            &["wit-bindgen", "serde", "serde_json"],
            Some(("fnhost-sdk-macro", "../macro")),
        )?;
        let r#macro = manifest(
            "fnhost-sdk-macro",
            true,
            &["proc-macro2", "quote", "syn"],
            None,
        )?;
        Ok(vec![
            ("sdk/Cargo.toml", sdk),
            ("sdk/src/lib.rs", SDK.to_string()),
            ("macro/Cargo.toml", r#macro),
            ("macro/src/lib.rs", MACRO.to_string()),
            ("wit/job.wit", WIT.to_string()),
        ])
    }

    /// A manifest for `name`, its dependencies as pinned in the workspace.
    fn manifest(
        name: &str,
        proc_macro: bool,
        pinned: &[&str],
        path_dep: Option<(&str, &str)>,
    ) -> anyhow::Result<String> {
        let workspace: toml::Table =
            toml::from_str(WORKSPACE).context("the SDK's workspace manifest")?;
        let all = workspace
            .get("workspace")
            .and_then(|w| w.get("dependencies"))
            .and_then(|d| d.as_table())
            .ok_or_else(|| anyhow!("the workspace manifest has no [workspace.dependencies]"))?;
        let mut deps = toml::Table::new();
        for dep in pinned {
            let spec = all
                .get(*dep)
                .ok_or_else(|| anyhow!("the workspace does not pin {dep}"))?;
            deps.insert(dep.to_string(), spec.clone());
        }
        if let Some((dep, path)) = path_dep {
            let mut spec = toml::Table::new();
            spec.insert("path".into(), path.into());
            deps.insert(dep.into(), spec.into());
        }
        let mut package = toml::Table::new();
        package.insert("name".into(), name.into());
        package.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        package.insert("edition".into(), "2024".into());
        let mut manifest = toml::Table::new();
        manifest.insert("package".into(), package.into());
        if proc_macro {
            let mut lib = toml::Table::new();
            lib.insert("proc-macro".into(), true.into());
            manifest.insert("lib".into(), lib.into());
        }
        manifest.insert("dependencies".into(), deps.into());
        toml::to_string(&manifest).context("the SDK's manifest")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn the_carried_sdk_is_this_checkouts_with_the_workspaces_pins() {
            let files = files().unwrap();
            let get = |p: &str| &files.iter().find(|(f, _)| *f == p).unwrap().1;
            let sdk: toml::Table = toml::from_str(get("sdk/Cargo.toml")).unwrap();
            let deps = sdk["dependencies"].as_table().unwrap();
            let workspace: toml::Table = toml::from_str(WORKSPACE).unwrap();
            let pins = &workspace["workspace"]["dependencies"];
            for dep in ["wit-bindgen", "serde", "serde_json"] {
                assert_eq!(deps[dep], pins[dep], "{dep} as the workspace pins it");
            }
            assert_eq!(deps["fnhost-sdk-macro"]["path"].as_str(), Some("../macro"));
            let r#macro: toml::Table = toml::from_str(get("macro/Cargo.toml")).unwrap();
            assert_eq!(r#macro["lib"]["proc-macro"].as_bool(), Some(true));
            assert!(
                r#macro["dependencies"]
                    .as_table()
                    .unwrap()
                    .contains_key("syn")
            );
            assert!(get("wit/job.wit").contains("package fnhost:job"));
            assert!(get("sdk/src/lib.rs").contains("path: \"../wit\""));
        }
    }
}
