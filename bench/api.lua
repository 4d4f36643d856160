-- wrk script for bench/api.py: JSON API requests with a bearer key.
--
--   wrk -t T -c T -d 10s -s bench/api.lua http://127.0.0.1:PORT -- MODE KEY CONTACTS T OUT TAG
--
-- MODE      "lookup" (POST /v1/contacts/lookup, one address of the CONTACTS seeded ones),
--           "lookup-batch" (the same with 1,000 addresses), or "consent" (POST /v1/consents,
--           a new address each, subscribed to `newsletter`)
-- KEY       the API key (Bearer)
-- CONTACTS  how many contacts were seeded: c0@bench.example.com .. c{N-1}@…
-- T         the number of threads; run with as many connections as threads
-- OUT       where done() writes the figures (JSON, as bench/tokens.lua does)
-- TAG       makes the consent addresses of this run new

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
failed = 0

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
  if status ~= 200 then
    failed = failed + 1
    if failed < 3 then
      io.stderr:write("status " .. status .. ": " .. body .. "\n")
    end
  end
end

function done(summary, latency, requests)
  local n_failed = 0
  for _, thread in ipairs(threads) do
    n_failed = n_failed + thread:get("failed")
  end
  local out = io.open(threads[1]:get("out_path"), "w")
  local e = summary.errors
  out:write(string.format(
    '{"requests": %d, "duration_us": %d, "bytes": %d, "non_200": %d, "acked": 0, '
      .. '"replays": 0, "errors": {"connect": %d, "read": %d, "write": %d, "status": %d, '
      .. '"timeout": %d}, "latency_us": {"mean": %.1f, "max": %d, "p50": %d, "p90": %d, '
      .. '"p95": %d, "p99": %d, "p999": %d}}\n',
    summary.requests, summary.duration, summary.bytes, n_failed,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90),
    latency:percentile(95), latency:percentile(99), latency:percentile(99.9)))
  out:close()
end
