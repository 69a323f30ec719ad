/* llmux.Job: the work of b64_lua.c and image_lua.c (base64, PNG decode and encode, resize,
 * channel conversion, crop, borders, masks from images, the opaque and coverage scans, an
 * image made from a string's pixels) on
 * the worker pool of pool.c, so a task can yield while it runs. The scheduler waits on
 * core.job_fd() in its engine's epoll set and collects finished jobs with core.job_next().
 *
 * Memory the worker reads stays put: an input string is held in the job's uservalue (Lua never
 * moves a string), an input image's pixels are pinned (closing the image hands them to the
 * job). A job in flight is held by its state's port table, so the collector cannot take it
 * mid-run; only lua_close can, and then close waits for the worker (bounded by one job), since
 * Lua frees every string right after the finalizers. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include "llmux.h"
#include "b64.h"
#include "image.h"
#include "pool.h"

#define LMX_JOB "llmux.Job"
#define LMX_PORT "llmux.JobPort"

enum { OP_B64_ENCODE, OP_B64_DECODE, OP_PNG_DECODE, OP_PNG_ENCODE, OP_RESIZE, OP_CONVERT,
       OP_CROP, OP_EXTEND, OP_MASK_FROM, OP_OPAQUE, OP_COVERAGE,
       OP_NEW, OP_MASK_ALPHA };
static const char *const opnames[] = { "base64 encode", "base64 decode", "PNG decode",
                                       "PNG encode", "resize", "convert", "crop", "extend",
                                       "mask", "opaque", "coverage", "new",
                                       "mask alpha" };

typedef struct Job {
  lmx_Job base;                 /* first: the pool's part */
  int op, submitted, closed, taken;
  int awaited;                  /* the scheduler waits for it (job:awaited()) */
  const char *src;              /* input bytes: the string in uservalue 1 */
  size_t n;
  lmx_Image in;                 /* input image: the pixels of the Image in uservalue 1 */
  int a, b, c;                  /* skip_ws | level | width, height | channels | threshold;
                                   new: width, height, channels */
  int side[4];                  /* crop: x, y, w, h; extend: left, right, top, bottom */
  int fill, inverted;           /* extend: LMX_FILL_*; mask: invert in (-1 auto), inverted out */
  double scan;                  /* opaque (0 or 1), coverage: what the scan found */
  char pre[LMX_B64_PREFIX_MAX]; /* base64 encode: what goes before the output */
  size_t npre;
  unsigned char rgba[4];        /* extend's fill colour */
  uint64_t max_pixels;
  int rc;                       /* an LMX_IMG_* code, base64 too */
  lmx_ImgErr ie;
  lmx_B64Err be;
  lmx_Buf out;                  /* bytes out */
  lmx_Image img;                /* image out */
} Job;

/* On a worker thread: nothing here may touch Lua. */
static void job_run(lmx_Job *base) {
  Job *j = (Job *)base;
  size_t len;
  j->rc = LMX_IMG_OK;
  switch (j->op) {
    case OP_B64_ENCODE:
      len = j->npre + lmx_b64_enclen(j->n);
      if (!(j->out.p = malloc(len ? len : 1))) { j->rc = LMX_IMG_NOMEM; break; }
      memcpy(j->out.p, j->pre, j->npre);
      lmx_b64_encode((const unsigned char *)j->src, j->n, j->out.p + j->npre);
      j->out.n = j->out.cap = len;
      break;
    case OP_B64_DECODE:
      len = lmx_b64_declen(j->n);
      if (!(j->out.p = malloc(len ? len : 1))) { j->rc = LMX_IMG_NOMEM; break; }
      j->out.cap = len;
      len = lmx_b64_decode(j->src, j->n, (unsigned char *)j->out.p, j->a, &j->be);
      if (len == (size_t)-1) j->rc = LMX_IMG_DECODE;
      else j->out.n = len;
      break;
    case OP_PNG_DECODE:
      j->rc = lmx_png_decode(j->src, j->n, j->max_pixels, &j->img, NULL, &j->ie);
      break;
    case OP_PNG_ENCODE:
      j->rc = lmx_png_encode(&j->in, j->a, -1, &j->out, &j->ie);
      break;
    case OP_CONVERT:
      j->rc = lmx_img_convert(&j->in, j->a, &j->img, &j->ie);
      break;
    case OP_CROP:
      j->rc = lmx_img_crop(&j->in, j->side[0], j->side[1], j->side[2], j->side[3], &j->img,
                           &j->ie);
      break;
    case OP_EXTEND:
      j->rc = lmx_img_extend(&j->in, j->side[0], j->side[1], j->side[2], j->side[3], j->fill,
                             j->rgba, j->a, &j->img, &j->ie);
      break;
    case OP_MASK_FROM:
      j->rc = lmx_img_mask_from(&j->in, j->a, j->inverted, &j->img, &j->inverted, &j->ie);
      break;
    case OP_OPAQUE:
      j->scan = lmx_img_opaque(&j->in);
      break;
    case OP_COVERAGE:
      j->scan = lmx_img_coverage(&j->in);
      break;
    case OP_NEW:
      j->rc = lmx_img_from(j->src, j->a, j->b, j->c, &j->img, &j->ie);
      break;
    case OP_MASK_ALPHA:
      j->rc = lmx_img_mask_alpha(&j->in, &j->img, &j->ie);
      break;
    default:
      j->rc = lmx_img_resize(&j->in, j->a, j->b, &j->img, &j->ie);
      break;
  }
}

