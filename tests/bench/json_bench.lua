-- Decode cost per document: the old path (lua-cjson 2.1.0 + normalize) against core.json_decode.
--
--   make && lua5.4 tests/bench/json_bench.lua          (from the repo root)
--
-- Env: JSON_BENCH_MS time per measurement (300), JSON_BENCH_ROUNDS rounds (5); the median of
-- the rounds is reported, in ns of CPU per decode.
local json = require "llmux.json"
local core = require "llmux.core"
local cjson = require "cjson"

local MS = tonumber(os.getenv("JSON_BENCH_MS")) or 300
local ROUNDS = tonumber(os.getenv("JSON_BENCH_ROUNDS")) or 5

local old = cjson.new()
local normalize, tointeger, null = json.normalize, math.tointeger, json.null
local function old_decode(s)   -- llmux.json.decode before src/json.c
  local ok, v = pcall(old.decode, s)
  if not ok then return nil, v end
  local tv = type(v)
  if tv == "table" then return normalize(v) end
  if tv == "number" then return tointeger(v) or v end
  if v == null then return nil, "JSON null" end
  return v
end

-- What tests/upstream/mock.lua sends for a chat completion, grown to about 600 bytes.
local mock = cjson.encode{
  id = "chatcmpl-1234", object = "chat.completion", created = 1718000000,
  model = "gpt-4o-mini",
  choices = { { index = 0, finish_reason = "stop", message = { role = "assistant",
    content = "echo: Summarise the following paragraph in one sentence, keeping the names. "
      .. "The quick brown fox jumps over the lazy dog while the \"cat\" watches.\nThen the "
      .. "dog wakes up, barks twice and chases the fox across the field until sunset. "
      .. "Nobody wins, and everyone goes home tired but happy." } } },
  usage = { prompt_tokens = 98, completion_tokens = 97, total_tokens = 195 },
}
-- A real provider adds nulls and nested usage details.
local openai = [[{"id":"chatcmpl-9Xq2ZkP4hTnYb7e3LwQvR8sD1fGh","object":"chat.completion",]]
  .. [["created":1718000000,"model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":]]
  .. [[{"role":"assistant","content":"Sure! Here is a short answer with a newline\nand a ]]
  .. [[\"quoted\" word, caf\u00e9 included.","refusal":null},"logprobs":null,]]
  .. [["finish_reason":"stop"}],"usage":{"prompt_tokens":42,"completion_tokens":31,]]
  .. [["total_tokens":73,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},]]
  .. [["completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,]]
  .. [["accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},]]
  .. [["service_tier":"default","system_fingerprint":"fp_0ba0d124f1"}]]
local emb = {}
math.randomseed(1)
for i = 1, 1536 do emb[i] = ("%.8f"):format(math.random() * 0.2 - 0.1) end
local embeddings = '{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
  .. table.concat(emb, ",") .. ']}],"model":"text-embedding-3-small",'
  .. '"usage":{"prompt_tokens":8,"total_tokens":8}}'

-- ns of CPU per call of f(doc), median over ROUNDS timed runs of about MS each.
local function measure(f, doc)
  local n, t0 = 1, 0
  repeat   -- calibrate the count for one run
    n = n * 2
    t0 = os.clock()
    for _ = 1, n do f(doc) end
  until (os.clock() - t0) * 1000 > MS / 10
  n = math.ceil(n * 10)
  local r = {}
  for i = 1, ROUNDS do
    collectgarbage()
    t0 = os.clock()
    for _ = 1, n do f(doc) end
    r[i] = (os.clock() - t0) / n * 1e9
  end
  table.sort(r)
  return r[(ROUNDS + 1) // 2]
end

print(("%-34s %7s %12s %12s %12s %7s"):format("document", "bytes", "old ns", "new ns",
  "core ns", "speedup"))
for _, c in ipairs{ { "mock chat.completion", mock }, { "OpenAI-style chat.completion", openai },
    { "embeddings (1536 floats)", embeddings } } do
  local name, doc = c[1], c[2]
  assert(json.decode(doc) and old_decode(doc))
  local o = measure(old_decode, doc)
  local n = measure(json.decode, doc)
  local k = measure(core.json_decode, doc)
  print(("%-34s %7d %12.0f %12.0f %12.0f %6.1fx"):format(name, #doc, o, n, k, o / n))
end
