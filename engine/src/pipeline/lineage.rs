//! Where a pipeline's OpenLineage events go: the `[lineage]` section, with the standard
//! OpenLineage environment variables over it. Validation only; the events themselves are
//! [`crate::lineage`]'s.

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;
use url::Url;

use super::file::Locator;
use crate::error::{Error, Result};

/// The namespace of a pipeline's jobs when nothing names one.
pub const DEFAULT_NAMESPACE: &str = "backfill";

/// Where a collector takes events, below its URL, unless told otherwise (Marquez's).
const DEFAULT_ENDPOINT: &str = "api/v1/lineage";

/// How long one delivery to a collector may take before it is tried again.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a pipeline's OpenLineage events go.
#[derive(Debug, Clone, PartialEq)]
pub struct LineageSettings {
    /// Every event is off (`OPENLINEAGE_DISABLED`): none is written or sent.
    pub disabled: bool,
    /// The namespace of the pipeline's jobs, if the file, the environment or its project
    /// names one ([`LineageSettings::namespace`]).
    pub namespace: Option<String>,
    /// The events, as JSON lines, next to the run's history (on unless turned off), so no
    /// event is lost while no collector is up: `backfill lineage --send` sends them later.
    pub log: bool,
    /// Each event on the console (standard error), as it is emitted.
    pub console: bool,
    /// A collector that takes events over HTTP.
    pub http: Option<Collector>,
    /// Whether the file had a `[lineage]` section: a pipeline's own replaces its project's.
    pub(crate) written: bool,
}

/// A collector that takes events over HTTP (Marquez, DataHub, OpenMetadata, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct Collector {
    /// Where events are POSTed: the collector's URL joined with its endpoint.
    pub url: Url,
    /// Sent as `Authorization: Bearer`.
    pub api_key: Option<ApiKey>,
    pub timeout: Duration,
}

/// Where a collector's API key is: the environment variable that holds it, read only when
/// events are sent (so commands that send none need no key), never shown or stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKey {
    variable: String,
}

impl ApiKey {
    /// The key, read from its variable now; the error names the variable.
    pub fn read(&self) -> std::result::Result<String, String> {
        let key = std::env::var(&self.variable).ok().filter(|k| !k.is_empty());
        key.ok_or_else(|| {
            format!(
                "the collector's API key variable `{}` is not set",
                self.variable
            )
        })
    }
}

impl LineageSettings {
    /// The namespace of the pipeline's jobs: as named, else [`DEFAULT_NAMESPACE`].
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE)
    }
}

impl Default for LineageSettings {
    fn default() -> Self {
        LineageSettings {
            disabled: false,
            namespace: None,
            log: true,
            console: false,
            http: None,
            written: false,
        }
    }
}

/// The `[lineage]` section as written, in a pipeline or a project file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLineage {
    namespace: Option<Spanned<String>>,
    log: Option<bool>,
    console: Option<bool>,
    url: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    /// The environment variable that holds the collector's API key: the key itself never
    /// belongs in a file.
    api_key_env: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
}

/// The `[lineage]` section validated, then the environment's OpenLineage variables over
/// it, read through `env`.
pub(crate) fn settings(
    at: &Locator,
    raw: Option<Spanned<RawLineage>>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LineageSettings> {
    let mut settings = LineageSettings::default();
    if let Some(raw) = raw {
        let raw = raw.into_inner();
        settings.written = true;
        if let Some(namespace) = raw.namespace {
            let named = namespace_of(namespace.get_ref());
            settings.namespace = Some(named.map_err(|m| at.error(namespace.span(), m))?);
        }
        settings.log = raw.log.unwrap_or(true);
        settings.console = raw.console.unwrap_or(false);
        settings.http = collector(at, raw.url, raw.endpoint, raw.api_key_env, raw.timeout)?;
    }
    overridden(settings, env)
}

fn namespace_of(written: &str) -> std::result::Result<String, String> {
    match written.trim() {
        "" => Err("lineage.namespace is empty".to_string()),
        namespace => Ok(namespace.to_string()),
    }
}

/// The collector the file names, if it names one.
fn collector(
    at: &Locator,
    url: Option<Spanned<String>>,
    endpoint: Option<Spanned<String>>,
    api_key_env: Option<Spanned<String>>,
    timeout: Option<Spanned<String>>,
) -> Result<Option<Collector>> {
    let Some(url) = url else {
        let stray = [&endpoint, &api_key_env, &timeout]
            .into_iter()
            .flatten()
            .next();
        return match stray {
            Some(stray) => Err(at.error(
                stray.span(),
                "lineage.endpoint, api_key_env and timeout are for a collector: give its lineage.url too",
            )),
            None => Ok(None),
        };
    };
    let endpoint = endpoint.as_ref().map(|e| e.get_ref().as_str());
    let posted = post_url(url.get_ref(), endpoint).map_err(|m| at.error(url.span(), m))?;
    let api_key = api_key_env.map(|variable| ApiKey {
        variable: variable.into_inner(),
    });
    let timeout = match timeout {
        None => DEFAULT_TIMEOUT,
        Some(written) => humantime::parse_duration(written.get_ref())
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| {
                at.error(
                    written.span(),
                    format!(
                        "lineage.timeout: `{}` is not a duration such as \"5s\"",
                        written.get_ref()
                    ),
                )
            })?,
    };
    Ok(Some(Collector {
        url: posted,
        api_key,
        timeout,
    }))
}

