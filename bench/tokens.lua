-- wrk script for bench/one_click.py: one token per request, read from a file.
--
--   wrk -t T -c T -d 10s -s bench/tokens.lua http://127.0.0.1:PORT -- TOKENS MODE T OUT
--
-- TOKENS  a file with one token per line
-- MODE    "post" (RFC 8058 one-click, each token used once: thread k takes tokens k, k+T, ...)
--         or "get" (a scanner: a random token per request)
-- T       the number of threads; run with as many connections as threads, so each thread has
--         exactly one connection and every answer belongs to the request sent just before it
-- OUT     where done() writes the figures (JSON) and OUT.acked the tokens answered with 200
--
-- In "post" mode (one connection per thread) latency is timed here, per request, from just
-- before it is written to its answer: the percentiles of the requests this closed loop made.
-- wrk's own figures (written as `wrk_latency_us`, and used for "get", whose threads hold
-- several connections each) add, for every answer slower than twice the mean interval, the
-- answers a constant-rate client would have waited for meanwhile (the "coordinated omission"
-- correction, wrk.c's stats_correct): one stall of a server process on this 2-core machine
-- becomes many samples of up to that stall. bench/api.lua does the same.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } tokens_timespec;
int clock_gettime(int clock_id, tokens_timespec *tp);
]])
local CLOCK_MONOTONIC = 1
local timespec = ffi.new("tokens_timespec")

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

local tokens = {}
local mode = "get"
local nthreads = 1
local next_index = 1
local pending = nil
local started = nil
acked = {}
latencies = {}
failed = 0
exhausted = 0

local one_click_body = "List-Unsubscribe=One-Click"
local post_headers = {
  ["Content-Type"] = "application/x-www-form-urlencoded",
  ["User-Agent"] = "bench-one-click",
}
local get_headers = { ["User-Agent"] = "bench-scanner" }

function init(args)
  out_path = args[4]
  mode = args[2]
  nthreads = tonumber(args[3])
  local i = 0
  for line in io.lines(args[1]) do
    if mode ~= "post" or i % nthreads == tid then
      tokens[#tokens + 1] = line
    end
    i = i + 1
  end
  if #tokens == 0 then
    error("no tokens for thread " .. tid .. " in " .. args[1])
  end
  math.randomseed(os.time() + tid * 7919)
end

function request()
  local token
  if mode == "post" then
    if next_index > #tokens then
      exhausted = exhausted + 1
      next_index = 1 -- out of fresh tokens: replays are still a full write; reported
    end
    token = tokens[next_index]
    next_index = next_index + 1
    pending = token
    started = now_us()
    return wrk.format("POST", "/u/" .. token, post_headers, one_click_body)
  end
  token = tokens[math.random(#tokens)]
  pending = token
  return wrk.format("GET", "/u/" .. token, get_headers)
end

function response(status, headers, body)
  if started ~= nil then
    latencies[#latencies + 1] = now_us() - started
    started = nil
  end
  if status == 200 then
    if mode == "post" and pending ~= nil then
      acked[#acked + 1] = pending
    end
  else
    failed = failed + 1
  end
  pending = nil
end

local function percentile(sorted, q)
  return sorted[math.max(1, math.ceil(#sorted * q / 100))]
end

function done(summary, latency, requests)
  local n_acked, n_failed, n_exhausted = 0, 0, 0
  local timed, total = {}, 0
  for _, thread in ipairs(threads) do
    n_failed = n_failed + thread:get("failed")
    n_exhausted = n_exhausted + thread:get("exhausted")
    for _, value in ipairs(thread:get("latencies")) do
      timed[#timed + 1] = value
      total = total + value
    end
  end
  table.sort(timed)
  local path = threads[1]:get("out_path")
  local out = io.open(path, "w")
  local acked_file = io.open(path .. ".acked", "w")
  for _, thread in ipairs(threads) do
    local list = thread:get("acked")
    for _, token in ipairs(list) do
      acked_file:write(token, "\n")
      n_acked = n_acked + 1
    end
  end
  acked_file:close()
  local e = summary.errors
  local wrk_figures = string.format(
    '{"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d, "p999": %d}',
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9))
  local own_figures = wrk_figures
  if #timed > 0 then
    own_figures = string.format(
      '{"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p95": %d, "p99": %d, "p999": %d}',
      total / #timed, timed[#timed], percentile(timed, 50), percentile(timed, 90),
      percentile(timed, 95), percentile(timed, 99), percentile(timed, 99.9))
  end
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "non_200": %d, "acked": %d, '
      .. '"replays": %d, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d}, "timed": %d, "latency_us": %s, "wrk_latency_us": %s}\n',
    summary.requests, summary.duration, summary.bytes, n_failed, n_acked, n_exhausted,
    e.connect, e.read, e.write, e.status, e.timeout, #timed, own_figures, wrk_figures))
  out:close()
end
