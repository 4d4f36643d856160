-- wrk script for bench/api.py: JSON API requests with a bearer key.
--
--   wrk -t T -c T -d 10s -s bench/api.lua http://127.0.0.1:PORT -- MODE KEY CONTACTS T OUT TAG
--
-- MODE      "lookup" (POST /v1/contacts/lookup, one address of the CONTACTS seeded ones),
--           "lookup-batch" (the same with 1,000 addresses), "consent" (POST /v1/consents,
--           a new address each, subscribed to `newsletter`), or "floor-get" (bench/floor_app's
--           GET /u/{token}: one indexed SELECT, of a random token)
-- KEY       the API key (Bearer)
-- CONTACTS  how many contacts were seeded: c0@bench.example.com .. c{N-1}@…
-- T         the number of threads; run with as many connections as threads
-- OUT       where done() writes the figures (JSON, as bench/tokens.lua does)
-- TAG       makes the consent addresses of this run new
--
-- Latency is timed here, per request, from the moment wrk asks for it (just before it is
-- written: one connection per thread) to its answer: the p99 of the requests this closed loop
-- of T connections made. wrk's own figures (written as `wrk_latency_us`) add, for every
-- answer slower than twice the mean interval, the answers a constant-rate client would have
-- waited for meanwhile ("coordinated omission" correction): on this 2-core machine one stall
-- of a server process (the machine's scheduler, ~0.5-2 s when other work runs) becomes
-- hundreds of samples of up to that stall, and the p99 of a run whose requests took 20 ms at
-- their 99th percentile reads 400-1,500 ms. Both are written; the table uses the first.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
int clock_gettime(int clock_id, bench_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("bench_timespec")

local function now_us()
  ffi.C.clock_gettime(CLOCK_MONOTONIC, timespec)
  return tonumber(timespec.tv_sec) * 1000000 + tonumber(timespec.tv_nsec) / 1000
end

local counter = 0
local threads = {}

function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

local mode = "lookup"
local contacts = 1
local tag = "x"
local sent = 0
local headers = {}
local started = nil
failed = 0
latencies = {}

function init(args)
  mode = args[1]
  contacts = tonumber(args[3])
  out_path = args[5]
  tag = args[6]
  headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. args[2],
    ["User-Agent"] = "bench-api",
  }
  math.randomseed(os.time() + tid * 7919)
end

local function address()
  return '"c' .. math.random(0, contacts - 1) .. '@bench.example.com"'
end

function request()
  sent = sent + 1
  started = now_us()
  if mode == "floor-get" then
    return wrk.format("GET", "/u/floor." .. math.random(0, 99999) .. "." .. tag, headers)
  end
  if mode == "lookup" then
    return wrk.format("POST", "/v1/contacts/lookup", headers, '{"emails":[' .. address() .. ']}')
  end
  if mode == "lookup-batch" then
    local parts = {}
    for i = 1, 1000 do
      parts[i] = address()
    end
    return wrk.format(
      "POST", "/v1/contacts/lookup", headers, '{"emails":[' .. table.concat(parts, ",") .. ']}'
    )
  end
  local body = '{"email":"n' .. tag .. "-" .. tid .. "-" .. sent
    .. '@bench.example.com","topic":"newsletter","status":"subscribed","source":"bench"}'
  return wrk.format("POST", "/v1/consents", headers, body)
end

function response(status, headers, body)
  if started ~= nil then
    latencies[#latencies + 1] = now_us() - started
    started = nil
  end
  if status ~= 200 then
    failed = failed + 1
    if failed < 3 then
      io.stderr:write("status " .. status .. ": " .. body .. "\n")
    end
  end
end

local function percentile(sorted, q)
  if #sorted == 0 then
    return 0
  end
  return sorted[math.max(1, math.ceil(#sorted * q / 100))]
end

function done(summary, latency, requests)
  local n_failed = 0
  local all = {}
  local total = 0
  for _, thread in ipairs(threads) do
    n_failed = n_failed + thread:get("failed")
    for _, value in ipairs(thread:get("latencies")) do
      all[#all + 1] = value
      total = total + value
    end
  end
  table.sort(all)
  local out = io.open(threads[1]:get("out_path"), "w")
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "non_200": %d, "acked": 0, '
      .. '"replays": 0, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d}, "latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, '
      .. '"p95": %d, "p99": %d, "p999": %d, "timed": %d}, '
      .. '"wrk_latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, '
      .. '"p95": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes, n_failed,
    e.connect, e.read, e.write, e.status, e.timeout,
    #all > 0 and total / #all or 0, all[#all] or 0, percentile(all, 50), percentile(all, 90),
    percentile(all, 95), percentile(all, 99), percentile(all, 99.9), #all,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
  out:close()
end