/// Where events are POSTed: `url` (http or https) joined with `endpoint`.
fn post_url(url: &str, endpoint: Option<&str>) -> std::result::Result<Url, String> {
    let mut base = Url::parse(url).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(format!("`{url}` is not an http or https URL"));
    }
    if !base.path().ends_with('/') {
        base.set_path(&format!("{}/", base.path()));
    }
    let endpoint = endpoint.unwrap_or(DEFAULT_ENDPOINT).trim_start_matches('/');
    base.join(endpoint)
        .map_err(|e| format!("`{endpoint}` is not an endpoint path: {e}"))
}

/// `settings` with the standard OpenLineage environment variables over them: they
/// override the file, as every OpenLineage client lets them.
fn overridden(
    mut settings: LineageSettings,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<LineageSettings> {
    let var = |name: &str| env(name).filter(|value| !value.trim().is_empty());
    let invalid = |name: &str, message: String| Error::config(format!("${name}"), message);
    if let Some(disabled) = var("OPENLINEAGE_DISABLED") {
        settings.disabled = match disabled.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" => true,
            "false" | "0" | "no" => false,
            other => {
                return Err(invalid(
                    "OPENLINEAGE_DISABLED",
                    format!("`{other}` is not true or false"),
                ))
            }
        };
    }
    if let Some(namespace) = var("OPENLINEAGE_NAMESPACE") {
        settings.namespace = Some(namespace.trim().to_string());
    }
    let transport = var("OPENLINEAGE__TRANSPORT__TYPE").map(|t| t.trim().to_ascii_lowercase());
    match transport.as_deref() {
        None | Some("http") => settings.http = over_collector(settings.http.take(), &var)?,
        Some("console") => {
            settings.console = true;
            settings.http = None;
        }
        Some("noop") => {
            settings.console = false;
            settings.http = None;
        }
        Some(other) => {
            return Err(invalid(
                "OPENLINEAGE__TRANSPORT__TYPE",
                format!("`{other}` is not one of http, console, noop"),
            ))
        }
    }
    Ok(settings)
}

