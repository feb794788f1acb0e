//! The database's tables and key encoding. Composite keys are parts
//! prefixed by their length (so no part can run into the next and a
//! session's rows are one contiguous range), numbers big-endian (so they
//! sort as numbers).

use redb::TableDefinition;

/// session → `{"contacts": [...], "seeded": bool}`.
pub const CONTACTS: TableDefinition<&str, &str> = TableDefinition::new("contacts");
/// session → its small state (last contact, counters, activity).
pub const META: TableDefinition<&str, &str> = TableDefinition::new("meta");
/// (session, lower-cased contact, seq) → a history entry (JSON).
pub const HISTORY: TableDefinition<&[u8], &str> = TableDefinition::new("history");
/// (session, message id) → `[status, error]` (JSON).
pub const STATUSES: TableDefinition<&[u8], &str> = TableDefinition::new("statuses");
/// id → an idempotency record (JSON).
pub const IDEMPOTENCY: TableDefinition<&str, &str> = TableDefinition::new("idempotency");
/// (expiry ms, id) → (): idempotency records by expiry.
pub const IDEMPOTENCY_EXPIRY: TableDefinition<&[u8], ()> =
    TableDefinition::new("idempotency_expiry");
/// webhook item → expiry (ms).
pub const SEEN: TableDefinition<&str, u64> = TableDefinition::new("seen");
/// (expiry ms, item) → (): seen items by expiry.
pub const SEEN_EXPIRY: TableDefinition<&[u8], ()> = TableDefinition::new("seen_expiry");
/// seq → an accepted webhook event, oldest first.
pub const QUEUE: TableDefinition<u64, &str> = TableDefinition::new("webhook_queue");
/// (session, offset) → a logged event's entry (`LoggedEvent::to_entry`).
pub const EVENTS: TableDefinition<&[u8], &str> = TableDefinition::new("events");
/// `epoch`, `forgotten_head`: the log's settings.
pub const SETTINGS: TableDefinition<&str, &str> = TableDefinition::new("settings");

/// Appends one length-prefixed part.
pub fn push_part(key: &mut Vec<u8>, part: &str) {
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(part.as_bytes());
}

/// The key of `parts`, then `number` big-endian if given.
pub fn key(parts: &[&str], number: Option<u64>) -> Vec<u8> {
    let mut key = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum::<usize>() + 8);
    for part in parts {
        push_part(&mut key, part);
    }
    if let Some(n) = number {
        key.extend_from_slice(&n.to_be_bytes());
    }
    key
}

/// The expiry index's key: expiry first, so the front expires first.
pub fn expiry_key(expires_ms: u64, id: &str) -> Vec<u8> {
    let mut key = expires_ms.to_be_bytes().to_vec();
    key.extend_from_slice(id.as_bytes());
    key
}

/// The smallest key above every key that starts with `prefix` (None: no
/// such key, the prefix is all 0xFF).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

/// The number a key ends with (`seq`, `offset`).
pub fn trailing_number(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The id an expiry key ends with.
pub fn expiry_id(key: &[u8]) -> &str {
    key.get(8..)
        .and_then(|id| std::str::from_utf8(id).ok())
        .unwrap_or_default()
}

/// The parts of a key made by [`key`] (without its trailing number).
pub fn parts(key: &[u8], count: usize) -> Vec<String> {
    let mut parts = Vec::with_capacity(count);
    let mut at = 0;
    for _ in 0..count {
        let Some(len) = key
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_be_bytes)
        else {
            break;
        };
        let start = at + 4;
        let end = start + len as usize;
        let Some(bytes) = key.get(start..end) else {
            break;
        };
        parts.push(String::from_utf8_lossy(bytes).into_owned());
        at = end;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_s_rows_are_one_range_and_numbers_sort_as_numbers() {
        let a = key(&["s", "john"], Some(2));
        let b = key(&["s", "john"], Some(10));
        assert!(a < b);
        let prefix = key(&["s"], None);
        let end = prefix_end(&prefix).unwrap();
        assert!(a.starts_with(&prefix) && a < end && b < end);
        // "s" is not a prefix of "s2"'s rows.
        assert!(!key(&["s2", "john"], Some(1)).starts_with(&prefix));
        assert_eq!(parts(&b, 2), ["s", "john"]);
        assert_eq!(trailing_number(&b), 10);
        assert_eq!(prefix_end(&[1, 255]), Some(vec![2]));
        assert_eq!(prefix_end(&[255, 255]), None);
        let e = expiry_key(5, "caller:key");
        assert_eq!((expiry_id(&e), trailing_number(&e[..8])), ("caller:key", 5));
    }
}
