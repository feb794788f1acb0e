//! The session log's Lua scripts: the append (offset, log entry and
//! publish in one atomic step) and the read (epoch, head, entries within a
//! budget), and the random epoch candidate both are given.

/// Assigns the next offset, logs and publishes one event.
/// KEYS: log stream, epoch, offset counter, seen hash, the session's
/// channel (declared like a key: on a Redis Cluster it is a shard channel
/// of the session's slot).
/// ARGV: candidate epoch, max len, TTL ms, publish command (`PUBLISH`, or
/// `SPUBLISH` on a Redis Cluster), publisher id, sequence number, header
/// rest, frame rest: the entry `LoggedEvent::to_entry` writes, without the
/// position this script puts in front of both lines
/// ([`crate::broker::EventEnvelope::entry_without_position`]; a contract
/// test holds the two to the same bytes).
/// The epoch candidate comes from the caller: scripts make no randomness.
/// Returns `{offset, epoch}`, or `{0, ''}` when this publisher's event was
/// already logged.
pub(super) const APPEND_SCRIPT: &str = r#"
local seen = redis.call('HGET', KEYS[4], ARGV[5])
if seen and tonumber(seen) >= tonumber(ARGV[6]) then return {0, ''} end
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[3])
end
local offset = redis.call('INCR', KEYS[3])
local head = '{"offset":' .. offset .. ',"epoch":"' .. epoch .. '",'
local payload = head .. ARGV[7] .. '\n' .. head .. ARGV[8]
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], offset .. '-0', 'e', payload)
redis.call('SET', KEYS[2], epoch, 'PX', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
redis.call('HSET', KEYS[4], ARGV[5], ARGV[6])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
redis.call(ARGV[4], KEYS[5], payload)
return {offset, epoch}
"#;

/// Reads a session's log: `{epoch, head, entries from ARGV[3]...}`.
/// KEYS: log stream, epoch, offset counter. ARGV: candidate epoch, TTL ms,
/// first offset wanted ('' for none), max events, max frame bytes. A
/// missing epoch is created (and the stale stream and counter dropped),
/// exactly as the append script would. The entries are read in chunks and
/// stop one past the budget ([`crate::broker::ReadBudget::exceeded_by`], counted on the
/// frame after the header line, as the reader counts): that last entry
/// tells the reader more are left, and no read holds more than the budget
/// in Redis's memory or on the wire.
pub(super) const READ_SCRIPT: &str = r#"
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1], KEYS[3])
  redis.call('SET', KEYS[2], epoch, 'PX', ARGV[2])
end
local head = redis.call('GET', KEYS[3]) or '0'
local out = {epoch, head}
if ARGV[3] ~= '' then
  local max_events = tonumber(ARGV[4])
  local max_bytes = tonumber(ARGV[5])
  local n, bytes = 0, 0
  local start = ARGV[3] .. '-0'
  while true do
    local chunk = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 64)
    if #chunk == 0 then return out end
    for _, e in ipairs(chunk) do
      local payload = e[2][2]
      local nl = string.find(payload, '\n', 1, true) or 0
      local frame = #payload - nl
      out[#out + 1] = payload
      if n >= max_events or (n > 0 and bytes + frame > max_bytes) then
        return out
      end
      n = n + 1
      bytes = bytes + frame
      start = '(' .. e[1]
    end
  end
end
return out
"#;

/// A random epoch candidate (16 hex digits).
pub(super) fn epoch_candidate() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}
