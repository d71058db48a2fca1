//! Posting events to a collector over HTTP, as OpenLineage's HTTP transport does: one
//! event per POST, JSON, with the API key as a bearer token.

use std::time::Duration;

use crate::error::{Error, Result};
use crate::pipeline::Collector;

/// What became of one POST.
pub(super) enum Posted {
    Taken,
    /// The collector answered that it will not take this event (a 4xx other than 408
    /// or 429): trying it again cannot help.
    Refused(String),
    /// No answer, or one that may change: try again later.
    Unreachable(String),
}

/// POSTs `event` to `collector`, with `key` as a bearer token if there is one.
pub(super) async fn post(
    client: &reqwest::Client,
    collector: &Collector,
    key: Option<&str>,
    event: String,
) -> Posted {
    let mut request = (client.post(collector.url.clone()))
        .timeout(collector.timeout)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(event);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = match request.send().await {
        Ok(response) => response,
        // reqwest's error names the URL, never a header.
        Err(error) => return Posted::Unreachable(error.without_url().to_string()),
    };
    let status = response.status();
    if status.is_success() {
        return Posted::Taken;
    }
    let body = response.text().await.unwrap_or_default();
    let said = format!(
        "HTTP {status}: {}",
        body.chars().take(200).collect::<String>()
    );
    match status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429 {
        true => Posted::Refused(said),
        false => Posted::Unreachable(said),
    }
}

/// Sends `events` (JSON, one each) to `collector` in order, each tried a few times;
/// returns how many it sent. Stops at the first the collector does not take.
pub async fn send(collector: &Collector, events: &[String]) -> Result<usize> {
    const TRIES: u32 = 3;
    let client = reqwest::Client::new();
    let at = || format!("the OpenLineage collector at {}", collector.url);
    let key = match &collector.api_key {
        Some(key) => Some(
            key.read()
                .map_err(|message| Error::config("lineage.api_key_env", message))?,
        ),
        None => None,
    };
    for (sent, event) in events.iter().enumerate() {
        let mut tries = 0;
        loop {
            tries += 1;
            let why = match post(&client, collector, key.as_deref(), event.clone()).await {
                Posted::Taken => break,
                Posted::Refused(why) => {
                    return Err(Error::Data {
                        context: at(),
                        message: format!(
                            "it refused event {} of {}: {why}",
                            sent + 1,
                            events.len()
                        ),
                    })
                }
                Posted::Unreachable(why) => why,
            };
            if tries == TRIES {
                return Err(Error::execution(
                    at(),
                    format!(
                        "{sent} of {} events sent; then it did not answer: {why}",
                        events.len()
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(500) * tries).await;
        }
    }
    Ok(events.len())
}
