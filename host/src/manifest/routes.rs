//! Route patterns (`/orders/{id}`, `/files/{*rest}`): what a pattern may
//! hold beyond matchit's syntax (visible characters only, each parameter
//! name once), and when two patterns [`overlap`]: when one request path
//! could be matched by both. Pure functions of the text: knows nothing of
//! deployments, functions or HTTP.

use icu_properties::props::{BidiControl, DefaultIgnorableCodePoint, GeneralCategory};
use icu_properties::{CodePointMapData, CodePointSetData};

/// What is wrong with a route pattern beyond matchit's syntax (the same
/// pattern is refused again: fix the manifest).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(super) enum BadRoute {
    /// It holds a character a reader cannot see.
    #[error(
        "{path} holds U+{code_point:04X}, {kind}; a route may hold only visible characters, so that what you read is what the host routes: remove it"
    )]
    Invisible {
        path: String,
        code_point: u32,
        kind: &'static str,
    },
    /// It names a parameter twice.
    #[error("{path} names the parameter {name} twice; give each parameter its own name")]
    ParameterTwice { path: String, name: String },
}

/// What is wrong with `path` beyond matchit's syntax, if anything: a
/// control, format or otherwise invisible character (what an operator
/// reads must be what the host routes), or a parameter name used twice.
pub(super) fn check(path: &str) -> Result<(), BadRoute> {
    if let Some((c, kind)) = path.chars().find_map(|c| invisible(c).map(|k| (c, k))) {
        return Err(BadRoute::Invisible {
            path: crate::text::quote(path),
            code_point: c as u32,
            kind,
        });
    }
    let names = parameter_names(path);
    let twice = (names.iter().enumerate()).find_map(|(i, n)| names[..i].contains(n).then_some(n));
    if let Some(name) = twice {
        return Err(BadRoute::ParameterTwice {
            path: crate::text::quote(path),
            name: crate::text::quote(name),
        });
    }
    Ok(())
}

/// What kind of invisible character `c` is, if it is one: a control
/// character, a bidirectional control, another format character (zero
/// width, soft hyphen, tags), a space or separator, or one Unicode says
/// to draw as nothing.
fn invisible(c: char) -> Option<&'static str> {
    if c.is_control() {
        return Some("a control character");
    }
    if CodePointSetData::new::<BidiControl>().contains(c) {
        return Some("a bidirectional control character");
    }
    match CodePointMapData::<GeneralCategory>::new().get(c) {
        GeneralCategory::Format => return Some("an invisible format character"),
        GeneralCategory::SpaceSeparator
        | GeneralCategory::LineSeparator
        | GeneralCategory::ParagraphSeparator => return Some("a space or separator"),
        _ => {}
    }
    CodePointSetData::new::<DefaultIgnorableCodePoint>()
        .contains(c)
        .then_some("a character drawn as nothing")
}

/// The names of `path`'s parameters (`id` of `{id}`, `rest` of
/// `{*rest}`), in order; `{{` and `}}` are escaped braces, not parameters.
fn parameter_names(path: &str) -> Vec<&str> {
    let bytes = path.as_bytes();
    let mut names = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'{' | b'}' if bytes.get(i + 1) == Some(&bytes[i]) => i += 2,
            b'{' => {
                let Some(len) = path[i + 1..].find('}') else {
                    break;
                };
                names.push(path[i + 1..i + 1 + len].trim_start_matches('*'));
                i += len + 2;
            }
            _ => i += 1,
        }
    }
    names
}

/// One `/`-separated piece of a route pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Segment<'a> {
    /// Text that must appear as it is.
    Literal(&'a str),
    /// `{name}`: any one non-empty segment.
    Parameter,
    /// `{*name}`: the rest of the path, at least one character.
    CatchAll,
    /// Text and a parameter mixed (or escaped braces): taken as any one
    /// segment, which errs on the side of overlapping.
    Mixed,
}

/// `path`'s segments, a trailing slash ignored.
fn segments(path: &str) -> Vec<Segment<'_>> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    path.split('/')
        .map(|s| {
            let inner = s.strip_prefix('{').and_then(|s| s.strip_suffix('}'));
            match inner {
                Some(name) if !name.contains(['{', '}']) && name.starts_with('*') => {
                    Segment::CatchAll
                }
                Some(name) if !name.contains(['{', '}']) => Segment::Parameter,
                _ if s.contains(['{', '}']) => Segment::Mixed,
                _ => Segment::Literal(s),
            }
        })
        .collect()
}

/// Could one request path be matched by both route patterns, each standing
/// alone, once a trailing slash is ignored? Segment by segment: literals
/// match when equal, a parameter matches any non-empty segment, a
/// catch-all matches whatever remains (at least one segment), a segment
/// mixing text and a parameter matches anything.
pub fn overlap(a: &str, b: &str) -> bool {
    fn rest(a: &[Segment<'_>], b: &[Segment<'_>]) -> bool {
        match (a.split_first(), b.split_first()) {
            (None, None) => true,
            (Some((Segment::CatchAll, _)), other) | (other, Some((Segment::CatchAll, _))) => {
                other.is_some()
            }
            (Some((x, a)), Some((y, b))) => one(*x, *y) && rest(a, b),
            _ => false,
        }
    }
    fn one(x: Segment<'_>, y: Segment<'_>) -> bool {
        match (x, y) {
            (Segment::Literal(p), Segment::Literal(q)) => p == q,
            (Segment::Literal(p), Segment::Parameter)
            | (Segment::Parameter, Segment::Literal(p)) => !p.is_empty(),
            _ => true,
        }
    }
    rest(&segments(a), &segments(b))
}
