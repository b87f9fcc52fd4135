//! Match rules: which parts of a request take part in matching, per cassette and per
//! route, and how recorded sequences are replayed. Built once from the config; pure.

use serde::Serialize;

/// How bodies are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BodyMatch {
    /// JSON bodies as JSON values (other bodies byte for byte).
    Json,
    /// Byte for byte, even when the body is JSON.
    Exact,
    /// Bodies take no part.
    Ignore,
}

/// Which episode of a recorded sequence answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayOrder {
    /// First recording first, then the next, as recorded.
    Sequential,
    /// Always the first recording.
    First,
}

/// What happens once every episode of a sequence has been served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Exhausted {
    /// The last episode keeps answering.
    RepeatLast,
    /// Start again from the first.
    Cycle,
    /// Answer with a replay miss.
    Miss,
    /// In `auto`, forward and record a new episode; in `replay`, a miss.
    Forward,
}

/// The rules for one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MatchRules {
    pub method: bool,
    pub path: bool,
    pub query: bool,
    pub body: BodyMatch,
    /// Lower-case names of request headers whose values must match.
    pub headers: Vec<String>,
    /// Query parameters left out of the comparison.
    pub ignore_query: Vec<String>,
    /// Graph paths are case-insensitive; recordings can be too.
    pub path_case_insensitive: bool,
    /// JSON Pointers (RFC 6901, `*` for any member or element) left out of body comparison.
    pub ignore_pointers: Vec<String>,
    /// Arrays compared as multisets.
    pub ignore_array_order: bool,
    #[serde(skip)]
    pub order: ReplayOrder,
    #[serde(skip)]
    pub exhausted: Exhausted,
}

impl Default for MatchRules {
    fn default() -> Self {
        Self {
            method: true,
            path: true,
            query: true,
            body: BodyMatch::Json,
            headers: Vec::new(),
            ignore_query: Vec::new(),
            path_case_insensitive: false,
            ignore_pointers: Vec::new(),
            ignore_array_order: false,
            order: ReplayOrder::Sequential,
            exhausted: Exhausted::RepeatLast,
        }
    }
}

/// A path pattern: a template such as
/// `/*/deviceManagement/deviceConfigurations/{id}/deviceStatuses/{id}` or a glob.
/// Per segment: `*` and `{name}` match any one segment, `**` any number of segments,
/// `*` inside a segment any run of characters; literals compare case-insensitively
/// (Graph paths are case-insensitive). Empty segments (`//`) are skipped on both sides.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PathPattern {
    pub text: String,
    #[serde(skip)]
    segments: Vec<String>,
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("{text:?} must start with '/'"));
        }
        let segments: Vec<String> = text
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    "*".to_owned()
                } else {
                    s.to_ascii_lowercase()
                }
            })
            .collect();
        if segments.iter().any(|s| s.contains('{') || s.contains('}')) {
            return Err(format!("{text:?} has an unbalanced '{{…}}' segment"));
        }
        Ok(Self {
            text: text.to_owned(),
            segments,
        })
    }

    /// Whether `path` (no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        let lowered = path.to_ascii_lowercase();
        let parts: Vec<&str> = lowered.split('/').filter(|s| !s.is_empty()).collect();
        match_segments(&self.segments, &parts)
    }
}

fn match_segments(pattern: &[String], parts: &[&str]) -> bool {
    match pattern.split_first() {
        None => parts.is_empty(),
        Some((first, rest)) if first == "**" => {
            (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..]))
        }
        Some((first, rest)) => match parts.split_first() {
            Some((part, others)) => glob(first, part) && match_segments(rest, others),
            None => false,
        },
    }
}

