-- llmux.image: PNG decode/encode, transforms, masks, outpaint canvases, data URIs and vision
-- content parts. The pixel work is C (src/image.c on libpng, bound in src/image_lua.c); this
-- module reads options, picks defaults and speaks in Lua values.
--
-- Misuse (wrong types, unknown options, closed images) raises; operational failures return
-- nil, message, code with code "decode" (bad or unknown data), "toolarge" (over max_pixels or
-- max_bytes) or "io" (file errors).
local core = require "llmux.core"
local sched = require "llmux.sched"
local base64 = require "llmux.base64"
local errors = require "llmux.errors"
local type, pairs, ipairs, error, tostring, select, pcall = type, pairs, ipairs, error, tostring,
  select, pcall
local getmetatable, getinfo = getmetatable, debug.getinfo
local floor, ceil, min, max, sqrt = math.floor, math.ceil, math.min, math.max, math.sqrt
local io_open, format, sub, find, match = io.open, string.format, string.sub, string.find,
  string.match
local unpack, byte, lower = string.unpack, string.byte, string.lower
local b64_encode, b64_decode = base64._encode, base64.decode
local c_decode, c_new, c_encode = core.image_decode, core.image_new, core.image_encode_png
local job_decode, job_encode = core.job_image_decode, core.job_image_encode_png
local job_resize, file_kind = core.job_image_resize, core.file_kind
local can_offload, offload = sched.can_offload, sched.offload
local c_extend, c_mask, c_mask_from = core.image_extend, core.image_mask, core.image_mask_from
local job_convert, job_crop = core.job_image_convert, core.job_image_crop
local job_extend, job_mask_from = core.job_image_extend, core.job_image_mask_from
local job_opaque, job_coverage = core.job_image_opaque, core.job_image_coverage
local job_new, job_mask_alpha = core.job_image_new, core.job_image_mask_alpha
local mtype = math.type
local tointeger = errors.integer

-- A value as an argument error shows it: a string quoted, so "2" does not read as 2.
local function shown(v)
  return type(v) == "string" and format("%q", v) or tostring(v)
end

local Image = core.Image                          -- the method table of llmux.Image
local IMAGE_MT = getmetatable(c_new(1, 1, 1))
local MAX_SIDE = core.image_max_side              -- a row of 4 channels fits a C int

local M = {
  _VERSION = "0.1.0",
  -- Module defaults, changed with configure().
  max_pixels = core.image_max_pixels,             -- 8192 x 8192
  max_bytes = 20 * 1024 * 1024,                   -- data_uri/part: OpenAI's per-image limit
  level = 2,                                      -- encode_png default for images
  mask_level = 1,                                 -- and for 1-channel masks
  -- Inside a task, work on images of at least this many pixels (decode: as the PNG header
  -- says; resize: source or result; to_gray, to_rgb, to_rgba, crop, extend, normalize_mask,
  -- opaque and coverage: the source; new: the image its pixels are copied into) or PNGs of at least this many bytes runs on a worker
  -- thread while the task yields. 512 x 512 RGB is about 2 ms of encode or decode and 4 ms
  -- of resize here; the hop to a worker and back costs 0.1 to 0.2 ms.
  pool_min_pixels = 512 * 512,
  pool_min_bytes = 512 * 1024,
}

-- Whether work of this size is worth a worker thread: only inside a task.
local function pooled(pixels)
  return pixels >= M.pool_min_pixels and can_offload()
end

-- Pixels a PNG's header claims (0 when it is no PNG): decode time follows them, not the bytes.
local function png_pixels(s)
  if #s < 24 or sub(s, 1, 8) ~= "\137PNG\r\n\26\n" then return 0 end
  local w, h = unpack(">I4I4", s, 17)
  return w * h
end

