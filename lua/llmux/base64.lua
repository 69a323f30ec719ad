-- llmux.base64: RFC 4648 base64 in C (src/b64.c), strict on decode.
local core = require "llmux.core"
local sched = require "llmux.sched"
local type, pairs, error, tostring = type, pairs, error, tostring
local c_encode, c_decode = core.b64_encode, core.b64_decode
local job_encode, job_decode = core.job_b64_encode, core.job_b64_decode
local can_offload, offload = sched.can_offload, sched.offload

local M = {
  _VERSION = "0.1.0",
  -- Inside a task, inputs of at least this many bytes are coded on a worker thread while the
  -- task yields. 2 MiB is about 1 ms inline; the hop to a worker and back costs 0.1 to 0.2 ms.
  pool_min_bytes = 2 << 20,
}

-- prefix .. the base64 of s, written as one string: a data: URL's head concatenated after
-- was one more copy of megabytes (llmux.image's data_uri and part; prefix: 64 bytes at most).
local function encode(s, prefix)
  if #s >= M.pool_min_bytes and can_offload() then
    local job = job_encode(s, prefix)
    if job then return offload(job) end
  end
  return c_encode(s, prefix)
end
M._encode = encode

-- encode(s) -> string
function M.encode(s)
  if type(s) ~= "string" then
    error("bad argument #1 to 'base64.encode' (string expected, got " .. type(s) .. ")", 2)
  end
  return encode(s)
end

-- decode(s[, {ignore_whitespace = true}]) -> string | nil, msg, "decode"
-- Strict: only the standard alphabet, groups of four, '=' padding only at the end and zero
-- bits under it. With ignore_whitespace, ASCII blanks (as in MIME's 76-column lines) are
-- skipped.
function M.decode(s, opts)
  if type(s) ~= "string" then
    error("bad argument #1 to 'base64.decode' (string expected, got " .. type(s) .. ")", 2)
  end
  local ws = false
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("bad argument #2 to 'base64.decode' (table expected, got " .. type(opts) .. ")", 2)
    end
    for k in pairs(opts) do
      if k ~= "ignore_whitespace" then
        error("bad argument #2 to 'base64.decode' (unknown option '" .. tostring(k) .. "')", 2)
      end
    end
    ws = opts.ignore_whitespace and true or false
  end
  if #s >= M.pool_min_bytes and can_offload() then
    local job = job_decode(s, ws)
    if job then return offload(job) end
  end
  return c_decode(s, ws)
end

return M
