//! The `[match]` and `[sanitize]` sections: file form and resolution into match rule
//! sets (per cassette, per route) and sanitizer settings.

use std::collections::HashMap;

use serde::Deserialize;

use super::ConfigError;
use crate::matching::rules::{validate_pointer, PathPattern, Route};
use crate::matching::{BodyMatch, Exhausted, MatchRules, ReplayOrder, RuleSet};

/// One rules table. The same shape serves `[match]`, `[[match.routes]]`,
/// `[match.cassettes.NAME]` and their routes; keys that make no sense at a level
/// (a route's `path` at the top) are rejected with the key named.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRules {
    pub method: Option<bool>,
    pub path: Option<bool>,
    pub query: Option<bool>,
    pub body: Option<String>,
    pub headers: Option<Vec<String>>,
    pub ignore_query: Option<Vec<String>>,
    pub path_case_insensitive: Option<bool>,
    pub ignore_pointers: Option<Vec<String>>,
    pub ignore_array_order: Option<bool>,
    pub order: Option<String>,
    pub exhausted: Option<String>,
    /// Routes only: the path template or glob.
    pub route: Option<String>,
    /// Routes only: the HTTP method (any when absent).
    pub route_method: Option<String>,
    /// Top level and cassettes only.
    #[serde(default)]
    pub routes: Vec<FileRules>,
    /// Top level only.
    #[serde(default)]
    pub cassettes: HashMap<String, FileRules>,
}

/// Match rules for every cassette.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MatchingConfig {
    pub global: RuleSet,
    pub cassettes: HashMap<String, RuleSet>,
}

impl MatchingConfig {
    /// The rule set of `cassette` (its own overrides, else the global one).
    pub fn for_cassette(&self, cassette: &str) -> &RuleSet {
        self.cassettes.get(cassette).unwrap_or(&self.global)
    }
}

