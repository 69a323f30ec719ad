-- JSON for llmux: a private lua-cjson instance (user settings never leak in or out) plus the
-- normalisation Debian's cjson 2.1.0 needs: it decodes every number as a float, so integral
-- values (token counts, `created`, `index`) are turned back into Lua integers.
local cjson = require "cjson"

local type, next, pcall = type, next, pcall
local tointeger = math.tointeger

local J = cjson.new()
J.decode_invalid_numbers(false)   -- no NaN/Infinity/hex from a provider
J.encode_invalid_numbers(false)   -- and none sent: raise instead
J.encode_number_precision(14)     -- the most 2.1.0 allows

local M = { _VERSION = "0.1.0" }
local null = J.null
M.null = null

-- Integral floats become integers; JSON null object members are dropped (so
-- `msg.content == nil` works as Lua code expects); nulls inside arrays stay `llmux.json.null`
-- to keep positions.
local function normalize(t)
  for k, v in next, t do
    local tv = type(v)
    if tv == "number" then
      local i = tointeger(v)
      if i then t[k] = i end
    elseif tv == "table" then
      normalize(v)
    elseif v == null and type(k) == "string" then
      t[k] = nil
    end
  end
  return t
end
M.normalize = normalize

-- decode(s) -> value | nil, message. Never raises on bad input.
function M.decode(s)
  local ok, v = pcall(J.decode, s)
  if not ok then return nil, v end
  local tv = type(v)
  if tv == "table" then return normalize(v) end
  if tv == "number" then return tointeger(v) or v end
  if v == null then return nil, "JSON null" end
  return v
end

-- encode(v) -> string | nil, message (functions, NaN, cyclic or mixed tables).
function M.encode(v)
  local ok, s = pcall(J.encode, v)
  if not ok then return nil, s end
  return s
end

return M
