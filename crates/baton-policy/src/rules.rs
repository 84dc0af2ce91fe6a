//! Routing rules: which back-end group serves a request, by host and path,
//! in the spirit of nginx `server_name`/`location` and HAProxy
//! `use_backend ... if { hdr(host) ... } { path_beg ... }`.
//!
//! Semantics: rules are tried in order and the first whose every matcher
//! matches wins; no rule matching means the default group. Hosts compare
//! ASCII case-insensitively, without the port and without a trailing dot.
//! Paths are matched as received (no percent-decoding, no dot-segment
//! removal) and without the query: rules route, they do not enforce access.

use regex::Regex;

/// A host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// This host name exactly.
    Exact(String),
    /// `*.example.com` is `Wildcard("example.com")`: any name with at least
    /// one more label in front (`a.example.com`, `a.b.example.com`), but
    /// not `example.com` itself (as nginx's `*.example.com`).
    Wildcard(String),
}

impl HostMatch {
    /// Parses `example.com` or `*.example.com`.
    pub fn parse(pattern: &str) -> Result<Self, RuleError> {
        let m = match pattern.strip_prefix("*.") {
            Some(suffix) => HostMatch::Wildcard(suffix.to_owned()),
            None => HostMatch::Exact(pattern.to_owned()),
        };
        m.normalized().map_err(|reason| RuleError::Host {
            index: None,
            pattern: pattern.to_owned(),
            reason,
        })
    }

    /// Lower-cased, trailing dot removed, and checked.
    fn normalized(&self) -> Result<Self, &'static str> {
        let (name, wild) = match self {
            HostMatch::Exact(s) => (s, false),
            HostMatch::Wildcard(s) => (s, true),
        };
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if name.is_empty() {
            return Err("empty host name");
        }
        if name.contains('*') {
            return Err("'*' is only allowed as a leading \"*.\" label");
        }
        if name.contains(':') && !name.starts_with('[') {
            return Err("a host pattern carries no port");
        }
        if name.contains(|c: char| c.is_ascii_whitespace() || c == '/') {
            return Err("not a host name");
        }
        Ok(if wild {
            HostMatch::Wildcard(name)
        } else {
            HostMatch::Exact(name)
        })
    }

    /// Whether the normalized request host `host` matches.
    fn matches(&self, host: &str) -> bool {
        match self {
            HostMatch::Exact(name) => host.eq_ignore_ascii_case(name),
            HostMatch::Wildcard(suffix) => {
                let (h, s) = (host.as_bytes(), suffix.as_bytes());
                h.len() > s.len() + 1
                    && h.get(h.len() - s.len() - 1) == Some(&b'.')
                    && h.get(h.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        }
    }
}

/// A path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    /// The path starts with this string (plain string prefix, as nginx's
    /// `location /img` also matches `/imgs`).
    Prefix(String),
    /// The regular expression matches somewhere in the path (anchor it with
    /// `^`/`$` as needed). Syntax of the `regex` crate; matching time is
    /// linear in the path, whatever the pattern.
    Regex(String),
}

/// One routing rule: every matcher present must match. A rule with no
/// matcher matches every request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Host pattern, if any.
    pub host: Option<HostMatch>,
    /// Path pattern, if any.
    pub path: Option<PathMatch>,
    /// The back-end group for matching requests.
    pub group: String,
}

/// Why a rule set was refused. `index` is the rule's position (0-based).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// A host pattern is malformed.
    #[error("{}host pattern {pattern:?}: {reason}", at(*.index))]
    Host {
        /// Which rule, when known.
        index: Option<usize>,
        /// The pattern as written.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path regex does not compile.
    #[error("rule {index}: path regex {pattern:?} does not compile: {source}")]
    Regex {
        /// Which rule.
        index: usize,
        /// The pattern as written.
        pattern: String,
        /// The compiler's explanation (points at the offending part).
        source: Box<regex::Error>,
    },
    /// A path prefix is empty (omit the path matcher to match every path).
    #[error("rule {index}: empty path prefix (omit `path` to match every path)")]
    EmptyPrefix {
        /// Which rule.
        index: usize,
    },
    /// A rule names no group.
    #[error("rule {index}: empty group name")]
    EmptyGroup {
        /// Which rule.
        index: usize,
    },
    /// The default group is empty.
    #[error("empty default group name")]
    EmptyDefault,
}

