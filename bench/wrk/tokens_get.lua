-- GET a path with one of many credentials per request (bench/perf.py).
-- Templated: @PATH@, @FILE@ (one header value per line), @HEADER@ (header name).
local values = {}
for line in io.lines("@FILE@") do values[#values + 1] = line end
local n = #values
local i = 0
function init(args)
  i = math.random(n)
end
function request()
  i = i % n + 1
  return wrk.format("GET", "@PATH@", { ["@HEADER@"] = values[i] })
end
