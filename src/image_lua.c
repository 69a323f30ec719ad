/* llmux.Image: a userdata owning the malloc'd pixels of an lmx_Image (image.c does all the
 * work in plain C; this file only checks arguments and wraps results). Options tables are
 * read by lua/llmux/image.lua, which calls the positional core.image_* functions below. */
#include <stdlib.h>
#include <string.h>
#include "llmux.h"
#include "image.h"
#include "pool.h"

#define LMX_IMAGE "llmux.Image"

/* The userdata: the pixels and the worker jobs reading them (pool.h), so closing an image a
 * job still reads hands the pixels to that job instead of freeing them under it. im comes
 * first: an ImageUD * is an lmx_Image *. */
typedef struct ImageUD {
  lmx_Image im;
  lmx_Pin pin;
} ImageUD;

/* A new, closed Image on the stack: metatable first, pixels later, so a failure between
 * leaves an object __gc can skip. */
static lmx_Image *newimage(lua_State *L) {
  ImageUD *u = lua_newuserdatauv(L, sizeof *u, 0);
  memset(u, 0, sizeof *u);
  luaL_setmetatable(L, LMX_IMAGE);
  return &u->im;
}

static lmx_Image *checkimage(lua_State *L, int i) {
  lmx_Image *im = luaL_checkudata(L, i, LMX_IMAGE);
  if (!im->px) luaL_error(L, "attempt to use a closed " LMX_IMAGE);
  return im;
}

lmx_Image *lmx_image_push(lua_State *L) { return newimage(L); }
lmx_Image *lmx_image_check(lua_State *L, int i) { return checkimage(L, i); }
lmx_Pin *lmx_image_pin(lmx_Image *im) { return &((ImageUD *)im)->pin; }

/* The collector does not see malloc'd pixels: tell it, as if they had been allocated by Lua,
 * so a loop making large images does not outrun the collection of the old ones. Not when the
 * host stopped the collector (a game that collects in its spare frame time): LUA_GCSTEP runs
 * a step even then, and one with an image's debt could run a whole cycle inside a frame. */
static void account(lua_State *L, const lmx_Image *im) {
  size_t kb = ((size_t)im->w * im->h * im->ch) >> 10;
  if (kb > 0 && lua_gc(L, LUA_GCISRUNNING))
    lua_gc(L, LUA_GCSTEP, kb > 0x7fffffff ? 0x7fffffff : (int)kb);
}

/* Leaves the result of an image.c call: the new Image (already at the top) on success, or
 * nil, msg, code for bad data; raises for misuse and memory. */
static int finish(lua_State *L, int r, const lmx_ImgErr *e) {
  if (r == LMX_IMG_OK) {
    account(L, lua_touserdata(L, -1));
    return 1;
  }
  if (r == LMX_IMG_NOMEM || r == LMX_IMG_ARG) return luaL_error(L, "%s", e->msg);
  lua_pushnil(L);
  lua_pushstring(L, e->msg);
  lua_pushstring(L, r == LMX_IMG_TOOLARGE ? "toolarge" : "decode");
  return 3;
}

int lmx_image_result(lua_State *L, int r, const lmx_ImgErr *e) { return finish(L, r, e); }

static int checkdim(lua_State *L, int i, const char *what) {
  lua_Integer v = luaL_checkinteger(L, i);
  if (v < 1 || v > LMX_IMG_MAX_SIDE)
    luaL_argerror(L, i, lua_pushfstring(L, "%s must be a positive integer", what));
  return (int)v;
}

/* core.image_decode(bytes, max_pixels) -> Image | nil, msg, "decode" | "toolarge" */
static int image_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer maxpx = luaL_checkinteger(L, 2);
  lmx_ImgErr e;
  lmx_Image *im = newimage(L);
  return finish(L, lmx_png_decode(s, n, maxpx < 0 ? 0 : (uint64_t)maxpx, im, NULL, &e), &e);
}

