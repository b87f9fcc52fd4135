//! The `[graph]` and `[chaos]` sections: how replayed answers are made to look live, and
//! the seeded fault, rate-limit and latency layer.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;
use crate::matching::rules::PathPattern;

/// Built-in defaults of the two sections, mirrored by `config.toml`.
pub mod defaults {
    pub const REGENERATE_REQUEST_ID: bool = false;
    pub const REGENERATE_DATE: bool = true;
    pub const REWRITE_LINKS: bool = true;
    pub const LINT: bool = true;
    pub const CHAOS_ENABLED: bool = false;
    pub const CHAOS_SEED: u64 = 0;
    pub const CHAOS_RATE: f64 = 0.0;
    pub const CHAOS_STATUSES: [u16; 6] = [429, 500, 502, 503, 504, 507];
    pub const CHAOS_RETRY_AFTER_SECONDS: u64 = 5;
    pub const CHAOS_RATE_LIMIT: u64 = 0;
    pub const CHAOS_RATE_LIMIT_WINDOW: &str = "60s";
    pub const CHAOS_LATENCY_MS: u64 = 0;
    pub const CHAOS_LATENCY_FACTOR: f64 = 0.0;
}

/// Statuses the chaos layer knows how to shape as Graph does.
const INJECTABLE: [u16; 8] = [429, 500, 502, 503, 504, 507, 408, 409];

/// Resolved `[graph]`.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphConfig {
    /// Replayed answers get a fresh `request-id` (Graph sends a new one on every call).
    pub regenerate_request_id: bool,
    /// Replayed answers get the current `Date`.
    pub regenerate_date: bool,
    /// In reverse mode, Graph URLs in answers (`@odata.nextLink`, `@odata.deltaLink`,
    /// `Location`) point at the proxy, so a client following them stays on the proxy.
    pub rewrite_links: bool,
    /// deviceStatuses bodies are checked against the schema in record and auto (warn only).
    pub lint: bool,
}

impl Default for GraphConfig {
    fn default() -> Self {
        Self {
            regenerate_request_id: defaults::REGENERATE_REQUEST_ID,
            regenerate_date: defaults::REGENERATE_DATE,
            rewrite_links: defaults::REWRITE_LINKS,
            lint: defaults::LINT,
        }
    }
}

/// Resolved `[chaos]`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosConfig {
    pub enabled: bool,
    /// The same seed and the same request sequence give the same faults.
    pub seed: u64,
    /// Share of requests answered with an injected error, 0.0 to 1.0.
    pub rate: f64,
    /// Statuses to pick from, uniformly.
    pub statuses: Vec<u16>,
    /// `Retry-After` of injected 429 and 503 answers.
    pub retry_after: Duration,
    /// Requests allowed per window before 429; 0 turns the rate limit off.
    pub rate_limit: u64,
    pub rate_limit_window: Duration,
    /// Added to every answer.
    pub latency: Duration,
    /// Replayed answers are also delayed by their recorded upstream latency times this.
    pub latency_factor: f64,
    /// Per-route rate and statuses; the first matching route wins.
    pub routes: Vec<ChaosRoute>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            enabled: defaults::CHAOS_ENABLED,
            seed: defaults::CHAOS_SEED,
            rate: defaults::CHAOS_RATE,
            statuses: defaults::CHAOS_STATUSES.to_vec(),
            retry_after: Duration::from_secs(defaults::CHAOS_RETRY_AFTER_SECONDS),
            rate_limit: defaults::CHAOS_RATE_LIMIT,
            rate_limit_window: humantime::parse_duration(defaults::CHAOS_RATE_LIMIT_WINDOW)
                .unwrap_or(Duration::from_secs(60)),
            latency: Duration::from_millis(defaults::CHAOS_LATENCY_MS),
            latency_factor: defaults::CHAOS_LATENCY_FACTOR,
            routes: Vec::new(),
        }
    }
}

