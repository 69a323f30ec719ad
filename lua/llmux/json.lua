-- JSON for llmux. Decoding is core.json_decode (src/json.c): strict RFC 8259 in one C pass that
-- already gives what llmux wants (integral numbers as Lua integers, null members dropped).
-- Encoding is a private lua-cjson instance (user settings never leak in or out). normalize()
-- stays for data decoded by a plain cjson: Debian's 2.1.0 decodes every number as a float.
local cjson = require "cjson"
local core = require "llmux.core"

local type, next, pcall, tostring = type, next, pcall, tostring
local tointeger = math.tointeger
local json_decode = core.json_decode

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

-- decode(s) -> value | nil, message. Never raises on bad input. A top-level null gives
-- nil, "JSON null"; numbers are taken as their text, as cjson did.
function M.decode(s)
  local ts = type(s)
  if ts ~= "string" then
    if ts ~= "number" then return nil, "llmux.json: expected a string, got " .. ts end
    s = tostring(s)
  end
  return json_decode(s)
end

-- encode(v) -> string | nil, message (functions, NaN, cyclic or mixed tables).
function M.encode(v)
  local ok, s = pcall(J.encode, v)
  if not ok then return nil, s end
  return s
end

return M
