//! Who may make which change to the deployments. A deployer may deploy,
//! roll back and remove ordinary functions; two kinds of change need an
//! admin, because they reach what others rely on:
//! - one that touches a trusted function (`isolation = "trusted"`, which
//!   reaches sensitive data): deploying one, replacing one, rolling back
//!   to or from a trusted version, removing a function that has one;
//! - one that activates a route overlapping another function's (a path
//!   one request could take to either, see [`crate::manifest::overlap`]),
//!   which would take requests meant for that function, and their headers.
//!
//! The dispatcher asks here under its deploy lock, about what the change
//! would activate (on a fleet, in the shared record's conditional write).
//! Knows nothing of HTTP or tokens: the server says who the caller is.

use super::{DeployError, Deployed, Dispatcher, RouteTarget, build_routes_with};
use crate::manifest::{HttpTrigger, Isolation, Manifest};
use crate::registry::VersionRecord;
use crate::task::blocking;
use std::collections::HashMap;
use std::sync::Arc;

/// Who asks for a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    /// Any change.
    Admin,
    /// Changes to public functions whose routes overlap no other
    /// function's.
    Deployer,
}

/// A change to a trusted function, by what it does to it.
#[derive(Debug, Clone, Copy)]
pub(super) enum TrustedChange {
    /// Deploying a trusted version.
    Deploy,
    /// Deploying a version over a trusted one.
    Replace,
    /// Rolling back to or from a trusted version.
    Rollback,
    /// Removing a function that has a trusted version.
    Remove,
}

/// Is the version `record` a trusted function's? Read as written, not
/// validated (a version stored before a check was added still says what
/// it is); one whose manifest does not read at all is taken as trusted:
/// only an admin changes what the host cannot vouch for.
pub(super) fn is_trusted(record: &VersionRecord) -> bool {
    toml::from_str::<Manifest>(&record.manifest).map_or(true, |m| m.isolation == Isolation::Trusted)
}

/// Refuse a deployer `change` of the function `name` when `trusted` (the
/// change touches a trusted version).
pub(super) fn vet_trusted(
    authority: Authority,
    name: &str,
    change: TrustedChange,
    trusted: bool,
) -> Result<(), DeployError> {
    if !trusted || authority == Authority::Admin {
        return Ok(());
    }
    let what = match change {
        TrustedChange::Deploy => "deploying a function with isolation = \"trusted\"",
        TrustedChange::Replace => "deploying over a trusted function",
        TrustedChange::Rollback => "rolling a function back to or from a trusted version",
        TrustedChange::Remove => "removing a function that has a trusted version",
    };
    Err(DeployError::Forbidden(format!(
        "{} is a trusted function, which reaches sensitive data: {what} needs an admin token; ask an admin to do it",
        crate::text::quote(name)
    )))
}

impl Dispatcher {
    /// This host's stored versions of `name` (on a fleet, the mirror of
    /// its record), and which of them is active.
    pub(super) async fn stored(
        &self,
        name: &str,
    ) -> Result<(Option<u32>, Vec<VersionRecord>), DeployError> {
        let registry = self.services.registry().clone();
        let name = name.to_string();
        let stored = blocking(move || {
            let functions = registry.functions()?;
            let Some(function) = functions.into_iter().find(|f| f.name == name) else {
                return Ok((None, Vec::new()));
            };
            let mut versions = Vec::new();
            for v in function.versions {
                versions.extend(registry.version(&name, v)?);
            }
            Ok::<_, crate::registry::RegistryError>((Some(function.active_version), versions))
        });
        Ok(stored.await?)
    }

    /// The route table with `name`'s routes as `http` and every other
    /// active function's: refused when one of them conflicts with another
    /// function's route (matchit cannot tell them apart), or when, for a
    /// deployer, one overlaps another function's route.
    pub(super) fn routes_with(
        &self,
        authority: Authority,
        name: &str,
        http: &Vec<HttpTrigger>,
    ) -> Result<matchit::Router<RouteTarget>, DeployError> {
        let mut others = self.active.read().unwrap().clone();
        others.remove(name);
        let routes =
            build_routes_with(&others, Some((name, http))).map_err(DeployError::Conflict)?;
        if authority == Authority::Deployer
            && let Some((mine, other, theirs)) = first_overlap(http, &others)
        {
            return Err(DeployError::Forbidden(format!(
                "route {} of {} overlaps route {} of {}: one request path could reach either, \
                 and with it the headers meant for {}; only an admin token may activate routes that overlap another function's. \
                 Use paths of its own (e.g. under {}), or ask an admin",
                crate::text::quote(&mine),
                crate::text::quote(name),
                crate::text::quote(&theirs),
                crate::text::quote(&other),
                crate::text::quote(&other),
                crate::text::quote(&format!("/{name}/")),
            )));
        }
        Ok(routes)
    }
}

/// The first of `http`'s routes that overlaps a route of one of `others`:
/// (that route, the other function, its route); functions in name order.
fn first_overlap(
    http: &[HttpTrigger],
    others: &HashMap<String, Arc<Deployed>>,
) -> Option<(String, String, String)> {
    let mut names: Vec<&String> = others.keys().collect();
    names.sort();
    http.iter().find_map(|mine| {
        names.iter().find_map(|other| {
            (others[*other].manifest.triggers.http.iter())
                .find(|theirs| crate::manifest::overlap(&mine.path, &theirs.path))
                .map(|theirs| (mine.path.clone(), other.to_string(), theirs.path.clone()))
        })
    })
}
