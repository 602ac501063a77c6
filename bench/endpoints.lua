-- bench/endpoints.sh: one request shape per endpoint, chosen by BENCH_ENDPOINT (chat, messages,
-- responses, embeddings); each asks the same thing of the same fixed upstream.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "sk-bench")
local endpoint = os.getenv("BENCH_ENDPOINT") or "chat"
local question = "My order 1234 has not arrived yet. What can I do?"
local bodies = {
  chat = '{"model":"bench-model","messages":[{"role":"system","content":"You are a helpful support assistant."},'
    .. '{"role":"user","content":"' .. question .. '"}],"max_tokens":64}',
  messages = '{"model":"bench-model","system":"You are a helpful support assistant.","max_tokens":64,'
    .. '"messages":[{"role":"user","content":"' .. question .. '"}]}',
  responses = '{"model":"bench-model","instructions":"You are a helpful support assistant.","max_output_tokens":64,'
    .. '"input":"' .. question .. '","store":false}',
  embeddings = '{"model":"bench-embed","input":["' .. question .. '"]}',
}
wrk.body = bodies[endpoint]
