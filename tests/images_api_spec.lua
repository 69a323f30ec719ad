-- The image-edit endpoints against the loopback upstream: OpenAI's multipart /images/edits and
-- the JSON /images/inpaint and /images/outpaint of aggregators; what arrives is checked by the
-- mock (PNG signatures, sizes, fields) and echoed back under "received".
local llmux = require "llmux"
local image = require "llmux.image"
local B = require "helpers.bed"

local bed = B.start(setup, teardown, { api_key = "sk-images-0123456789", timeout = 20 })
local u, c
setup(function() u, c = bed.u, bed.c end)

local function picture(w, h)
  local px = {}
  for i = 1, w * h * 3 do px[i] = string.char((i * 37) % 256) end
  return image.new(w, h, 3, table.concat(px))
end

local key = B.key
local function server_count(k) return B.server_count(c, k) end

describe("images_edit", function()
  it("sends image and mask as PNG parts and decodes the answer on request", function()
    local img, mask = picture(8, 6), image.mask(8, 6, "left_half")
    local res, info = c:images_edit{ image = img, mask = mask, prompt = "a red door", n = 1,
      size = "256x256", response_format = "b64_json", decode = true }
    assert.truthy(res, info)
    assert.equals(200, info.status)
    local got = res.received
    assert.same({ 8, 6, 8, 6 }, { got.width, got.height, got.mask_width, got.mask_height })
    assert.equals("a red door", got.prompt)
    assert.equals("image/png", got.image_type)
    assert.equals("image.png", got.image_filename)
    assert.equals("1", got.n)
    assert.equals("256x256", got.size)
    -- a float n that is an integer goes as the integer's text, not "2.0"
    local two = assert(c:images_edit{ image = img, prompt = "x", n = 2.0 })
    assert.equals("2", two.received.n)
    assert.has_error(function() c:images_edit{ image = img, prompt = "x", n = 1.5 } end,
      "llmux.Client:images_edit: 'n' must be an integer >= 1")
    assert.equals("b64_json", got.response_format)
    -- the GPT image models' fields
    local gpt = assert(c:images_edit{ image = img, prompt = "x", output_format = "webp",
      output_compression = 50.0, input_fidelity = "high", quality = "low",
      background = "opaque" }).received
    assert.same({ "webp", "50", "high", "low", "opaque" }, { gpt.output_format,
      gpt.output_compression, gpt.input_fidelity, gpt.quality, gpt.background })
    assert.has_error(function()
      c:images_edit{ image = img, prompt = "x", output_compression = -1 }
    end, "llmux.Client:images_edit: 'output_compression' must be an integer >= 0")
    -- decode reads PNG only: asking for another format and decode fails before the images
    -- are made, not after
    assert.has_error(function()
      c:images_edit{ image = img, prompt = "x", output_format = "jpeg", decode = true }
    end, "llmux.Client:images_edit: 'decode' needs output_format \"png\" (llmux decodes PNG only)")
    local back = res.data[1].image
    assert.equals(8, back:width())
    assert.equals(img:pixels(), back:pixels())
  end)

  it("takes PNG bytes and paths too", function()
    local png = picture(5, 4):encode_png()
    local res = assert(c:images_edit{ image = png, prompt = "bytes" })
    assert.same({ 5, 4 }, { res.received.width, res.received.height })
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(png)
    f:close()
    res = assert(c:images_edit{ image = path, mask = image.mask(5, 4, "all"), prompt = "path" })
    os.remove(path)
    assert.same({ 5, 4 }, { res.received.mask_width, res.received.mask_height })
  end)

  it("refuses a mask of another size before sending anything", function()
    local k = key("mask")
    local res, msg, code = c:images_edit{ image = picture(8, 6), mask = image.mask(4, 4, "all"),
      prompt = "x", model = "count:" .. k }
    assert.is_nil(res)
    assert.equals("badrequest", code)
    assert.matches("the mask is 4x4 but the image is 8x6", msg)
    assert.equals(0, server_count(k))
  end)

  -- JPEG and WebP headers: SOI, APP0, SOF0 of 3 components; RIFF with a VP8L bitstream header
  local function jpeg(w, h)
    return "\255\216\255\224\0\16JFIF\0\1\1\0\0\1\0\1\0\0\255\192\0\17\8"
      .. string.pack(">I2I2", h, w) .. "\3\1\34\0\2\17\1\3\17\1\255\218\0\2\255\217"
  end
  local function webp(w, h)
    return "RIFF\26\0\0\0WEBPVP8L\13\0\0\0\47" .. string.pack("<I4", (w - 1) | (h - 1) << 14)
      .. "\0\0\0\0\0\0\0\0\0"
  end

  it("sends JPEG and WebP images as they are, as GPT image models take them", function()
    for _, case in ipairs{ { jpeg(8, 6), "image/jpeg", "image.jpg" },
        { webp(8, 6), "image/webp", "image.webp" } } do
      local res = assert(c:images_edit{ image = case[1], prompt = "x",
        mask = image.mask(8, 6, "all") })
      assert.equals(case[2], res.received.image_type)
      assert.equals(case[3], res.received.image_filename)
      assert.equals(case[1], llmux.base64.decode(res.data[1].b64_json))
      -- their sizes are read from the header: a mask of another size is not sent
      local _, msg, code = c:images_edit{ image = case[1], prompt = "x",
        mask = image.mask(6, 8, "all") }
      assert.equals("badrequest", code)
      assert.matches("the mask is 6x8 but the image is 8x6", msg, 1, true)
    end
    -- a JPEG cut before its frame header has no size to check a mask against
    local _, msg, code = c:images_edit{ image = jpeg(8, 6):sub(1, 22), prompt = "x" }
    assert.equals("decode", code)
    assert.matches("image is a truncated JPEG (22 bytes", msg, 1, true)
    -- a data: URL is its bytes
    local res = assert(c:images_edit{ prompt = "x", mask = image.mask(8, 6, "all"),
      image = "data:image/webp;base64," .. llmux.base64.encode(webp(8, 6)) })
    assert.equals("image/webp", res.received.image_type)
    -- a GIF is none of them; a JPEG mask is no PNG; inpaint and outpaint send PNGs
    _, msg, code = c:images_edit{ image = "GIF89a\8\0\6\0\0\0\0;", prompt = "x" }
    assert.equals("badrequest", code)
    assert.matches("image must be a PNG, JPEG or WebP, not image/gif", msg, 1, true)
    _, msg, code = c:images_edit{ image = jpeg(8, 6), mask = jpeg(8, 6), prompt = "x" }
    assert.equals("badrequest", code)
    assert.matches("mask must be a PNG, not image/jpeg", msg, 1, true)
    _, msg, code = c:inpaint{ image = jpeg(8, 6), mask = image.mask(8, 6, "all"), prompt = "x" }
    assert.equals("badrequest", code)
    assert.matches("inpaint: image must be a PNG, not image/jpeg", msg, 1, true)
  end)

  it("sends a list of images as image[] parts, the mask checked against the first", function()
    local k = key("several")
    local a, b = picture(8, 6), picture(3, 3)
    local res = assert(c:images_edit{ image = { a, jpeg(5, 7), b:encode_png(),
        "data:image/webp;base64," .. llmux.base64.encode(webp(2, 9)) },
      mask = image.mask(8, 6, "all"), prompt = "a room with these", model = "count:" .. k })
    local got = res.received
    assert.is_true(got.image_list)
    assert.same({ { 8, 6, "image/png", "image.png" }, { nil, nil, "image/jpeg", "image2.jpg" },
      { 3, 3, "image/png", "image3.png" }, { nil, nil, "image/webp", "image4.webp" } },
      (function()
        local t = {}
        for i, im in ipairs(got.images) do
          t[i] = { im.width, im.height, im.type, im.filename }
        end
        return t
      end)())
    assert.same({ 8, 6 }, { got.mask_width, got.mask_height })
    assert.equals(a:pixels(), image.decode(llmux.base64.decode(res.data[1].b64_json)):pixels())
    -- a list of one is a list too (image[]), as OpenAI's SDKs send it
    res = assert(c:images_edit{ image = { b }, prompt = "x" })
    assert.is_true(res.received.image_list)
    assert.equals(1, #res.received.images)
    -- one image alone stays "image"
    assert.is_false(assert(c:images_edit{ image = b, prompt = "x" }).received.image_list)
    -- the mask must fit the first image; any bad entry is named; nothing is sent
    local _, msg, code = c:images_edit{ image = { b, a }, mask = image.mask(8, 6, "all"),
      prompt = "x", model = "count:" .. k }
    assert.equals("badrequest", code)
    assert.matches("the mask is 8x6 but the image is 3x3", msg, 1, true)
    _, msg, code = c:images_edit{ image = { a, "GIF89a\8\0\6\0\0\0\0;" }, prompt = "x",
      model = "count:" .. k }
    assert.equals("badrequest", code)
    assert.matches("images_edit: image[2] must be a PNG, JPEG or WebP, not image/gif", msg, 1,
      true)
    _, msg, code = c:images_edit{ image = { a, "/nonexistent/llmux.png" }, prompt = "x" }
    assert.equals("io", code)
    assert.matches("image[2]: ", msg, 1, true)
    assert.equals(1, server_count(k))
    assert.has_error(function() c:images_edit{ image = {}, prompt = "x" } end,
      "llmux.Client:images_edit: 'image' is an empty list")
    local holes = { a, b, b }
    holes[2] = nil
    assert.has_error(function() c:images_edit{ image = holes, prompt = "x" } end,
      "llmux.Client:images_edit: 'image' is a list with holes (nil entries)")
    assert.has_error(function() c:images_edit{ image = { a, x = b }, prompt = "x" } end,
      "llmux.Client:images_edit: 'image' as a table must be a list of images (key x)")
    assert.has_error(function() c:images_edit{ image = { a, 5 }, prompt = "x" } end,
      "llmux.Client:images_edit: 'image[2]' must be an llmux.Image, or the bytes or path of a "
      .. "PNG, JPEG or WebP")
    a:close()
    assert.has_error(function() c:images_edit{ image = { b, a }, prompt = "x" } end,
      "llmux.Client:images_edit: 'image[2]' is a closed llmux.Image")
  end)

  it("reports bad image input clearly", function()
    local _, msg, code = c:outpaint{ image = "\255\216\255\224 jpeg", prompt = "x",
      direction = "left", pixels = 1 }
    assert.equals("badrequest", code)
    assert.matches("must be a PNG, not image/jpeg", msg)
    _, msg, code = c:images_edit{ image = "/nonexistent/llmux.png", prompt = "x" }
    assert.equals("io", code)
    _, msg, code = c:images_edit{ image = "\137PNG\r\n\26\n\0\0", prompt = "x" }
    assert.equals("decode", code)
    assert.matches("truncated PNG", msg)
  end)

  it("reports a directory given as image or mask as io, like image.load", function()
    local res, msg, code = c:images_edit{ image = "/", prompt = "x" }
    assert.is_nil(res)
    assert.equals("io", code)
    assert.matches("llmux.Client:images_edit: image: cannot read /", msg, 1, true)
    res, msg, code = c:inpaint{ image = picture(2, 2), mask = "/", prompt = "x" }
    assert.is_nil(res)
    assert.equals("io", code)
    assert.matches("llmux.Client:inpaint: mask: cannot read /", msg, 1, true)
    -- nor a device (it may never end), nor a FIFO (its open waits for a writer)
    res, msg, code = c:images_edit{ image = "/dev/zero", prompt = "x" }
    assert.is_nil(res)
    assert.equals("io", code)
    assert.matches("image: cannot read /dev/zero: it is a character device, not a regular file",
      msg, 1, true)
  end)

  it("sends llmux's 1-channel masks with alpha 0 where they paint (OpenAI's form)", function()
    local img = picture(4, 2)
    local res = assert(c:images_edit{ image = img, mask = image.mask(4, 2, "left_half"),
      prompt = "x" })
    local sent = assert(image.decode(assert(llmux.base64.decode(res.received.mask_b64))))
    -- grey + alpha: the grey still says 255 = paint, the alpha is 0 there
    assert.equals(2, sent:channels())
    assert.equals(string.rep("\255\0\255\0\0\255\0\255", 2), sent:pixels())
    -- outpaint_canvas's mask too
    local canvas, mask = image.outpaint_canvas(img, { direction = "right", pixels = 1 })
    res = assert(c:images_edit{ image = canvas, mask = mask, prompt = "x" })
    sent = assert(image.decode(assert(llmux.base64.decode(res.received.mask_b64))))
    assert.equals(string.rep(string.rep("\0\255", 4) .. "\255\0", 2), sent:pixels())
    -- an RGB mask is read by its luma, white = paint (OpenAI refuses a mask without alpha)
    local rgb = image.new(4, 2, 3, string.rep("\255\255\255\0\0\0", 4))
    res = assert(c:images_edit{ image = img, mask = rgb, prompt = "x" })
    sent = assert(image.decode(assert(llmux.base64.decode(res.received.mask_b64))))
    assert.equals(2, sent:channels())
    assert.equals(string.rep("\255\0\0\255", 4), sent:pixels())
    -- so is one whose alpha is all opaque (drawn in colour, saved as RGBA), and its PNG
    local drawn = image.new(4, 2, 4, string.rep("\255\255\255\255\0\0\0\255", 4))
    for _, m in ipairs{ drawn, drawn:encode_png() } do
      res = assert(c:images_edit{ image = img, mask = m, prompt = "x" })
      sent = assert(image.decode(assert(llmux.base64.decode(res.received.mask_b64))))
      assert.equals(2, sent:channels())
      assert.equals(string.rep("\255\0\0\255", 4), sent:pixels())
    end
    assert.is_true(drawn:opaque())
    assert.is_true(rgb:opaque())
    -- a mask with alpha of its own, and PNG bytes, go as they are
    local own = image.new(4, 2, 4, string.rep("\0\0\0\0\9\9\9\255", 4))
    assert.is_false(own:opaque())
    res = assert(c:images_edit{ image = img, mask = own, prompt = "x" })
    sent = assert(image.decode(assert(llmux.base64.decode(res.received.mask_b64))))
    assert.equals(own:pixels(), sent:pixels())
    local bytes = image.new(4, 2, 2, string.rep("\0\0\9\255", 4)):encode_png()
    res = assert(c:images_edit{ image = img, mask = bytes, prompt = "x" })
    assert.equals(bytes, llmux.base64.decode(res.received.mask_b64))
    -- a PNG without alpha, bytes or a file (an llmux mask saved), would be refused as it is:
    -- it goes as the llmux.Image it decodes to would; with tRNS, it has alpha
    local saved = image.mask(4, 2, "left_half"):encode_png()
    local path = os.tmpname()
    local f = assert(io.open(path, "wb"))
    f:write(saved)
    f:close()
    for _, m in ipairs{ saved, path } do
      res = assert(c:images_edit{ image = img, mask = m, prompt = "x" })
      sent = assert(image.decode(assert(llmux.base64.decode(res.received.mask_b64))))
      assert.equals(string.rep("\255\0\255\0\0\255\0\255", 2), sent:pixels())
    end
    os.remove(path)
    local tf = assert(io.open(B.pngsuite("tbbn3p08.png"), "rb"))
    local tp = tf:read("a")   -- palette + tRNS
    tf:close()
    local big = assert(image.decode(tp))
    res = assert(c:images_edit{ image = image.new(big:width(), big:height(), 3), mask = tp,
      prompt = "x" })
    assert.equals(tp, llmux.base64.decode(res.received.mask_b64))
    -- a mask that is no PNG is named as the mask
    local _, msg, code = c:images_edit{ image = img, mask = saved:sub(1, 40), prompt = "x" }
    assert.equals("decode", code)
    assert.matches("images_edit: mask: llmux.image: bad PNG", msg, 1, true)
    -- the JSON inpaint endpoint keeps white = paint
    mask = image.mask(4, 2, "left_half")
    res = assert(c:inpaint{ image = img, mask = mask, prompt = "x" })
    sent = assert(image.decode(assert(llmux.base64.decode(res.received.mask_b64))))
    assert.equals(1, sent:channels())
    assert.equals(mask:pixels(), sent:pixels())
  end)

  it("raises on misuse", function()
    assert.has_error(function() c:images_edit{ prompt = "x" } end,
      "llmux.Client:images_edit: 'image' is required")
    assert.has_error(function()
      c:images_edit{ image = picture(2, 2), prompt = "x", colour = 1 }
    end,
      "llmux.Client:images_edit: unknown argument 'colour'")
    assert.has_error(function() c:images_edit{ image = 5, prompt = "x" } end,
      "llmux.Client:images_edit: 'image' must be an llmux.Image, or the bytes or path of a "
        .. "PNG, JPEG or WebP")
    assert.has_error(function() c:images_edit("x") end,
      "llmux.Client:images_edit: args must be a table")
    -- a closed image or mask, blaming the caller's line
    local closed = picture(2, 2)
    closed:close()
    for _, case in ipairs{
        { function() c:images_edit{ image = closed, prompt = "x" } end, "images_edit: 'image'" },
        { function() c:images_edit{ image = picture(2, 2), mask = closed, prompt = "x" } end,
          "images_edit: 'mask'" },
        { function() c:inpaint{ image = picture(2, 2), mask = closed, prompt = "x" } end,
          "inpaint: 'mask'" },
        { function() c:outpaint{ image = closed, prompt = "x", direction = "left", pixels = 1 }
          end, "outpaint: 'image'" } } do
      local ok, err = pcall(case[1])
      assert.is_false(ok)
      assert.matches("images_api_spec.lua:" .. debug.getinfo(case[1], "S").linedefined
        .. ": llmux.Client:" .. case[2] .. " is a closed llmux.Image", err, 1, true)
    end
  end)

  it("retries, maps errors, and leaves pooled handles clean", function()
    local k = key("edit")
    local res, info = c:images_edit{ image = picture(3, 3), prompt = "x",
      model = "fail:1:503:" .. k }
    assert.truthy(res, info)
    assert.equals(2, info.attempts)
    local _, _, code = c:images_edit{ image = picture(3, 3), prompt = "x", model = "status:401" }
    assert.equals("auth", code)
    -- the next JSON call on the same engine is not a multipart post
    for i = 1, 4 do
      local r = assert(c:chat{ model = "m",
        messages = { { role = "user", content = "after" .. i } } })
      assert.equals("echo: after" .. i, r.choices[1].message.content)
    end
  end)
end)

describe("multipart in the core", function()
  it("checks form parts before taking any resource", function()
    local m = llmux.core.multi()
    assert.has_error(function()
      m:request{ url = u.http .. "/images/edits", form = { { name = "a" } } }
    end, "llmux.request: form[1] must be {name = s, data = s[, filename = s][, type = s]}")
    assert.has_error(function()
      m:request{ url = u.http .. "/images/edits", form = { { name = "a", data = "b", type = 1 } } }
    end, "llmux.request: form[1] must be {name = s, data = s[, filename = s][, type = s]}")
    assert.has_error(function()
      m:request{ url = u.http .. "/images/edits", body = "x", form = {} }
    end, "llmux.request: 'form' must be a table of parts, and not with 'body'")
    assert.same({ running = 0, queued = 0 }, { running = m:stats().running,
      queued = m:stats().queued })
    m:close()
  end)
end)

describe("inpaint and outpaint", function()
  it("inpaint sends base64 PNGs and the knobs", function()
    local res, info = c:inpaint{ image = picture(6, 6), mask = image.mask(6, 6, "top_half"),
      prompt = "sky", strength = 0.8, guidance_scale = 7.5, seed = 42, decode = true }
    assert.truthy(res, info)
    local got = res.received
    assert.same({ 6, 6, 6, 6 }, { got.width, got.height, got.mask_width, got.mask_height })
    assert.same({ 0.8, 7.5, 42 }, { got.strength, got.guidance_scale, got.seed })
    assert.equals(6, res.data[1].image:height())
  end)

  it("inpaint needs a mask of the image's size and honours a custom path", function()
    assert.has_error(function() c:inpaint{ image = picture(2, 2), prompt = "x" } end,
      "llmux.Client:inpaint: 'mask' is required")
    local _, _, code = c:inpaint{ image = picture(4, 4), mask = image.mask(4, 5, "all"),
      prompt = "x" }
    assert.equals("badrequest", code)
    local res, info = c:inpaint{ image = picture(4, 4), mask = image.mask(4, 4, "all"),
      prompt = "x", path = "/custom/inpaint" }
    assert.truthy(res, info)
    assert.equals(u.http .. "/custom/inpaint", info.url)
  end)

  it("outpaint sends direction and pixels", function()
    local res, info = c:outpaint{ image = picture(5, 3), direction = "right", pixels = 64,
      prompt = "more beach" }
    assert.truthy(res, info)
    assert.same({ "right", 64, 5, 3 }, { res.received.direction, res.received.pixels,
      res.received.width, res.received.height })
    assert.is_nil(res.data[1].image)   -- not decoded unless asked
    -- an integral float is an integer (cjson decodes a config's 64 as 64.0)
    res = assert(c:outpaint{ image = picture(5, 3), direction = "all", pixels = 64.0,
      prompt = "x" })
    assert.equals(64, res.received.pixels)
    assert.has_error(function()
      c:outpaint{ image = picture(2, 2), direction = "left", pixels = 1.5, prompt = "x" }
    end, "llmux.Client:outpaint: 'pixels' must be an integer >= 1")
    assert.has_error(function()
      c:outpaint{ image = picture(2, 2), direction = "up", pixels = 1, prompt = "x" }
    end, "llmux.Client:outpaint: 'direction' must be left, right, top, bottom or all")
    assert.has_error(function()
      c:outpaint{ image = picture(2, 2), direction = "left", pixels = 0, prompt = "x" }
    end, "llmux.Client:outpaint: 'pixels' must be an integer >= 1")
    assert.has_error(function()   -- math.tointeger takes "64"; an option does not
      c:outpaint{ image = picture(2, 2), direction = "left", pixels = "64", prompt = "x" }
    end, "llmux.Client:outpaint: 'pixels' must be a number")
  end)

  it("refuses a path that does not start with '/' or holds blanks, before sending", function()
    -- "@host:port/x" after base_url would be read as userinfo@host: the key sent elsewhere
    local img, m = picture(4, 4), image.mask(4, 4, "all")
    local want = "'path' must start with '/' and contain no whitespace or control characters"
    for _, p in ipairs{ "images/inpaint", "@127.0.0.1:1/steal", "", "/a b", "/x\r\nX-A: 1",
      "/x\0", "/x\t" } do
      local calls = {
        function() c:inpaint{ image = img, mask = m, prompt = "x", path = p } end,
        function() c:outpaint{ image = img, direction = "left", pixels = 1,
          prompt = "x", path = p } end,
      }
      for _, f in ipairs(calls) do
        local ok, err = pcall(f)
        assert.is_false(ok, p)
        -- the error blames the caller's line
        local at = "images_api_spec.lua:" .. debug.getinfo(f, "S").linedefined .. ": "
        assert.truthy(err:find(at, 1, true), err)
        assert.truthy(err:find(want, 1, true), err)
      end
    end
  end)

  it("codes base64 on the worker pool inside tasks, as large base64 is", function()
    local base64 = llmux.base64
    local saved = { base64.pool_min_bytes, image.pool_min_pixels, image.pool_min_bytes }
    -- every base64 is "large", no PNG work is: what the pool runs is the client's base64
    base64.pool_min_bytes, image.pool_min_pixels, image.pool_min_bytes = 1, math.maxinteger,
      math.maxinteger
    local ok, err = pcall(function()
      local function jobs(fn)
        local d0 = llmux.core.pool_stats().done
        llmux.run(fn)
        return llmux.core.pool_stats().done - d0
      end
      local img, m = picture(8, 8), image.mask(8, 8, "all")
      assert.equals(3, jobs(function()        -- image, mask, the answer's b64_json
        local res = assert(c:inpaint{ image = img, mask = m, prompt = "x", decode = true })
        assert.equals(img:pixels(), res.data[1].image:pixels())
      end))
      assert.equals(2, jobs(function()        -- image, the answer's b64_json
        assert(c:outpaint{ image = img, direction = "left", pixels = 1, prompt = "x",
          decode = true })
      end))
      assert.equals(1, jobs(function()        -- the answer's b64_json
        assert(c:images_edit{ image = img, prompt = "x", decode = true })
      end))
    end)
    base64.pool_min_bytes, image.pool_min_pixels, image.pool_min_bytes = saved[1], saved[2],
      saved[3]
    assert(ok, err)
  end)

  it("makes a large edit mask's alpha form on the worker pool inside tasks", function()
    local saved = image.pool_min_pixels
    image.pool_min_pixels = 600 * 400
    local ok, err = pcall(function()
      local img, m = picture(600, 400), image.mask(600, 400, { { 10, 10, 100, 100 } })
      local d0 = llmux.core.pool_stats().done
      llmux.run(function()
        assert(c:images_edit{ image = img, mask = m, prompt = "x" })
      end)
      -- the mask's grey + alpha form, then the PNG encodes of the image and of that form
      -- (the image's opaque() scan is no job: it has no alpha)
      assert.equals(3, llmux.core.pool_stats().done - d0)
    end)
    image.pool_min_pixels = saved
    assert(ok, err)
  end)

  it("a provider's bad b64_json is a decode error", function()
    -- the mock echoes the PNG it got; a corrupt one comes back corrupt
    local png = picture(4, 4):encode_png()
    local broken = png:sub(1, 40)
    local _, msg, code, detail = c:inpaint{ image = broken, mask = broken, prompt = "x",
      decode = true }
    assert.equals("decode", code)
    assert.matches("data%[1%]%.b64_json", msg)
    -- the answer is not lost with the decode: its images were made (and paid for)
    assert.equals(broken, llmux.base64.decode(detail.body.data[1].b64_json))
    assert.equals(200, detail.status)
  end)

  it("an answer's image over max_pixels is a toolarge failure, the answer in detail", function()
    local img = picture(4, 4)
    local saved = image.max_pixels
    image.configure{ max_pixels = 15 }
    local ok, res, msg, code, detail = pcall(c.inpaint, c, { image = img, mask = img,
      prompt = "x", decode = true })
    image.configure{ max_pixels = saved }
    assert(ok, res)
    assert.is_nil(res)
    assert.equals("toolarge", code)
    assert.matches("data%[1%]%.b64_json: .*max_pixels", msg)
    assert.equals(img:encode_png(), llmux.base64.decode(detail.body.data[1].b64_json))
  end)
end)
