"""The Redis ledger store: gateways on several machines share one Redis (extra ``redis``).

The ``redis`` package is imported when a store is opened, not with this module.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from testtime.budget import Budget, Usage
from testtime.errors import MissingDependency, UserError
from testtime.serve.ledgers.base import (
    INT_DIMS,
    SNAP,
    STORE_DIMENSIONS,
    TOMBSTONE_S,
    USD_EPS,
    Clock,
    ColumnReads,
    Grant,
    LedgerUnavailable,
    LimitRefused,
    ScopeLimits,
    check_grant_args,
    day_key,
    granted_budget,
    hold_keys,
    needs,
    period_key,
    usage_amounts,
)
from testtime.trace.events import redact_url

#: Key prefix of a Redis store whose URL names none (``?prefix=NAME``).
DEFAULT_PREFIX = "testtime:"


def split_redis_url(url: str) -> tuple[str, str | None]:
    """``(url without its ?prefix=NAME query field, NAME or None)`` of a Redis store URL.

    The ledger store and the shared metrics read the prefix the same way (the first ``prefix`` wins).
    """
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    prefix = None
    for k, v in query:
        if k == "prefix" and prefix is None:
            prefix = v
    rest = urlencode([(k, v) for k, v in query if k != "prefix"])
    return urlunsplit(parts._replace(query=rest)), prefix

# One Lua prelude shared by the scripts: row updates and the ttl sweep. Each
# script runs atomically in Redis, so check-and-hold cannot interleave across
# clients. Numbers cross the Lua boundary as %.17g strings: Redis would
# truncate Lua numbers in replies and format arguments with 14 digits.
_LUA_PRELUDE = r"""
local P = ARGV[1]
local now = tonumber(ARGV[2])
local SNAP = @SNAP@
local TOMB = tonumber(ARGV[3])
local function num(x) return string.format('%.17g', x) end
local function add(scope, pkey, col, deltas)
  local key = P .. 'l:' .. scope .. '|' .. pkey
  for d, v in pairs(deltas) do
    if v ~= 0 then
      local x = tonumber(redis.call('HINCRBYFLOAT', key, col .. ':' .. d, num(v)))
      if x ~= 0 and x > -SNAP and x < SNAP then redis.call('HSET', key, col .. ':' .. d, '0') end
    end
  end
end
local function neg(t) local o = {} for d, v in pairs(t) do o[d] = -v end return o end
local function sweep()
  local due = redis.call('ZRANGEBYSCORE', P .. 'exp', '-inf', now)
  for _, gid in ipairs(due) do
    local gk = P .. 'g:' .. gid
    local st = redis.call('HGET', gk, 'state')
    if st == 'held' then
      local body = cjson.decode(redis.call('HGET', gk, 'body'))
      for _, k in ipairs(body.k) do
        add(k[1], k[2], 'h', neg(body.a))
        add(k[1], k[2], 's', body.a)
      end
      redis.call('HSET', gk, 'state', 'expired')
      redis.call('ZADD', P .. 'exp', num(tonumber(redis.call('HGET', gk, 'expires')) + TOMB), gid)
    else
      redis.call('DEL', gk)
      redis.call('ZREM', P .. 'exp', gid)
    end
  end
end
""".replace("@SNAP@", repr(SNAP))

# ARGV[4]: JSON {id, ttl, today, scopes: [{scope, total: {dim: lim}, day: {...}}],
#               want: {dim: v}, need: {dim: v}, asked: {dim: v}, dims: [...], ints: {dim: true},
#               eps: {dim: slack}}   (want/need/asked: base.needs(); the constants: base's)
# ARGV[5]: JSON base.hold_keys(). A transcription of base.plan_grant() and base.do_grant():
# the check must run on the server to be atomic there.
_LUA_GRANT = _LUA_PRELUDE + r"""
sweep()
local req = cjson.decode(ARGV[4])
local rooms = {}
for _, sl in ipairs(req.scopes) do
  for _, per in ipairs({'total', 'day'}) do
    local lims = sl[per]
    if lims ~= nil and next(lims) ~= nil then
      local pkey = (per == 'total') and 'total' or req.today
      local h = redis.call('HGETALL', P .. 'l:' .. sl.scope .. '|' .. pkey)
      local used, odim = {}, nil
      for i = 1, #h, 2 do
        local c, d, v = string.sub(h[i], 1, 1), string.sub(h[i], 3), tonumber(h[i + 1])
        if c == 'o' then
          if v ~= 0 and (odim == nil or d < odim) then odim = d end
        else
          used[d] = (used[d] or 0) + v
        end
      end
      if odim ~= nil then
        return {'refuse', sl.scope, per, odim, num(req.need[odim] or 0), '0', '1'}
      end
      for d, lim in pairs(lims) do
        local room = lim - (used[d] or 0)
        if room < 0 then room = 0 end
        if req.ints[d] then room = math.floor(room + SNAP) end
        if rooms[d] == nil or room < rooms[d][1] then rooms[d] = {room, sl.scope, per} end
      end
    end
  end
