//! The store's Lua scripts: every step that must read and write Redis
//! atomically (presence with its version, statuses, idempotency, sender
//! contacts, idle expiry). Each one runs through `RedisBackend::script`.

use std::sync::LazyLock;

use ::redis::Script;

/// Claims the oldest webhook event: first queues again (to be taken next)
/// the claims whose lease lapsed, then moves the oldest event to the
/// claims with its lease. KEYS: queue, claims, leases. ARGV: now (ms),
/// lease end (ms), claim id. Returns the event, or nil.
pub(super) static CLAIM_WEBHOOK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local lapsed = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', ARGV[1], 'LIMIT', 0, 100)
        -- Newest first onto the taking end: the oldest is taken next.
        for i = #lapsed, 1, -1 do
          local id = lapsed[i]
          local event = redis.call('HGET', KEYS[2], id)
          if event then redis.call('RPUSH', KEYS[1], event) end
          redis.call('HDEL', KEYS[2], id)
          redis.call('ZREM', KEYS[3], id)
        end
        local event = redis.call('RPOP', KEYS[1])
        if not event then return false end
        redis.call('HSET', KEYS[2], ARGV[3], event)
        redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
        return event
        ",
    )
});

/// Deletes the agent key only if each field named by ARGV[1], ARGV[3], …
/// (`client_id`, `instance`) still equals the value after it: a newer
/// agent, or the same id registered again on another instance, is never
/// released.
pub(super) static RELEASE_AGENT_IF: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if #ARGV == 0 or #ARGV % 2 == 1 then
            return redis.error_reply('release_agent: field/value pairs expected')
        end
        local v = redis.call('GET', KEYS[1])
        if not v then return 0 end
        local ok, agent = pcall(cjson.decode, v)
        if not ok then return 0 end
        for i = 1, #ARGV, 2 do
            if agent[ARGV[i]] ~= ARGV[i + 1] then return 0 end
        end
        redis.call('DEL', KEYS[1])
        return 1
        ",
    )
});

/// Lua: `bump_presence(stats)` increases the session's presence version
/// (field `presence_version` of its stats hash, [`crate::store::PresenceChange`])
/// and returns it: the larger of the previous version + 1 and the server's
/// clock in microseconds (a hybrid clock). A version Redis lost — flushed,
/// or rolled back by a failover that promoted a replica behind its master
/// — so never goes back below one a client was given before (the new
/// master's clock is past the lost writes').
const BUMP_PRESENCE: &str = r"
local function bump_presence(stats)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(redis.call('HGET', stats, 'presence_version') or '0') or 0
  local new = math.max(old + 1, now)
  redis.call('HSET', stats, 'presence_version', string.format('%d', new))
  return new
end
";

/// Adds or replaces a presence entry and bumps the presence version, at
/// once, unless the join rule refuses it. KEYS: presence, session stats.
/// ARGV: client id, entry, now (ms), the session's room (max members), the
/// joining owner ('' for none). Returns `{created, version}`, or `{-1}`
/// when the session is full and the id not in it, `{-2}` when the id is
/// held by another owner (an entry that does not decode is replaced). The
/// same rule as `store::may_replace`, and the memory store's join.
pub(super) static JOIN_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{BUMP_PRESENCE}
        local held = redis.call('HGET', KEYS[1], ARGV[1])
        if held then
          if ARGV[5] ~= '' then
            local ok, c = pcall(cjson.decode, held)
            if ok and type(c) == 'table' and c.owner ~= ARGV[5] then return {{-2}} end
          end
        elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
          return {{-1}}
        end
        local created = redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
        redis.call('HSET', KEYS[2], 'last_activity', ARGV[3])
        return {{created, bump_presence(KEYS[2])}}
        "
    ))
});

/// Removes a presence entry and returns it with the presence version it
/// bumped (`{entry, version}`), so exactly one caller (the leaving
/// client's instance, or one reaper) announces the departure. The entry is
/// only taken if it belongs to instance ARGV[2]: the same client id may
/// meanwhile have registered again on another instance. A leave is
/// activity (ARGV[3], ms): a session's idle time starts at its last one.
/// KEYS: presence, session stats. Touches the session's slot only: the
/// instance's member set is another slot (Redis Cluster), updated by the
/// caller.
pub(super) static TAKE_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{BUMP_PRESENCE}
        local v = redis.call('HGET', KEYS[1], ARGV[1])
        if not v then return nil end
        local ok, client = pcall(cjson.decode, v)
        if ok and client.instance ~= ARGV[2] then return nil end
        redis.call('HDEL', KEYS[1], ARGV[1])
        redis.call('HSET', KEYS[2], 'last_activity', ARGV[3])
        return {{v, bump_presence(KEYS[2])}}
        "
    ))
});