fn at(index: Option<usize>) -> String {
    index.map(|i| format!("rule {i}: ")).unwrap_or_default()
}

#[derive(Debug, Clone)]
enum CompiledPath {
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug, Clone)]
struct Compiled {
    host: Option<HostMatch>,
    path: Option<CompiledPath>,
    group: String,
}

/// A validated, compiled rule set with its default group.
#[derive(Debug, Clone)]
pub struct Rules {
    rules: Vec<Compiled>,
    default: String,
}

impl Rules {
    /// Validates and compiles `rules`. Errors name the offending rule.
    pub fn new(rules: Vec<Rule>, default_group: impl Into<String>) -> Result<Self, RuleError> {
        let default = default_group.into();
        if default.is_empty() {
            return Err(RuleError::EmptyDefault);
        }
        let rules = rules
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                if r.group.is_empty() {
                    return Err(RuleError::EmptyGroup { index });
                }
                let host = r
                    .host
                    .as_ref()
                    .map(|h| {
                        h.normalized().map_err(|reason| RuleError::Host {
                            index: Some(index),
                            pattern: match h {
                                HostMatch::Exact(s) => s.clone(),
                                HostMatch::Wildcard(s) => format!("*.{s}"),
                            },
                            reason,
                        })
                    })
                    .transpose()?;
                let path = match r.path {
                    None => None,
                    Some(PathMatch::Prefix(p)) if p.is_empty() => {
                        return Err(RuleError::EmptyPrefix { index })
                    }
                    Some(PathMatch::Prefix(p)) => Some(CompiledPath::Prefix(p)),
                    Some(PathMatch::Regex(pattern)) => match Regex::new(&pattern) {
                        Ok(re) => Some(CompiledPath::Regex(re)),
                        Err(e) => {
                            return Err(RuleError::Regex {
                                index,
                                pattern,
                                source: Box::new(e),
                            })
                        }
                    },
                };
                Ok(Compiled {
                    host,
                    path,
                    group: r.group,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { rules, default })
    }

    /// The group for a request with `Host` header `host` (as received: any
    /// case, maybe with a port) and request target `path` (maybe with a
    /// query). First matching rule wins; otherwise the default group.
    pub fn route(&self, host: Option<&str>, path: &str) -> &str {
        let host = host.map(normalize_host);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.rules
            .iter()
            .find(|r| {
                let host_ok = match (&r.host, host) {
                    (None, _) => true,
                    (Some(m), Some(h)) => m.matches(h),
                    (Some(_), None) => false,
                };
                host_ok
                    && match &r.path {
                        None => true,
                        Some(CompiledPath::Prefix(p)) => path.starts_with(p.as_str()),
                        Some(CompiledPath::Regex(re)) => re.is_match(path),
                    }
            })
            .map_or(self.default.as_str(), |r| r.group.as_str())
    }

    /// The default group.
    pub fn default_group(&self) -> &str {
        &self.default
    }

    /// Every group a request can be routed to (rules' groups in order, then
    /// the default; duplicates kept), so that a config check can verify
    /// each one exists.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .map(|r| r.group.as_str())
            .chain(std::iter::once(self.default.as_str()))
    }
}

