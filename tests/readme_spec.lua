-- The README's Lua blocks, run as they are written against the loopback mock, so the README
-- cannot drift from the code: every ```lua block of README.md, in order, as one chunk (later
-- blocks use what earlier ones made: `c`, `img`, `m`), with its lines where the README has them. Only what a reader supplies is changed:
-- the base URL, the file names of the image block, and the globals the blocks take as given
-- (`questions`, `msgs`). Every client call the blocks make is recorded, and each must succeed,
-- even where the README does not check its result.
local llmux = require "llmux"
local upstream = require "helpers.upstream"
local B = require "helpers.bed"

-- lua_code(text) -> the README's ```lua blocks as one chunk, every other line left blank, so
-- an error names the README's own line; and how many blocks there were.
local function lua_code(text)
  local lines, inside, blocks = {}, false, 0
  for line in (text .. "\n"):gmatch("(.-)\n") do
    local fence = line:match("^```(%w*)")
    if fence and not inside and fence == "lua" then
      inside, blocks = true, blocks + 1
      line = ""
    elseif fence and inside then
      inside, line = false, ""
    elseif not inside then
      line = ""
    end
    lines[#lines + 1] = line
  end
  return table.concat(lines, "\n"), blocks
end

-- plain(s, from, to): s with every `from` replaced by `to`, which must occur at least once (a
-- README that no longer says `from` fails here, rather than running with the reader's value).
local function plain(s, from, to)
  local i, out, n = 1, {}, 0
  while true do
    local a, b = s:find(from, i, true)
    if not a then break end
    out[#out + 1] = s:sub(i, a - 1) .. to
    i, n = b + 1, n + 1
  end
  assert(n > 0, "the README's blocks no longer contain " .. from)
  out[#out + 1] = s:sub(i)
  return table.concat(out)
end

-- A client whose every call is recorded: the blocks ignore some results (c:inpaint{...}).
local function recording(calls)
  return function(opts)
    local real = llmux.client(opts)
    return setmetatable({}, { __index = function(_, name)
      local method = real[name]
      if type(method) ~= "function" then return method end
      return function(_, ...)
        local r = table.pack(method(real, ...))
        calls[#calls + 1] = { name = name, ok = r[1] ~= nil, msg = r[2], code = r[3] }
        return table.unpack(r, 1, r.n)
      end
    end })
  end
end

describe("README", function()
  local u, mask_path
  setup(function()
    u = upstream.start{}
    mask_path = os.tmpname()
  end)
  teardown(function()
    if u then u:stop() end
    os.remove(mask_path)
  end)

  it("has Lua blocks that run as written and whose every call succeeds", function()
    local readme = assert(io.open("README.md", "rb"))
    local src, blocks = lua_code(readme:read("a"))
    readme:close()
    assert.is_true(blocks >= 4, "README.md has " .. blocks .. " lua blocks")
    src = plain(src, '"https://api.example.com/v1"', ("%q"):format(u.http))
    -- the image block's files: a photo from PngSuite and a mask the size of it
    local photo = B.pngsuite("basn2c08.png")
    local size = assert(llmux.image.load(photo))
    local mask = llmux.image.mask(size:width(), size:height(), "left_half")
    local f = assert(io.open(mask_path, "wb"))
    f:write((assert(mask:encode_png())))
    f:close()
    src = plain(src, '"photo.png"', ("%q"):format(photo))
    src = plain(src, '"mask.png"', ("%q"):format(mask_path))

    local calls, out = {}, {}
    local fake = setmetatable({ client = recording(calls) }, { __index = llmux })
    local env = setmetatable({
      require = function(name)
        if name == "llmux" then return fake end
        return require(name)
      end,
      os = setmetatable({ getenv = function(k)
        if k == "KEY" then return "sk-readme" end
        return os.getenv(k)
      end }, { __index = os }),
      io = setmetatable({ write = function(...)
        for _, s in ipairs{ ... } do out[#out + 1] = tostring(s) end
      end }, { __index = io }),
      print = function(...)
        local t = table.pack(...)
        for i = 1, t.n do t[i] = tostring(t[i]) end
        out[#out + 1] = table.concat(t, "\t") .. "\n"
      end,
      questions = { "one", "two", "three" },
      msgs = { { role = "user", content = "stream me" } },
    }, { __index = _G })
    local chunk = assert(load(src, "=README.md", "t", env))
    chunk()

    for _, call in ipairs(calls) do
      assert.is_true(call.ok, ("c:%s failed: %s: %s"):format(call.name, tostring(call.code),
        tostring(call.msg)))
    end
    local names = {}
    for _, call in ipairs(calls) do names[call.name] = (names[call.name] or 0) + 1 end
    assert.same({ chat = 1 + 3, chat_stream = 1, images_edit = 1, inpaint = 1, outpaint = 1 },
      names)
    local text = table.concat(out)
    -- the first block prints the answer and its attempts; the map's failures print nothing
    assert.truthy(text:find("echo: Hello!\t1\t", 1, true), text)
    assert.falsy(text:find("failed: ", 1, true), text)
    -- the stream block writes the streamed text, then prints ttft and the usage
    assert.truthy(text:find("stream me", 1, true), text)
  end)
end)
