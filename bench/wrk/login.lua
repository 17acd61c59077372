-- Bearer logins cycling through the users (bench/perf.py). Templated: @FILE@ (emails), @PASSWORD@.
local emails = {}
for line in io.lines("@FILE@") do emails[#emails + 1] = line end
local n = #emails
local i = 0
function init(args) i = math.random(n) end
function request()
  i = i % n + 1
  return wrk.format("POST", "/auth/login",
    { ["Content-Type"] = "application/json", ["X-Auth-Transport"] = "bearer" },
    '{"email":"' .. emails[i] .. '","password":"@PASSWORD@"}')
end