/* The state's port, created on first use: registry[&portkey] is a JobPort userdata whose
 * uservalue maps each job in flight (light userdata) to its Job. Pushes that table. */
static int portkey;

typedef struct Port { lmx_Port *p; } Port;

static lmx_Port *getport(lua_State *L, int create) {
  Port *u;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &portkey) == LUA_TNIL) {
    lua_pop(L, 1);
    if (!create) return NULL;
    u = lua_newuserdatauv(L, sizeof *u, 1);
    u->p = NULL;
    luaL_setmetatable(L, LMX_PORT);
    lua_newtable(L);
    lua_setiuservalue(L, -2, 1);
    if (!(u->p = lmx_port_new()))
      luaL_error(L, "llmux: cannot create the job port: %s", strerror(errno));
    lua_pushvalue(L, -1);
    lua_rawsetp(L, LUA_REGISTRYINDEX, &portkey);
  }
  u = lua_touserdata(L, -1);
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  return u->p;
}

/* JobPort __gc: drops the state's reference (jobs still alive keep the port). */
static int port_gc(lua_State *L) {
  Port *u = luaL_checkudata(L, 1, LMX_PORT);
  if (u->p) lmx_port_release(u->p);
  u->p = NULL;
  return 0;
}

/* A new Job on the stack (closed until submitted: its close does nothing), holding the value
 * at input in uservalue 1. */
static Job *newjob(lua_State *L, int op, int input) {
  Job *j = lua_newuserdatauv(L, sizeof *j, 2);
  memset(j, 0, sizeof *j);
  j->op = op;
  j->base.run = job_run;
  luaL_setmetatable(L, LMX_JOB);
  lua_pushvalue(L, input);
  lua_setiuservalue(L, -2, 1);
  return j;
}

/* Queues the job at the top: leaves it (-> Job), or nil, msg when no worker thread could be
 * started (the caller then works inline). The port table holds the job first, so no memory
 * error can come between the submit and that hold. */
static int submit(lua_State *L, Job *j) {
  lmx_Port *p = getport(L, 1);   /* the in-flight table, above the job */
  int err;
  lua_pushvalue(L, -2);
  lua_rawsetp(L, -2, j);
  if ((err = lmx_pool_submit(p, &j->base)) != 0) {
    lua_pushnil(L);
    lua_rawsetp(L, -2, j);
    luaL_pushfail(L);
    lua_pushfstring(L, "llmux: no worker thread: %s", strerror(err));
    return 2;
  }
  j->submitted = 1;
  lua_pop(L, 1);
  return 1;
}

/* Pushes the port table and whether it holds j (a job not yet handed out by job_next). */
static int held(lua_State *L, Job *j) {
  int in;
  if (lua_rawgetp(L, LUA_REGISTRYINDEX, &portkey) != LUA_TUSERDATA) return 0;
  lua_getiuservalue(L, -1, 1);
  lua_remove(L, -2);
  in = lua_rawgetp(L, -1, j) != LUA_TNIL;
  lua_pop(L, 1);
  return in;
}

/* j leaves its port for good: out of the port table (when job_next never took it) and out of
 * the pool (lmx_pool_finish). Leaves the stack as it was; returns whether j ran. */
