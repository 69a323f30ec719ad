/* core.sse: the Lua face of the C SSE parser (sse.c). A parser turns the bytes fed to it into
 * arrays of events; it knows nothing of HTTP, so it also serves tests and custom transports. */
#include <string.h>
#include "llmux.h"
#include "sse.h"

#define SSE_MT "llmux.SSE"

typedef enum { S_CLOSED, S_OPEN, S_FINISHED } SState;

typedef struct {
  lmx_SSE sse;
  SState state;
  /* set around lmx_sse_feed: the callback builds Lua tables and can raise a memory error,
   * which would leave the parser pointing into a string that is then collected. Still set on
   * entry means that happened, and the parser is no longer trusted. */
  int busy;
} SSEObj;

static SSEObj *checksse(lua_State *L) {
  SSEObj *o = luaL_checkudata(L, 1, SSE_MT);
  if (o->state == S_CLOSED) luaL_error(L, "attempt to use a closed " SSE_MT);
  if (o->busy) luaL_error(L, SSE_MT ": unusable, a feed was interrupted by an error");
  return o;
}

static SSEObj *checkopen(lua_State *L, const char *what) {
  SSEObj *o = checksse(L);
  if (o->state == S_FINISHED) luaL_error(L, SSE_MT ": %s after finish", what);
  return o;
}

typedef struct {
  lua_State *L;
  lua_Integer n;
} Sink;

/* lmx_SSECallback: appends {data =, event =, id =} to the array on top of the stack. */
static int sse_push_event(void *ud, const lmx_SSEEvent *ev) {
  Sink *k = ud;
  lua_State *L = k->L;
  lua_createtable(L, 0, 3);
  lua_pushlstring(L, ev->data, ev->data_len);
  lua_setfield(L, -2, "data");
  if (ev->event) {
    lua_pushlstring(L, ev->event, ev->event_len);
    lua_setfield(L, -2, "event");
  }
  if (ev->id) {
    lua_pushlstring(L, ev->id, ev->id_len);
    lua_setfield(L, -2, "id");
  }
  lua_rawseti(L, -2, ++k->n);
  return 0;
}

/* Turns a failed status into the function's results: nil, message, "toolarge", detail with
 * the events the same call dispatched before the failure (at index ev). Out of memory raises,
 * as it does everywhere in Lua. */
static int sse_failure(lua_State *L, SSEObj *o, int rc, int ev) {
  if (rc == LMX_SSE_NOMEM) return luaL_error(L, "llmux.sse: out of memory");
  lua_pushnil(L);
  lua_pushfstring(L, "llmux.sse: %s", lmx_sse_error(&o->sse));
  lua_pushliteral(L, "toolarge");
  lua_createtable(L, 0, 1);
  if (ev) lua_pushvalue(L, ev);
  else lua_newtable(L);
  lua_setfield(L, -2, "events");
  return 4;
}

/* p:feed(bytes) -> events | nil, msg, "toolarge", {events = events}
 * events is an array (maybe empty) of {data = s, event = s|nil, id = s|nil}. Once failed, the
 * parser keeps failing the same way. */
static int sse_feed(lua_State *L) {
  SSEObj *o = checkopen(L, "feed");
  size_t len;
  const char *s;
  Sink k;
  int rc;
  if (lua_type(L, 2) != LUA_TSTRING)
    return luaL_argerror(L, 2, lua_pushfstring(L, "'bytes' must be a string, got %s",
                                               luaL_typename(L, 2)));
  s = lua_tolstring(L, 2, &len);
  lua_settop(L, 2);
  lua_newtable(L);
  k.L = L;
  k.n = 0;
  o->busy = 1;
  rc = lmx_sse_feed(&o->sse, s, len, NULL, sse_push_event, &k);
  o->busy = 0;
  if (rc != LMX_SSE_OK) return sse_failure(L, o, rc, 3);
  return 1;
}

/* p:finish() -> events, dropped | nil, msg, "toolarge", detail
 * End of stream. events is always empty: the spec never dispatches an unterminated event.
 * dropped is true when the stream ended inside a line or an event (it was likely cut). The
 * buffers are freed; feeding afterwards raises. */
