-- Deterministic stream content from a seed, shared by the mock (LuaJIT, doubles) and the
-- specs (Lua 5.4, integers): Park-Miller's generator stays exact in both (16807 * 2^31 is
-- far below 2^53). pieces(seed, bytes) -> array of content pieces, about bytes in all; each
-- starts with its number in angle brackets, so a duplicated, lost or reordered piece shows.
local M = {}

local MOD = 2147483647

local function rng(seed)
  local x = seed % MOD
  if x <= 0 then x = x + MOD - 1 end
  return function(n)   -- an integer in [0, n)
    x = (x * 16807) % MOD
    return x % n
  end
end
M.rng = rng

-- Plain letters mostly; now and then bytes the encoder must escape (quote, backslash, slash,
-- line breaks, tab, a control byte) and multibyte UTF-8.
local PLAIN = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;-"
local SPECIAL = { '"', "\\", "/", "\n", "\r", "\t", "\1", "\195\169", "\230\188\162",
  "\240\159\152\128", "data: ", "\n\n", "[DONE]" }

function M.pieces(seed, bytes)
  local r = rng(seed * 7919 + 17)
  local out, total, k = {}, 0, 0
  while total < bytes do
    k = k + 1
    local len
    local pick = r(100)
    if pick < 2 then len = 1000 + r(7000)      -- a long piece now and then
    elseif pick < 10 then len = 0              -- just the tag
    else len = r(48) end
    local parts = { "<", tostring(k), ">" }
    for i = 1, len do
      if r(40) == 0 then
        parts[#parts + 1] = SPECIAL[r(#SPECIAL) + 1]
      else
        local c = r(#PLAIN) + 1
        parts[#parts + 1] = PLAIN:sub(c, c)
      end
      if i > 16000 then break end
    end
    local p = table.concat(parts)
    out[k] = p
    total = total + #p
  end
  return out
end

return M