/* core.image_new(w, h, channels[, pixels]) -> Image (zeroed pixels unless given) */
static int image_new(lua_State *L) {
  int w = checkdim(L, 1, "width"), h = checkdim(L, 2, "height");
  lua_Integer ch = luaL_checkinteger(L, 3);
  size_t n = 0;
  const char *px = luaL_optlstring(L, 4, NULL, &n);
  lmx_ImgErr e;
  lmx_Image *im;
  luaL_argcheck(L, ch >= 1 && ch <= 4, 3, "channels must be 1, 2, 3 or 4");
  if (px && n != (size_t)w * h * ch)
    return luaL_argerror(L, 4, lua_pushfstring(L, "pixels must be %d x %d x %d = %I bytes, "
                         "got %I", w, h, (int)ch, (LUAI_UACINT)w * h * ch, (LUAI_UACINT)n));
  lua_settop(L, 4);
  im = newimage(L);
  return finish(L, lmx_img_from(px, w, h, (int)ch, im, &e), &e);
}

/* core.image_encode_png(img, level) -> PNG bytes */
static int image_encode_png(lua_State *L) {
  lmx_Image *im = checkimage(L, 1);
  lua_Integer level = luaL_checkinteger(L, 2);
  lmx_Buf b = { NULL, 0, 0 };
  lmx_ImgErr e;
  int r;
  luaL_argcheck(L, level >= 0 && level <= 9, 2, "level must be 0..9");
  r = lmx_png_encode(im, (int)level, -1, &b, &e);
  if (r == LMX_IMG_OK) lua_pushlstring(L, b.p, b.n);   /* may raise: b freed in no case then */
  lmx_buf_free(&b);
  if (r != LMX_IMG_OK) return luaL_error(L, "%s", e.msg);
  return 1;
}

/* core.image_extend(img, left, right, top, bottom, edge, r, g, b, a, out_channels) -> Image */
static int image_extend(lua_State *L) {
  lmx_Image *src = checkimage(L, 1), *im;
  int side[4], i, edge = lua_toboolean(L, 6), outch;
  unsigned char rgba[4];
  lmx_ImgErr e;
  for (i = 0; i < 4; i++) {
    lua_Integer v = luaL_checkinteger(L, 2 + i);
    luaL_argcheck(L, v >= 0 && v <= LMX_IMG_MAX_SIDE, 2 + i, "border out of range");
    side[i] = (int)v;
  }
  for (i = 0; i < 4; i++) {
    lua_Integer v = luaL_checkinteger(L, 7 + i);
    luaL_argcheck(L, v >= 0 && v <= 255, 7 + i, "colour component must be 0..255");
    rgba[i] = (unsigned char)v;
  }
  outch = (int)luaL_checkinteger(L, 11);
  luaL_argcheck(L, outch == src->ch || (outch == 2 && src->ch == 1) ||
                (outch == 4 && src->ch == 3), 11, "bad channel count");
  lua_settop(L, 11);
  im = newimage(L);
  return finish(L, lmx_img_extend(src, side[0], side[1], side[2], side[3],
                                  edge ? LMX_FILL_EDGE : LMX_FILL_COLOR, rgba, outch, im, &e),
                &e);
}

/* core.image_mask(w, h, rects) -> Image: 1 channel, 255 inside the rectangles (a flat list
 * x1, y1, w1, h1, x2, ...; clipped to the image), 0 elsewhere */
static int image_mask(lua_State *L) {
  int w = checkdim(L, 1, "width"), h = checkdim(L, 2, "height"), r;
  lua_Integer n, i;
  lmx_ImgErr e;
  lmx_Image *im;
  luaL_checktype(L, 3, LUA_TTABLE);
  n = (lua_Integer)lua_rawlen(L, 3);
  lua_settop(L, 3);
  im = newimage(L);
  if ((r = lmx_img_alloc(im, w, h, 1, &e)) != LMX_IMG_OK) return finish(L, r, &e);
  for (i = 1; i + 3 <= n; i += 4) {
    lua_Integer v[4];
    int k;
    for (k = 0; k < 4; k++) {
      lua_rawgeti(L, 3, i + k);
      v[k] = lua_tointeger(L, -1);
      lua_pop(L, 1);
      if (v[k] < -0x3fffffff) v[k] = -0x3fffffff;   /* clipping is all that can happen */
      if (v[k] > 0x3fffffff) v[k] = 0x3fffffff;
    }
    lmx_img_fill_rect(im, (int)v[0], (int)v[1], (int)v[2], (int)v[3], 255);
  }
  return finish(L, LMX_IMG_OK, &e);
}