/// `*` matches any run of characters; everything else literally.
pub fn glob(pattern: &str, text: &str) -> bool {
    let pieces: Vec<&str> = pattern.split('*').collect();
    if pieces.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (pieces[0], pieces[pieces.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for piece in &pieces[1..pieces.len() - 1] {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    text.len() >= first.len() + last.len()
}

/// Rules that apply to requests of one method (or any) on paths matching a pattern.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Route {
    pub pattern: PathPattern,
    /// Upper-case method, or any when `None`.
    pub method: Option<String>,
    pub rules: MatchRules,
}

/// Every rule that applies within one cassette: a default and ordered route overrides.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct RuleSet {
    pub default: MatchRules,
    pub routes: Vec<Route>,
    /// Computed on first use; the rules never change after start-up.
    #[serde(skip)]
    cached_fingerprint: std::sync::OnceLock<u64>,
}

impl RuleSet {
    /// The first route that matches wins; otherwise the default.
    pub fn rules_for(&self, method: &str, path: &str) -> &MatchRules {
        self.routes
            .iter()
            .find(|route| {
                route
                    .method
                    .as_deref()
                    .is_none_or(|m| m.eq_ignore_ascii_case(method))
                    && route.pattern.matches(path)
            })
            .map_or(&self.default, |route| &route.rules)
    }

    /// Identifies everything that shapes match keys. The store keeps one index per
    /// fingerprint, so editing the rules re-indexes a cassette instead of breaking it.
    pub fn fingerprint(&self) -> u64 {
        *self.cached_fingerprint.get_or_init(|| {
            let text = serde_json::to_string(self).unwrap_or_default();
            let hash = blake3::hash(text.as_bytes());
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&hash.as_bytes()[..8]);
            u64::from_be_bytes(bytes)
        })
    }

    pub fn new(default: MatchRules, routes: Vec<Route>) -> Self {
        Self {
            default,
            routes,
            cached_fingerprint: std::sync::OnceLock::new(),
        }
    }

    /// The match key of a stored interaction under these rules.
    pub fn key_of(&self, interaction: &crate::record::Interaction) -> super::MatchKey {
        let request = &interaction.request;
        let rules = self.rules_for(&request.method, super::path_of(&request.uri));
        super::normalize_recorded(request, rules).key()
    }
}

/// Validates a JSON Pointer: empty (the whole document) or `/`-separated tokens.
pub fn validate_pointer(pointer: &str) -> Result<(), String> {
    if pointer.is_empty() || pointer.starts_with('/') {
        Ok(())
    } else {
        Err(format!(
            "{pointer:?} is not a JSON Pointer (it must start with '/')"
        ))
    }
}

/// Splits a pointer into unescaped reference tokens.
pub fn pointer_tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, path: &str, expected: bool) {
        let compiled = PathPattern::parse(pattern).expect("pattern");
        assert_eq!(compiled.matches(path), expected, "{pattern} vs {path}");
    }

    #[test]
    fn path_patterns() {
        let template = "/*/deviceManagement/deviceConfigurations/{id}/deviceStatuses/{id}";
        check(
            template,
            "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses/s",
            true,
        );
        check(
            template,
            "/beta//devicemanagement/deviceConfigurations/c/deviceStatuses/s",
            true,
        );
        check(
            template,
            "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses",
            false,
        );
        check("/v1.0/users/**", "/v1.0/users/a/b/c", true);
        check("/v1.0/users/**", "/v1.0/users", true);
        check("/v1.0/device*/x", "/v1.0/deviceManagement/x", true);
        check("/v1.0/device*/x", "/v1.0/users/x", false);
        check("/**/deviceStatuses/*", "/v1.0/a/b/deviceStatuses/s", true);
        assert!(PathPattern::parse("no-slash").is_err());
        assert!(PathPattern::parse("/a/{b").is_err());
    }

    #[test]
    fn first_matching_route_wins() {
        let ignore_body = MatchRules {
            body: BodyMatch::Ignore,
            ..MatchRules::default()
        };
        let set = RuleSet::new(
            MatchRules::default(),
            vec![Route {
                pattern: PathPattern::parse("/*/me").expect("pattern"),
                method: Some("POST".into()),
                rules: ignore_body.clone(),
            }],
        );
        assert_eq!(set.rules_for("post", "/v1.0/me"), &ignore_body);
        assert_eq!(set.rules_for("GET", "/v1.0/me"), &MatchRules::default());
        assert_ne!(set.fingerprint(), RuleSet::default().fingerprint());
    }
}