static int release(lua_State *L, Job *j) {
  int top = lua_gettop(L);
  if (held(L, j)) {
    lua_pushnil(L);
    lua_rawsetp(L, -2, j);
  }
  lua_settop(L, top);
  return lmx_pool_finish(&j->base);
}

static int checkdim(lua_State *L, int i, const char *what) {
  lua_Integer v = luaL_checkinteger(L, i);
  if (v < 1 || v > LMX_IMG_MAX_SIDE)
    luaL_argerror(L, i, lua_pushfstring(L, "%s must be a positive integer", what));
  return (int)v;
}

/* core.job_b64_encode(s[, prefix]) -> Job | nil, msg; the result is prefix .. base64 of s */
static int job_b64_encode(lua_State *L) {
  size_t n, pn;
  const char *s = luaL_checklstring(L, 1, &n);
  const char *pre = lmx_b64_prefix(L, 2, &pn);
  size_t len = lmx_b64_enclen(n);
  Job *j;
  if ((len == 0 && n != 0) || len > SIZE_MAX - pn)   /* the prefix too: 32-bit sizes */
    return luaL_error(L, "llmux.base64: input too large");
  j = newjob(L, OP_B64_ENCODE, 1);
  j->src = s;
  j->n = n;
  memcpy(j->pre, pre, pn);
  j->npre = pn;
  return submit(L, j);
}

/* core.job_b64_decode(s[, skip_ws]) -> Job | nil, msg */
static int job_b64_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  Job *j = newjob(L, OP_B64_DECODE, 1);
  j->src = s;
  j->n = n;
  j->a = lua_toboolean(L, 2);
  return submit(L, j);
}

/* core.job_image_decode(bytes, max_pixels) -> Job | nil, msg */
static int job_image_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  lua_Integer maxpx = luaL_checkinteger(L, 2);
  Job *j = newjob(L, OP_PNG_DECODE, 1);
  j->src = s;
  j->n = n;
  j->max_pixels = maxpx < 0 ? 0 : (uint64_t)maxpx;
  return submit(L, j);
}

/* A job reading the Image at 1: borrows its pixels, pinned from submit to the end of run. */
static Job *imagejob(lua_State *L, int op, lmx_Image *src) {
  Job *j = newjob(L, op, 1);
  j->in = *src;
  j->base.pin = lmx_image_pin(src);
  return j;
}

/* core.job_image_encode_png(img, level) -> Job | nil, msg */
static int job_image_encode_png(lua_State *L) {
  lmx_Image *src = lmx_image_check(L, 1);
  lua_Integer level = luaL_checkinteger(L, 2);
  Job *j;
  luaL_argcheck(L, level >= 0 && level <= 9, 2, "level must be 0..9");
  j = imagejob(L, OP_PNG_ENCODE, src);
  j->a = (int)level;
  return submit(L, j);
}

/* core.job_image_resize(img, w, h) -> Job | nil, msg */
static int job_image_resize(lua_State *L) {
  lmx_Image *src = lmx_image_check(L, 1);
  int w = checkdim(L, 2, "width"), h = checkdim(L, 3, "height");
  Job *j = imagejob(L, OP_RESIZE, src);
  j->a = w;
  j->b = h;
  return submit(L, j);
}

/* The pixel transforms below take what image.lua checked and the inline calls take: an argument
 * out of range is a bug there, raised as the inline call raises it. */

/* core.job_image_convert(img, channels) -> Job | nil, msg (to_gray, to_rgb, to_rgba) */
static int job_image_convert(lua_State *L) {
  lmx_Image *src = lmx_image_check(L, 1);
  lua_Integer ch = luaL_checkinteger(L, 2);
  Job *j;
  luaL_argcheck(L, ch == 1 || ch == 3 || ch == 4, 2, "channels must be 1, 3 or 4");
  j = imagejob(L, OP_CONVERT, src);
  j->a = (int)ch;
  return submit(L, j);
}

/* core.job_image_crop(img, x, y, w, h) -> Job | nil, msg; the rectangle inside the image */
static int job_image_crop(lua_State *L) {
  lmx_Image *src = lmx_image_check(L, 1);
  lua_Integer x = luaL_checkinteger(L, 2), y = luaL_checkinteger(L, 3);
  int w = checkdim(L, 4, "width"), h = checkdim(L, 5, "height");
  Job *j;
  luaL_argcheck(L, x >= 0 && y >= 0 && x <= src->w - w && y <= src->h - h, 2,
                "the rectangle must be inside the image");
  j = imagejob(L, OP_CROP, src);
  j->side[0] = (int)x; j->side[1] = (int)y; j->side[2] = w; j->side[3] = h;
  return submit(L, j);
}

