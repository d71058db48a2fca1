//! OpenLineage's run event (spec 2-0-2) and the facets backfill fills, as JSON. Only
//! shapes live here: which event says what is [`super::emit`]'s.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// Who produced an event: this engine, at this version.
pub const PRODUCER: &str = concat!("urn:backfill:", env!("CARGO_PKG_VERSION"));

const EVENT_SCHEMA: &str = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent";

/// A run's transition: `START` and then one of the others.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EventType {
    Start,
    Complete,
    Fail,
    Abort,
}

/// One OpenLineage run event.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub event_type: EventType,
    #[serde(serialize_with = "millis")]
    pub event_time: DateTime<Utc>,
    pub run: Run,
    pub job: Job,
    pub inputs: Vec<Dataset>,
    pub outputs: Vec<Dataset>,
    pub producer: &'static str,
    #[serde(rename = "schemaURL")]
    pub schema_url: &'static str,
}

impl Event {
    pub fn new(event_type: EventType, event_time: DateTime<Utc>, run: Run, job: Job) -> Event {
        Event {
            event_type,
            event_time,
            run,
            job,
            inputs: Vec::new(),
            outputs: Vec::new(),
            producer: PRODUCER,
            schema_url: EVENT_SCHEMA,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub run_id: Uuid,
    pub facets: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobName {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Job {
    #[serde(flatten)]
    pub name: JobName,
    pub facets: Map<String, Value>,
}

/// A dataset an event reads or writes: a table, named as OpenLineage's naming
/// conventions name its location.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dataset {
    pub namespace: String,
    pub name: String,
    pub facets: Map<String, Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub input_facets: Map<String, Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub output_facets: Map<String, Value>,
}

impl Dataset {
    /// The dataset at `url`: `file` and its path for a local table, `s3://bucket` and the
    /// key for a bucket's (OpenLineage's naming for files and object stores).
    pub fn at(url: &url::Url) -> Dataset {
        let path = url.path().trim_end_matches('/');
        let (namespace, name) = match url.scheme() {
            "file" => ("file".to_string(), path.to_string()),
            scheme => (
                format!("{scheme}://{}", url.host_str().unwrap_or_default()),
                path.trim_start_matches('/').to_string(),
            ),
        };
        Dataset::new(namespace, name)
    }

    /// The same dataset, without its facets.
    pub fn named(&self) -> Dataset {
        Dataset::new(self.namespace.clone(), self.name.clone())
    }

    fn new(namespace: String, name: String) -> Dataset {
        Dataset {
            namespace,
            name,
            facets: Map::new(),
            input_facets: Map::new(),
            output_facets: Map::new(),
        }
    }
}

/// A facet: `fields` with who produced them and the schema they follow, named by the
/// spec's facet file and definition (`1-0-1/NominalTimeRunFacet`).
pub fn facet(schema: &str, fields: Value) -> Value {
    let (file, definition) = schema.split_once('/').expect("version/definition");
    let mut facet = json!({
        "_producer": PRODUCER,
        "_schemaURL": format!("https://openlineage.io/spec/facets/{file}/{definition}.json#/$defs/{definition}"),
    });
    if let (Some(facet), Value::Object(fields)) = (facet.as_object_mut(), fields) {
        facet.extend(fields);
    }
    facet
}

/// The id of a run: a UUID of version 7 whose time is `at` (when the backfill run
/// started) and whose other bits hash `parts`. The same parts always give the same id,
/// so an event sent again lands on the same run in a collector.
pub fn run_id(at: DateTime<Utc>, parts: &[&str]) -> Uuid {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let mut bits = [0u8; 10];
    bits.copy_from_slice(&digest[..10]);
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    uuid::Builder::from_unix_timestamp_millis(millis, &bits).into_uuid()
}

/// A time as OpenLineage's examples write it: UTC, milliseconds, `Z`.
pub fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn millis<S: serde::Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time(*at))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_version_7_the_same_for_the_same_parts() {
        let at = "2024-06-01T00:00:00Z".parse().unwrap();
        let id = run_id(at, &["run", "daily", "2024-01-01", "1"]);
        assert_eq!(id.get_version_num(), 7);
        assert_eq!(id, run_id(at, &["run", "daily", "2024-01-01", "1"]));
        assert_ne!(id, run_id(at, &["run", "daily", "2024-01-01", "2"]));
        // Parts are separated: ("ab", "c") is not ("a", "bc").
        assert_ne!(run_id(at, &["ab", "c"]), run_id(at, &["a", "bc"]));
    }

    #[test]
    fn datasets_are_named_by_their_location() {
        let local = Dataset::at(&"file:///data/warehouse/daily/".parse().unwrap());
        assert_eq!(
            (local.namespace.as_str(), local.name.as_str()),
            ("file", "/data/warehouse/daily")
        );
        let bucket = Dataset::at(&"s3://lake/tables/daily/".parse().unwrap());
        assert_eq!(
            (bucket.namespace.as_str(), bucket.name.as_str()),
            ("s3://lake", "tables/daily")
        );
    }
}