/// The presence entries, at most ARGV[1] of them (all when there are no
/// more; else the first ones `HSCAN` finds), with how many there are and
/// the version they are as of, read at once: `{version, count,
/// entry...}`. KEYS: presence, session stats.
pub(super) static READ_PRESENCE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local count = redis.call('HLEN', KEYS[1])
        local limit = tonumber(ARGV[1])
        local out = {redis.call('HGET', KEYS[2], 'presence_version') or '0', tostring(count)}
        if count <= limit then
          for _, v in ipairs(redis.call('HVALS', KEYS[1])) do out[#out + 1] = v end
          return out
        end
        if limit < 1 then return out end
        local cursor = '0'
        repeat
          local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', limit)
          cursor = page[1]
          for i = 2, #page[2], 2 do
            if #out - 2 >= limit then return out end
            out[#out + 1] = page[2][i]
          end
        until cursor == '0'
        return out
        ",
    )
});

/// Writes a message status unless it moves backwards (`read` before
/// `delivered` is kept; `failed` is final). ARGV: status, JSON, ttl ms.
pub(super) static SET_STATUS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local rank = {sent = 1, delivered = 2, read = 3, failed = 4}
        local cur = redis.call('GET', KEYS[1])
        if cur then
            local ok, v = pcall(cjson.decode, cur)
            if ok and type(v) == 'table' and v.status then
                if v.status == 'failed' then return 0 end
                if (rank[ARGV[1]] or 0) <= (rank[v.status] or 0) then return 0 end
            end
        end
        redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
        return 1
        ",
    )
});

/// Lua: `now_ms()`, the server's clock in ms: every instance's scripts
/// judge expiry by the same clock.
const NOW_MS: &str = r"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
";

/// Takes an idempotency key: the stored (unexpired) result if there is
/// one, else the lock if free; either one held for another fingerprint is
/// `reused`. One script, so a result stored between the checks cannot be
/// missed (which would send twice). KEYS: lock, the caller's results hash,
/// its index. ARGV: fingerprint (64 hex), token, lock TTL ms, key.
/// Values are the fingerprint followed by the token or the result.
pub(super) static IDEMPOTENCY_BEGIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
        local fp = ARGV[1]
        local until_ms = redis.call('ZSCORE', KEYS[3], ARGV[4])
        if until_ms and tonumber(until_ms) > now_ms() then
            local r = redis.call('HGET', KEYS[2], ARGV[4])
            if r then
                if string.sub(r, 1, 64) ~= fp then return {{'reused', ''}} end
                return {{'done', string.sub(r, 65)}}
            end
        end
        local held = redis.call('GET', KEYS[1])
        if held then
            if string.sub(held, 1, 64) ~= fp then return {{'reused', ''}} end
            return {{'busy', ''}}
        end
        redis.call('SET', KEYS[1], fp .. ARGV[2], 'PX', ARGV[3])
        return {{'acquired', ''}}
        "
    ))
});

/// Stores a result in the caller's hash and index, frees the lock if this
/// token still holds it, forgets (a bounded number of) expired results,
/// then the caller's oldest past its cap; returns how many it forgot for
/// the cap. Both structures expire whole after a TTL without a result.
/// KEYS: lock, results hash, index. ARGV: fingerprint, token, result,
/// TTL ms, key, cap.
pub(super) static IDEMPOTENCY_FINISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r"{NOW_MS}
        local now = now_ms()
        local ttl = tonumber(ARGV[4])
        if redis.call('GET', KEYS[1]) == ARGV[1] .. ARGV[2] then redis.call('DEL', KEYS[1]) end
        redis.call('HSET', KEYS[2], ARGV[5], ARGV[1] .. ARGV[3])
        redis.call('ZADD', KEYS[3], now + ttl, ARGV[5])
        local expired = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now, 'LIMIT', 0, 64)
        if #expired > 0 then
            redis.call('HDEL', KEYS[2], unpack(expired))
            redis.call('ZREM', KEYS[3], unpack(expired))
        end
        local over = math.min(redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[6]), 1000)
        local evicted = 0
        if over > 0 then
            local oldest = redis.call('ZRANGE', KEYS[3], 0, over - 1)
            redis.call('HDEL', KEYS[2], unpack(oldest))
            redis.call('ZREMRANGEBYRANK', KEYS[3], 0, over - 1)
            evicted = #oldest
        end
        redis.call('PEXPIRE', KEYS[2], ttl)
        redis.call('PEXPIRE', KEYS[3], ttl)
        return evicted
        "
    ))
});