/* core.job_image_extend(img, left, right, top, bottom, edge, r, g, b, a, out_channels)
 * -> Job | nil, msg */
static int job_image_extend(lua_State *L) {
  lmx_Image *src = lmx_image_check(L, 1);
  int i, outch;
  Job *j;
  for (i = 2; i <= 10; i += i == 5 ? 2 : 1) {   /* 6, edge, is a boolean */
    lua_Integer v = luaL_checkinteger(L, i);
    luaL_argcheck(L, v >= 0 && v <= (i < 6 ? LMX_IMG_MAX_SIDE : 255), i, "out of range");
  }
  outch = (int)luaL_checkinteger(L, 11);
  luaL_argcheck(L, outch == src->ch || (outch == 2 && src->ch == 1) ||
                (outch == 4 && src->ch == 3), 11, "bad channel count");
  j = imagejob(L, OP_EXTEND, src);
  for (i = 0; i < 4; i++) {
    j->side[i] = (int)lua_tointeger(L, 2 + i);
    j->rgba[i] = (unsigned char)lua_tointeger(L, 7 + i);
  }
  j->fill = lua_toboolean(L, 6) ? LMX_FILL_EDGE : LMX_FILL_COLOR;
  j->a = outch;
  return submit(L, j);
}

/* core.job_image_mask_from(img, threshold, invert) -> Job | nil, msg; invert true, false or
 * "auto"; the result is mask, inverted */
static int job_image_mask_from(lua_State *L) {
  lmx_Image *src = lmx_image_check(L, 1);
  lua_Integer th = luaL_checkinteger(L, 2);
  Job *j;
  luaL_argcheck(L, th >= 0 && th <= 256, 2, "threshold must be 0..256");
  j = imagejob(L, OP_MASK_FROM, src);
  j->a = (int)th;
  j->inverted = lua_type(L, 3) == LUA_TSTRING ? -1 : lua_toboolean(L, 3);
  return submit(L, j);
}

/* core.job_image_opaque(img) -> Job | nil, msg; the result is img:opaque()'s boolean */
static int job_image_opaque(lua_State *L) {
  return submit(L, imagejob(L, OP_OPAQUE, lmx_image_check(L, 1)));
}

/* A job op on the 1-channel mask at 1 (image.lua sends no other) */
static int maskjob(lua_State *L, int op) {
  lmx_Image *src = lmx_image_check(L, 1);
  luaL_argcheck(L, src->ch == 1, 1, "a 1-channel mask expected");
  return submit(L, imagejob(L, op, src));
}

/* core.job_image_coverage(mask) -> Job | nil, msg; the result is mask:coverage()'s number */
static int job_image_coverage(lua_State *L) { return maskjob(L, OP_COVERAGE); }

/* core.job_image_mask_alpha(mask) -> Job | nil, msg; the result is core.image_mask_alpha's
 * Image (grey + alpha, alpha 255 - grey) */
static int job_image_mask_alpha(lua_State *L) { return maskjob(L, OP_MASK_ALPHA); }

/* core.job_image_new(w, h, channels, pixels) -> Job | nil, msg; pixels w * h * channels bytes;
 * the result is image_new's Image */
static int job_image_new(lua_State *L) {
  int w = checkdim(L, 1, "width"), h = checkdim(L, 2, "height");
  lua_Integer ch = luaL_checkinteger(L, 3);
  size_t n;
  const char *px = luaL_checklstring(L, 4, &n);
  Job *j;
  luaL_argcheck(L, ch >= 1 && ch <= 4, 3, "channels must be 1, 2, 3 or 4");
  luaL_argcheck(L, n == (size_t)w * h * ch, 4, "pixels must be width x height x channels bytes");
  j = newjob(L, OP_NEW, 4);
  j->src = px;
  j->n = n;
  j->a = w;
  j->b = h;
  j->c = (int)ch;
  return submit(L, j);
}

static Job *checkjob(lua_State *L) {
  Job *j = lmx_checkudata(L, 1, LMX_JOB);
  if (j->closed || !j->submitted) luaL_error(L, "attempt to use a closed " LMX_JOB);
  return j;
}

