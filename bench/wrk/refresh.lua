-- Bearer refresh with rotation (bench/perf.py). Each thread owns a pool of refresh tokens:
-- a request takes one, its 200 puts the successor back; done() writes the pools to @OUT@
-- so the next run continues with live tokens. Templated: @FILE@, @OUT@.
local threads = {}
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
  table.insert(threads, thread)
end
function init(args)
  pool = {}
  local k = 0
  for line in io.lines("@FILE@") do
    if k % @THREADS@ == tid then pool[#pool + 1] = line end
    k = k + 1
  end
  lost = 0
end
function request()
  local t = table.remove(pool, 1)
  if t == nil then t = "x.y.z"; lost = lost + 1 end
  return wrk.format("POST", "/auth/refresh",
    { ["Content-Type"] = "application/json", ["X-Auth-Transport"] = "bearer" },
    '{"refresh_token":"' .. t .. '"}')
end
function response(status, headers, body)
  if status == 200 then
    local t = string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
    if t then pool[#pool + 1] = t end
  end
end
function done(summary, latency, requests)
  local f = io.open("@OUT@", "w")
  for _, thread in ipairs(threads) do
    local p = thread:get("pool")
    if p then for _, t in ipairs(p) do f:write(t, "\n") end end
  end
  f:close()
end