/// Frees the lock if ARGV[1] (fingerprint and token) still holds it.
pub(super) static IDEMPOTENCY_ABANDON: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
        return 1
        ",
    )
});

/// Adds a webhook sender to a session's contacts: the read, the cap and
/// the write in one step, so concurrent senders (on any instance) never
/// pass `MAX_CONTACTS_PER_SESSION` nor overwrite each other. The list's
/// JSON is extended as text (serde wrote it; cjson only reads it).
/// KEYS: contacts, stats. ARGV: digits, max, name, name if taken, phone,
/// now ms. Returns `{'known', name}`, `{'full'}` or `{'added', name, list}`.
pub(super) static ADD_SENDER_CONTACT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local raw = redis.call('GET', KEYS[1])
        local list = {}
        if raw then
            local ok, v = pcall(cjson.decode, raw)
            if not ok or type(v) ~= 'table' then
                return redis.error_reply('corrupt contacts list')
            end
            list = v
        end
        local wanted = string.lower(ARGV[3])
        local taken = false
        for _, c in ipairs(list) do
            if type(c.phone) == 'string' and (string.gsub(c.phone, '%D', '')) == ARGV[1] then
                return {'known', tostring(c.name)}
            end
            if type(c.name) == 'string' and string.lower(c.name) == wanted then taken = true end
        end
        if #list >= tonumber(ARGV[2]) then return {'full'} end
        local name = ARGV[3]
        if taken then name = ARGV[4] end
        local entry = cjson.encode({name = name, phone = ARGV[5]})
        local new
        if raw and #list > 0 then
            new = string.sub(raw, 1, -2) .. ',' .. entry .. ']'
        else
            new = '[' .. entry .. ']'
        end
        redis.call('SET', KEYS[1], new)
        redis.call('HSET', KEYS[2], 'last_activity', ARGV[6])
        return {'added', name, new}
        ",
    )
});

/// Removes an idle session: if it has no client in presence and its last
/// activity is at or before ARGV[1] (ms), and its `histories` set is still
/// exactly the contacts the caller read (ARGV[3..], their history keys
/// KEYS[11..]), every key of it goes. KEYS: stats, presence, histories,
/// contacts, last_contact, agent, log, log epoch, log offset, log seen,
/// history keys. ARGV: cutoff, number of history keys, their contacts.
/// Returns `{'removed'}`, `{'gone'}` (nothing was there), `{'busy'}`,
/// `{'active', last_activity}` or `{'changed'}` (read the set again).
pub(super) static EXPIRE_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        if redis.call('HLEN', KEYS[2]) > 0 then return {'busy'} end
        local last = tonumber(redis.call('HGET', KEYS[1], 'last_activity') or '0') or 0
        if last > tonumber(ARGV[1]) then return {'active', tostring(last)} end
        local n = tonumber(ARGV[2])
        if redis.call('SCARD', KEYS[3]) ~= n then return {'changed'} end
        for i = 1, n do
            if redis.call('SISMEMBER', KEYS[3], ARGV[2 + i]) == 0 then return {'changed'} end
        end
        local deleted = 0
        for i = 1, #KEYS, 500 do
            deleted = deleted + redis.call('DEL', unpack(KEYS, i, math.min(i + 499, #KEYS)))
        end
        if deleted == 0 then return {'gone'} end
        return {'removed'}
        ",
    )
});

/// Takes a removed (or never-there) session out of the admin index and the
/// activity index, unless its activity was indexed after ARGV[2] (a write
/// brought it back). KEYS: sessions, activity. ARGV: session, cutoff ms.
pub(super) static UNINDEX_SESSION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
        local at = redis.call('ZSCORE', KEYS[2], ARGV[1])
        if at and tonumber(at) > tonumber(ARGV[2]) then return 0 end
        redis.call('ZREM', KEYS[2], ARGV[1])
        redis.call('ZREM', KEYS[1], ARGV[1])
        return 1
        ",
    )
});