/* job:done() -> boolean: the worker finished (result() will not raise for that) */
static int job_done(lua_State *L) {
  lua_pushboolean(L, lmx_job_state(&checkjob(L)->base) == LMX_JOB_DONE);
  return 1;
}

/* Pushes the values the inline call returns; may raise as it does (memory, misuse). */
static int results(lua_State *L, Job *j) {
  if (j->op == OP_B64_DECODE && j->rc == LMX_IMG_DECODE)
    return lmx_b64_error(L, j->src, j->n, &j->be);
  if (j->rc == LMX_IMG_NOMEM && j->op <= OP_B64_DECODE) return luaL_error(L, "not enough memory");
  if (j->rc != LMX_IMG_OK && j->op == OP_PNG_ENCODE) return luaL_error(L, "%s", j->ie.msg);
  if (j->rc != LMX_IMG_OK) return lmx_image_result(L, j->rc, &j->ie);
  if (j->op == OP_OPAQUE) {
    lua_pushboolean(L, j->scan != 0);
    return 1;
  }
  if (j->op == OP_COVERAGE) {
    lua_pushnumber(L, j->scan);
    return 1;
  }
  if (j->op >= OP_PNG_DECODE && j->op != OP_PNG_ENCODE) {
    lmx_Image *im = lmx_image_push(L);
    *im = j->img;
    memset(&j->img, 0, sizeof j->img);
    lmx_image_result(L, LMX_IMG_OK, &j->ie);
    if (j->op != OP_MASK_FROM) return 1;
    lua_pushboolean(L, j->inverted);
    return 2;
  }
  lua_pushlstring(L, j->out.p, j->out.n);
  lmx_buf_free(&j->out);
  return 1;
}

/* job:result() -> what the inline call returns (string | Image | nil, msg, code); raises
 * before the job is done and where the inline call raises. Later calls repeat the values. */
static int job_result(lua_State *L) {
  Job *j = checkjob(L);
  int n, i;
  lua_settop(L, 1);
  if (j->taken) {
    lua_getiuservalue(L, 1, 2);
    n = (int)lua_rawlen(L, 2);
    for (i = 1; i <= n; i++) lua_rawgeti(L, 2, i);
    return n;
  }
  if (lmx_job_state(&j->base) != LMX_JOB_DONE)
    return luaL_error(L, "llmux.Job: result() before the job is done (see job:done())");
  if (!release(L, j))
    return luaL_error(L, "llmux.Job: the %s never ran (its worker was lost in a fork)",
                      opnames[j->op]);
  n = results(L, j);
  lua_createtable(L, n, 0);
  for (i = 1; i <= n; i++) {
    lua_pushvalue(L, 1 + i);
    lua_rawseti(L, -2, i);
  }
  lua_setiuservalue(L, 1, 2);
  lua_pushnil(L);               /* the input is no longer read */
  lua_setiuservalue(L, 1, 1);
  j->taken = 1;
  return n;
}

/* Frees what the job holds. */
static void job_free(lua_State *L, Job *j) {
  lmx_buf_free(&j->out);
  lmx_img_free(&j->img);
  memset(&j->in, 0, sizeof j->in);
  lua_pushnil(L);
  lua_setiuservalue(L, 1, 1);
}

/* job:close() / __close: a queued job is cancelled, a running one waited for (it reads memory
 * that may go right after); frees the outputs. An awaited job not yet collected by job_next
 * stays announced, so the scheduler waiting for it wakes and finds it closed; any other job
 * leaves the port at once. Idempotent; never raises. */
static int job_close(lua_State *L) {
  Job *j = luaL_checkudata(L, 1, LMX_JOB);
  if (j->closed) return 0;
  j->closed = 1;
  if (j->submitted) {
    if (j->awaited && held(L, j)) lmx_pool_abandon(&j->base);
    else release(L, j);
  }
  job_free(L, j);
  return 0;
}

/* job:awaited() -> job: the scheduler is about to wait for it through job_next (see close). */
static int job_awaited(lua_State *L) {
  checkjob(L)->awaited = 1;
  lua_settop(L, 1);
  return 1;
}

/* __gc: nothing holds the job any more (or the state is closing): it leaves the pool for good,
 * even when closed but still announced. */