/// The collector the environment names, over the file's `collector`: the transport's
/// own variables first, then the short ones; a key alone keys the file's collector.
fn over_collector(
    collector: Option<Collector>,
    var: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<Collector>> {
    const NAMED: [[&str; 3]; 2] = [
        [
            "OPENLINEAGE__TRANSPORT__URL",
            "OPENLINEAGE__TRANSPORT__ENDPOINT",
            "OPENLINEAGE__TRANSPORT__AUTH__API_KEY",
        ],
        [
            "OPENLINEAGE_URL",
            "OPENLINEAGE_ENDPOINT",
            "OPENLINEAGE_API_KEY",
        ],
    ];
    let key = || {
        let variable = NAMED.iter().find(|[_, _, key]| var(key).is_some());
        variable.map(|[_, _, key]| ApiKey {
            variable: key.to_string(),
        })
    };
    let Some([url, endpoint, _]) = NAMED.iter().find(|[url, ..]| var(url).is_some()) else {
        return Ok(collector.map(|file| Collector {
            api_key: key().or(file.api_key),
            ..file
        }));
    };
    let written = var(url).unwrap_or_default();
    let posted = post_url(written.trim(), var(endpoint).as_deref())
        .map_err(|message| Error::config(format!("${url}"), message))?;
    Ok(Some(Collector {
        url: posted,
        api_key: key().or_else(|| collector.as_ref().and_then(|c| c.api_key.clone())),
        timeout: collector.map_or(DEFAULT_TIMEOUT, |c| c.timeout),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::path::Path;

    fn parsed(section: &str, vars: &[(&str, &str)]) -> Result<LineageSettings> {
        #[derive(Deserialize)]
        struct File {
            lineage: Option<Spanned<RawLineage>>,
        }
        let at = Locator {
            path: Path::new("p.toml"),
            text: section,
        };
        let file: File = at.parse()?;
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        settings(&at, file.lineage, &|name| vars.get(name).cloned())
    }

    #[test]
    fn without_a_section_events_go_to_the_log_only() {
        let settings = parsed("", &[]).unwrap();
        assert_eq!(settings, LineageSettings::default());
        assert!(settings.log && !settings.console && settings.http.is_none());
    }

    #[test]
    fn a_collector_takes_its_endpoint_and_its_key_from_the_variable_it_names() {
        let text = "[lineage]\nnamespace = \"shop\"\nurl = \"http://marquez:5000\"\napi_key_env = \"BACKFILL_TEST_MARQUEZ_KEY\"\ntimeout = \"2s\"\n";
        // The key is read when events are sent, not when the file is.
        let settings = parsed(text, &[]).unwrap();
        let http = settings.http.clone().unwrap();
        assert_eq!(http.url.as_str(), "http://marquez:5000/api/v1/lineage");
        let key = http.api_key.unwrap();
        let unset = key.read().unwrap_err();
        assert!(
            unset.contains("`BACKFILL_TEST_MARQUEZ_KEY` is not set"),
            "{unset}"
        );
        std::env::set_var("BACKFILL_TEST_MARQUEZ_KEY", "k-123");
        assert_eq!(key.read().unwrap(), "k-123");
        assert!(!format!("{settings:?}").contains("k-123"));
        assert_eq!(http.timeout, Duration::from_secs(2));
        assert_eq!(settings.namespace(), "shop");
    }

    #[test]
    fn the_standard_variables_override_the_file() {
        let text = "[lineage]\nnamespace = \"shop\"\nurl = \"http://marquez:5000\"\n";
        let vars = [
            ("OPENLINEAGE_URL", "https://collector.example/base"),
            ("OPENLINEAGE_ENDPOINT", "events"),
            ("OPENLINEAGE_API_KEY", "secret"),
            ("OPENLINEAGE_NAMESPACE", "prod"),
        ];
        let settings = parsed(text, &vars).unwrap();
        let http = settings.http.clone().unwrap();
        assert_eq!(http.url.as_str(), "https://collector.example/base/events");
        assert_eq!(http.api_key.unwrap().variable, "OPENLINEAGE_API_KEY");
        assert_eq!(settings.namespace(), "prod");

        let console = parsed(text, &[("OPENLINEAGE__TRANSPORT__TYPE", "console")]).unwrap();
        assert!(console.console && console.http.is_none());
        let off = parsed(text, &[("OPENLINEAGE_DISABLED", "true")]).unwrap();
        assert!(off.disabled);
    }

    #[test]
    fn bad_settings_name_the_key_or_the_variable() {
        let bad = |text: &str, vars: &[(&str, &str)]| parsed(text, vars).unwrap_err().to_string();
        assert!(bad("[lineage]\nurl = \"ftp://x\"\n", &[]).contains("p.toml:2"));
        assert!(bad("[lineage]\ntimeout = \"5s\"\n", &[]).contains("give its lineage.url too"));
        assert!(bad("[lineage]\nsink = 1\n", &[]).contains("unknown field `sink`"));
        let variable = bad("", &[("OPENLINEAGE__TRANSPORT__TYPE", "kafka")]);
        assert!(
            variable.contains("$OPENLINEAGE__TRANSPORT__TYPE"),
            "{variable}"
        );
        assert!(bad("", &[("OPENLINEAGE_URL", "not a url")]).contains("$OPENLINEAGE_URL"));
    }
}
