//! Naming many slices briefly: [`Span`]s of consecutive slices
//! (`2024-01-03..2024-01-14 (12 slices)`), so that a list of hundreds of slices reads as a
//! few spans. Pure.

/// Consecutive slices named at once: `2024-01-03..2024-01-14 (12 slices)`, so that a
/// list of hundreds of slices reads as a few spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Span {
    pub first: String,
    pub last: String,
    pub slices: usize,
}

impl std::fmt::Display for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.slices {
            1 => write!(f, "{}", self.first),
            2 => write!(f, "{}, {}", self.first, self.last),
            n => write!(f, "{}..{} ({n} slices)", self.first, self.last),
        }
    }
}

/// The spans of the slices `chosen` picks among `keys`, which are in the order they were
/// cut: slices are consecutive when no slice of `keys` lies between them.
pub fn spans<'a>(
    keys: impl IntoIterator<Item = &'a str>,
    chosen: impl Fn(&str) -> bool,
) -> Vec<Span> {
    let mut spans: Vec<Span> = Vec::new();
    let mut open = false;
    for key in keys {
        if !chosen(key) {
            open = false;
            continue;
        }
        match spans.last_mut() {
            Some(span) if open => {
                span.last = key.to_string();
                span.slices += 1;
            }
            _ => spans.push(Span {
                first: key.to_string(),
                last: key.to_string(),
                slices: 1,
            }),
        }
        open = true;
    }
    spans
}

/// The spans of `keys` (in the order they were cut) grouped by the label `label` gives
/// each of them (`None`: not in any group), the labels in the order they first appear:
/// the slices refused for each reason, say.
pub fn spans_by<'a, L: PartialEq>(
    keys: impl Iterator<Item = &'a str> + Clone,
    label: impl Fn(&str) -> Option<L>,
) -> Vec<(L, Vec<Span>)> {
    let mut labels: Vec<L> = Vec::new();
    for key in keys.clone() {
        match label(key) {
            Some(found) if !labels.contains(&found) => labels.push(found),
            _ => {}
        }
    }
    labels
        .into_iter()
        .map(|group| {
            let spans = spans(keys.clone(), |key| label(key).as_ref() == Some(&group));
            (group, spans)
        })
        .collect()
}

/// Spans for people: `2024-01-01..2024-01-05 (5 slices), 2024-01-09`.
pub fn describe_spans(spans: &[Span]) -> String {
    let words: Vec<String> = spans.iter().map(Span::to_string).collect();
    words.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_join_consecutive_chosen_slices_and_break_at_any_other() {
        let keys = ["d1", "d2", "d3", "d4", "d5", "d6", "d7", "d8"];
        let chosen = |k: &str| ["d1", "d2", "d3", "d5", "d7", "d8"].contains(&k);
        let spans = spans(keys, chosen);
        assert_eq!(describe_spans(&spans), "d1..d3 (3 slices), d5, d7, d8");
        assert_eq!(spans.iter().map(|s| s.slices).sum::<usize>(), 6);
        assert!(super::spans(keys, |_| false).is_empty());
    }

    #[test]
    fn spans_by_group_in_the_order_groups_first_appear() {
        let keys = ["d1", "d2", "d3", "d4", "d5"];
        let label = |k: &str| match k {
            "d1" | "d2" | "d5" => Some("late"),
            "d3" => Some("empty"),
            _ => None,
        };
        let grouped: Vec<(&str, String)> = (spans_by(keys.into_iter(), label).into_iter())
            .map(|(group, spans)| (group, describe_spans(&spans)))
            .collect();
        assert_eq!(
            grouped,
            [
                ("late", "d1, d2, d5".to_string()),
                ("empty", "d3".to_string())
            ]
        );
    }
}