-- The decode of bytes: on a worker thread inside a task when large, else inline.
local function decode(bytes, max_pixels)
  if (#bytes >= M.pool_min_bytes or png_pixels(bytes) >= M.pool_min_pixels)
    and can_offload() then
    local job = job_decode(bytes, max_pixels)
    if job then return offload(job) end
  end
  return c_decode(bytes, max_pixels)
end

-- Raises msg blaming the caller's code: the first frame outside this file, however deep in
-- the module the check ran (options, int_opt, check_image, bytes_of, ...).
local SOURCE = getinfo(1, "S").source
local function argerr(n, fname, msg)
  errors.raise_outside(SOURCE, format("bad argument #%d to 'image.%s' (%s)", n, fname, msg))
end

-- Checks that opts is nil or a table whose keys are all in allowed; returns a table.
local function options(opts, n, fname, allowed)
  if opts == nil then return {} end
  if type(opts) ~= "table" then argerr(n, fname, "table expected, got " .. type(opts)) end
  for k in pairs(opts) do
    if not allowed[k] then argerr(n, fname, "unknown option '" .. tostring(k) .. "'") end
  end
  return opts
end

local function set(...)
  local t = {}
  for i = 1, select("#", ...) do t[select(i, ...)] = true end
  return t
end

-- An integer option >= lo (and <= hi), or default when absent.
local function int_opt(v, n, fname, name, lo, hi, default)
  if v == nil then return default end
  local i = tointeger(v)
  if not i or i < lo or (hi and i > hi) then
    argerr(n, fname, format("%s must be an integer %s, got %s", name,
      hi and format("%d..%d", lo, hi) or ">= " .. lo, shown(v)))
  end
  return i
end

function M.is_image(v)
  return getmetatable(v) == IMAGE_MT
end

local c_width = Image.width   -- raises for a closed image

local function check_image(v, n, fname)
  if getmetatable(v) ~= IMAGE_MT then
    argerr(n, fname, "llmux.Image expected, got " .. type(v))
  end
  -- the C methods would raise it too, blaming the line in here that called them
  if not pcall(c_width, v) then
    errors.raise_outside(SOURCE, "attempt to use a closed llmux.Image")
  end
  return v
end

-- configure{max_pixels = n, max_bytes = n, level = n, mask_level = n}: module defaults.
local CONFIG = set("max_pixels", "max_bytes", "level", "mask_level")
function M.configure(opts)
  opts = options(opts, 1, "configure", CONFIG)
  M.max_pixels = int_opt(opts.max_pixels, 1, "configure", "max_pixels", 1, nil, M.max_pixels)
  M.max_bytes = int_opt(opts.max_bytes, 1, "configure", "max_bytes", 1, nil, M.max_bytes)
  M.level = int_opt(opts.level, 1, "configure", "level", 0, 9, M.level)
  M.mask_level = int_opt(opts.mask_level, 1, "configure", "mask_level", 0, 9, M.mask_level)
  return M
end

-- Decoding ---------------------------------------------------------------------------------

local DECODE = set("max_pixels")

-- decode(bytes[, {max_pixels = n}]) -> Image | nil, msg, "decode" | "toolarge"
function M.decode(bytes, opts)
  if type(bytes) ~= "string" then argerr(1, "decode", "string expected, got " .. type(bytes)) end
  opts = options(opts, 2, "decode", DECODE)
  return decode(bytes, int_opt(opts.max_pixels, 2, "decode", "max_pixels", 1, nil,
    M.max_pixels))
end

-- Reads a file: bytes | nil, msg, "io" (msg: "cannot open|read <path>: <why>"). The first 12
-- bytes come alone: unless they are what ok(head) takes, reading stops there (nil, nil,
-- "decode"), so a video or /dev/zero given for an image costs 12 bytes, not all of it or all
-- memory. Then at most limit bytes (nil, nil, "toolarge" past them) when a limit is given,
-- else the rest. llmux.client reads its image files with it too (M._read_file).
local function read_file(path, ok, limit)
  -- a FIFO would block the open until a writer came, a device may never end
  local kind = file_kind(path)
  if kind and kind ~= "file" then
    return nil, format("cannot read %s: it is a %s, not a regular file", path, kind), "io"
  end
  local f, err = io_open(path, "rb")
  if not f then return nil, "cannot open " .. err, "io" end
  local s, rerr = f:read(12)   -- nil at once for a directory (an error) or an empty file
  if s and ok(s) then
    local rest
    if limit then
      rest, rerr = "", nil
      if #s <= limit then rest, rerr = f:read(limit + 1 - #s) end
    else
      rest, rerr = f:read("a")
    end
    s = rest and s .. rest
  elseif s or not rerr then
    f:close()
    return nil, nil, "decode"
  end
  f:close()
  if not s then return nil, "cannot read " .. path .. ": " .. tostring(rerr), "io" end
  if limit and #s > limit then return nil, nil, "toolarge" end
  return s
end
M._read_file = read_file

local function is_png(s) return sub(s, 1, 8) == "\137PNG\r\n\26\n" end

-- load(path[, {max_pixels = n}]) -> Image | nil, msg, "io" | "decode" | "toolarge"
function M.load(path, opts)
  if type(path) ~= "string" then argerr(1, "load", "string expected, got " .. type(path)) end
  opts = options(opts, 2, "load", DECODE)
  local max_pixels = int_opt(opts.max_pixels, 2, "load", "max_pixels", 1, nil, M.max_pixels)
  local s, msg, code = read_file(path, is_png)
  if code == "decode" then msg, s = "llmux.image: not a PNG image (bad signature)", nil end
  if not s and code == "io" then return nil, "llmux.image: " .. msg, code end
  local img
  if s then img, msg, code = decode(s, max_pixels) end
  if not img then return nil, msg .. " (" .. path .. ")", code end
  return img
end

-- nil, msg, "toolarge" when an image of w x h would exceed max_pixels (the decode limit
-- applies to images made here too: a typo must not ask for gigabytes) or have a side longer
-- than llmux can hold. Sides are checked first: w * h of two huge sides can wrap.
local function over_limit(w, h, fname)
  if w > MAX_SIDE or h > MAX_SIDE then
    return nil, format("llmux.image: %s: %d x %d is over the limit of %d pixels per side",
      fname, w, h, MAX_SIDE), "toolarge"
  end
  if w * h > M.max_pixels then
    return nil, format("llmux.image: %s: %d x %d = %d pixels is over max_pixels %d", fname, w, h,
      w * h, M.max_pixels), "toolarge"
  end
end

-- A positive integer argument n, or misuse.
local function size_arg(v, n, fname, name)
  local i = tointeger(v)
  if not i or i < 1 then
    argerr(n, fname, format("%s must be a positive integer, got %s", name, shown(v)))
  end
  return i
end

-- new(w, h, channels[, pixels]) -> Image | nil, msg, "toolarge"
-- pixels: w * h * channels bytes, rows top to bottom; zeros when absent.
function M.new(w, h, ch, px)
  local iw, ih = size_arg(w, 1, "new", "width"), size_arg(h, 2, "new", "height")
  local ich = tointeger(ch)
  if not ich or ich < 1 or ich > 4 then
    argerr(3, "new", "channels must be 1, 2, 3 or 4, got " .. shown(ch))
  end
  if px ~= nil and type(px) ~= "string" then
    argerr(4, "new", "pixels must be a string, got " .. type(px))
  end
  local _, msg, code = over_limit(iw, ih, "new")
  if msg then return nil, msg, code end
  if px and #px ~= iw * ih * ich then
    argerr(4, "new", format("pixels must be %d x %d x %d = %d bytes, got %d", iw, ih, ich,
      iw * ih * ich, #px))
  end
  -- copying 3000 x 3000 RGBA pixels into fresh memory is 18 ms (zeros come free)
  if px and pooled(iw * ih) then
    local job = job_new(iw, ih, ich, px)
    if job then return offload(job) end
  end
  return c_new(iw, ih, ich, px)
end

-- Methods written in Lua ---------------------------------------------------------------------

local ENCODE = set("level")

-- img:encode_png([{level = 0..9}]) -> PNG bytes. Default: M.level, M.mask_level for masks.
function Image:encode_png(opts)
  check_image(self, 1, "encode_png")
  opts = options(opts, 2, "encode_png", ENCODE)
  local default = self:channels() == 1 and M.mask_level or M.level
  local level = int_opt(opts.level, 2, "encode_png", "level", 0, 9, default)
  if pooled(self:width() * self:height()) then
    local job = job_encode(self, level)
    if job then return offload(job) end
  end
  return c_encode(self, level)
end

local c_resize = Image.resize

-- img:resize(w, h) -> Image: area averaging to shrink, bilinear to grow.
function Image:resize(w, h)
  check_image(self, 1, "resize")
  local iw, ih = size_arg(w, 2, "resize", "width"), size_arg(h, 3, "resize", "height")
  local _, msg, code = over_limit(iw, ih, "resize")
  if msg then return nil, msg, code end
  if pooled(max(self:width() * self:height(), iw * ih)) then
    local job = job_resize(self, iw, ih)
    if job then return offload(job) end
  end
  return c_resize(self, iw, ih)
end

-- to_gray, to_rgb, to_rgba and crop are the C methods, on a worker inside a task when the
-- image is large (a 3000 x 3000 to_rgba is 70 ms: four frames of a game's step(0)). A call the
-- C method would refuse (a closed image, a bad rectangle) is left to it, to raise as it does.
local to_gray, to_rgb, to_rgba, crop = Image.to_gray, Image.to_rgb, Image.to_rgba, Image.crop

local function large(img)
  return getmetatable(img) == IMAGE_MT and pooled(img:width() * img:height())
end

-- (a call to the C method by its name: a misuse names it as before)
function Image:to_gray()
  local job = large(self) and job_convert(self, 1)
  if job then return offload(job) end
  local a, b, c = to_gray(self)
  return a, b, c
end

function Image:to_rgb()
  local job = large(self) and job_convert(self, 3)
  if job then return offload(job) end
  local a, b, c = to_rgb(self)
  return a, b, c
end

function Image:to_rgba()
  local job = large(self) and job_convert(self, 4)
  if job then return offload(job) end
  local a, b, c = to_rgba(self)
  return a, b, c
end

function Image:crop(x, y, w, h)
  if large(self) and mtype(x) == "integer" and mtype(y) == "integer" and mtype(w) == "integer"
      and mtype(h) == "integer" and x >= 0 and y >= 0 and w >= 1 and h >= 1
      and x <= self:width() - w and y <= self:height() - h then
    local job = job_crop(self, x, y, w, h)
    if job then return offload(job) end
  end
  local a, b, c = crop(self, x, y, w, h)
  return a, b, c
end

-- opaque and coverage read every pixel (a 3000 x 3000 RGBA opaque() is 6 ms, the coverage of
-- a 3000 x 3000 mask 4 ms): on a worker too, where there is a scan to do (an image without
-- alpha is opaque at once; coverage refuses an image that is no mask, inline).
local opaque, coverage = Image.opaque, Image.coverage

function Image:opaque()
  local job = large(self) and self:channels() % 2 == 0 and job_opaque(self)
  if job then return offload(job) end
  local a = opaque(self)
  return a
end

function Image:coverage()
  local job = large(self) and self:channels() == 1 and job_coverage(self)
  if job then return offload(job) end
  local a = coverage(self)
  return a
end

-- A fill option as (edge, r, g, b, a). "transparent" is black with alpha 0.
local function fill_of(fill, n, fname)
  if fill == nil or fill == "transparent" then return false, 0, 0, 0, 0 end
  if fill == "edge" then return true, 0, 0, 0, 255 end
  if type(fill) == "table" and (#fill == 3 or #fill == 4) then
    local c = {}
    for i = 1, 4 do
      local v = tointeger(fill[i] == nil and i == 4 and 255 or fill[i])
      if not v or v < 0 or v > 255 then
        argerr(n, fname, "fill colour components must be integers 0..255")
      end
      c[i] = v
    end
    return false, c[1], c[2], c[3], c[4]
  end
  argerr(n, fname, "fill must be \"transparent\", \"edge\" or {r, g, b[, a]}")
end

local EXTEND = set("left", "right", "top", "bottom", "fill")

-- img:extend{left, right, top, bottom, fill = "transparent" | "edge" | {r, g, b[, a]}}
-- -> Image. A transparent (or translucent) fill gives an image without alpha an alpha channel.
function Image:extend(opts)
  check_image(self, 1, "extend")
  opts = options(opts, 2, "extend", EXTEND)
  -- bounded, so that the sums below cannot wrap
  local l = int_opt(opts.left, 2, "extend", "left", 0, MAX_SIDE, 0)
  local r = int_opt(opts.right, 2, "extend", "right", 0, MAX_SIDE, 0)
  local t = int_opt(opts.top, 2, "extend", "top", 0, MAX_SIDE, 0)
  local b = int_opt(opts.bottom, 2, "extend", "bottom", 0, MAX_SIDE, 0)
  local edge, cr, cg, cb, ca = fill_of(opts.fill, 2, "extend")
  local _, msg, code = over_limit(self:width() + l + r, self:height() + t + b, "extend")
  if msg then return nil, msg, code end
  local ch = self:channels()
  if not edge and ca < 255 and (ch == 1 or ch == 3) then ch = ch + 1 end
  if pooled(self:width() * self:height()) then
    local job = job_extend(self, l, r, t, b, edge, cr, cg, cb, ca, ch)
    if job then return offload(job) end
  end
  return c_extend(self, l, r, t, b, edge, cr, cg, cb, ca, ch)
end

local FIT = set("max_side", "max_pixels")

-- img:fit{max_side = n, max_pixels = n} -> Image: the image itself when it already fits,
-- else a smaller copy with the same aspect ratio (rounded), never larger than either limit.
function Image:fit(opts)
  check_image(self, 1, "fit")
  opts = options(opts, 2, "fit", FIT)
  local side = int_opt(opts.max_side, 2, "fit", "max_side", 1, nil, nil)
  local pixels = int_opt(opts.max_pixels, 2, "fit", "max_pixels", 1, nil, nil)
  if not side and not pixels then argerr(2, "fit", "max_side or max_pixels expected") end
  local w, h = self:width(), self:height()
  local s = 1
  if side then s = min(s, side / max(w, h)) end
  if pixels then s = min(s, sqrt(pixels / (w * h))) end
  if s >= 1 then return self end
  local function fits(a, b)
    return not (side and (a > side or b > side)) and not (pixels and a * b > pixels)
  end
  local nw, nh = max(1, floor(w * s + 0.5)), max(1, floor(h * s + 0.5))
  if not fits(nw, nh) then nw, nh = max(1, floor(w * s)), max(1, floor(h * s)) end
  -- Floating-point slack, or a short side held at 1 pixel, which leaves the long one over
  -- max_pixels (2^24 x 1 to 2^22 pixels: 2^22 too long): the long side takes what fits, at
  -- once; a turn or two in all.
  while not fits(nw, nh) do
    if nw >= nh then
      nw = max(1, min(nw - 1, side or nw, pixels and pixels // nh or nw))
    else
      nh = max(1, min(nh - 1, side or nh, pixels and pixels // nw or nh))
    end
  end
  return self:resize(nw, nh)
end

-- Masks -----------------------------------------------------------------------------------

local RECT_KEYS = { "x", "y", "w", "h" }

-- A rectangle's {x, y, w, h}, given so or with those names.
local function rect_of(r, n, fname)
  local v, named = {}, r[1] == nil
  for i = 1, 4 do
    v[i] = tointeger(r[named and RECT_KEYS[i] or i])
    if not v[i] then
      argerr(n, fname, "a rectangle is {x, y, w, h} or {x = , y = , w = , h = } with integers")
    end
  end
  if v[3] < 0 or v[4] < 0 then argerr(n, fname, "rectangle width and height must be >= 0") end
  return v
end

local function halves(w, h)
  local hw, hh = ceil(w / 2), ceil(h / 2)
  return {
    all = { 0, 0, w, h }, left_half = { 0, 0, hw, h }, right_half = { w - hw, 0, hw, h },
    top_half = { 0, 0, w, hh }, bottom_half = { 0, h - hh, w, hh },
  }
end

-- mask(w, h, region) -> Image: 1 channel, 255 where the model should paint, 0 elsewhere.
-- region: {x, y, w, h} (0-based, clipped to the image; or {x = , y = , w = , h = }), a list
-- of such rectangles, or one of
-- "all" "left_half" "right_half" "top_half" "bottom_half" (an odd middle row or column
-- belongs to both halves).
function M.mask(w, h, region)
  local flat = {}
  local iw, ih = size_arg(w, 1, "mask", "width"), size_arg(h, 2, "mask", "height")
  local _, msg, code = over_limit(iw, ih, "mask")
  if msg then return nil, msg, code end
  if type(region) == "string" then
    local r = halves(iw, ih)[region]
    if not r then
      argerr(3, "mask", "region must be a rectangle, a list of them, \"all\", \"left_half\", "
        .. "\"right_half\", \"top_half\" or \"bottom_half\"")
    end
    flat = r
  elseif type(region) == "table" then
    -- one rectangle ({x, y, w, h}: a number first; or with names: no first item, some key),
    -- or a list of them ({} paints nothing)
    local first = region[1]
    local one = first == nil and next(region) ~= nil or first ~= nil and type(first) ~= "table"
    local list = one and { region } or region
    for _, r in ipairs(list) do
      if type(r) ~= "table" then argerr(3, "mask", "a list of rectangles expected") end
      local v = rect_of(r, 3, "mask")
      for i = 1, 4 do flat[#flat + 1] = v[i] end
    end
  else
    argerr(3, "mask", "region expected, got " .. type(region))
  end
  return c_mask(iw, ih, flat)
end

local NORMALIZE = set("invert", "threshold")

-- normalize_mask(img[, {invert = "auto" | true | false, threshold = 128}]) -> mask, inverted
-- Any image to a 0/255 1-channel mask (255 = paint): with a non-opaque alpha channel the
-- transparent parts are painted (OpenAI's convention), otherwise light parts (luma >=
-- threshold). "auto" (the default) inverts a mask that would be mostly painted; inverted says
-- whether that happened.
function M.normalize_mask(img, opts)
  check_image(img, 1, "normalize_mask")
  opts = options(opts, 2, "normalize_mask", NORMALIZE)
  local inv = opts.invert
  if inv == nil then inv = "auto" end
  if inv ~= "auto" and inv ~= true and inv ~= false then
    argerr(2, "normalize_mask", "invert must be \"auto\", true or false")
  end
  local th = int_opt(opts.threshold, 2, "normalize_mask", "threshold", 1, 255, 128)
  if pooled(img:width() * img:height()) then
    local job = job_mask_from(img, th, inv)
    if job then return offload(job) end
  end
  return c_mask_from(img, th, inv)
end

-- A 1-channel mask as grey + alpha, alpha 255 - grey (OpenAI's edit mask: llmux.client's
-- alpha_mask), on the worker pool when large and in a task: 12 ms inline at 3000 x 3000.
function M._mask_alpha(mask)
  -- not a mask: refused inline, with its own message
  local job = large(mask) and mask:channels() == 1 and job_mask_alpha(mask)
  if job then return offload(job) end
  return core.image_mask_alpha(mask)
end

-- check_pair(img, mask) -> true | nil, msg, "badrequest": what an edit endpoint checks before
-- sending, so a size mismatch fails here rather than as a provider's 400.
function M.check_pair(img, mask)
  check_image(img, 1, "check_pair")
  check_image(mask, 2, "check_pair")
  local iw, ih, mw, mh = img:width(), img:height(), mask:width(), mask:height()
  if iw ~= mw or ih ~= mh then
    return nil, format("llmux.image: the mask is %dx%d but the image is %dx%d; they must be the "
      .. "same size (mask:resize(%d, %d))", mw, mh, iw, ih, iw, ih), "badrequest"
  end
  return true
end

local OUTPAINT = set("direction", "pixels", "fill")
local DIRECTIONS = set("left", "right", "top", "bottom", "all")

-- outpaint_canvas(img, {direction = "left"|"right"|"top"|"bottom"|"all", pixels = n,
-- fill = "transparent" | "edge" | {r, g, b[, a]}}) -> canvas, mask: the image grown by pixels
-- on that side (every side for "all") and the mask of the new area, for providers that only
-- inpaint.
function M.outpaint_canvas(img, opts)
  check_image(img, 1, "outpaint_canvas")
  opts = options(opts, 2, "outpaint_canvas", OUTPAINT)
  local dir = opts.direction or "all"
  if not DIRECTIONS[dir] then
    argerr(2, "outpaint_canvas", "direction must be \"left\", \"right\", \"top\", \"bottom\" or "
      .. "\"all\"")
  end
  if opts.pixels == nil then argerr(2, "outpaint_canvas", "pixels expected") end
  local n = int_opt(opts.pixels, 2, "outpaint_canvas", "pixels", 1, MAX_SIDE, nil)
  local all = dir == "all"
  local l, r = (all or dir == "left") and n or 0, (all or dir == "right") and n or 0
  local t, b = (all or dir == "top") and n or 0, (all or dir == "bottom") and n or 0
  local canvas, msg, code = img:extend{ left = l, right = r, top = t, bottom = b,
    fill = opts.fill }
  if not canvas then return nil, msg, code end
  local w, h = canvas:width(), canvas:height()
  local mask = c_mask(w, h, { 0, 0, l, h, w - r, 0, r, h, 0, 0, w, t, 0, h - b, w, b })
  return canvas, mask
end

-- Data URIs and content parts ----------------------------------------------------------------

-- JPEG's start-of-frame markers (SOF0..15 but DHT, JPG and DAC), where its size is.
local JPEG_SOF = {}
for m = 0xC0, 0xCF do JPEG_SOF[m] = m ~= 0xC4 and m ~= 0xC8 and m ~= 0xCC or nil end

-- Width, height of a JPEG from its first frame header, or nil. Each turn moves on by at least
-- one byte; a marker without a length (RSTn, TEM, SOI) is two bytes, 0xFF fill one.
local function jpeg_size(s)
  local pos, n = 3, #s
  while pos + 3 <= n do
    if byte(s, pos) ~= 0xFF then return nil end
    local m = byte(s, pos + 1)
    if m == 0xFF then
      pos = pos + 1
    elseif m == 0x01 or (m >= 0xD0 and m <= 0xD8) then
      pos = pos + 2
    else
      local len = unpack(">I2", s, pos + 2)
      if JPEG_SOF[m] then
        if pos + 8 > n then return nil end
        local h, w = unpack(">I2I2", s, pos + 5)
        if w == 0 or h == 0 then return nil end   -- a height in a later DNL: not read here
        return w, h
      end
      if m == 0xDA or m == 0xD9 or len < 2 then return nil end   -- scan or end before a frame
      pos = pos + 2 + len
    end
  end
  return nil
end

-- Width, height of a WebP (simple lossy, lossless, or extended with its canvas), or nil.
local function webp_size(s)
  local kind = sub(s, 13, 16)
  if kind == "VP8 " and #s >= 30 and sub(s, 24, 26) == "\157\1\42" then
    local w, h = unpack("<I2I2", s, 27)
    w, h = w & 0x3FFF, h & 0x3FFF
    if w > 0 and h > 0 then return w, h end
  elseif kind == "VP8L" and #s >= 25 and byte(s, 21) == 0x2F then
    local v = unpack("<I4", s, 22)
    return (v & 0x3FFF) + 1, ((v >> 14) & 0x3FFF) + 1
  elseif kind == "VP8X" and #s >= 30 then
    local w, h = unpack("<I3I3", s, 25)
    return w + 1, h + 1
  end
  return nil
end

-- sniff(bytes) -> MIME type of a PNG, JPEG, GIF or WebP by its magic bytes, or nil; then the
-- width and height its header declares, when it can be read (nothing is decoded).
function M.sniff(s)
  if type(s) ~= "string" then return nil end
  if sub(s, 1, 8) == "\137PNG\r\n\26\n" then
    local w, h
    if #s >= 24 and sub(s, 13, 16) == "IHDR" then w, h = unpack(">I4I4", s, 17) end
    return "image/png", w, h
  end
  if sub(s, 1, 3) == "\255\216\255" then return "image/jpeg", jpeg_size(s) end
  local g = sub(s, 1, 6)
  if g == "GIF87a" or g == "GIF89a" then
    local w, h
    if #s >= 10 then w, h = unpack("<I2I2", s, 7) end
    return "image/gif", w, h
  end
  if sub(s, 1, 4) == "RIFF" and sub(s, 9, 12) == "WEBP" then return "image/webp", webp_size(s) end
  return nil
end

-- A string is taken for a path unless it is image bytes or could not be one (control
-- characters, longer than PATH_MAX).
local function looks_like_path(s)
  return #s > 0 and #s < 4096 and not find(s, "[%c]")
end

local WHITESPACE = { ignore_whitespace = true }

-- The bytes and MIME type of a base64 data: URL's image | nil, msg, code. The type is what the
-- bytes are ("image/jpg", a common slip, becomes image/jpeg); the payload is not decoded when
-- it holds more than limit bytes (no limit: nil), nor echoed in messages (it may be megabytes).
local function data_url(s, limit)
  local head, at = match(s, "^[Dd][Aa][Tt][Aa]:([^,]*),()")
  local n = #s - at + 1
  -- as the Fetch standard reads it: "base64" in any case, spaces after ';' and at the end
  if not find(lower(head), ";[ ]*base64[ ]*$") then
    return nil, format("llmux.image: a data: URL of %d bytes that is not base64", #s), "decode"
  end
  if limit and n // 4 * 3 - 2 > limit and not find(s, "%s", at) then
    return nil, format("llmux.image: a data: URL of %d bytes (about %d image bytes) is over "
      .. "max_bytes %d", #s, n // 4 * 3, limit), "toolarge"
  end
  local bytes, err = b64_decode(sub(s, at), WHITESPACE)
  if not bytes then return nil, "llmux.image: a data: URL's payload: " .. err, "decode" end
  local mime = M.sniff(bytes)
  if not mime then
    return nil, format("llmux.image: a data: URL of %d bytes that are not PNG, JPEG, GIF or "
      .. "WebP", #bytes), "decode"
  end
  return bytes, mime
end
M._data_url = data_url   -- for llmux.client

-- Whether s is a data: URL (the scheme in any case), for data_url to read.
local function is_data_url(s)
  return find(s, "^[Dd][Aa][Tt][Aa]:[^,]*,") ~= nil
end
M._is_data_url = is_data_url

-- The bytes and MIME type of src (an Image, image bytes, a data: URL or a path) | nil, msg,
-- code; a file is read up to limit bytes.
local function bytes_of(src, fname, limit)
  if getmetatable(src) == IMAGE_MT then return src:encode_png(), "image/png" end
  if type(src) ~= "string" then
    argerr(1, fname, "llmux.Image, image bytes or a path expected, got " .. type(src))
  end
  local mime = M.sniff(src)
  if mime then return src, mime end
  if is_data_url(src) then return data_url(src, limit) end
  if find(src, "^https?://") then
    return nil, format("llmux.image: %s is a URL: llmux reads files, it does not fetch "
      .. "(image.part passes URLs on as they are)", sub(src, 1, 200)), "io"
  end
  if not looks_like_path(src) then
    return nil, format("llmux.image: unknown image format (%d bytes that are not PNG, JPEG, "
      .. "GIF or WebP)", #src), "decode"
  end
  local s, msg, code = read_file(src, M.sniff, limit)
  if code == "decode" then
    return nil, "llmux.image: " .. src .. " is not a PNG, JPEG, GIF or WebP image", code
  elseif code == "toolarge" then
    return nil, format("llmux.image: %s is over max_bytes %d; shrink it first, e.g. "
      .. "image.load(path):fit{max_side = 2048}", src, limit), code
  elseif not s then
    return nil, "llmux.image: " .. msg, code
  end
  return s, (M.sniff(s))   -- the type alone: a third value would read as a code
end

local DATA_URI = set("max_bytes")

local function make_uri(src, limit, fname)
  local bytes, mime, code = bytes_of(src, fname, limit)
  if not bytes then return nil, mime, code end
  if #bytes > limit then
    return nil, format("llmux.image: image is %d bytes, over max_bytes %d; shrink it first, "
      .. "e.g. image.load(path):fit{max_side = 2048}", #bytes, limit), "toolarge"
  end
  return b64_encode(bytes, "data:" .. mime .. ";base64,")
end

-- data_uri(src[, {max_bytes = n}]) -> "data:image/...;base64,..." | nil, msg, code
-- src: an Image (sent as PNG), image bytes or a path; PNG, JPEG, GIF and WebP bytes pass
-- through untouched. max_bytes (default M.max_bytes) limits the image bytes.
function M.data_uri(src, opts)
  opts = options(opts, 2, "data_uri", DATA_URI)
  return make_uri(src, int_opt(opts.max_bytes, 2, "data_uri", "max_bytes", 1, nil, M.max_bytes),
    "data_uri")
end

local PART = set("detail", "max_bytes")
-- OpenAI's levels; "original" (no downscaling) is newer models'
local DETAILS = set("low", "high", "auto", "original")

-- part(src[, {detail = "low"|"high"|"auto"|"original", max_bytes = n}]) -> OpenAI content
-- part {type = "image_url", image_url = {url = data_uri, detail = detail}} | nil, msg, code
function M.part(src, opts)
  opts = options(opts, 2, "part", PART)
  local detail = opts.detail or "auto"
  if not DETAILS[detail] then
    argerr(2, "part", "detail must be \"low\", \"high\", \"auto\" or \"original\"")
  end
  local limit = int_opt(opts.max_bytes, 2, "part", "max_bytes", 1, nil, M.max_bytes)
  if type(src) == "string" and find(src, "^https?://%S+$") then   -- the provider fetches it
    return { type = "image_url", image_url = { url = src, detail = detail } }
  end
  local url, msg, code = make_uri(src, limit, "part")
  if not url then return nil, msg, code end
  return { type = "image_url", image_url = { url = url, detail = detail } }
end

M.Image = Image
return M