/// A per-route override of the fault rate and statuses.
#[derive(Debug, Clone, PartialEq)]
pub struct ChaosRoute {
    pub pattern: PathPattern,
    /// Upper-case method, or any.
    pub method: Option<String>,
    pub rate: f64,
    pub statuses: Vec<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGraph {
    pub regenerate_request_id: Option<bool>,
    pub regenerate_date: Option<bool>,
    pub rewrite_links: Option<bool>,
    pub lint: Option<bool>,
}

impl FileGraph {
    pub fn resolve(&self) -> GraphConfig {
        let base = GraphConfig::default();
        GraphConfig {
            regenerate_request_id: self
                .regenerate_request_id
                .unwrap_or(base.regenerate_request_id),
            regenerate_date: self.regenerate_date.unwrap_or(base.regenerate_date),
            rewrite_links: self.rewrite_links.unwrap_or(base.rewrite_links),
            lint: self.lint.unwrap_or(base.lint),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChaos {
    pub enabled: Option<bool>,
    pub seed: Option<u64>,
    pub rate: Option<f64>,
    pub statuses: Option<Vec<u16>>,
    /// Seconds.
    pub retry_after: Option<u64>,
    pub rate_limit: Option<u64>,
    pub rate_limit_window: Option<String>,
    pub latency_ms: Option<u64>,
    pub latency_factor: Option<f64>,
    #[serde(default)]
    pub routes: Vec<FileChaosRoute>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChaosRoute {
    pub route: String,
    pub route_method: Option<String>,
    /// Defaults to the section's rate.
    pub rate: Option<f64>,
    /// Defaults to the section's statuses.
    pub statuses: Option<Vec<u16>>,
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

fn check_rate(key: &str, rate: f64) -> Result<f64, ConfigError> {
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(invalid(key, format!("{rate} is not between 0.0 and 1.0")))
    }
}

fn check_statuses(key: &str, statuses: &[u16]) -> Result<Vec<u16>, ConfigError> {
    if statuses.is_empty() {
        return Err(invalid(key, "needs at least one status"));
    }
    for status in statuses {
        if !INJECTABLE.contains(status) {
            return Err(invalid(
                key,
                format!(
                    "{status} is not one of {}",
                    INJECTABLE.map(|s| s.to_string()).join(", ")
                ),
            ));
        }
    }
    Ok(statuses.to_vec())
}

impl FileChaos {
    pub fn resolve(&self) -> Result<ChaosConfig, ConfigError> {
        let base = ChaosConfig::default();
        let rate = check_rate("chaos.rate", self.rate.unwrap_or(base.rate))?;
        let statuses = match &self.statuses {
            Some(statuses) => check_statuses("chaos.statuses", statuses)?,
            None => base.statuses,
        };
        let rate_limit_window = match &self.rate_limit_window {
            None => base.rate_limit_window,
            Some(text) => {
                let window = humantime::parse_duration(text).map_err(|e| {
                    invalid(
                        "chaos.rate_limit_window",
                        format!("{text:?} is not a duration like \"60s\": {e}"),
                    )
                })?;
                if window.is_zero() {
                    return Err(invalid(
                        "chaos.rate_limit_window",
                        "must be longer than zero",
                    ));
                }
                window
            }
        };
        let latency_factor = self.latency_factor.unwrap_or(base.latency_factor);
        if !(0.0..=1000.0).contains(&latency_factor) {
            return Err(invalid(
                "chaos.latency_factor",
                format!("{latency_factor} is not between 0 and 1000"),
            ));
        }
        let mut routes = Vec::with_capacity(self.routes.len());
        for (i, route) in self.routes.iter().enumerate() {
            let at = |name: &str| format!("chaos.routes[{i}].{name}");
            routes.push(ChaosRoute {
                pattern: PathPattern::parse(&route.route).map_err(|m| invalid(&at("route"), m))?,
                method: route.route_method.as_ref().map(|m| m.to_ascii_uppercase()),
                rate: check_rate(&at("rate"), route.rate.unwrap_or(rate))?,
                statuses: match &route.statuses {
                    Some(list) => check_statuses(&at("statuses"), list)?,
                    None => statuses.clone(),
                },
            });
        }
        Ok(ChaosConfig {
            enabled: self.enabled.unwrap_or(base.enabled),
            seed: self.seed.unwrap_or(base.seed),
            rate,
            statuses,
            retry_after: self
                .retry_after
                .map_or(base.retry_after, Duration::from_secs),
            rate_limit: self.rate_limit.unwrap_or(base.rate_limit),
            rate_limit_window,
            latency: self.latency_ms.map_or(base.latency, Duration::from_millis),
            latency_factor,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chaos(text: &str) -> Result<ChaosConfig, ConfigError> {
        let file: FileChaos = toml::from_str(text).map_err(|e| invalid("toml", e.to_string()))?;
        file.resolve()
    }

    #[test]
    fn chaos_keys_are_checked_and_named() {
        let check = |text: &str, needle: &str| {
            let error = chaos(text).expect_err(text).to_string();
            assert!(error.contains(needle), "{error:?} should name {needle:?}");
        };
        check("rate = 1.5", "chaos.rate");
        check("statuses = [418]", "chaos.statuses");
        check("statuses = []", "chaos.statuses");
        check("rate_limit_window = \"soon\"", "chaos.rate_limit_window");
        check("[[routes]]\nroute = \"x\"", "chaos.routes[0].route");
        check(
            "[[routes]]\nroute = \"/x\"\nrate = -1.0",
            "chaos.routes[0].rate",
        );
        let routed =
            chaos("rate = 0.2\n[[routes]]\nroute = \"/v1.0/**\"\nstatuses = [503]").expect("valid");
        assert_eq!(routed.routes[0].rate, 0.2);
        assert_eq!(routed.routes[0].statuses, vec![503]);
    }
}