fn invalid(key: String, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl FileRules {
    /// `base` with this table's keys applied on top.
    fn apply(&self, base: &MatchRules, at: &str) -> Result<MatchRules, ConfigError> {
        let mut rules = base.clone();
        let key = |name: &str| format!("{at}.{name}");
        if let Some(v) = self.method {
            rules.method = v;
        }
        if let Some(v) = self.path {
            rules.path = v;
        }
        if let Some(v) = self.query {
            rules.query = v;
        }
        if let Some(v) = &self.body {
            rules.body = match v.as_str() {
                "json" => BodyMatch::Json,
                "exact" => BodyMatch::Exact,
                "ignore" => BodyMatch::Ignore,
                other => {
                    return Err(invalid(
                        key("body"),
                        format!("{other:?} is not one of json, exact, ignore"),
                    ))
                }
            };
        }
        if let Some(v) = &self.headers {
            rules.headers = v.iter().map(|h| h.to_ascii_lowercase()).collect();
        }
        if let Some(v) = &self.ignore_query {
            rules.ignore_query = v.clone();
        }
        if let Some(v) = self.path_case_insensitive {
            rules.path_case_insensitive = v;
        }
        if let Some(v) = &self.ignore_pointers {
            for pointer in v {
                validate_pointer(pointer).map_err(|m| invalid(key("ignore_pointers"), m))?;
            }
            rules.ignore_pointers = v.clone();
        }
        if let Some(v) = self.ignore_array_order {
            rules.ignore_array_order = v;
        }
        if let Some(v) = &self.order {
            rules.order = match v.as_str() {
                "sequential" => ReplayOrder::Sequential,
                "first" => ReplayOrder::First,
                other => {
                    return Err(invalid(
                        key("order"),
                        format!("{other:?} is not one of sequential, first"),
                    ))
                }
            };
        }
        if let Some(v) = &self.exhausted {
            rules.exhausted = match v.as_str() {
                "repeat_last" => Exhausted::RepeatLast,
                "cycle" => Exhausted::Cycle,
                "miss" => Exhausted::Miss,
                "forward" => Exhausted::Forward,
                other => {
                    return Err(invalid(
                        key("exhausted"),
                        format!("{other:?} is not one of repeat_last, cycle, miss, forward"),
                    ))
                }
            };
        }
        Ok(rules)
    }

    fn route(&self, base: &MatchRules, at: &str) -> Result<Route, ConfigError> {
        if !self.routes.is_empty() || !self.cassettes.is_empty() {
            return Err(invalid(
                at.to_owned(),
                "a route cannot hold routes or cassettes",
            ));
        }
        let text = self.route.as_deref().ok_or_else(|| {
            invalid(
                format!("{at}.route"),
                "every route needs a path template or glob",
            )
        })?;
        let pattern = PathPattern::parse(text).map_err(|m| invalid(format!("{at}.route"), m))?;
        Ok(Route {
            pattern,
            method: self.route_method.as_ref().map(|m| m.to_ascii_uppercase()),
            rules: self.apply(base, at)?,
        })
    }

    /// Resolves the whole `[match]` section.
    pub fn resolve(&self) -> Result<MatchingConfig, ConfigError> {
        if self.route.is_some() || self.route_method.is_some() {
            return Err(invalid(
                "match.route".into(),
                "`route` belongs in a [[match.routes]] entry",
            ));
        }
        let default = self.apply(&MatchRules::default(), "match")?;
        let global_routes = |base: &MatchRules| -> Result<Vec<Route>, ConfigError> {
            self.routes
                .iter()
                .enumerate()
                .map(|(i, r)| r.route(base, &format!("match.routes[{i}]")))
                .collect()
        };
        let global = RuleSet::new(default.clone(), global_routes(&default)?);
        let mut cassettes = HashMap::new();
        for (name, table) in &self.cassettes {
            let at = format!("match.cassettes.{name}");
            super::validate_cassette_name(&at, name)?;
            if !table.cassettes.is_empty() || table.route.is_some() {
                return Err(invalid(at, "a cassette table holds rules and routes only"));
            }
            let cassette_default = table.apply(&default, &at)?;
            let mut routes: Vec<Route> = table
                .routes
                .iter()
                .enumerate()
                .map(|(i, r)| r.route(&cassette_default, &format!("{at}.routes[{i}]")))
                .collect::<Result<_, _>>()?;
            routes.extend(global_routes(&cassette_default)?);
            cassettes.insert(name.clone(), RuleSet::new(cassette_default, routes));
        }
        Ok(MatchingConfig { global, cassettes })
    }
}

/// What the leak guard does when a value that looks like a secret survived sanitizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeakGuard {
    /// Do not store the interaction; answer the client normally; log the field.
    Refuse,
    /// Store it and log the field.
    Warn,
    Off,
}

/// A regex replacement applied before storing and before matching.
#[derive(Debug, Clone)]
pub struct Replacement {
    pub pattern: regex::Regex,
    pub replacement: String,
    pub path: bool,
    pub query: bool,
    pub body: bool,
}

/// Resolved `[sanitize]`.
#[derive(Debug, Clone)]
pub struct SanitizeConfig {
    pub headers: Vec<String>,
    pub json_pointers: Vec<String>,
    pub replacements: Vec<Replacement>,
    pub leak_guard: LeakGuard,
}

