-- A mixed load (bench/soak.py): mostly GET /auth/me with bearer access tokens, every
-- @REFRESH_EVERY@th request a refresh (rotation), every @LOGIN_EVERY@th a login. A refresh or
-- login answer's refresh token joins the thread's pool and its access token replaces the
-- oldest in the thread's ring, so the tokens stay live however long the run.
-- Templated: @ACCESS@ (access tokens), @REFRESH@ (refresh tokens), @EMAILS@, @PASSWORD@,
-- @THREADS@, @REFRESH_EVERY@, @LOGIN_EVERY@.
local counter = 0
function setup(thread)
  thread:set("tid", counter)
  counter = counter + 1
end
function init(args)
  access, pool, emails = {}, {}, {}
  for line in io.lines("@ACCESS@") do access[#access + 1] = line end
  local k = 0
  for line in io.lines("@REFRESH@") do
    if k % @THREADS@ == tid then pool[#pool + 1] = line end
    k = k + 1
  end
  for line in io.lines("@EMAILS@") do emails[#emails + 1] = line end
  n, i, j, e = 0, math.random(#access), 0, math.random(#emails)
end
local json = { ["Content-Type"] = "application/json", ["X-Auth-Transport"] = "bearer" }
function request()
  n = n + 1
  if n % @LOGIN_EVERY@ == 0 then
    e = e % #emails + 1
    return wrk.format("POST", "/auth/login", json,
      '{"email":"' .. emails[e] .. '","password":"@PASSWORD@"}')
  end
  if n % @REFRESH_EVERY@ == 0 and #pool > 0 then
    return wrk.format("POST", "/auth/refresh", json,
      '{"refresh_token":"' .. table.remove(pool, 1) .. '"}')
  end
  i = i % #access + 1
  return wrk.format("GET", "/auth/me", { ["Authorization"] = "Bearer " .. access[i] })
end
function response(status, headers, body)
  if status == 200 then
    local t = string.match(body, '"refresh_token"%s*:%s*"([^"]+)"')
    if t then
      pool[#pool + 1] = t
      local a = string.match(body, '"access_token"%s*:%s*"([^"]+)"')
      if a then j = j % #access + 1; access[j] = a end
    end
  end
end
