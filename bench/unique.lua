-- bench/safety.sh with BENCH_UNIQUE=1: the kit's request (../shared/bench/post.lua) with a user
-- message that differs on every request, so no verdict is ever served from the screener's cache.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
local n = 0
request = function()
  n = n + 1
  local body = '{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful support assistant."},'
    .. '{"role":"user","content":"My order ' .. n .. ' has not arrived yet. What can I do?"}],"max_tokens":64}'
  return wrk.format(nil, nil, nil, body)
end
