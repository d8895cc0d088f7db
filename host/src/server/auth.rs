//! The admin bearer token: taken from `FNHOST_TOKEN`, or generated on first
//! start into `<data-dir>/token` (mode 0600) and printed once; and the
//! middleware that requires it on every `/v1/` request.

use super::{AppState, error};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use std::path::{Path, PathBuf};

/// Where a host keeps its generated token.
pub fn token_path(data_dir: &Path) -> PathBuf {
    data_dir.join("token")
}

/// The token to require: `explicit` when given, else the one in the data dir,
/// else a new random one written there. The bool is true when it was created.
pub fn load_or_create_token(
    data_dir: &Path,
    explicit: Option<String>,
) -> std::io::Result<(String, bool)> {
    if let Some(token) = explicit.filter(|t| !t.trim().is_empty()) {
        return Ok((token.trim().to_string(), false));
    }
    let path = token_path(data_dir);
    match std::fs::read_to_string(&path) {
        Ok(token) if !token.trim().is_empty() => return Ok((token.trim().to_string(), false)),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| std::io::Error::other(e.to_string()))?;
    let token = crate::files::hex(&bytes);
    crate::files::write_atomic(&path, token.as_bytes())?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((token, true))
}

/// Compare without an early exit, so timing does not reveal a prefix.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Require `Authorization: Bearer <token>`.
pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match given {
        Some(t) if same(t.trim().as_bytes(), state.config.token.as_bytes()) => next.run(req).await,
        Some(_) => error(
            StatusCode::UNAUTHORIZED,
            "bad_token",
            "the bearer token is not this host's admin token; use the one in the host's data dir or FNHOST_TOKEN",
        ),
        None => error(
            StatusCode::UNAUTHORIZED,
            "missing_token",
            "admin endpoints need `Authorization: Bearer <token>`; the token is in the host's data dir (file `token`) or FNHOST_TOKEN",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_generated_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (t1, created) = load_or_create_token(dir.path(), None).unwrap();
        assert!(created);
        assert_eq!(t1.len(), 64);
        let (t2, created) = load_or_create_token(dir.path(), None).unwrap();
        assert!(!created);
        assert_eq!(t1, t2);
        let (t3, _) = load_or_create_token(dir.path(), Some("mine".into())).unwrap();
        assert_eq!(t3, "mine");
        assert!(same(b"abc", b"abc") && !same(b"abc", b"abd") && !same(b"abc", b"ab"));
    }
}
