//! Case-insensitive, fuzzy contact resolution ("john" → "John").
//!
//! Tried in order, the first tier with exactly one hit wins: exact name,
//! first name, prefix, substring, then small edit distance. Several hits in
//! a tier make the name ambiguous; none in any tier make it unknown.

use crate::metrics::{Metrics, Shed};
use crate::protocol::{ErrorCode, HubError};

/// At most this many typos are forgiven, however long the name: the edit
/// distance is then computed on a band of `2 * MAX_TYPOS + 1` cells per
/// character, never on the whole name × query square.
pub const MAX_TYPOS: usize = 3;

/// Most edit-distance cells one resolution computes over all the names
/// (a few milliseconds of one core); past it the typo tier stops with what
/// it found (`hub_limit_shed_total{limit="fuzzy_budget"}`). Names and
/// queries are at most MAX_NAME_CHARS, so a 10,000-contact session with
/// an 8-character query needs about a tenth of it.
pub const FUZZY_BUDGET_CELLS: usize = 4_000_000;

/// Most names an error lists as `candidates`.
pub const MAX_CANDIDATES: usize = 20;

pub fn resolve_contact<'a>(
    query: &str,
    names: &'a [String],
    metrics: &Metrics,
) -> Result<&'a str, HubError> {
    let q = normalize(query);
    if q.is_empty() {
        return Err(HubError::new(
            ErrorCode::ContactNotFound,
            "no contact name given",
        ));
    }
    let lowered: Vec<String> = names.iter().map(|n| normalize(n)).collect();
    let tiers: [&dyn Fn(&str) -> bool; 4] = [
        &|n| n == q,
        &|n| n.split(' ').next() == Some(q.as_str()),
        &|n| n.starts_with(q.as_str()),
        &|n| n.contains(q.as_str()),
    ];
    for tier in tiers {
        let hits: Vec<usize> = (0..names.len()).filter(|&i| tier(&lowered[i])).collect();
        match hits.as_slice() {
            [one] => return Ok(&names[*one]),
            [] => continue,
            many => return Err(ambiguous(query, many.iter().map(|&i| &names[i]))),
        }
    }
    // Typos: allow one edit per four characters, at least one, at most
    // MAX_TYPOS.
    let wanted: Vec<char> = q.chars().collect();
    let max_distance = (wanted.len() / 4).clamp(1, MAX_TYPOS);
    let mut cells = 0;
    let mut best: Vec<(usize, usize)> = Vec::new();
    for (i, n) in lowered.iter().enumerate() {
        if cells > FUZZY_BUDGET_CELLS {
            // A closer name may lie among those not compared: no guess,
            // the names found so far are offered instead.
            metrics.shed(Shed::FuzzyBudget);
            best.sort();
            let shown = if best.is_empty() {
                names.iter().take(MAX_CANDIDATES).cloned().collect()
            } else {
                best.iter()
                    .take(MAX_CANDIDATES)
                    .map(|&(_, i)| names[i].clone())
                    .collect()
            };
            return Err(HubError::new(
                ErrorCode::ContactNotFound,
                format!(
                    "no contact named `{}` (typo matching stopped at its budget; give the name exactly)",
                    query
                ),
            )
            .with_candidates(shown));
        }
        let name: Vec<char> = n.chars().collect();
        let first_len = name.iter().position(|c| *c == ' ').unwrap_or(name.len());
        // Optimal string alignment: edits plus adjacent transpositions,
        // so "alcie" is one typo away from "alice".
        let whole = osa_within(&wanted, &name, max_distance, &mut cells);
        let first = if first_len < name.len() {
            osa_within(&wanted, &name[..first_len], max_distance, &mut cells)
        } else {
            None
        };
        if let Some(d) = whole.into_iter().chain(first).min() {
            best.push((d, i));
        }
    }
    best.sort();
    match best.as_slice() {
        [] => Err(HubError::new(
            ErrorCode::ContactNotFound,
            format!("no contact named `{query}`"),
        )
        .with_candidates(names.iter().take(MAX_CANDIDATES).cloned().collect())),
        [(_, i)] => Ok(&names[*i]),
        [(d0, i), (d1, _), ..] if d0 < d1 => Ok(&names[*i]),
        many => {
            let d0 = many[0].0;
            Err(ambiguous(
                query,
                many.iter()
                    .filter(|(d, _)| *d == d0)
                    .map(|&(_, i)| &names[i]),
            ))
        }
    }
}

