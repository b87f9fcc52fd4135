-- wrk script for bench/run.sh: cycles through a list of requests.
--
-- Usage: wrk ... -s bench/wrk.lua URL -- REQUESTS_FILE THREADS
-- REQUESTS_FILE has one request per line: METHOD <TAB> PATH <TAB> BODY (BODY may be empty).
-- Each wrk thread starts at its own offset in the list (thread k of n at k/n of it), so
-- together they cycle through every request. Every request carries a JSON content type
-- and a bearer token, as a Graph client sends them.
--
-- At the end one line `WRKJSON {...}` reports the counts and latency percentiles
-- (microseconds). `status` counts responses with a status above 399, as wrk does; a
-- replay miss (599) is one of them.

local next_thread = 0

function setup(thread)
   thread:set("thread_index", next_thread)
   next_thread = next_thread + 1
end

local prepared = {}
local count = 0
local position = 0

function init(args)
   local path = args[1]
   local threads = tonumber(args[2] or "1")
   if path == nil or threads == nil or threads < 1 then
      error("usage: wrk ... -s wrk.lua URL -- REQUESTS_FILE THREADS")
   end
   local file, problem = io.open(path, "r")
   if file == nil then
      error("cannot open the requests file: " .. tostring(problem))
   end
   local headers = {
      ["Content-Type"] = "application/json",
      ["Authorization"] = "Bearer x",
   }
   for line in file:lines() do
      local method, target, body = line:match("^(%u+)\t([^\t]+)\t(.*)$")
      if method == nil then
         error("malformed line " .. (count + 1) .. " in " .. path)
      end
      if body == "" then
         body = nil
      end
      count = count + 1
      prepared[count] = wrk.format(method, target, headers, body)
   end
   file:close()
   if count == 0 then
      error("no requests in " .. path)
   end
   position = math.floor(count * (thread_index or 0) / threads)
end

function request()
   position = position + 1
   if position > count then
      position = 1
   end
   return prepared[position]
end

function done(summary, latency, requests)
   local errors = summary.errors
   io.write(string.format(
      'WRKJSON {"requests":%d,"duration_us":%d,"connect":%d,"read":%d,"write":%d,' ..
      '"status":%d,"timeout":%d,"p50_us":%d,"p99_us":%d,"mean_us":%.1f,"max_us":%d}\n',
      summary.requests, summary.duration, errors.connect, errors.read, errors.write,
      errors.status, errors.timeout, latency:percentile(50), latency:percentile(99),
      latency.mean, latency.max))
end