static int sse_finish(lua_State *L) {
  SSEObj *o = checkopen(L, "finish");
  int rc = lmx_sse_finish(&o->sse);
  o->state = S_FINISHED;
  if (rc != LMX_SSE_OK && rc != LMX_SSE_PARTIAL) return sse_failure(L, o, rc, 0);
  lua_newtable(L);
  lua_pushboolean(L, rc == LMX_SSE_PARTIAL);
  return 2;
}

/* p:retry() -> ms | nil: the last valid retry field, nil when none came */
static int sse_retry(lua_State *L) {
  SSEObj *o = checksse(L);
  if (o->sse.retry < 0) lua_pushnil(L);
  else lua_pushinteger(L, (lua_Integer)o->sse.retry);
  return 1;
}

/* p:last_id() -> s | nil: the last event ID buffer (nil when empty; gone after finish) */
static int sse_last_id(lua_State *L) {
  SSEObj *o = checksse(L);
  if (o->sse.id.n) lua_pushlstring(L, o->sse.id.p, o->sse.id.n);
  else lua_pushnil(L);
  return 1;
}

/* p:comments() -> n: comment lines seen (keep-alive pings) */
static int sse_comments(lua_State *L) {
  SSEObj *o = checksse(L);
  lua_pushinteger(L, (lua_Integer)o->sse.comments);
  return 1;
}

/* p:close() / __gc / __close: frees the buffers. Idempotent; never raises. */
static int sse_close(lua_State *L) {
  SSEObj *o = luaL_checkudata(L, 1, SSE_MT);
  if (o->state == S_CLOSED) return 0;
  lmx_sse_free(&o->sse);
  o->state = S_CLOSED;
  o->busy = 0;
  return 0;
}

static int sse_tostring(lua_State *L) {
  SSEObj *o = luaL_checkudata(L, 1, SSE_MT);
  const char *st = o->state == S_CLOSED ? "closed" : o->state == S_FINISHED ? "finished"
                 : lmx_sse_error(&o->sse) ? "failed" : "open";
  lua_pushfstring(L, SSE_MT " (%s)", st);
  return 1;
}

/* core.sse([{max_bytes = n}]) -> SSE parser. max_bytes (default 8 MiB) bounds one line and one
 * event's data. */
static int sse_new(lua_State *L) {
  lua_Integer maxb = 0;
  SSEObj *o;
  if (!lua_isnoneornil(L, 1)) {
    if (!lua_istable(L, 1))
      return luaL_argerror(L, 1, lua_pushfstring(L, "'opts' must be a table, got %s",
                                                 luaL_typename(L, 1)));
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      if (lua_type(L, -2) != LUA_TSTRING || strcmp(lua_tostring(L, -2), "max_bytes") != 0)
        return luaL_error(L, "llmux.sse: unknown option '%s'",
                          lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2)
                                                         : luaL_typename(L, -2));
      lua_pop(L, 1);
    }
    if (lua_getfield(L, 1, "max_bytes") != LUA_TNIL) {
      int ok;
      maxb = lmx_count(L, -1, &ok);
      if (!ok || maxb < 1) return luaL_error(L, "llmux.sse: 'max_bytes' must be an integer >= 1");
    }
    lua_pop(L, 1);
  }
  /* closed until initialised, though init takes no memory today: keeps __gc safe if it does */
  o = lua_newuserdatauv(L, sizeof *o, 0);
  memset(o, 0, sizeof *o);
  o->state = S_CLOSED;
  luaL_setmetatable(L, SSE_MT);
  lmx_sse_init(&o->sse, (size_t)maxb);
  o->state = S_OPEN;
  return 1;
}

void lmx_sse_open(lua_State *L) {
  static const luaL_Reg methods[] = {
    {"feed", sse_feed}, {"finish", sse_finish}, {"close", sse_close}, {"retry", sse_retry},
    {"last_id", sse_last_id}, {"comments", sse_comments}, {NULL, NULL}
  };
  static const luaL_Reg meta[] = {
    {"__gc", sse_close}, {"__close", sse_close}, {"__tostring", sse_tostring}, {NULL, NULL}
  };
  lmx_newclass(L, SSE_MT, meta, methods);
  lua_pushcfunction(L, sse_new);
  lua_setfield(L, -2, "sse");
}