/// A `Host` header value without its port and trailing dot:
/// `Example.com:8080` -> `Example.com`, `[::1]:80` -> `[::1]`.
/// Case is left alone (comparisons fold it).
pub(crate) fn normalize_host(host: &str) -> &str {
    let host = host.trim();
    let host = if host.starts_with('[') {
        host.find(']').and_then(|i| host.get(..=i)).unwrap_or(host)
    } else {
        match host.rsplit_once(':') {
            Some((name, port))
                if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) =>
            {
                name
            }
            _ => host,
        }
    };
    host.strip_suffix('.').unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(host: Option<&str>, path: Option<PathMatch>, group: &str) -> Rule {
        Rule {
            host: host.map(|h| HostMatch::parse(h).unwrap()),
            path,
            group: group.into(),
        }
    }
    fn prefix(p: &str) -> Option<PathMatch> {
        Some(PathMatch::Prefix(p.into()))
    }
    fn regex(p: &str) -> Option<PathMatch> {
        Some(PathMatch::Regex(p.into()))
    }

    #[test]
    fn table_of_cases() {
        let rules = Rules::new(
            vec![
                rule(Some("api.example.com"), prefix("/v2/"), "api-v2"),
                rule(Some("api.example.com"), None, "api"),
                rule(Some("*.static.example.com"), None, "static"),
                rule(None, regex(r"\.(jpe?g|png)$"), "images"),
                rule(None, prefix("/img"), "img-prefix"),
                // Shadowed by the rule above for /img...: ties go to the first.
                rule(None, prefix("/img/big"), "never"),
                rule(Some("example.com"), prefix("/"), "site"),
            ],
            "default",
        )
        .unwrap();
        let cases: &[(Option<&str>, &str, &str)] = &[
            (Some("api.example.com"), "/v2/users", "api-v2"),
            (Some("API.Example.COM:8443"), "/v2/users?id=1", "api-v2"),
            (Some("api.example.com."), "/v2/x", "api-v2"),
            (Some("api.example.com"), "/v1/users", "api"),
            (Some("api.example.com"), "/logo.png", "api"),
            (Some("a.static.example.com"), "/x.png", "static"),
            (Some("a.b.static.example.com"), "/", "static"),
            (Some("static.example.com"), "/x.css", "default"),
            (Some(".static.example.com"), "/", "default"),
            (Some("xstatic.example.com"), "/", "default"),
            (Some("example.com"), "/photo.JPG", "site"),
            (Some("example.com"), "/photo.jpeg", "images"),
            (None, "/a/b.png", "images"),
            (None, "/a/b.png?size=2", "images"),
            (None, "/a/b.png.txt", "default"),
            (None, "/img/big/1", "img-prefix"),
            (None, "/imgs", "img-prefix"),
            (None, "/images", "default"),
            (Some("example.com"), "/anything", "site"),
            (Some("example.com:80"), "/", "site"),
            (Some("www.example.com"), "/", "default"),
            (None, "/", "default"),
            (None, "", "default"),
            (Some("[::1]:8080"), "/", "default"),
        ];
        for &(host, path, want) in cases {
            assert_eq!(rules.route(host, path), want, "host {host:?} path {path:?}");
        }
        assert_eq!(rules.groups().last(), Some("default"));
        assert_eq!(rules.groups().count(), 8);
    }

    #[test]
    fn empty_rule_set_routes_to_default() {
        let rules = Rules::new(vec![], "all").unwrap();
        assert_eq!(rules.route(Some("x"), "/y"), "all");
        assert_eq!(rules.default_group(), "all");
    }

    #[test]
    fn ipv6_hosts() {
        let rules = Rules::new(vec![rule(Some("[::1]"), None, "local")], "d").unwrap();
        assert_eq!(rules.route(Some("[::1]:8080"), "/"), "local");
        assert_eq!(rules.route(Some("[::1]"), "/"), "local");
        assert_eq!(rules.route(Some("[::2]"), "/"), "d");
    }

    #[test]
    fn errors_are_clear() {
        let e = Rules::new(vec![rule(None, regex("(unclosed"), "g")], "d").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("rule 0: path regex \"(unclosed\" does not compile"),
            "{msg}"
        );
        assert!(matches!(e, RuleError::Regex { index: 0, .. }));

        let e = Rules::new(
            vec![
                rule(None, None, "ok"),
                Rule {
                    host: Some(HostMatch::Exact("a*.com".into())),
                    path: None,
                    group: "g".into(),
                },
            ],
            "d",
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("rule 1: host pattern \"a*.com\""),
            "{e}"
        );
        assert!(HostMatch::parse("example.com:80").is_err());
        assert!(HostMatch::parse("*.").is_err());
        assert!(HostMatch::parse("").is_err());
        assert!(matches!(
            Rules::new(vec![rule(None, prefix(""), "g")], "d"),
            Err(RuleError::EmptyPrefix { index: 0 })
        ));
        assert!(matches!(
            Rules::new(vec![rule(None, None, "")], "d"),
            Err(RuleError::EmptyGroup { index: 0 })
        ));
        assert!(matches!(
            Rules::new(vec![], ""),
            Err(RuleError::EmptyDefault)
        ));
    }

    #[test]
    fn host_normalization() {
        assert_eq!(normalize_host("Example.com:8080"), "Example.com");
        assert_eq!(normalize_host("example.com."), "example.com");
        assert_eq!(normalize_host("example.com.:80"), "example.com");
        assert_eq!(normalize_host("[::1]:80"), "[::1]");
        assert_eq!(normalize_host("::1"), "::1");
        assert_eq!(normalize_host("host:notaport"), "host:notaport");
    }
}