/// The optimal-string-alignment distance of `a` and `b` if it is at most
/// `k`, computed on the diagonal band where such a distance can lie
/// (`|i - j| <= k`), stopping as soon as a whole row exceeds `k`. Adds the
/// cells computed to `cells`.
fn osa_within(a: &[char], b: &[char], k: usize, cells: &mut usize) -> Option<usize> {
    let (n, m) = (a.len(), b.len());
    if n.abs_diff(m) > k {
        return None;
    }
    let over = k + 1;
    // Three rows (i-2, i-1, i); outside the band every cell counts as
    // `over`, which the band's edges are set to.
    let mut rows = [vec![over; m + 1], vec![over; m + 1], vec![over; m + 1]];
    for (j, cell) in rows[1].iter_mut().enumerate().take(k.min(m) + 1) {
        *cell = j;
    }
    for i in 1..=n {
        let [older, prev, cur] = &mut rows;
        let lo = i.saturating_sub(k).max(1);
        let hi = (i + k).min(m);
        cur[lo - 1] = if lo == 1 { i.min(over) } else { over };
        let mut row_min = cur[lo - 1];
        for j in lo..=hi {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut d = (prev[j - 1] + cost).min(prev[j] + 1).min(cur[j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d = d.min(older[j - 2] + 1);
            }
            cur[j] = d.min(over);
            row_min = row_min.min(cur[j]);
        }
        if hi < m {
            cur[hi + 1] = over;
        }
        *cells += hi + 1 - lo;
        if row_min > k {
            return None;
        }
        rows.rotate_left(1);
    }
    // After the last rotation the last row computed is `rows[1]`.
    let d = rows[1][m];
    (d <= k).then_some(d)
}

fn ambiguous<'a>(query: &str, candidates: impl Iterator<Item = &'a String>) -> HubError {
    let candidates: Vec<String> = candidates.take(MAX_CANDIDATES).cloned().collect();
    HubError::new(
        ErrorCode::AmbiguousContact,
        format!(
            "`{query}` matches several contacts: {}",
            candidates.join(", ")
        ),
    )
    .with_candidates(candidates)
}

fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        ["John Smith", "Johanna", "Alice", "Bob", "Mom"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    fn resolve<'a>(query: &str, names: &'a [String]) -> Result<&'a str, HubError> {
        resolve_contact(query, names, &Metrics::new("test"))
    }

    #[test]
    fn resolves_case_insensitively_and_fuzzily() {
        let n = names();
        assert_eq!(resolve("john", &n).unwrap(), "John Smith");
        assert_eq!(resolve("ALICE", &n).unwrap(), "Alice");
        assert_eq!(resolve("alcie", &n).unwrap(), "Alice");
        assert_eq!(resolve("smith", &n).unwrap(), "John Smith");
        assert_eq!(resolve("johm", &n).unwrap(), "John Smith");
    }

    #[test]
    fn ambiguous_and_unknown_name_candidates() {
        let n = names();
        let err = resolve("joh", &n).unwrap_err();
        assert_eq!(err.code, ErrorCode::AmbiguousContact);
        assert_eq!(err.candidates, ["John Smith", "Johanna"]);
        let err = resolve("zebediah", &n).unwrap_err();
        assert_eq!(err.code, ErrorCode::ContactNotFound);
        assert_eq!(err.candidates.len(), 5);
    }

    #[test]
    fn the_banded_distance_is_the_full_one_within_its_bound() {
        let words = [
            "",
            "a",
            "ab",
            "ba",
            "alice",
            "alcie",
            "alicia",
            "bob",
            "bbo",
            "johnsmith",
            "jonhsmiht",
            "mom",
            "mommy",
            "kitten",
            "sitting",
            "abcdefgh",
            "badcfehg",
        ];
        for a in words {
            for b in words {
                let (ac, bc): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
                let full = strsim::osa_distance(a, b);
                for k in 1..=MAX_TYPOS {
                    let mut cells = 0;
                    let banded = osa_within(&ac, &bc, k, &mut cells);
                    assert_eq!(banded, (full <= k).then_some(full), "{a} / {b} within {k}");
                    assert!(cells <= ac.len() * (2 * k + 1), "{a} / {b}: {cells} cells");
                }
            }
        }
    }

    #[test]
    fn fuzzy_matching_stops_at_its_budget() {
        let metrics = Metrics::new("test");
        // Names alike in length and spelling: no tier before the typo one
        // hits, and every name passes the length filter.
        let mut names: Vec<String> = (0..20_000)
            .map(|i| format!("{}{i:0>6}", "x".repeat(120)))
            .collect();
        // One typo away, but past the budget: never guessed from a
        // partial scan.
        names.push(format!("{}y", "x".repeat(125)));
        let query = "x".repeat(126);
        let err = resolve_contact(&query, &names, &metrics).unwrap_err();
        assert_eq!(err.code, ErrorCode::ContactNotFound);
        assert!(err.candidates.len() <= MAX_CANDIDATES);
        let shed = metrics.render();
        assert!(
            shed.contains("hub_limit_shed_total{limit=\"fuzzy_budget\"} 1"),
            "{shed}"
        );
    }
}
