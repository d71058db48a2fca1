//! The HTML pages: a run's page (live under `backfill serve`, or written as one
//! self-contained file by `backfill report`, from the same template so that the two never
//! drift apart), the list of runs, the launch form and the tables' status. Each page is a
//! minijinja template with HTML auto-escaping (slice keys and errors may hold `<`, `&` or
//! quotes), sharing `common.html`'s head, grid and table, rendered from plain data.
//!
//! Presentation only: the data comes from the engine; nothing here reads storage or
//! decides anything.

mod run;

use std::sync::OnceLock;

use serde::Serialize;

pub use run::{rows_of, runs, wide, Cell, GridRow, Part, RunView, Shown, Tally};

/// How each way a slice can end is shown: its CSS class, its legend entry and colour.
/// The grid, the legend and the chart all read this one table, so no status can lack a
/// style or a legend entry.
#[derive(Debug, Serialize)]
pub struct Style {
    pub class: &'static str,
    pub label: &'static str,
    pub colour: &'static str,
}

pub const STYLES: [Style; 10] = [
    Style {
        class: "committed",
        label: "committed",
        colour: "#2e7d32",
    },
    Style {
        class: "meanwhile",
        label: "committed by another run",
        colour: "#33691e",
    },
    Style {
        class: "staged",
        label: "staged for the swap",
        colour: "#1565c0",
    },
    Style {
        class: "skipped",
        label: "skipped",
        colour: "#546e7a",
    },
    Style {
        class: "failed",
        label: "failed",
        colour: "#c62828",
    },
    Style {
        class: "abandoned",
        label: "abandoned",
        colour: "#b34700",
    },
    Style {
        class: "blocked",
        label: "blocked by an upstream slice",
        colour: "#8d6e63",
    },
    // A slice being computed, checked or committed, as the run's heartbeat last said.
    Style {
        class: "in-flight",
        label: "in flight",
        colour: "#64b5f6",
    },
    // A slice of a run that has not finished it yet.
    Style {
        class: "pending",
        label: "not finished yet",
        colour: "#b0bec5",
    },
    // In a table's status: a slice never committed nor attempted.
    Style {
        class: "missing",
        label: "missing",
        colour: "#cfd8dc",
    },
];

pub fn style(class: &str) -> &'static Style {
    STYLES
        .iter()
        .find(|s| s.class == class)
        .expect("every class a page gives has a style")
}

/// The styles of the classes that occur, in the legend's order.
pub fn legend<'a>(classes: impl Iterator<Item = &'a str> + Clone) -> Vec<&'static Style> {
    (STYLES.iter())
        .filter(|style| classes.clone().any(|c| c == style.class))
        .collect()
}

const TEMPLATES: [(&str, &str); 5] = [
    ("common.html", include_str!("common.html")),
    ("run.html", include_str!("run.html")),
    ("runs.html", include_str!("runs.html")),
    ("launch.html", include_str!("launch.html")),
    ("status.html", include_str!("status.html")),
];

/// The page `name` of `page`'s data.
pub fn render(name: &str, page: &impl Serialize) -> anyhow::Result<String> {
    static PAGES: OnceLock<minijinja::Environment<'static>> = OnceLock::new();
    let pages = PAGES.get_or_init(|| {
        let mut pages = minijinja::Environment::new();
        for (name, source) in TEMPLATES {
            pages
                .add_template(name, source)
                .expect("the templates parse (a test renders each)");
        }
        pages
    });
    let html = pages
        .get_template(name)?
        .render(minijinja::value::Serde(page))?;
    Ok(html)
}
