//! Case-insensitive, fuzzy contact resolution ("john" → "John").
//!
//! Tried in order, the first tier with exactly one hit wins: exact name,
//! first name, prefix, substring, then small edit distance. Several hits in
//! a tier make the name ambiguous; none in any tier make it unknown.

use crate::protocol::{ErrorCode, HubError};

pub fn resolve_contact<'a>(query: &str, names: &'a [String]) -> Result<&'a str, HubError> {
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
    // Typos: allow one edit per four characters, at least one.
    let max_distance = (q.chars().count() / 4).max(1);
    let mut best: Vec<(usize, usize)> = lowered
        .iter()
        .enumerate()
        .filter_map(|(i, n)| {
            let first = n.split(' ').next().unwrap_or(n);
            // Optimal string alignment: edits plus adjacent transpositions,
            // so "alcie" is one typo away from "alice".
            let d = strsim::osa_distance(&q, n).min(strsim::osa_distance(&q, first));
            (d <= max_distance).then_some((d, i))
        })
        .collect();
    best.sort();
    match best.as_slice() {
        [] => Err(HubError::new(
            ErrorCode::ContactNotFound,
            format!("no contact named `{query}`"),
        )
        .with_candidates(names.to_vec())),
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

fn ambiguous<'a>(query: &str, candidates: impl Iterator<Item = &'a String>) -> HubError {
    let candidates: Vec<String> = candidates.cloned().collect();
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

    #[test]
    fn resolves_case_insensitively_and_fuzzily() {
        let n = names();
        assert_eq!(resolve_contact("john", &n).unwrap(), "John Smith");
        assert_eq!(resolve_contact("ALICE", &n).unwrap(), "Alice");
        assert_eq!(resolve_contact("alcie", &n).unwrap(), "Alice");
        assert_eq!(resolve_contact("smith", &n).unwrap(), "John Smith");
    }

    #[test]
    fn ambiguous_and_unknown_name_candidates() {
        let n = names();
        let err = resolve_contact("joh", &n).unwrap_err();
        assert_eq!(err.code, ErrorCode::AmbiguousContact);
        assert_eq!(err.candidates, ["John Smith", "Johanna"]);
        let err = resolve_contact("zebediah", &n).unwrap_err();
        assert_eq!(err.code, ErrorCode::ContactNotFound);
        assert_eq!(err.candidates.len(), 5);
    }
}
