-- wrk script for scripts/bench --driver wrk. Run with as many threads as connections
-- (wrk -t N -c N): each thread then holds one connection, and the thread's cookie is that
-- connection's session, kept from its Set-Cookie and sent back like a browser would.
-- WRK_PATH is the measured route; the first request goes to WRK_SETUP to make the session.
local cookie = nil
local answered = false
local path = os.getenv("WRK_PATH") or "/counter"
local setup = os.getenv("WRK_SETUP") or "/counter"

-- The request is formatted again only when its path or cookie changes: the client's own work
-- per request shares the cores with the server, so it must not grow with a cookie.
local formatted = nil

request = function()
  if not formatted then
    local headers = {}
    if cookie then
      headers["Cookie"] = cookie
    end
    formatted = wrk.format("GET", answered and path or setup, headers)
  end
  return formatted
end

response = function(status, headers, body)
  if not answered then
    answered = true
    formatted = nil
  end
  for name, value in pairs(headers) do
    if string.lower(name) == "set-cookie" then
      local pair = string.match(value, "^([^;]*)")
      -- A removal (empty value) drops the cookie, as a browser would.
      local kept = nil
      if pair and string.find(pair, "=.") then
        kept = pair
      end
      if pair and kept ~= cookie then
        cookie = kept
        formatted = nil
      end
    end
  end
end

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("requests=%d errors=%d seconds=%.3f p50_us=%d p99_us=%d\n",
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    summary.duration / 1e6, latency:percentile(50), latency:percentile(99)))
end