end
local amounts, worst, degraded = {}, nil, nil
for _, d in ipairs(req.dims) do
  local r = rooms[d]
  if r ~= nil then
    local room = r[1]
    local w, need, eps = req.want[d], req.need[d], req.eps[d]
    if room + eps < need or (room <= 0 and (w == nil or w > 0)) then
      local ratio = 0
      if need > 0 then ratio = room / need end
      if worst == nil or ratio < worst[1] then worst = {ratio, r[2], r[3], d, req.asked[d], room} end
    elseif w == nil then
      amounts[d] = room
    elseif room + eps >= w then
      amounts[d] = w
    else
      amounts[d] = room
      local ratio = 1
      if w > 0 then ratio = room / w end
      if degraded == nil or ratio < degraded[1] then degraded = {ratio, r[2] .. ' ' .. r[3] .. ' ' .. d} end
    end
  end
end
if worst ~= nil then
  return {'refuse', worst[2], worst[3], worst[4], num(worst[5]), num(worst[6]), '0'}
end
local parts = {}
for d, v in pairs(amounts) do parts[#parts + 1] = '"' .. d .. '":' .. num(v) end
if #parts > 0 then
  for _, k in ipairs(cjson.decode(ARGV[5])) do add(k[1], k[2], 'h', amounts) end
end
local gk = P .. 'g:' .. req.id
local expires = now + req.ttl
local body = '{"a":{' .. table.concat(parts, ',') .. '},"k":' .. ARGV[5] .. '}'
redis.call('HSET', gk, 'state', 'held', 'expires', num(expires), 'body', body)
redis.call('ZADD', P .. 'exp', num(expires), req.id)
local out = {'ok', degraded and degraded[2] or ''}
for d, v in pairs(amounts) do out[#out + 1] = d; out[#out + 1] = num(v) end
return out
"""

# ARGV[4]: grant id; ARGV[5]: JSON {dim: actual} or "" (release); ARGV[6]: usd slack.
# A transcription of base.settle_deltas() and base.do_settle().
_LUA_SETTLE = _LUA_PRELUDE + r"""
sweep()
local gk = P .. 'g:' .. ARGV[4]
local st = redis.call('HGET', gk, 'state')
if not st then return {} end
local body = cjson.decode(redis.call('HGET', gk, 'body'))
local live = (st == 'held')
local actual = nil
if ARGV[5] ~= '' then actual = cjson.decode(ARGV[5]) end
local spent, excess = {}, {}
if actual ~= nil then
  for d, a in pairs(actual) do
    local h = body.a[d]
    if h ~= nil then
      local over = a - h
      local eps = (d == 'usd') and tonumber(ARGV[6]) or 0
      if over > eps then excess[d] = over end
      if live then spent[d] = a elseif over > 0 then spent[d] = over end
    else
      spent[d] = a
    end
  end
end
for _, k in ipairs(body.k) do
  if live then add(k[1], k[2], 'h', neg(body.a)) end
  add(k[1], k[2], 's', spent)
  local marks = {}
  for _, d in ipairs(k[3]) do if excess[d] ~= nil then marks[d] = excess[d] end end
  add(k[1], k[2], 'o', marks)
end
redis.call('DEL', gk)
redis.call('ZREM', P .. 'exp', ARGV[4])
local out = {}
for d, v in pairs(excess) do out[#out + 1] = d; out[#out + 1] = num(v) end
return out
"""

# ARGV[4]: ledger row key suffix "scope|pkey"; ARGV[5]: "read" or "clear". Sweeps first.
_LUA_ROW = _LUA_PRELUDE + r"""
sweep()
local key = P .. 'l:' .. ARGV[4]
if ARGV[5] == 'clear' then
  local h = redis.call('HKEYS', key)
  for _, f in ipairs(h) do
    if string.sub(f, 1, 1) == 'o' then redis.call('HDEL', key, f) end
  end
  return {}
end
return redis.call('HGETALL', key)
"""


# Hash field prefixes of the row columns ("s:tokens", ...).
_FIELD = {"spent": "s", "held": "h", "over": "o"}


class RedisStore(ColumnReads):
    """Shared ledgers in Redis: gateways on several machines share them (extra ``redis``).

    Check-and-hold, settle and the ttl sweep are Lua scripts, so each runs
    atomically on the server. Keys live under ``prefix`` (default
    ``testtime:``); a single Redis (or a primary) is assumed -- the scripts
    touch keys they compute, which Redis Cluster does not allow.

    Args:
        url: ``redis://[:password@]host:port/db``; ``?prefix=NAME`` sets the key prefix.
        clock: wall-clock source in epoch seconds (sent to the scripts); injectable for tests.
    """

    def __init__(self, url: str, *, clock: Clock = time.time, prefix: str | None = None) -> None:
        try:
            import redis
        except ImportError as e:
            raise MissingDependency("redis", "redis", "the Redis ledger store") from e
        self._url, in_url = split_redis_url(url)
        # Shown in messages and reprs: no password (nor the query, which may hold ?password=).
        self._where = redact_url(self._url.split("?", 1)[0])
        self.prefix = prefix if prefix is not None else in_url if in_url is not None else DEFAULT_PREFIX
        self._clock = clock
        self._redis_errors = (redis.RedisError,)
        try:
            self._r = redis.Redis.from_url(self._url, decode_responses=True, socket_timeout=30,
                                           socket_connect_timeout=10)
            self._r.ping()
        except (redis.RedisError, ValueError) as e:
            raise UserError(f"cannot reach the Redis ledger store at {self._where}: "
                            f"{type(e).__name__}: {e}; start redis-server there or fix the URL") from e
        self._grant = self._r.register_script(_LUA_GRANT)
        self._settle = self._r.register_script(_LUA_SETTLE)
        self._row = self._r.register_script(_LUA_ROW)

    def __repr__(self) -> str:
        return f"RedisStore({self._where!r}, prefix={self.prefix!r})"

    def _call(self, script: Any, *args: Any) -> Any:
        try:
            return script(keys=[], args=[self.prefix, repr(float(self._clock())), repr(TOMBSTONE_S), *args])
        except self._redis_errors as e:
            raise LedgerUnavailable(f"Redis ledger store at {self._where} failed: {type(e).__name__}: {e}") from e

    def grant(self, scopes: Sequence[ScopeLimits], want: Budget, *, minimum: Budget | None = None,
              ttl_s: float = 3600) -> Grant:
        """Atomically hold up to ``want`` on every scope and period (see :class:`LedgerStore`)."""
        check_grant_args(scopes, want, minimum, ttl_s)
        today = day_key(float(self._clock()))
        n = needs(want, minimum)
        gid = uuid.uuid4().hex
        req = {
            "id": gid, "ttl": float(ttl_s), "today": today,
            "scopes": [{"scope": sl.scope, "total": sl.limits("total"), "day": sl.limits("day")}
                       for sl in scopes],
            "want": n.want, "need": n.need, "asked": n.asked,
            "dims": list(STORE_DIMENSIONS), "ints": {d: True for d in INT_DIMS},
            "eps": {d: USD_EPS if d == "usd" else 0.0 for d in STORE_DIMENSIONS},
        }
        keys = [[s, p, list(d)] for s, p, d in hold_keys(scopes, today)]
        # Empty dicts must reach Lua as objects and the keys' dimension lists as
        # arrays; cjson cannot tell an empty table's kind, so the body is built from this text.
        out = self._call(self._grant, json.dumps(req), json.dumps(keys, separators=(",", ":")))
        if out[0] == "refuse":
            _tag, scope, period, dim, requested, remaining, over = out
            raise LimitRefused(scope, period, dim, float(requested), float(remaining),
                               overdrawn=over == "1")
        amounts = {out[i]: float(out[i + 1]) for i in range(2, len(out), 2)}
        return Grant(gid, granted_budget(want, amounts), bool(out[1]), out[1] or None)

    def settle(self, grant_id: str, actual: Usage) -> dict[str, float]:
        """Replace the hold by ``actual``; returns dimension -> excess over the hold (empty: fit)."""
        out = self._call(self._settle, grant_id, json.dumps(usage_amounts(actual)), repr(USD_EPS))
        return {out[i]: float(out[i + 1]) for i in range(0, len(out), 2)}

    def release(self, grant_id: str) -> None:
        """Drop the hold, charging nothing (the request sent no call)."""
        self._call(self._settle, grant_id, "", repr(USD_EPS))

    def _read_column(self, scope: str, period: str, column: str) -> dict[str, float]:
        pkey = period_key(period, float(self._clock()))
        flat = self._call(self._row, f"{scope}|{pkey}", "read")
        prefix = _FIELD[column]
        vals = {}
        for i in range(0, len(flat), 2):
            c, _, d = flat[i].partition(":")
            if c == prefix:
                vals[d] = float(flat[i + 1])
        return vals

    def clear_overdrawn(self, scope: str, period: str = "total") -> None:
        """Admit grants on an overdrawn scope again (an operator's decision)."""
        self._call(self._row, f"{scope}|{period_key(period, float(self._clock()))}", "clear")

    def close(self) -> None:
        """Close the connection pool."""
        try:
            self._r.close()
        except self._redis_errors:
            pass
