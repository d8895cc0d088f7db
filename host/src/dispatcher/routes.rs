//! The route table: which function each HTTP path leads to, built from
//! the active functions' routes (and, for a deploy, one more function's),
//! with the two functions named when routes conflict. Who may add a route
//! that overlaps another's is [`super::authority`]'s question.

use super::Deployed;
use crate::manifest::HttpTrigger;
use std::collections::HashMap;
use std::sync::Arc;

/// Where an HTTP request goes.
#[derive(Clone)]
pub struct RouteTarget {
    /// The function's name.
    pub function: String,
    /// Methods accepted; all when empty.
    pub methods: Vec<String>,
    /// Does a caller need a token (`auth = "token"`)?
    pub token: bool,
}

pub(super) fn build_routes(
    active: &HashMap<String, Arc<Deployed>>,
) -> Result<matchit::Router<RouteTarget>, String> {
    build_routes_with(active, None)
}

/// The route table of `active` plus, optionally, one more function's routes.
/// Errors name both functions when two routes collide.
pub(super) fn build_routes_with(
    active: &HashMap<String, Arc<Deployed>>,
    extra: Option<(&str, &Vec<HttpTrigger>)>,
) -> Result<matchit::Router<RouteTarget>, String> {
    let mut router = matchit::Router::new();
    let mut owners: Vec<(String, String)> = Vec::new();
    let mut names: Vec<&String> = active.keys().collect();
    names.sort();
    let all = names
        .into_iter()
        .map(|n| (n.as_str(), &active[n].manifest.triggers.http))
        .chain(extra);
    for (function, triggers) in all {
        for t in triggers {
            let target = RouteTarget {
                function: function.to_string(),
                methods: t.methods.clone(),
                token: t.auth == crate::manifest::RouteAuth::Token,
            };
            if let Err(e) = router.insert(t.path.clone(), target) {
                let other = owners
                    .iter()
                    .find(
                        |(_, p)| matches!(&e, matchit::InsertError::Conflict { with } if with == p),
                    )
                    .map(|(f, _)| f.as_str())
                    .unwrap_or("another function");
                return Err(format!(
                    "route {:?} of function {function:?} conflicts with a route of {other:?}: {e}; change or remove one of them",
                    t.path
                ));
            }
            owners.push((function.to_string(), t.path.clone()));
        }
    }
    Ok(router)
}
