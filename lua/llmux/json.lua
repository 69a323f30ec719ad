-- JSON for llmux, both ways in C. Decoding is core.json_decode (src/json.c): strict RFC 8259 in
-- one pass that already gives what llmux wants (integral numbers as Lua integers, null members
-- dropped). Encoding is core.json_encode (src/json_encode.c): cjson's rules for tables, but
-- integers written exactly and floats with the digits they need (cjson 2.1.0 writes 14).
-- normalize() stays for data decoded by a plain cjson: Debian's 2.1.0 decodes every number as
-- a float.
local core = require "llmux.core"

local type, next, tostring, getmetatable, setmetatable = type, next, tostring, getmetatable,
  setmetatable
local tointeger = math.tointeger
local json_decode = core.json_decode

local M = { _VERSION = "0.1.0" }
local null = core.json_null   -- lightuserdata NULL, as cjson.null
M.null = null

-- JSON arrays that may be empty (OpenResty cjson's names): a table whose metatable is array_mt
-- is encoded as an array even when it is empty ({} alone is an object), and empty_array is [].
-- Decoded empty arrays carry array_mt, so a response's [] goes back out as [].
M.array_mt = core.json_array_mt
M.empty_array = core.json_empty_array

-- array([t]) -> t (a new table when none), marked to be encoded as a JSON array.
function M.array(t)
  if t == nil then t = {} end
  if type(t) ~= "table" then error("llmux.json.array: expected a table, got " .. type(t), 2) end
  local mt = getmetatable(t)
  if mt ~= nil and mt ~= M.array_mt then
    error("llmux.json.array: the table already has a metatable", 2)
  end
  return setmetatable(t, M.array_mt)
end

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
-- nil, "JSON null"; numbers are taken as their text, as cjson did (written by the encoder:
-- tostring would use the locale's decimal point).
function M.decode(s)
  local ts = type(s)
  if ts ~= "string" then
    if ts ~= "number" then return nil, "llmux.json: expected a string, got " .. ts end
    local text, err = core.json_encode(s)
    if not text then return nil, err end
    s = text
  end
  return json_decode(s)
end

-- encode(v) -> string | nil, message (a function, NaN, a boolean key, a cycle or nesting
-- past 1000, an excessively sparse array; the message names where). Never raises on bad input.
M.encode = core.json_encode

return M