/* core.image_mask_from(img, threshold, invert) -> mask, inverted; invert is true, false or
 * "auto" (invert when more than half would be painted) */
static int image_mask_from(lua_State *L) {
  lmx_Image *src = checkimage(L, 1), *im;
  lua_Integer th = luaL_checkinteger(L, 2);
  int inv = lua_type(L, 3) == LUA_TSTRING ? -1 : lua_toboolean(L, 3), inverted = 0, r;
  lmx_ImgErr e;
  luaL_argcheck(L, th >= 0 && th <= 256, 2, "threshold must be 0..256");
  lua_settop(L, 3);
  im = newimage(L);
  r = lmx_img_mask_from(src, (int)th, inv, im, &inverted, &e);
  if (finish(L, r, &e) != 1) return 3;
  lua_pushboolean(L, inverted);
  return 2;
}

/* core.image_mask_alpha(mask) -> Image: a 1-channel mask as grey + alpha, alpha 255 - grey
 * (what OpenAI's /images/edits reads: alpha 0 = edit) */
static int image_mask_alpha(lua_State *L) {
  lmx_Image *src = checkimage(L, 1), *im;
  lmx_ImgErr e;
  lua_settop(L, 1);
  im = newimage(L);
  return finish(L, lmx_img_mask_alpha(src, im, &e), &e);
}

/* img:width() -> integer */
static int image_width(lua_State *L) {
  lua_pushinteger(L, checkimage(L, 1)->w);
  return 1;
}

/* img:height() -> integer */
static int image_height(lua_State *L) {
  lua_pushinteger(L, checkimage(L, 1)->h);
  return 1;
}

/* img:channels() -> 1 gray | 2 gray+alpha | 3 RGB | 4 RGBA */
static int image_channels(lua_State *L) {
  lua_pushinteger(L, checkimage(L, 1)->ch);
  return 1;
}

/* img:opaque() -> boolean: no alpha channel, or every pixel's alpha is 255 */
static int image_opaque(lua_State *L) {
  lua_pushboolean(L, lmx_img_opaque(checkimage(L, 1)));
  return 1;
}

/* img:pixels() -> string: 8-bit interleaved rows, top to bottom */
static int image_pixels(lua_State *L) {
  lmx_Image *im = checkimage(L, 1);
  lua_pushlstring(L, (const char *)im->px, (size_t)im->w * im->h * im->ch);
  return 1;
}

static int convert(lua_State *L, int ch) {
  lmx_Image *src = checkimage(L, 1), *im;
  lmx_ImgErr e;
  lua_settop(L, 1);
  im = newimage(L);
  return finish(L, lmx_img_convert(src, ch, im, &e), &e);
}

/* img:to_gray() -> Image (1 channel, ITU-R 601-2 luma; alpha dropped) */
static int image_to_gray(lua_State *L) { return convert(L, 1); }
/* img:to_rgb() -> Image (3 channels; alpha dropped) */
static int image_to_rgb(lua_State *L) { return convert(L, 3); }
/* img:to_rgba() -> Image (4 channels; opaque unless the source has alpha) */
static int image_to_rgba(lua_State *L) { return convert(L, 4); }

