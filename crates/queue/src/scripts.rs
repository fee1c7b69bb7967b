//! The Lua scripts that change the dispatch keys; each runs atomically in Redis.
//!
//! Keys, under the dispatcher's prefix `P`:
//! - `P:q:<lane>:<model>:<user>` list: the user's waiting entries, oldest first.
//! - `P:ring:<lane>:<model>` list: users with waiting entries, in round-robin order.
//! - `P:delayed` sorted set: entries waiting for a retry's backoff, by ready time (ms).
//! - `P:present` set: job ids that have an entry (waiting or delayed).
//! - `P:tick:<model>` counter: claims served, for the lane interleaving.
//!
//! An entry is `job|user|lane|model|pixels|batch_key`.

use std::sync::LazyLock;

use redis::Script;

/// Adds an entry unless its job already has one. ARGV: prefix, job, entry, user, lane,
/// model, ready_ms, now_ms. Returns 1 when added.
pub static PUSH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p, job, entry, user, lane, model = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('SADD', p .. ':present', job) == 0 then return 0 end
if tonumber(ARGV[7]) > tonumber(ARGV[8]) then
  redis.call('ZADD', p .. ':delayed', ARGV[7], entry)
  return 1
end
local q = p .. ':q:' .. lane .. ':' .. model .. ':' .. user
if redis.call('RPUSH', q, entry) == 1 then
  redis.call('RPUSH', p .. ':ring:' .. lane .. ':' .. model, user)
end
return 1
"#,
    )
});

/// Puts entries a worker could not start back at the head of their users' lists, so they
/// keep their place. ARGV: prefix, then entries.
pub static UNCLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p = ARGV[1]
for i = #ARGV, 2, -1 do
  local entry = ARGV[i]
  local job, user, lane, model = string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
  if redis.call('SADD', p .. ':present', job) == 1 then
    local q = p .. ':q:' .. lane .. ':' .. model .. ':' .. user
    if redis.call('LPUSH', q, entry) == 1 then
      redis.call('RPUSH', p .. ':ring:' .. lane .. ':' .. model, user)
    end
  end
end
return 1
"#,
    )
});

/// Moves due delayed entries to their lists, then takes up to `max_batch` entries a worker
/// can run: its model, at most its pixels, all with the first entry's batch key. Users are
/// served round-robin (one entry each per pass) and a served user moves to the ring's end.
/// Fast goes first except on every `relax_every`-th claim, when relax does.
/// ARGV: prefix, model, max_pixels, max_batch, now_ms, relax_every, scan (ring entries
/// looked at per pass). Returns the entries taken.
pub static CLAIM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p, model = ARGV[1], ARGV[2]
local max_pixels, max_batch = tonumber(ARGV[3]), tonumber(ARGV[4])
local now, relax_every, scan = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])

local due = redis.call('ZRANGEBYSCORE', p .. ':delayed', '-inf', now, 'LIMIT', 0, 100)
for _, entry in ipairs(due) do
  redis.call('ZREM', p .. ':delayed', entry)
  local job, user, lane, m = string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
  local q = p .. ':q:' .. lane .. ':' .. m .. ':' .. user
  if redis.call('RPUSH', q, entry) == 1 then
    redis.call('RPUSH', p .. ':ring:' .. lane .. ':' .. m, user)
  end
end

local lanes = {'fast', 'relax'}
local tick = redis.call('INCR', p .. ':tick:' .. model)
if tick % relax_every == 0 then lanes = {'relax', 'fast'} end

local taken, key = {}, nil
for _, lane in ipairs(lanes) do
  local ring = p .. ':ring:' .. lane .. ':' .. model
  while #taken < max_batch do
    local users = redis.call('LRANGE', ring, 0, scan - 1)
    local served = 0
    for _, user in ipairs(users) do
      if #taken >= max_batch then break end
      local q = p .. ':q:' .. lane .. ':' .. model .. ':' .. user
      local head = redis.call('LINDEX', q, 0)
      if head then
        local job, pixels, batch = string.match(head, '^([^|]*)|[^|]*|[^|]*|[^|]*|([^|]*)|(.*)$')
        if tonumber(pixels) <= max_pixels and (key == nil or key == batch) then
          key = batch
          redis.call('LPOP', q)
          redis.call('SREM', p .. ':present', job)
          redis.call('LREM', ring, 1, user)
          if redis.call('LLEN', q) > 0 then redis.call('RPUSH', ring, user) end
          taken[#taken + 1] = head
          served = served + 1
        end
      else
        redis.call('LREM', ring, 1, user)
      end
    end
    if served == 0 then break end
  end
  if #taken > 0 then break end
end
return taken
"#,
    )
});

/// Where a waiting entry stands: entries served before it under round-robin, counting fast
/// ahead of relax up to what the interleaving lets through. ARGV: prefix, entry, scan,
/// relax_every. Returns -1 when the entry is not waiting.
pub static POSITION: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local p, entry, scan = ARGV[1], ARGV[2], tonumber(ARGV[3])
local job, user, lane, model = string.match(entry, '^([^|]*)|([^|]*)|([^|]*)|([^|]*)|')
local q = p .. ':q:' .. lane .. ':' .. model .. ':' .. user
local index = redis.call('LPOS', q, entry)
if not index then return -1 end
-- Users before this one in the ring get one more turn than those after it.
local ahead, turns = index, index + 1
for _, other in ipairs(redis.call('LRANGE', p .. ':ring:' .. lane .. ':' .. model, 0, scan - 1)) do
  if other == user then
    turns = index
  else
    ahead = ahead + math.min(redis.call('LLEN', p .. ':q:' .. lane .. ':' .. model .. ':' .. other), turns)
  end
end
if lane == 'relax' then
  local fast = 0
  for _, other in ipairs(redis.call('LRANGE', p .. ':ring:fast:' .. model, 0, scan - 1)) do
    fast = fast + redis.call('LLEN', p .. ':q:fast:' .. model .. ':' .. other)
  end
  ahead = ahead + math.min(fast, (ahead + 1) * (tonumber(ARGV[4]) - 1))
end
return ahead
"#,
    )
});
