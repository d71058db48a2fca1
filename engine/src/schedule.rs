//! When a schedule ticks ([`Cadence`]): every fixed interval, or on a cron expression
//! read in UTC. Pure: the instant is the caller's, so a test can set it.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::error::{Error, Result, Setting};

/// How often a schedule ticks.
#[derive(Debug, Clone)]
pub enum Cadence {
    /// Every interval, from the start of the tick before.
    Every(Duration),
    /// On a cron expression (`5 * * * *`, `@hourly`), in UTC.
    Cron(Box<croner::Cron>),
}

impl Cadence {
    /// Every `interval`, which must be more than nothing.
    pub fn every(interval: Duration) -> Result<Cadence> {
        if interval.is_zero() {
            return Err(Error::setting(&[Setting::Every], "must be longer than 0s"));
        }
        Ok(Cadence::Every(interval))
    }

    /// On the cron expression `text`.
    pub fn cron(text: &str) -> Result<Cadence> {
        let parsed = text.parse::<croner::Cron>().map_err(|e| {
            Error::setting(
                &[Setting::Cron],
                format!(
                    "`{text}` is not a cron expression such as \"5 * * * *\" or \"@hourly\": {e}"
                ),
            )
        })?;
        Ok(Cadence::Cron(Box::new(parsed)))
    }

    /// The first tick after a tick at `tick`.
    pub fn next_after(&self, tick: DateTime<Utc>) -> Result<DateTime<Utc>> {
        match self {
            Cadence::Every(interval) => {
                let interval =
                    chrono::Duration::from_std(*interval).unwrap_or(chrono::Duration::MAX);
                Ok(tick
                    .checked_add_signed(interval)
                    .unwrap_or(DateTime::<Utc>::MAX_UTC))
            }
            Cadence::Cron(cron) => cron.find_next_occurrence(&tick, false).map_err(|e| {
                Error::setting(&[Setting::Cron], format!("has no tick after {tick}: {e}"))
            }),
        }
    }

    /// `every 1h`, `on 5 * * * * (UTC)`.
    pub fn describe(&self) -> String {
        match self {
            Cadence::Every(interval) => format!("every {}", humantime::format_duration(*interval)),
            Cadence::Cron(cron) => format!("on {} (UTC)", cron.pattern),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        text.parse().unwrap()
    }

    #[test]
    fn a_cadence_ticks_after_its_interval_or_on_its_cron_expression() {
        let hourly = Cadence::every(Duration::from_secs(3600)).unwrap();
        let tick = at("2024-01-01T10:17:00Z");
        assert_eq!(hourly.next_after(tick).unwrap(), at("2024-01-01T11:17:00Z"));
        let cron = Cadence::cron("5 * * * *").unwrap();
        assert_eq!(cron.next_after(tick).unwrap(), at("2024-01-01T11:05:00Z"));
        assert_eq!(
            cron.next_after(at("2024-01-01T11:05:00Z")).unwrap(),
            at("2024-01-01T12:05:00Z")
        );
        assert_eq!(cron.describe(), "on 5 * * * * (UTC)");
        assert_eq!(hourly.describe(), "every 1h");
        let refused = Cadence::cron("every hour").unwrap_err().to_string();
        assert!(
            refused.starts_with("cron: `every hour` is not a cron expression"),
            "{refused}"
        );
        assert!(Cadence::every(Duration::ZERO).is_err());
    }
}
