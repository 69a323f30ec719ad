-- llmux.image: PNG decode/encode on libpng (src/image.c), transforms, masks, outpaint
-- canvases, data URIs and vision parts. PngSuite is the corpus; Pillow, when /usr/bin/python3
-- has it, is the independent decoder the pixels are compared with.
local llmux = require "llmux"
local image = llmux.image
local base64 = llmux.base64

local SUITE = require("helpers.bed").pngsuite("basn0g01.png"):match("^(.*)/")

local function readfile(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function suite_files()
  local p = assert(io.popen("ls " .. SUITE .. "/*.png"))
  local list = {}
  for line in p:lines() do list[#list + 1] = line:match("[^/]+$") end
  p:close()
  assert(#list > 150, "PngSuite not found at " .. SUITE)
  return list
end

-- CRC-32 (PNG's), so tests can craft chunks libpng accepts.
local CRC = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do c = (c & 1) ~= 0 and (0xEDB88320 ~ (c >> 1)) or (c >> 1) end
  CRC[i] = c
end
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do c = CRC[(c ~ s:byte(i)) & 0xFF] ~ (c >> 8) end
  return c ~ 0xFFFFFFFF
end
local function chunk(kind, data)
  return string.pack(">I4", #data) .. kind .. data .. string.pack(">I4", crc32(kind .. data))
end
local SIG = "\137PNG\r\n\26\n"
local function ihdr(w, h, depth, ctype)
  return chunk("IHDR", string.pack(">I4I4BBBBB", w, h, depth or 8, ctype or 2, 0, 0, 0))
end

-- What the file's own header says: width, height, colour type, and whether it has tRNS.
local function header_facts(s)
  local w, h, depth, ctype = string.unpack(">I4I4BB", s, 17)
  local trns, pos = false, 9
  while pos + 8 <= #s do
    local len, kind = string.unpack(">I4c4", s, pos)
    if kind == "tRNS" then trns = true end
    if kind == "IEND" then break end
    pos = pos + 12 + len
  end
  return w, h, depth, ctype, trns
end

local function px(...) return string.char(...) end

-- image.load of the PNG bytes s in a process of its own -> tostring(img), code, message and
-- that process's peak resident KiB (this one's peak is the other tests').
local function load_apart(s)
  local path = os.tmpname()
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  local out = require "helpers.script"([[
    local image = require "llmux.image"
    local img, msg, code = image.load(arg[1])
    local f = io.open("/proc/self/status")
    local kib = f:read("a"):match("VmHWM:%s*(%d+)")
    f:close()
    io.write(tostring(img), "|", code, "|", msg, "|", kib)
  ]], path)
  os.remove(path)
  local img, code, msg, kib = out:match("^(.-)|(.-)|(.-)|(%d+)$")
  assert(kib, out)
  return img, code, msg, tonumber(kib)
end

describe("image decode: PngSuite", function()
  local files = suite_files()

  it("decodes every valid image to its header's size and the implied channels", function()
    local n = 0
    for _, name in ipairs(files) do
      if name:sub(1, 1) ~= "x" then
        local s = readfile(SUITE .. "/" .. name)
        local img, msg = image.decode(s)
        assert(img, name .. ": " .. tostring(msg))
        local w, h, _, ctype, trns = header_facts(s)
        assert.equals(w, img:width(), name)
        assert.equals(h, img:height(), name)
        local want = ({ [0] = 1, [2] = 3, [3] = 3, [4] = 2, [6] = 4 })[ctype]
        if trns then want = want + 1 end
        assert.equals(want, img:channels(), name)
        assert.equals(w * h * want, #img:pixels(), name)
        n = n + 1
      end
    end
    assert.is_true(n >= 150)
  end)

  it("survives decode(encode_png(img)) unchanged at every level", function()
    for i, name in ipairs(files) do
      if name:sub(1, 1) ~= "x" then
        local img = assert(image.load(SUITE .. "/" .. name))
        for _, level in ipairs{ nil, 0, (i % 9) + 1 } do
          local png = img:encode_png{ level = level }
          assert.equals("image/png", image.sniff(png))
          local back = assert(image.decode(png))
          assert.equals(img:channels(), back:channels(), name)
          assert.equals(img:width(), back:width(), name)
          assert.is_true(img:pixels() == back:pixels(), name .. " level " .. tostring(level))
        end
      end
    end
  end)

  it("fails every corrupt x* file with decode and a message", function()
    local n = 0
    for _, name in ipairs(files) do
      if name:sub(1, 1) == "x" then
        local img, msg, code = image.load(SUITE .. "/" .. name)
        assert.is_nil(img, name)
        assert.equals("decode", code, name)
        assert.matches("^llmux%.image: .+", msg)
        n = n + 1
      end
    end
    assert.is_true(n >= 14)
  end)

  local has_pil = os.execute("/usr/bin/python3 -c 'import PIL' 2>/dev/null")
  local pil_it = has_pil and it or pending
  pil_it("gives the same RGBA pixels as Pillow for every valid image", function()
    local names, paths = {}, {}
    for _, name in ipairs(files) do
      if name:sub(1, 1) ~= "x" then
        names[#names + 1] = name
        paths[#paths + 1] = SUITE .. "/" .. name
      end
    end
    local p = assert(io.popen("/usr/bin/python3 tests/helpers/pil_rgba.py "
      .. table.concat(paths, " ")))
    local seen = 0
    for line in p:lines() do
      local name, w, h, hex = line:match("^(%S+) (%d+) (%d+) (%x*)$")
      assert(name, "bad helper line")
      local want = hex:gsub("%x%x", function(b) return string.char(tonumber(b, 16)) end)
      local img = assert(image.load(SUITE .. "/" .. name))
      assert.equals(tonumber(w), img:width(), name)
      assert.equals(tonumber(h), img:height(), name)
      local got = img:to_rgba():pixels()
      if got ~= want then
        local i = 1
        while got:byte(i) == want:byte(i) do i = i + 1 end
        error(("%s: pixels differ from Pillow's at byte %d (%d vs %d)"):format(name, i,
          got:byte(i) or -1, want:byte(i) or -1))
      end
      seen = seen + 1
    end
    p:close()
    assert.equals(#names, seen)
  end)
end)

describe("image decode: bad input", function()
  local good = readfile(SUITE .. "/basn2c08.png")

  it("fails every truncation of a valid file with decode", function()
    for len = 0, #good - 1 do
      local img, msg, code = image.decode(good:sub(1, len))
      assert.is_nil(img, "length " .. len)
      assert.equals("decode", code, "length " .. len)
      assert.is_string(msg)
    end
    assert.is_not_nil(image.decode(good))
  end)

  it("fails flipped bytes with decode or decodes, never crashes", function()
    for i = 9, #good, 7 do
      local s = good:sub(1, i - 1) .. string.char(good:byte(i) ~ 0x55) .. good:sub(i + 1)
      local img, msg, code = image.decode(s)
      if not img then
        assert.equals("decode", code)
        assert.is_string(msg)
      end
    end
  end)

  it("refuses a header claiming 100000 x 100000 pixels before allocating them", function()
    local s = SIG .. ihdr(100000, 100000) .. chunk("IDAT", "") .. chunk("IEND", "")
    local img, msg, code = image.decode(s)
    assert.is_nil(img)
    assert.equals("toolarge", code)
    assert.matches("100000x100000", msg)
    assert.matches("max_pixels", msg)
  end)

  it("says where a truncated PNG ends, not its whole size as the shortfall", function()
    local png = image.new(64, 64, 3):encode_png()
    local img, msg, code = image.decode(png:sub(1, #png - 20))
    assert.is_nil(img)
    assert.equals("decode", code)
    assert.matches("truncated: the data ends after " .. (#png - 20) .. " bytes", msg, 1, true)
    assert.matches("more expected", msg, 1, true)
  end)

  -- The IDAT data of a PNG, joined: a zlib stream tests can put under another header.
  local function idat_of(png)
    local parts, pos = {}, 9
    while pos + 8 <= #png do
      local len, kind = string.unpack(">I4c4", png, pos)
      if kind == "IDAT" then parts[#parts + 1] = png:sub(pos + 8, pos + 7 + len) end
      pos = pos + 12 + len
    end
    return table.concat(parts)
  end

  it("refuses compressed data that goes on far past the image (an inflate bomb)", function()
    -- libpng inflated all of it after the last row, to check the stream's end: 2 MB of zlib
    -- under a 1x1 header was 2 GB of zeros and 5 s of CPU
    local zeros = idat_of(image.new(4096, 4096, 1):encode_png{ level = 1 })
    assert.is_true(#zeros > 32 * 1024)
    local img, msg, code = image.decode(SIG .. ihdr(1, 1, 8, 0) .. chunk("IDAT", zeros)
      .. chunk("IEND", ""))
    assert.is_nil(img)
    assert.equals("decode", code)
    assert.matches("bad PNG: the compressed image data goes on past the image", msg, 1, true)
    -- interlaced: the last row is the last of the last pass with columns (zeros are a valid
    -- Adam7 stream of any size, each row filter 0)
    for _, wh in ipairs{ { 3, 3 }, { 1, 1 }, { 9, 2 } } do
      img, msg, code = image.decode(SIG .. chunk("IHDR", string.pack(">I4I4BBBBB", wh[1],
        wh[2], 8, 0, 0, 0, 1)) .. chunk("IDAT", zeros) .. chunk("IEND", ""))
      assert.is_nil(img)
      assert.equals("decode", code)
      assert.matches("goes on past the image", msg, 1, true)
    end
    -- a little left over (here a second row the header does not have) is no bomb: decoded,
    -- as Pillow and browsers do
    local two = idat_of(image.new(1, 2, 1, "\9"):encode_png())
    img = assert(image.decode(SIG .. ihdr(1, 1, 8, 0) .. chunk("IDAT", two) .. chunk("IEND", "")))
    assert.equals("\7", img:pixels())
  end)

  it("allocates no more than the pixels max_pixels allows for a tall image's header", function()
    -- decode kept a pointer per row besides the pixels: 8 bytes a row, so a 68-byte PNG
    -- declaring 1 x 8192^2 gray pixels (64 MiB, within max_pixels) had 512 MiB more written
    -- before its missing data was noticed.
    local img, code, msg, kib = load_apart(SIG .. ihdr(1, 8192 * 8192, 8, 0)
      .. chunk("IDAT", "") .. chunk("IEND", ""))
    assert.equals("nil", img)
    assert.equals("decode", code)
    assert.is_true(kib < 200 * 1024, kib .. " KiB at the peak, " .. msg)
  end)

  it("refuses rows so wide that libpng's row buffers would outweigh the pixels", function()
    -- libpng reads a row into two buffers of 8 bytes a pixel at 16 bits: a 67108864 x 1
    -- 16-bit RGBA header (within max_pixels) had 1 GiB allocated before its missing data was
    -- noticed.
    local w = 8192 * 8192
    local img, code, msg, kib = load_apart(SIG .. ihdr(w, 1, 16, 6) .. chunk("IDAT", "")
      .. chunk("IEND", ""))
    assert.equals("nil", img)
    assert.equals("toolarge", code)
    assert.matches(("image is %dx1: rows this wide take libpng 1024 MiB of row buffers, more "
      .. "than the pixels and over 64 MiB"):format(w), msg, 1, true)
    assert.is_true(kib < 200 * 1024, kib .. " KiB at the peak, " .. msg)
    local _, m, c = image.decode(SIG .. ihdr(16 << 20, 1, 8, 3) .. chunk("PLTE", "\0\0\0")
      .. chunk("IDAT", "") .. chunk("IEND", ""))   -- 8-bit palette: RGB, 3 bytes a pixel, twice
    assert.equals("toolarge", c)
    assert.matches("take libpng 96 MiB of row buffers", m, 1, true)
    -- buffers within 64 MiB, or no more than the pixels: allowed (here cut short)
    for _, case in ipairs{ { 4 << 20, 1, 8, 6 }, { 4 << 20, 1, 16, 6 }, { 5 << 20, 4, 16, 6 } } do
      local _, m, c = image.decode(SIG .. ihdr(table.unpack(case)) .. chunk("IDAT", "")
        .. chunk("IEND", ""))
      assert.equals("decode", c, m)
    end
  end)

  it("sizes libpng's row buffers by the pixel they hold, not the widest one", function()
    -- libpng widens a pixel only as far as the transforms take it: 8-bit gray stays a byte,
    -- gray + alpha two, RGB three. Such rows were taken for 4 bytes a pixel and refused,
    -- though their buffers stay within 64 MiB or the pixels' size (here cut short).
    for _, case in ipairs{ { 24 << 20, 2, 8, 0 }, { 16 << 20, 2, 8, 4 }, { 16 << 20, 2, 8, 2 },
                           { 8 << 20, 3, 16, 0 } } do
      local _, m, c = image.decode(SIG .. ihdr(table.unpack(case)) .. chunk("IDAT", "")
        .. chunk("IEND", ""))
      assert.equals("decode", c, m)
      assert.matches("Not enough image data", m, 1, true)
    end
    -- tRNS adds an alpha channel there: the figure in the message is what libpng would take
    local w = 16 << 20
    for _, case in ipairs{ { 16, 0, "\0\0", 128 }, { 8, 0, "\0\0", 64 }, { 8, 3, "\0", 128 },
                           { 16, 2, ("\0"):rep(6), 256 } } do
      local depth, ctype, trns, mib = table.unpack(case)
      local s = SIG .. ihdr(w, 1, depth, ctype) .. (ctype == 3 and chunk("PLTE", "\0\0\0") or "")
        .. chunk("tRNS", trns) .. chunk("IDAT", "") .. chunk("IEND", "")
      local _, m, c = image.decode(s)
      if mib > 64 then
        assert.equals("toolarge", c, m)
        assert.matches(("take libpng %d MiB of row buffers"):format(mib), m, 1, true)
      else
        assert.equals("decode", c, m)
      end
    end
  end)

  it("names the per-side limit, not max_pixels, for a side llmux cannot hold", function()
    local side = llmux.core.image_max_side
    local s = SIG .. ihdr(side + 1, 1, 8, 0) .. chunk("IDAT", "") .. chunk("IEND", "")
    local img, msg, code = image.decode(s, { max_pixels = 1 << 40 })
    assert.is_nil(img)
    assert.equals("toolarge", code)
    assert.matches(("image is %dx1, over the limit of %d pixels per side"):format(side + 1,
      side), msg, 1, true)
    assert.not_matches("max_pixels", msg)
  end)

  it("honours max_pixels per call and as a module setting", function()
    local img, msg, code = image.decode(good, { max_pixels = 1023 })
    assert.is_nil(img)
    assert.equals("toolarge", code)
    assert.matches("1023", msg)
    assert.is_not_nil(image.decode(good, { max_pixels = 1024 }))
    local old = image.max_pixels
    image.configure{ max_pixels = 100 }
    local ok, err = pcall(function()
      local i2, _, c2 = image.decode(good)
      assert.is_nil(i2)
      assert.equals("toolarge", c2)
      local i3, _, c3 = image.load(SUITE .. "/basn0g08.png")
      assert.is_nil(i3)
      assert.equals("toolarge", c3)
    end)
    image.configure{ max_pixels = old }
    assert(ok, err)
    assert.equals(8192 * 8192, image.max_pixels)
  end)

  it("fails zero sizes with decode", function()
    for _, wh in ipairs{ { 0, 10 }, { 10, 0 }, { 0, 0 } } do
      local s = SIG .. ihdr(wh[1], wh[2]) .. chunk("IEND", "")
      local img, msg, code = image.decode(s)
      assert.is_nil(img)
      assert.equals("decode", code)
      assert.matches("IHDR", msg)
    end
  end)

  it("fails non-PNG bytes with decode", function()
    for _, s in ipairs{ "", "hello", "\255\216\255\224\0\16JFIF", "GIF89a", SIG } do
      local img, msg, code = image.decode(s)
      assert.is_nil(img)
      assert.equals("decode", code)
      assert.is_string(msg)
    end
  end)

  it("reports file errors as io", function()
    local img, msg, code = image.load("/nonexistent/x.png")
    assert.is_nil(img)
    assert.equals("io", code)
    assert.matches("/nonexistent/x.png", msg, 1, true)
    img, msg, code = image.load("/")
    assert.is_nil(img)
    assert.equals("io", code)
    assert.is_true(llmux.errors.CODES.io)
  end)

  it("raises on wrong argument types and unknown options", function()
    assert.has_error(function() image.decode(nil) end,
      "bad argument #1 to 'image.decode' (string expected, got nil)")
    assert.has_error(function() image.decode({}) end)
    assert.has_error(function() image.decode(good, { max_pixel = 5 }) end,
      "bad argument #2 to 'image.decode' (unknown option 'max_pixel')")
    assert.has_error(function() image.decode(good, { max_pixels = 0 }) end)
    assert.has_error(function() image.decode(good, "x") end)
    assert.has_error(function() image.load(42) end)
    assert.has_error(function() image.configure{ max_pixels = -1 } end)
  end)
end)

describe("image objects", function()
  it("new checks its arguments", function()
    local img = image.new(2, 1, 3, px(1, 2, 3, 4, 5, 6))
    assert.equals(2, img:width())
    assert.equals(1, img:height())
    assert.equals(3, img:channels())
    assert.equals(px(1, 2, 3, 4, 5, 6), img:pixels())
    assert.equals(string.rep("\0", 8), image.new(2, 2, 2):pixels())
    assert.has_error(function() image.new(0, 1, 1) end)
    assert.has_error(function() image.new(1, -1, 1) end)
    assert.has_error(function() image.new(1, 1, 5) end)
    assert.has_error(function() image.new("a", 1, 1) end)
    assert.has_error(function() image.new(1.5, 1, 1) end)
    local ok, err = pcall(image.new, 2, 2, 3, "short")
    assert.is_false(ok)
    assert.matches("bad argument #4", err)
    assert.matches("12 bytes, got 5", err)
  end)

  it("closes once, raises on use after close, and says so in tostring", function()
    local img = image.new(3, 2, 4)
    assert.equals("llmux.Image (3x2x4)", tostring(img))
    img:close()
    img:close()
    assert.equals("llmux.Image (closed)", tostring(img))
    for _, m in ipairs{ "width", "height", "channels", "pixels", "to_gray", "to_rgb", "to_rgba",
      "coverage", "encode_png", "fit" } do
      local ok, err = pcall(img[m], img, m == "fit" and { max_side = 1 } or nil)
      assert.is_false(ok, m)
      assert.matches("attempt to use a closed llmux.Image", err, 1, true)
    end
    assert.has_error(function() img:crop(0, 0, 1, 1) end, "attempt to use a closed llmux.Image")
    assert.has_error(function() img:resize(1, 1) end, "attempt to use a closed llmux.Image")
    assert.has_error(function() img:extend{ left = 1 } end, "attempt to use a closed llmux.Image")
    assert.has_error(function() image.data_uri(img) end, "attempt to use a closed llmux.Image")
  end)

  it("closes with <close> and is collectable", function()
    local keep
    do
      local img <close> = image.new(4, 4, 1)
      keep = img
      assert.equals(4, img:width())
    end
    assert.equals("llmux.Image (closed)", tostring(keep))
    for _ = 1, 50 do image.new(512, 512, 4) end
    collectgarbage()
  end)

  -- An image's pixels count as an allocation of their size (a collector step), but never when
  -- the host stopped the collector: a game that collects in its spare frame time had a whole
  -- cycle run inside a frame (58 ms for a 229 MB heap and a 3000 x 3000 to_rgba).
  it("counts its pixels for the collector, unless the host stopped it", function()
    local function made_collects()
      local collected = false
      setmetatable({}, { __gc = function() collected = true end })
      for _ = 1, 100 do
        image.new(512, 512, 4):to_rgb()
        if collected then break end
      end
      return collected
    end
    collectgarbage()
    assert.is_true(made_collects())
    collectgarbage()
    collectgarbage("stop")
    local ok, collected = pcall(made_collects)
    collectgarbage("restart")
    assert.is_true(ok, collected)
    assert.is_false(collected)
    assert.is_true(collectgarbage("isrunning"))
  end)

  it("encode_png checks level and refuses unknown options", function()
    local img = image.new(1, 1, 1)
    assert.has_error(function() img:encode_png{ level = 10 } end)
    assert.has_error(function() img:encode_png{ level = "fast" } end)
    assert.has_error(function() img:encode_png{ level = "6" } end,
      [[bad argument #2 to 'image.encode_png' (level must be an integer 0..9, got "6")]])
    assert.is_true(image.decode(img:encode_png{ level = 6.0 }):pixels() == img:pixels())
    assert.has_error(function() img:encode_png{ filter = 1 } end)
    assert.has_error(function() img.encode_png(42) end)
  end)
end)

describe("image encode: sizes libpng limits by default", function()
  it("encodes an image over a million pixels wide or tall (decode takes such PNGs)", function()
    for _, wh in ipairs{ { 1000001, 1 }, { 1, 1000001 } } do
      local img = assert(image.new(wh[1], wh[2], 1))
      local back = assert(image.decode(img:encode_png()))
      assert.same(wh, { back:width(), back:height() })
      assert.is_true(img:pixels() == back:pixels())
      assert.equals("image/png", image.sniff(image.new(wh[1], wh[2], 3):encode_png{ level = 0 }))
    end
  end)
end)

describe("image transforms", function()
  local rgb = image.new(2, 2, 3, px(255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30))

  local function luma(r, g, b) return (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16 end

  it("converts between channel counts", function()
    assert.equals(px(luma(255, 0, 0), luma(0, 255, 0), luma(0, 0, 255), luma(10, 20, 30)),
      rgb:to_gray():pixels())
    assert.equals(px(255, 0, 0, 255, 0, 255, 0, 255, 0, 0, 255, 255, 10, 20, 30, 255),
      rgb:to_rgba():pixels())
    local ga = image.new(2, 1, 2, px(7, 100, 200, 0))
    assert.equals(px(7, 7, 7, 100, 200, 200, 200, 0), ga:to_rgba():pixels())
    assert.equals(px(7, 7, 7, 200, 200, 200), ga:to_rgb():pixels())
    assert.equals(px(7, 200), ga:to_gray():pixels())
    local rgba = image.new(1, 1, 4, px(1, 2, 3, 4))
    assert.equals(px(1, 2, 3), rgba:to_rgb():pixels())
    assert.equals(px(luma(1, 2, 3)), rgba:to_gray():pixels())
  end)

  it("crops exactly and refuses rectangles outside", function()
    assert.equals(px(0, 0, 255, 10, 20, 30), rgb:crop(0, 1, 2, 1):pixels())
    assert.equals(px(0, 255, 0, 10, 20, 30), rgb:crop(1, 0, 1, 2):pixels())
    assert.has_error(function() rgb:crop(1, 1, 2, 1) end)
    assert.has_error(function() rgb:crop(-1, 0, 1, 1) end)
    assert.has_error(function() rgb:crop(0, 0, 0, 1) end)
  end)

  it("shrinks by area averaging", function()
    local g = image.new(4, 2, 1, px(0, 10, 20, 30, 40, 50, 60, 70))
    assert.equals(px(25, 45), g:resize(2, 1):pixels())            -- 2x2 blocks
    assert.equals(px(35), g:resize(1, 1):pixels())
    assert.equals(px(20, 30, 40, 50), g:resize(4, 1):pixels())      -- vertical pairs
    local g3 = image.new(3, 1, 1, px(0, 90, 180))
    assert.equals(px(30, 150), g3:resize(2, 1):pixels())           -- 1.5 source pixels each
  end)

  it("grows bilinearly between pixel centres", function()
    local g = image.new(2, 1, 1, px(0, 100))
    assert.equals(px(0, 25, 75, 100), g:resize(4, 1):pixels())
    assert.equals(px(0, 25, 75, 100, 0, 25, 75, 100), g:resize(4, 2):pixels())
    assert.equals(px(0, 0, 100, 100), image.new(1, 2, 1, px(0, 100)):resize(2, 2):pixels())
  end)

  it("weights colour by alpha so transparent pixels do not bleed", function()
    local img = image.new(2, 1, 4, px(255, 0, 0, 255, 0, 255, 0, 0))
    assert.equals(px(255, 0, 0, 128), img:resize(1, 1):pixels())
    assert.equals(px(0, 0, 0, 0), image.new(2, 1, 4):resize(1, 1):pixels())
  end)

  it("bounds its working memory by the source or the result, not their product", function()
    -- Each pass works along one axis; done width first, 1 x 2^23 -> 2^23 x 1 needed a float
    -- row of 2^23 for each of the 2^23 source rows (2^48 bytes: "not enough memory"). The
    -- order is picked so the intermediate stays within the larger of the two images.
    local tall = image.new(1, 1 << 23, 1, string.rep("\0\200", 1 << 22))
    local wide = tall:resize(1 << 23, 1)
    -- and the mean of 2^23 samples is summed in double: float sums made it 97, not 100
    assert.equals(string.rep("\100", 1 << 23), wide:pixels())
    tall:close()
    wide:close()
    -- both orders give the same pixels where both are cheap
    local g = image.new(1, 4, 1, px(0, 40, 80, 120))
    assert.equals(px(20, 20, 20, 100, 100, 100), g:resize(3, 2):pixels())
  end)

  it("resizes a PngSuite image to the requested size", function()
    local img = assert(image.load(SUITE .. "/basn6a08.png"))
    for _, wh in ipairs{ { 1, 1 }, { 7, 50 }, { 64, 64 }, { 33, 5 } } do
      local r = img:resize(wh[1], wh[2])
      assert.equals(wh[1], r:width())
      assert.equals(wh[2], r:height())
      assert.equals(4, r:channels())
    end
    assert.has_error(function() img:resize(0, 5) end)
  end)

  it("fits inside max_side and max_pixels, never enlarging", function()
    local img = image.new(200, 100, 3)
    assert.equals(img, img:fit{ max_side = 200 })
    assert.equals(img, img:fit{ max_side = 5000, max_pixels = 20000 })
    local f = img:fit{ max_side = 50 }
    assert.equals(50, f:width())
    assert.equals(25, f:height())
    f = img:fit{ max_pixels = 5000 }
    assert.equals(100, f:width())
    assert.equals(50, f:height())
    f = img:fit{ max_side = 64, max_pixels = 800 }
    assert.is_true(f:width() <= 64 and f:width() * f:height() <= 800)
    assert.equals(40, f:width())
    assert.equals(20, f:height())
    f = image.new(1000, 3, 1):fit{ max_side = 10 }
    assert.equals(10, f:width())
    assert.equals(1, f:height())
    assert.has_error(function() img:fit{} end)
    assert.has_error(function() img:fit{ max_side = 0 } end)
    assert.has_error(function() img:fit{ side = 3 } end)
  end)

  it("fits a long thin image in a few steps, not one per pixel too long", function()
    local img = image.new(1 << 24, 1, 1)
    local steps = 0
    debug.sethook(function() steps = steps + 1 end, "", 1000)
    local ok, r = pcall(img.fit, img, { max_pixels = 1 << 22 })
    debug.sethook()
    assert(ok, r)
    assert.same({ 1 << 22, 1 }, { r:width(), r:height() })
    assert.is_true(steps < 1000, steps .. " thousand instructions")   -- it was 88000
    assert.same({ 3, 1 }, { img:fit{ max_pixels = 3, max_side = 5 }:width(), 1 })
    assert.same({ 5, 1 }, { img:fit{ max_pixels = 30, max_side = 5 }:width(), 1 })
  end)

  it("extends with a colour, the edge or transparency", function()
    local g = image.new(2, 1, 1, px(10, 20))
    local e = g:extend{ left = 1, right = 2, fill = "edge" }
    assert.equals(5, e:width())
    assert.equals(px(10, 10, 20, 20, 20), e:pixels())
    e = g:extend{ top = 1, bottom = 1, fill = "edge" }
    assert.equals(px(10, 20, 10, 20, 10, 20), e:pixels())
    e = g:extend{ right = 1, fill = { 255, 255, 255 } }
    assert.equals(1, e:channels())
    assert.equals(px(10, 20, 255), e:pixels())
    e = g:extend{ left = 1 }                                   -- transparent by default
    assert.equals(2, e:channels())
    assert.equals(px(0, 0, 10, 255, 20, 255), e:pixels())
    local c = image.new(1, 1, 3, px(1, 2, 3)):extend{ bottom = 1, fill = { 9, 8, 7 } }
    assert.equals(px(1, 2, 3, 9, 8, 7), c:pixels())
    c = image.new(1, 1, 3, px(1, 2, 3)):extend{ top = 1, fill = { 9, 8, 7, 6 } }
    assert.equals(px(9, 8, 7, 6, 1, 2, 3, 255), c:pixels())
    assert.has_error(function() g:extend{ left = -1 } end)
    assert.has_error(function() g:extend{ fill = "blue" } end)
    assert.has_error(function() g:extend{ fill = { 1, 2 } } end)
    assert.has_error(function() g:extend{ fill = { 1, 2, 300 } } end)
    assert.has_error(function() g:extend{ width = 3 } end)
  end)
end)

describe("masks", function()
  it("paints rectangles, lists of them and halves", function()
    local m = image.mask(4, 3, { 1, 1, 2, 1 })
    assert.equals(1, m:channels())
    assert.equals(px(0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0), m:pixels())
    m = image.mask(3, 1, { { 0, 0, 1, 1 }, { 2, 0, 5, 5 } })        -- clipped
    assert.equals(px(255, 0, 255), m:pixels())
    assert.equals(px(255, 255, 0), image.mask(3, 1, "left_half"):pixels())
    assert.equals(px(0, 255, 255), image.mask(3, 1, "right_half"):pixels())
    assert.equals(px(255, 0), image.mask(1, 2, "top_half"):pixels())
    assert.equals(px(0, 255), image.mask(1, 2, "bottom_half"):pixels())
    assert.equals(px(255, 255, 255, 255), image.mask(2, 2, "all"):pixels())
    assert.equals(0.5, image.mask(4, 4, "left_half"):coverage())
    assert.equals(1, image.mask(2, 2, "all"):coverage())
    assert.equals(0, image.mask(2, 2, {}):coverage())
    -- a rectangle with names is the same rectangle, alone or in a list; other keys raise
    assert.equals(px(0, 0, 0, 0, 0, 255, 255, 0, 0, 0, 0, 0),
      image.mask(4, 3, { x = 1, y = 1, w = 2, h = 1 }):pixels())
    assert.equals(px(255, 0, 255),
      image.mask(3, 1, { { x = 0, y = 0, w = 1, h = 1 }, { 2, 0, 5, 5 } }):pixels())
    assert.has_error(function() image.mask(2, 2, { x = 0, y = 0, width = 1, height = 1 }) end,
      "bad argument #3 to 'image.mask' (a rectangle is {x, y, w, h} or {x = , y = , w = , h = } with "
      .. "integers)")
    assert.has_error(function() image.mask(2, 2, "middle") end)
    assert.has_error(function() image.mask(2, 2, { 0, 0, -1, 1 }) end)
    assert.has_error(function() image.mask(2, 2, { 0, "a", 1, 1 }) end)
    assert.has_error(function() image.mask(0, 2, "all") end)
    assert.has_error(function() image.mask(2, 2) end)
    assert.has_error(function() image.new(2, 2, 3):coverage() end)
  end)

  it("normalizes gray, RGB and RGBA masks", function()
    local g = image.new(4, 1, 1, px(0, 127, 128, 255))
    local m, inv = image.normalize_mask(g, { invert = false })
    assert.equals(px(0, 0, 255, 255), m:pixels())
    assert.is_false(inv)
    m = image.normalize_mask(g, { invert = false, threshold = 200 })
    assert.equals(px(0, 0, 0, 255), m:pixels())
    m, inv = image.normalize_mask(g, { invert = true })
    assert.equals(px(255, 255, 0, 0), m:pixels())
    assert.is_true(inv)
    -- mostly white: auto (the default) inverts and says so
    m, inv = image.normalize_mask(image.new(4, 1, 1, px(255, 255, 255, 0)))
    assert.equals(px(0, 0, 0, 255), m:pixels())
    assert.is_true(inv)
    m, inv = image.normalize_mask(image.new(4, 1, 1, px(255, 0, 0, 0)), { invert = "auto" })
    assert.equals(px(255, 0, 0, 0), m:pixels())
    assert.is_false(inv)
    -- RGB: luma
    m = image.normalize_mask(image.new(2, 1, 3, px(255, 255, 255, 0, 0, 255)), { invert = false })
    assert.equals(px(255, 0), m:pixels())
    -- RGBA with real alpha: transparent = paint (OpenAI's convention)
    m, inv = image.normalize_mask(image.new(3, 1, 4, px(9, 9, 9, 0, 9, 9, 9, 255, 0, 0, 0, 255)))
    assert.equals(px(255, 0, 0), m:pixels())
    assert.is_false(inv)
    -- opaque RGBA: colour decides
    m = image.normalize_mask(image.new(2, 1, 4, px(255, 255, 255, 255, 0, 0, 0, 255)),
      { invert = false })
    assert.equals(px(255, 0), m:pixels())
    assert.has_error(function() image.normalize_mask(g, { invert = "yes" }) end)
    assert.has_error(function() image.normalize_mask(g, { threshold = 0 }) end)
    assert.has_error(function() image.normalize_mask("x") end)
  end)

  it("checks that mask and image sizes match", function()
    local img = image.new(4, 3, 3)
    assert.is_true(image.check_pair(img, image.mask(4, 3, "all")))
    local ok, msg, code = image.check_pair(img, image.mask(3, 4, "all"))
    assert.is_nil(ok)
    assert.equals("badrequest", code)
    assert.matches("mask is 3x4 but the image is 4x3", msg, 1, true)
    assert.has_error(function() image.check_pair(img, "mask.png") end)
  end)

  it("builds outpaint canvases with the mask of the new area", function()
    local img = image.new(2, 1, 3, px(1, 2, 3, 4, 5, 6))
    local c, m = image.outpaint_canvas(img, { direction = "right", pixels = 2 })
    assert.equals(4, c:width())
    assert.equals(4, c:channels())
    assert.equals(px(1, 2, 3, 255, 4, 5, 6, 255, 0, 0, 0, 0, 0, 0, 0, 0), c:pixels())
    assert.equals(px(0, 0, 255, 255), m:pixels())
    c, m = image.outpaint_canvas(img, { direction = "top", pixels = 1, fill = "edge" })
    assert.equals(px(1, 2, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6), c:pixels())
    assert.equals(px(255, 255, 0, 0), m:pixels())
    c, m = image.outpaint_canvas(img, { direction = "left", pixels = 1, fill = { 9, 9, 9 } })
    assert.equals(px(9, 9, 9, 1, 2, 3, 4, 5, 6), c:pixels())
    assert.equals(px(255, 0, 0), m:pixels())
    c, m = image.outpaint_canvas(img, { direction = "bottom", pixels = 1 })
    assert.equals(px(0, 0, 255, 255), m:pixels())
    c, m = image.outpaint_canvas(image.new(1, 1, 1, px(7)), { pixels = 1 })   -- "all"
    assert.equals(3, c:width())
    assert.equals(3, c:height())
    assert.equals(px(255, 255, 255, 255, 0, 255, 255, 255, 255), m:pixels())
    assert.equals(px(0, 0, 0, 0, 0, 0, 0, 0, 7, 255, 0, 0, 0, 0, 0, 0, 0, 0), c:pixels())
    assert.is_true(image.check_pair(c, m))
    assert.has_error(function() image.outpaint_canvas(img, { direction = "up", pixels = 1 }) end)
    assert.has_error(function() image.outpaint_canvas(img, { direction = "left" }) end)
    assert.has_error(function() image.outpaint_canvas(img, { pixels = 0 }) end)
  end)
end)

describe("data URIs and vision parts", function()
  local jpeg = "\255\216\255\224\0\16JFIF\0\1\1\0\0\1\0\1\0\0\255\217"
  local gif = "GIF89a\1\0\1\0\0\0\0;"
  local webp = "RIFF\26\0\0\0WEBPVP8L\13\0\0\0/\0\0\0\16\7\16\17\17\136\136\254\7\0"

  local function payload(uri)
    local mime, b = uri:match("^data:([^;]+);base64,(.*)$")
    return mime, assert(base64.decode(b))
  end

  it("encodes an image as PNG that decodes to the same pixels", function()
    local img = image.new(3, 2, 4, px(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17,
      18, 19, 20, 21, 22, 23, 24))
    local mime, bytes = payload(assert(image.data_uri(img)))
    assert.equals("image/png", mime)
    assert.equals(img:pixels(), assert(image.decode(bytes)):pixels())
  end)

  it("passes PNG, JPEG, GIF and WebP bytes through untouched", function()
    local png = readfile(SUITE .. "/basn3p08.png")
    for _, c in ipairs{ { png, "image/png" }, { jpeg, "image/jpeg" }, { gif, "image/gif" },
      { webp, "image/webp" } } do
      local mime, bytes = payload(assert(image.data_uri(c[1])))
      assert.equals(c[2], mime)
      assert.equals(c[1], bytes)
    end
  end)

  it("sniffs the type and the size an image's header declares", function()
    local png = readfile(SUITE .. "/basn3p08.png")
    assert.same({ "image/png", 32, 32 }, { image.sniff(png) })
    assert.same({ "image/png" }, { image.sniff(png:sub(1, 20)) })
    -- JPEG: the first frame header, after any other segment (here APP1) and 0xFF fill
    local sof2 = "\255\194\0\17\8\0\21\0\37\3\1\34\0\2\17\1\3\17\1"
    local j = "\255\216\255\225\0\6Exif\255\255" .. sof2 .. "\255\218\0\2"
    assert.same({ "image/jpeg", 37, 21 }, { image.sniff(j) })
    assert.same({ "image/jpeg" }, { image.sniff(jpeg) })                 -- no frame header
    assert.same({ "image/jpeg" }, { image.sniff(j:sub(1, 20)) })
    assert.same({ "image/gif", 1, 1 }, { image.sniff(gif) })
    -- WebP: lossless (VP8L), lossy (VP8) and extended (VP8X, its canvas)
    assert.same({ "image/webp", 1, 1 }, { image.sniff(webp) })
    local vp8 = "RIFFH\0\0\0WEBPVP8 <\0\0\0\48\3\0\157\1\42\37\0\21\0"
    assert.same({ "image/webp", 37, 21 }, { image.sniff(vp8) })
    local vp8x = "RIFFX\0\0\0WEBPVP8X\10\0\0\0\16\0\0\0\36\0\0\20\0\0"
    assert.same({ "image/webp", 37, 21 }, { image.sniff(vp8x) })
    assert.same({ "image/webp" }, { image.sniff(vp8x:sub(1, 29)) })
    assert.is_nil(image.sniff("\0\1\2"))
  end)

  it("reads paths and refuses what is not an image", function()
    local mime, bytes = payload(assert(image.data_uri(SUITE .. "/basn0g08.png")))
    assert.equals("image/png", mime)
    assert.equals(readfile(SUITE .. "/basn0g08.png"), bytes)
    local uri, msg, code = image.data_uri("\0\1\2garbage")
    assert.is_nil(uri)
    assert.equals("decode", code)
    assert.matches("unknown image format", msg)
    uri, msg, code = image.data_uri("/nonexistent.png")
    assert.is_nil(uri)
    assert.equals("io", code)
    uri, msg, code = image.data_uri(SUITE .. "/README.md")
    assert.is_nil(uri)
    assert.equals("decode", code)
    assert.matches("not a PNG, JPEG, GIF or WebP", msg)
    assert.has_error(function() image.data_uri(42) end)
    assert.has_error(function() image.data_uri(jpeg, { max = 1 }) end)
  end)

  it("reads no more of a file than it needs to tell it is no image or too large", function()
    -- bytes this process has read, as the kernel counts them
    local function rchar()
      local f = assert(io.open("/proc/self/io", "rb"))
      local n = tonumber(f:read("a"):match("rchar:%s*(%d+)"))
      f:close()
      return n
    end
    local path = os.tmpname()
    local function sparse(head)   -- head, then zeros to 64 MiB that take no disk
      local f = assert(io.open(path, "wb"))
      f:write(head)
      f:seek("set", (64 << 20) - 1)
      f:write("\0")
      f:close()
    end
    local function cost(fn)
      local r0 = rchar()
      local res, msg, code = fn()
      return rchar() - r0, res, msg, code
    end
    sparse("\0\0\0\24ftypmp42")   -- a video, not an image
    for _, fn in ipairs{ function() return image.part(path) end,
        function() return image.load(path) end } do
      local n, res, msg, code = cost(fn)
      assert.is_nil(res)
      assert.equals("decode", code, msg)
      assert.is_true(n < 1 << 20, n .. " bytes read")
    end
    sparse(jpeg)
    local n, res, msg, code = cost(function()
      return image.data_uri(path, { max_bytes = 1000 })
    end)
    assert.is_nil(res)
    assert.equals("toolarge", code)
    assert.matches("is over max_bytes 1000", msg, 1, true)
    assert.is_true(n < 1 << 20, n .. " bytes read")
    os.remove(path)
  end)

  it("takes data: URLs as image sources and passes http(s) URLs on in parts", function()
    local png = readfile(SUITE .. "/basn0g01.png")
    local uri = "data:image/png;base64," .. base64.encode(png)
    assert.equals(uri, image.data_uri(uri))
    -- the type is what the bytes are; base64 broken into lines is taken
    local mime, bytes = payload(assert(image.data_uri("data:image/jpg;base64,"
      .. base64.encode(jpeg))))
    assert.same({ "image/jpeg", jpeg }, { mime, bytes })
    assert.equals(uri, image.part("data:image/png;base64,"
      .. base64.encode(png):gsub("(" .. ("."):rep(76) .. ")", "%1\r\n")).image_url.url)
    -- what is no image, or too much of one, is named without echoing the payload
    for _, c in ipairs{
        { "data:image/png,%89PNG", "decode", "a data: URL of 21 bytes that is not base64" },
        { "data:image/png;base64,abc", "decode", "payload: llmux.base64: missing padding" },
        { "data:image/png;base64," .. base64.encode("text"), "decode",
          "a data: URL of 4 bytes that are not PNG, JPEG, GIF or WebP" },
        { uri, "toolarge", "is over max_bytes 100", { max_bytes = 100 } } } do
      local res, msg, code = image.data_uri(c[1], c[4])
      assert.is_nil(res)
      assert.equals(c[2], code)
      assert.matches(c[3], msg, 1, true)
      assert.is_nil(msg:find(c[1], 1, true))
    end
    -- a URL is the provider's to fetch: part passes it on, data_uri cannot make one of it
    local url = "https://example.com/cat.png"
    assert.same({ type = "image_url", image_url = { url = url, detail = "low" } },
      image.part(url, { detail = "low" }))
    local res, msg, code = image.data_uri(url)
    assert.is_nil(res)
    assert.equals("io", code)
    assert.matches("is a URL: llmux reads files, it does not fetch", msg, 1, true)
  end)

  it("reads data: URLs with parameters, in any case, as browsers do", function()
    -- RFC 2397 and the Fetch standard: the scheme and "base64" match in any case, ";" may
    -- have spaces after it, parameters may come before; ";BASE64" was refused as not base64
    -- and "DATA:" taken for a path (its message quoting the whole payload)
    local png = readfile(SUITE .. "/basn0g01.png")
    local b64 = base64.encode(png)
    local want = "data:image/png;base64," .. b64
    for _, head in ipairs{ "data:image/png;base64,", "data:image/png;BASE64,",
        "data:image/png;Base64,", "DATA:image/png;base64,", "Data:IMAGE/PNG;BASE64,",
        "data:image/png;charset=utf-8;base64,", "data:image/png; base64,",
        "data:image/png;base64 ,", "data:;base64," } do
      local uri, msg = image.data_uri(head .. b64)
      assert.equals(want, uri, head .. ": " .. tostring(msg))
      assert.equals(want, image.part(head .. b64).image_url.url, head)
    end
    -- what is not base64 stays refused, without the payload in the message
    for _, head in ipairs{ "data:image/png,", "data:image/png;base64x,",
        "data:image/png;base64;charset=utf-8,", "DATA:image/png," } do
      local res, msg, code = image.data_uri(head .. b64)
      assert.is_nil(res, head)
      assert.equals("decode", code, head)
      assert.matches("is not base64", msg, 1, true)
      assert.is_nil(msg:find(b64, 1, true))
    end
  end)

  it("refuses images over max_bytes with toolarge, naming the size and fit", function()
    local uri, msg, code = image.data_uri(jpeg, { max_bytes = 10 })
    assert.is_nil(uri)
    assert.equals("toolarge", code)
    assert.matches(#jpeg .. " bytes", msg, 1, true)
    assert.matches("fit", msg, 1, true)
    assert.is_string(image.data_uri(jpeg, { max_bytes = #jpeg }))
  end)

  it("builds OpenAI image_url parts", function()
    local part = assert(image.part(jpeg, { detail = "low" }))
    assert.equals("image_url", part.type)
    assert.equals("low", part.image_url.detail)
    assert.equals("data:image/jpeg;base64," .. base64.encode(jpeg), part.image_url.url)
    assert.equals("auto", image.part(image.new(1, 1, 3)).image_url.detail)
    -- OpenAI's newer models take "original": the image as it is, not scaled down
    assert.equals("original", image.part(jpeg, { detail = "original" }).image_url.detail)
    local p2, msg, code = image.part(jpeg, { max_bytes = 3 })
    assert.is_nil(p2)
    assert.equals("toolarge", code)
    assert.is_string(msg)
    assert.has_error(function() image.part(jpeg, { detail = "medium" }) end)
    assert.has_error(function() image.part(nil) end)
  end)
end)

describe("image misuse", function()
  local img = image.new(4, 4, 3)
  local side = llmux.core.image_max_side

  it("blames the caller's line, however deep in image.lua the check ran", function()
    local cases = {
      { function() image.configure{ max_pixels = 0 } end, "#1 to 'image.configure'" },
      { function() img:encode_png{ level = 10 } end, "#2 to 'image.encode_png'" },
      { function() image.new(1, 1, 1):encode_png(5) end, "#2 to 'image.encode_png'" },
      { function() image.decode(nil) end, "#1 to 'image.decode'" },
      { function() image.load("x", { y = 1 }) end, "#2 to 'image.load'" },
      { function() img:resize(0, 1) end, "#2 to 'image.resize'" },
      { function() img:extend{ fill = "blue" } end, "#2 to 'image.extend'" },
      { function() img:fit{} end, "#2 to 'image.fit'" },
      { function() image.mask(2, 2) end, "#3 to 'image.mask'" },
      { function() image.mask(2, 2, { 0, "a", 1, 1 }) end, "#3 to 'image.mask'" },
      { function() image.normalize_mask(img, { invert = "yes" }) end,
        "#2 to 'image.normalize_mask'" },
      { function() image.check_pair(img, "m.png") end, "#2 to 'image.check_pair'" },
      { function() image.outpaint_canvas(img, { direction = "up", pixels = 1 }) end,
        "#2 to 'image.outpaint_canvas'" },
      { function() image.data_uri(42) end, "#1 to 'image.data_uri'" },
      { function() image.part(nil) end, "#1 to 'image.part'" },
      { function() image.new("a", 1, 1) end, "#1 to 'image.new'" },
      { function() img:extend{ left = math.maxinteger } end, "#2 to 'image.extend'" },
    }
    for _, case in ipairs(cases) do
      local f, want = case[1], "bad argument " .. case[2]
      local ok, err = pcall(f)
      assert.is_false(ok, want)
      local at = "image_spec.lua:" .. debug.getinfo(f, "S").linedefined .. ": " .. want
      assert.truthy(err:find(at, 1, true), err)
    end
    -- a closed image, whichever function of image.lua it reaches
    local closed = image.new(2, 2, 3)
    closed:close()
    for _, f in ipairs{ function() closed:encode_png() end,
        function() closed:fit{ max_side = 1 } end, function() image.data_uri(closed) end, function() image.part(closed) end,
        function() image.outpaint_canvas(closed, { pixels = 1 }) end,
        function() image.normalize_mask(closed) end, function() closed:resize(1, 1) end } do
      local ok, err = pcall(f)
      assert.is_false(ok)
      local at = "image_spec.lua:" .. debug.getinfo(f, "S").linedefined .. ": "
      assert.equals(at .. "attempt to use a closed llmux.Image", err:match("[^/]*$"))
    end
  end)

  it("new checks its arguments by name", function()
    local cases = {
      { { "a", 1, 1 }, [[#1 to 'image.new' (width must be a positive integer, got "a")]] },
      { { "2", 1, 1 }, [[#1 to 'image.new' (width must be a positive integer, got "2")]] },
      { { 1, "2", 1 }, [[#2 to 'image.new' (height must be a positive integer, got "2")]] },
      { { 1, 1, "3" }, [[#3 to 'image.new' (channels must be 1, 2, 3 or 4, got "3")]] },
      { { 1.5, 1, 1 }, "#1 to 'image.new' (width must be a positive integer, got 1.5)" },
      { { 1, 0, 1 }, "#2 to 'image.new' (height must be a positive integer, got 0)" },
      { { 1, 1, 5 }, "#3 to 'image.new' (channels must be 1, 2, 3 or 4, got 5)" },
      { { 1, 1, nil }, "#3 to 'image.new' (channels must be 1, 2, 3 or 4, got nil)" },
      { { 1, 1, 1, 7 }, "#4 to 'image.new' (pixels must be a string, got number)" },
      { { 2, 2, 3, "short" }, "#4 to 'image.new' (pixels must be 2 x 2 x 3 = 12 bytes, got 5)" },
    }
    for _, case in ipairs(cases) do
      local a = case[1]
      local ok, err = pcall(function() return image.new(a[1], a[2], a[3], a[4]) end)
      assert.is_false(ok)
      assert.truthy(err:find("bad argument " .. case[2], 1, true), err)
    end
  end)

  it("bounds extend's borders and refuses results over a side as toolarge", function()
    assert.has_error(function() img:extend{ left = math.maxinteger } end,
      ("bad argument #2 to 'image.extend' (left must be an integer 0..%d, got %d)"):format(side,
        math.maxinteger))
    assert.has_error(function() img:extend{ bottom = side + 1 } end)
    assert.has_error(function()
      image.outpaint_canvas(img, { direction = "left", pixels = math.maxinteger })
    end)
    local saved = image.max_pixels
    image.configure{ max_pixels = 1 << 62 }
    local ok, err = pcall(function()
      local e, msg, code = img:extend{ left = side, right = side }
      assert.is_nil(e)
      assert.equals("toolarge", code)
      assert.matches("per side", msg)
      local r, _, rc = img:resize(math.maxinteger, math.maxinteger)
      assert.is_nil(r)
      assert.equals("toolarge", rc)
      local m, _, mc = image.mask(side + 1, 1, "all")
      assert.is_nil(m)
      assert.equals("toolarge", mc)
    end)
    image.configure{ max_pixels = saved }
    assert(ok, err)
  end)
end)

describe("max_pixels on made images", function()
  local image = require "llmux.image"
  it("new, resize, extend, mask and outpaint_canvas refuse sizes over max_pixels", function()
    local saved = image.max_pixels
    image.configure{ max_pixels = 100 * 100 }
    local ok, err = pcall(function()
      local img = assert(image.new(100, 100, 3))
      local r, msg, code = image.new(101, 100, 3)
      assert.is_nil(r)
      assert.equals("toolarge", code)
      assert.matches("new: 101 x 100 = 10100 pixels is over max_pixels 10000", msg)
      local rr, _, rc = img:resize(200, 100)
      assert.is_nil(rr)
      assert.equals("toolarge", rc)
      local e, _, c2 = img:extend{ left = 1 }
      assert.is_nil(e)
      assert.equals("toolarge", c2)
      local m, _, c3 = image.mask(1000, 1000, "all")
      assert.is_nil(m)
      assert.equals("toolarge", c3)
      local canvas, _, c4 = image.outpaint_canvas(img, { direction = "right", pixels = 10 })
      assert.is_nil(canvas)
      assert.equals("toolarge", c4)
      assert.equals(10000, #assert(image.new(100, 100, 1)):pixels())
    end)
    image.configure{ max_pixels = saved }
    assert(ok, err)
  end)
end)