impl Default for SanitizeConfig {
    fn default() -> Self {
        Self {
            headers: Vec::new(),
            json_pointers: Vec::new(),
            replacements: Vec::new(),
            leak_guard: LeakGuard::Refuse,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSanitize {
    pub headers: Option<Vec<String>>,
    pub json_pointers: Option<Vec<String>>,
    pub leak_guard: Option<String>,
    #[serde(default)]
    pub replace: Vec<FileReplacement>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileReplacement {
    pub pattern: String,
    pub replacement: String,
    /// Any of `path`, `query`, `body`; all three when absent.
    pub targets: Option<Vec<String>>,
}

impl FileSanitize {
    pub fn resolve(&self) -> Result<SanitizeConfig, ConfigError> {
        let mut config = SanitizeConfig {
            headers: self.headers.clone().unwrap_or_default(),
            ..SanitizeConfig::default()
        };
        if let Some(pointers) = &self.json_pointers {
            for pointer in pointers {
                validate_pointer(pointer)
                    .map_err(|m| invalid("sanitize.json_pointers".into(), m))?;
            }
            config.json_pointers = pointers.clone();
        }
        if let Some(guard) = &self.leak_guard {
            config.leak_guard = match guard.as_str() {
                "refuse" => LeakGuard::Refuse,
                "warn" => LeakGuard::Warn,
                "off" => LeakGuard::Off,
                other => {
                    return Err(invalid(
                        "sanitize.leak_guard".into(),
                        format!("{other:?} is not one of refuse, warn, off"),
                    ))
                }
            };
        }
        for (i, entry) in self.replace.iter().enumerate() {
            let at = format!("sanitize.replace[{i}]");
            let pattern = regex::Regex::new(&entry.pattern)
                .map_err(|e| invalid(format!("{at}.pattern"), e.to_string()))?;
            let targets = entry
                .targets
                .clone()
                .unwrap_or_else(|| vec!["path".into(), "query".into(), "body".into()]);
            let mut replacement = Replacement {
                pattern,
                replacement: entry.replacement.clone(),
                path: false,
                query: false,
                body: false,
            };
            for target in &targets {
                match target.as_str() {
                    "path" => replacement.path = true,
                    "query" => replacement.query = true,
                    "body" => replacement.body = true,
                    other => {
                        return Err(invalid(
                            format!("{at}.targets"),
                            format!("{other:?} is not one of path, query, body"),
                        ))
                    }
                }
            }
            config.replacements.push(replacement);
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<MatchingConfig, ConfigError> {
        let rules: FileRules =
            toml::from_str(text).map_err(|e| invalid("toml".into(), e.to_string()))?;
        rules.resolve()
    }

    #[test]
    fn cassette_and_route_overrides_layer_in_order() {
        let config = parse(
            r#"
            ignore_query = ["api-version"]
            [[routes]]
            route = "/*/deviceManagement/deviceConfigurations/{id}/deviceStatuses/{id}"
            route_method = "patch"
            ignore_pointers = ["/lastReportedDateTime"]
            [cassettes.loose]
            body = "ignore"
            exhausted = "cycle"
            "#,
        )
        .expect("valid");
        let path = "/v1.0/deviceManagement/deviceConfigurations/c/deviceStatuses/s";
        let global = config.for_cassette("anything").rules_for("PATCH", path);
        assert_eq!(global.ignore_pointers, vec!["/lastReportedDateTime"]);
        assert_eq!(global.ignore_query, vec!["api-version"]);
        assert_eq!(global.body, BodyMatch::Json);
        let loose = config.for_cassette("loose");
        assert_eq!(loose.rules_for("GET", "/v1.0/me").body, BodyMatch::Ignore);
        let loose_route = loose.rules_for("PATCH", path);
        assert_eq!(loose_route.body, BodyMatch::Ignore);
        assert_eq!(loose_route.exhausted, Exhausted::Cycle);
        assert_eq!(loose_route.ignore_pointers, vec!["/lastReportedDateTime"]);
    }

    #[test]
    fn bad_values_name_their_key() {
        let check = |text: &str, needle: &str| {
            let error = parse(text).expect_err(text).to_string();
            assert!(error.contains(needle), "{error:?} should name {needle:?}");
        };
        check("body = \"fuzzy\"", "match.body");
        check("exhausted = \"never\"", "match.exhausted");
        check("[[routes]]\nbody = \"exact\"", "match.routes[0].route");
        check("[[routes]]\nroute = \"nope\"", "match.routes[0].route");
        check("ignore_pointers = [\"status\"]", "match.ignore_pointers");
        check(
            "[cassettes.\"a/b\"]\nbody = \"exact\"",
            "match.cassettes.a/b",
        );
        check("route = \"/x\"", "match.route");
    }
}
