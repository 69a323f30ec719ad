-- Image and base64 throughput: llmux's C paths (src/b64.c, src/image.c) next to the same work
-- done by Python's base64 module and Pillow, when /usr/bin/python3 has Pillow. Prints
-- key=value lines; times are the best of several runs (a shared VM is noisy).
--
--   make bench                                   (after the client bench)
--   make && lua5.4 tests/bench/image_bench.lua   (from the repo root)
--
-- Env: IMAGE_BENCH_LEVELS (default "0 1 2 3 4 5 6 7 8 9"), IMAGE_BENCH_SECONDS per
-- measurement (0.3).
local llmux = require "llmux"
local image, base64 = llmux.image, llmux.base64
local clock = os.clock

local SECONDS = tonumber(os.getenv("IMAGE_BENCH_SECONDS")) or 0.3
local LEVELS = {}
for l in (os.getenv("IMAGE_BENCH_LEVELS") or "0 1 2 3 4 5 6 7 8 9"):gmatch("%d") do
  LEVELS[#LEVELS + 1] = tonumber(l)
end

-- Best seconds per call of fn over about SECONDS of CPU (at least 3 calls).
local function best(fn)
  local b, spent, n = math.huge, 0, 0
  while n < 3 or spent < SECONDS do
    local t = clock()
    fn()
    t = clock() - t
    if t < b then b = t end
    spent, n = spent + t, n + 1
  end
  return b
end

local function kv(k, v, fmt)
  print(("%s=" .. (fmt or "%.3f")):format(k, v))
end

-- A 1024x1024 RGB test picture: smooth gradients with a little noise, like a photo; and a
-- 1024x1024 mask of two rectangles, like an inpainting request.
local function photo()
  local rows, r = {}, 12345
  for y = 0, 1023 do
    local row = {}
    for x = 0, 1023 do
      r = (r * 1103515245 + 12345) & 0x7fffffff
      local n = (r >> 16) % 9 - 4
      local R = (x >> 2) + n
      local G = ((x + y) >> 3) + n
      local B = (255 - (y >> 2)) + n
      row[x + 1] = string.char(R < 0 and 0 or R > 255 and 255 or R,
        G < 0 and 0 or G > 255 and 255 or G, B < 0 and 0 or B > 255 and 255 or B)
    end
    rows[y + 1] = table.concat(row)
  end
  return image.new(1024, 1024, 3, table.concat(rows))
end

local function main()
  -- base64 ------------------------------------------------------------------------------
  local chunk = {}
  for i = 1, 4096 do chunk[i] = string.char((i * 7919) % 256) end
  local data = table.concat(chunk):rep(4096)          -- 16 MiB
  local enc = base64.encode(data)
  assert(base64.decode(enc) == data)
  kv("b64_encode_gbps", #data / best(function() base64.encode(data) end) / 1e9)
  kv("b64_decode_gbps", #enc / best(function() base64.decode(enc) end) / 1e9)

  -- PNG ---------------------------------------------------------------------------------
  local rgb, mask = photo(), image.mask(1024, 1024, { { 100, 100, 500, 300 },
    { 600, 500, 300, 400 } })
  local subjects = { { "rgb1024", rgb }, { "mask1024", mask } }
  local pngs = {}
  for _, s in ipairs(subjects) do
    local name, img = s[1], s[2]
    pngs[name] = {}
    for _, l in ipairs(LEVELS) do
      local png = img:encode_png{ level = l }
      pngs[name][l] = png
      kv(("png_%s_l%d_encode_ms"):format(name, l),
        best(function() img:encode_png{ level = l } end) * 1e3)
      kv(("png_%s_l%d_bytes"):format(name, l), #png, "%d")
    end
    local png = img:encode_png()
    kv(("png_%s_default_encode_ms"):format(name), best(function() img:encode_png() end) * 1e3)
    kv(("png_%s_default_bytes"):format(name), #png, "%d")
    kv(("png_%s_decode_ms"):format(name), best(function() assert(image.decode(png)) end) * 1e3)
  end
  -- A tall, thin image is all per-row cost (libpng inflates, unfilters and copies row by row):
  -- 1 x 200000 gray, in ns a row.
  local tall = image.new(1, 200000, 1, ("\0\64\128\255"):rep(50000)):encode_png{ level = 1 }
  kv("png_tall1x200000_decode_ns_per_row",
    best(function() assert(image.decode(tall)) end) * 1e9 / 200000, "%.1f")

  -- Python's base64 and Pillow, on the same bytes and pixels ------------------------------
  if not os.execute("/usr/bin/python3 -c 'import PIL' 2>/dev/null") then
    print("pil=absent")
    return
  end
  local raw = {}
  for _, s in ipairs(subjects) do
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(s[2]:pixels())
    f:close()
    raw[s[1]] = { path, s[2]:channels() == 1 and "L" or "RGB" }
  end
  local py = [[
import base64, io, sys, timeit
from PIL import Image
def best(fn, n=3):
    return min(timeit.repeat(fn, number=1, repeat=n))
data = bytes((i * 7919) % 256 for i in range(1, 4097)) * 4096
enc = base64.b64encode(data)
print("py_b64_encode_gbps=%.3f" % (len(data) / best(lambda: base64.b64encode(data)) / 1e9))
print("py_b64_decode_gbps=%.3f" % (len(enc) / best(lambda: base64.b64decode(enc)) / 1e9))
levels = [int(x) for x in sys.argv[1].split()]
for arg in sys.argv[2:]:
    name, path, mode = arg.split(":")
    im = Image.frombytes(mode, (1024, 1024), open(path, "rb").read())
    for l in levels:
        def enc_png():
            b = io.BytesIO(); im.save(b, format="PNG", compress_level=l); return b
        print("pil_png_%s_l%d_encode_ms=%.3f" % (name, l, best(enc_png) * 1e3))
        print("pil_png_%s_l%d_bytes=%d" % (name, l, len(enc_png().getvalue())))
    png = io.BytesIO(); im.save(png, format="PNG", compress_level=1); png = png.getvalue()
    ms = best(lambda: Image.open(io.BytesIO(png)).load()) * 1e3
    print("pil_png_%s_decode_ms=%.3f" % (name, ms))
]]
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write(py)
  f:close()
  local args = {}
  for _, s in ipairs(subjects) do
    args[#args + 1] = ("%s:%s:%s"):format(s[1], raw[s[1]][1], raw[s[1]][2])
  end
  local p = assert(io.popen(("/usr/bin/python3 %s '%s' %s"):format(script,
    table.concat(LEVELS, " "), table.concat(args, " "))))
  for line in p:lines() do print(line) end
  local ok = p:close()
  os.remove(script)
  for _, r in pairs(raw) do os.remove(r[1]) end
  if not ok then error("image bench: the Pillow run failed", 0) end
end

main()