/* img:crop(x, y, w, h) -> Image; x, y 0-based, the rectangle inside the image */
static int image_crop(lua_State *L) {
  lmx_Image *src = checkimage(L, 1), *im;
  lua_Integer x = luaL_checkinteger(L, 2), y = luaL_checkinteger(L, 3);
  int w = checkdim(L, 4, "width"), h = checkdim(L, 5, "height");
  lmx_ImgErr e;
  if (x < 0 || y < 0 || x > src->w - w || y > src->h - h)
    return luaL_error(L, "llmux.image: crop %I,%I %dx%d is outside the %dx%d image",
                      (LUAI_UACINT)x, (LUAI_UACINT)y, w, h, src->w, src->h);
  lua_settop(L, 5);
  im = newimage(L);
  return finish(L, lmx_img_crop(src, (int)x, (int)y, w, h, im, &e), &e);
}

/* img:resize(w, h) -> Image (area averaging to shrink, bilinear to grow) */
static int image_resize(lua_State *L) {
  lmx_Image *src = checkimage(L, 1), *im;
  int w = checkdim(L, 2, "width"), h = checkdim(L, 3, "height");
  lmx_ImgErr e;
  lua_settop(L, 3);
  im = newimage(L);
  return finish(L, lmx_img_resize(src, w, h, im, &e), &e);
}

/* mask:coverage() -> fraction 0..1 of the mask that is painted (mean / 255) */
static int image_coverage(lua_State *L) {
  lmx_Image *im = checkimage(L, 1);
  if (im->ch != 1)
    return luaL_error(L, "llmux.image: coverage needs a 1-channel mask, this image has %d "
                      "channels (see image.normalize_mask)", im->ch);
  lua_pushnumber(L, lmx_img_coverage(im));
  return 1;
}

/* img:close() / __gc / __close: frees the pixels, or leaves them to the last worker job
 * still reading them (the image is closed at once either way); idempotent */
static int image_close(lua_State *L) {
  ImageUD *u = luaL_checkudata(L, 1, LMX_IMAGE);
  if (u->im.px && lmx_pin_close(&u->pin, u->im.px)) free(u->im.px);
  memset(&u->im, 0, sizeof u->im);
  return 0;
}

/* tostring(img) -> "llmux.Image (WxHxC)" | "llmux.Image (closed)" */
static int image_tostring(lua_State *L) {
  lmx_Image *im = luaL_checkudata(L, 1, LMX_IMAGE);
  if (!im->px) lua_pushliteral(L, LMX_IMAGE " (closed)");
  else lua_pushfstring(L, LMX_IMAGE " (%dx%dx%d)", im->w, im->h, im->ch);
  return 1;
}

void lmx_image_open(lua_State *L) {
  static const luaL_Reg meta[] = {
    { "__gc", image_close }, { "__close", image_close }, { "__tostring", image_tostring },
    { NULL, NULL } };
  static const luaL_Reg methods[] = {
    { "width", image_width }, { "height", image_height }, { "channels", image_channels },
    { "opaque", image_opaque },
    { "pixels", image_pixels }, { "to_gray", image_to_gray }, { "to_rgb", image_to_rgb },
    { "to_rgba", image_to_rgba }, { "crop", image_crop }, { "resize", image_resize },
    { "coverage", image_coverage }, { "close", image_close }, { NULL, NULL } };
  static const luaL_Reg funcs[] = {
    { "image_decode", image_decode }, { "image_new", image_new },
    { "image_encode_png", image_encode_png }, { "image_extend", image_extend },
    { "image_mask", image_mask }, { "image_mask_from", image_mask_from },
    { "image_mask_alpha", image_mask_alpha }, { NULL, NULL } };
  lmx_newclass(L, LMX_IMAGE, meta, methods);
  luaL_setfuncs(L, funcs, 0);
  /* core.Image: the method table, so lua/llmux/image.lua can add the methods written in Lua
   * (encode_png, extend, fit) */
  luaL_getmetatable(L, LMX_IMAGE);
  lua_getfield(L, -1, "__index");
  lua_setfield(L, -3, "Image");
  lua_pop(L, 1);
  lua_pushinteger(L, (lua_Integer)LMX_IMG_MAX_PIXELS_DEFAULT);
  lua_setfield(L, -2, "image_max_pixels");
  lua_pushinteger(L, LMX_IMG_MAX_SIDE);
  lua_setfield(L, -2, "image_max_side");
}