static int job_gc(lua_State *L) {
  Job *j = luaL_checkudata(L, 1, LMX_JOB);
  if (j->submitted) lmx_pool_finish(&j->base);
  if (!j->closed) job_free(L, j);
  j->closed = 1;
  return 0;
}

/* job:wait() -> job: blocks until the worker is done with it (for callers that cannot yield). */
static int job_wait(lua_State *L) {
  Job *j = checkjob(L);
  lmx_job_wait(&j->base);
  lua_settop(L, 1);
  return 1;
}

/* tostring(job) -> "llmux.Job (PNG encode, queued|running|done|closed)" */
static int job_tostring(lua_State *L) {
  Job *j = luaL_checkudata(L, 1, LMX_JOB);
  static const char *const states[] = { "new", "queued", "running", "done" };
  const char *st = j->closed || !j->submitted ? "closed" : states[lmx_job_state(&j->base)];
  lua_pushfstring(L, LMX_JOB " (%s, %s)", opnames[j->op], st);
  return 1;
}

/* core.job_fd() -> fd: an eventfd, readable while finished jobs wait for job_next() */
static int core_job_fd(lua_State *L) {
  int fd = lmx_port_fd(getport(L, 1));
  if (fd < 0) return luaL_error(L, "llmux: the job port has no eventfd (none was left after fork)");
  lua_pushinteger(L, fd);
  return 1;
}

/* core.job_next() -> Job | nil: pops one finished job of this state (a closed one too: its
 * waiter learns that way; it then leaves the pool) */
static int core_job_next(lua_State *L) {
  lmx_Port *p = getport(L, 0);
  lmx_Job *b;
  if (!p || !(b = lmx_port_pop(p))) return 0;
  lua_rawgetp(L, -1, b);
  lua_pushnil(L);
  lua_rawsetp(L, -3, b);
  if (((Job *)b)->closed) lmx_pool_finish(b);
  return 1;
}

/* core.pool_configure(threads) -> threads: workers for the next start (see pool.h) */
static int core_pool_configure(lua_State *L) {
  lua_Integer n = luaL_checkinteger(L, 1);
  luaL_argcheck(L, n >= 1 && n <= LMX_POOL_MAX, 1, "threads must be 1..64");
  lua_pushinteger(L, lmx_pool_threads((int)n));
  return 1;
}

/* core.pool_stats() -> {threads, target, queued, running, done} */
static int core_pool_stats(lua_State *L) {
  lmx_PoolStats s;
  lmx_pool_stats(&s);
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, s.threads); lua_setfield(L, -2, "threads");
  lua_pushinteger(L, s.target); lua_setfield(L, -2, "target");
  lua_pushinteger(L, s.queued); lua_setfield(L, -2, "queued");
  lua_pushinteger(L, s.running); lua_setfield(L, -2, "running");
  lua_pushinteger(L, (lua_Integer)s.done); lua_setfield(L, -2, "done");
  return 1;
}

void lmx_pool_open(lua_State *L) {
  static const luaL_Reg meta[] = {
    { "__gc", job_gc }, { "__close", job_close }, { "__tostring", job_tostring },
    { NULL, NULL } };
  static const luaL_Reg methods[] = {
    { "done", job_done }, { "result", job_result }, { "wait", job_wait },
    { "awaited", job_awaited },
    { "close", job_close }, { NULL, NULL } };
  static const luaL_Reg funcs[] = {
    { "job_b64_encode", job_b64_encode }, { "job_b64_decode", job_b64_decode },
    { "job_image_decode", job_image_decode }, { "job_image_encode_png", job_image_encode_png },
    { "job_image_resize", job_image_resize }, { "job_image_convert", job_image_convert },
    { "job_image_crop", job_image_crop }, { "job_image_extend", job_image_extend },
    { "job_image_mask_from", job_image_mask_from }, { "job_image_opaque", job_image_opaque },
    { "job_image_coverage", job_image_coverage }, { "job_image_new", job_image_new },
    { "job_image_mask_alpha", job_image_mask_alpha },
    { "job_fd", core_job_fd },
    { "job_next", core_job_next }, { "pool_configure", core_pool_configure },
    { "pool_stats", core_pool_stats }, { NULL, NULL } };
  lmx_newclass(L, LMX_JOB, meta, methods);
  luaL_newmetatable(L, LMX_PORT);
  lua_pushcfunction(L, port_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  luaL_setfuncs(L, funcs, 0);
}
