-- `make demo`: runs examples/quickstart.lua against LLMUX_BASE_URL when it is set, otherwise
-- against the loopback mock upstream, which it starts and stops around the run.
local base = os.getenv("LLMUX_BASE_URL")
-- The interpreter running this script (make demo's $(LUA)) runs the example too.
local LUA = arg and arg[-1] or "lua5.4"

-- -> exit status of the example
local function run(env)
  local lua = "'" .. LUA:gsub("'", "'\\''") .. "'"
  local _, _, code = os.execute(env .. lua .. " examples/quickstart.lua")
  return code
end

if base and base ~= "" then os.exit(run("")) end

local upstream = require "helpers.upstream"
local u = upstream.start{}
print("llmux demo: local mock upstream at " .. u.http .. " (set LLMUX_BASE_URL and LLMUX_API_KEY "
  .. "to use a real provider)")
local ok, code = pcall(run, "LLMUX_BASE_URL=" .. u.http .. " LLMUX_API_KEY=sk-demo ")
u:stop()
if not ok then io.stderr:write(tostring(code), "\n") end
os.exit(ok and code or 1)
