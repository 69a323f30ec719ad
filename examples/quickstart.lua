-- llmux quickstart: one chat, one streamed answer, then a batch with a progress bar, failures
-- reported clearly.
-- Talks to LLMUX_BASE_URL with LLMUX_API_KEY (any OpenAI-compatible endpoint); `make demo`
-- starts a local mock upstream and points these at it when they are not set.
local llmux = require "llmux"

local model = os.getenv("LLMUX_MODEL") or "gpt-4.1-mini"
local n = tonumber(os.getenv("LLMUX_DEMO_N")) or 300
local c = llmux.client{ timeout = 60, max_retries = 2 }

-- 1. One chat: the response as the provider sent it, and what it cost to get it.
local res, info = c:chat{
  model = model,
  messages = { { role = "user", content = "Say hello in five words." } },
}
if not res then
  io.stderr:write("chat failed: ", tostring(info), "\n")   -- info is the message on failure
  os.exit(1)
end
print("answer:  " .. res.choices[1].message.content)
local keys = {}
for k in pairs(info) do keys[#keys + 1] = k end
table.sort(keys)
for _, k in ipairs(keys) do
  local v = info[k]
  if k == "usage" then
    v = string.format("prompt=%d completion=%d total=%d", v.prompt_tokens or 0,
      v.completion_tokens or 0, v.total_tokens or 0)
  elseif k == "head" then   -- the raw header block: show the parsed headers instead
    k, v = "headers", "content-type " .. tostring(info.headers["content-type"]) .. ", ..."
  end
  print(string.format("  info.%-18s %s", k, tostring(v)))
end

-- 2. A streamed answer: text as it arrives, then the assembled completion and its info.
local s, msg, code = c:chat_stream{
  model = model,
  messages = { { role = "user", content = "Count from one to ten." } },
  stream_options = { include_usage = true },
}
if not s then
  io.stderr:write("stream failed: [", tostring(code), "] ", tostring(msg), "\n")
  os.exit(1)
end
io.write("stream:  ")
for text in s:deltas() do io.write(text) io.flush() end
io.write("\n")
local final, sinfo, scode = s:result()
if not final then
  io.stderr:write("stream failed: [", tostring(scode), "] ", tostring(sinfo), "\n")
  os.exit(1)
end
print(string.format("  finish %s, ttft %.4f s, %d tokens%s", final.choices[1].finish_reason,
  sinfo.ttft or 0, sinfo.usage.total_tokens, sinfo.usage_estimated and " (estimated)" or ""))

-- 3. A batch of n questions; two of them (one when n < 4) ask for a model that does not exist,
-- to show how failures come back (code, message) without stopping the batch.
local items = {}
for i = 1, n do items[i] = { q = "What is " .. i .. " + " .. i .. "?", model = model } end
if n >= 4 then
  items[2].model, items[n - 1].model = "context", "context"
elseif n >= 1 then
  items[1].model = "context"
end

local results, failures = llmux.map(items, function(item)
  local r, msg, code, detail = c:chat{
    model = item.model,
    messages = { { role = "user", content = item.q } },
  }
  if not r then return nil, msg, code, detail end
  return r.choices[1].message.content
end, { concurrency = 32, progress = true })

print(string.format("batch:   %d items, %d answered, %d failed", n, n - #failures, #failures))
print("first:   " .. tostring(results[1]))
for _, f in ipairs(failures) do
  print(string.format("failed:  item %d: [%s] %s", f.index, f.code or "error", f.message))
end
