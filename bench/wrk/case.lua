-- One benchmark case for wrk, configured by environment variables (bench.py sets them):
--   BENCH_METHOD     GET or POST
--   BENCH_BODY_FILE  file whose content is sent as the JSON body (POST)
--   BENCH_TOKEN      bearer token for the Authorization header (optional)
--   BENCH_RESULT     file that done() writes the case's JSON result to
-- Every response is checked: non-2xx statuses are counted per code, and the
-- first one's body is kept for the report.

local method = os.getenv("BENCH_METHOD") or "GET"
local body_file = os.getenv("BENCH_BODY_FILE")
local token = os.getenv("BENCH_TOKEN")
local result_file = os.getenv("BENCH_RESULT")

wrk.method = method
if body_file and body_file ~= "" then
   local f = assert(io.open(body_file, "rb"))
   wrk.body = f:read("*a")
   f:close()
   wrk.headers["Content-Type"] = "application/json"
end
if token and token ~= "" then
   wrk.headers["Authorization"] = "Bearer " .. token
end

-- Per-thread state (each wrk thread has its own Lua state).
responses = 0
non2xx = 0
statuses = {}
first_error = nil

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function response(status, headers, body)
   responses = responses + 1
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
      if first_error == nil then
         first_error = string.sub(body or "", 1, 300)
      end
   end
end

local function json_string(s)
   s = string.gsub(s, '[%c"\\]', function(c)
      return string.format("\\u%04x", string.byte(c))
   end)
   return '"' .. s .. '"'
end

function done(summary, latency, requests)
   local total_responses, total_non2xx, by_status, sample = 0, 0, {}, nil
   for _, thread in ipairs(threads) do
      total_responses = total_responses + thread:get("responses")
      total_non2xx = total_non2xx + thread:get("non2xx")
      for code, n in pairs(thread:get("statuses")) do
         by_status[code] = (by_status[code] or 0) + n
      end
      sample = sample or thread:get("first_error")
   end
   local parts = {}
   for code, n in pairs(by_status) do
      table.insert(parts, string.format('"%s":%d', code, n))
   end
   local e = summary.errors
   local out = string.format(
      '{"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"latency_us":{"min":%d,"mean":%.1f,"max":%d,"stdev":%.1f,'
      .. '"p50":%d,"p90":%d,"p99":%d,"p999":%d},'
      .. '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},'
      .. '"responses":%d,"non2xx":%d,"non2xx_by_status":{%s},"first_non2xx_body":%s}',
      summary.requests, summary.duration, summary.bytes,
      latency.min, latency.mean, latency.max, latency.stdev,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9),
      e.connect, e.read, e.write, e.timeout,
      total_responses, total_non2xx, table.concat(parts, ","),
      sample and json_string(sample) or "null")
   if result_file and result_file ~= "" then
      local f = assert(io.open(result_file, "w"))
      f:write(out)
      f:close()
   else
      io.write(out .. "\n")
   end
end
