/* A C host that embeds llmux as game engines and servers do (tests/mt_host_spec.lua builds and
 * runs it): N independent lua_States on N pthreads, each running tests/helpers/mt_state.lua
 * (which requires llmux from LUA_PATH/LUA_CPATH) in a mode that depends on its index:
 *   full      chats, a stream and a PNG encode on the worker pool, all checked; then closed
 *   inflight  transfers, a stream mid-body and pool jobs (queued, running, one reading an
 *             image closed meanwhile) still going when lua_close runs
 *   poolonly  a state that never makes an engine (no curl in it) closed while the pool's
 *             workers are busy with its jobs and those of the other states
 *   handoff   as inflight, but closed by the main thread after its own thread ended (lua_close
 *             on another thread than the one that made the state, never concurrently)
 * States alternate between Lua's incremental GC (the C API's default) and the generational
 * one (lua.c's), close at different times, and the whole round repeats.
 *
 *   mt_host SCRIPT HTTP_URL HTTPS_URL CA_FILE NSTATES ROUNDS
 * prints "mt_host: ok ..." and exits 0, or names the state that failed and exits 1. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#define MAX_STATES 64

static const char *const modes[] = { "full", "inflight", "poolonly", "handoff" };

typedef struct Slot {
  pthread_t tid;
  int index, round;
  lua_State *L;                 /* left open for the main thread to close (handoff) */
  char verdict[256];            /* "ok ..." or what went wrong */
} Slot;

static const char *script, *url, *tls_url, *ca;
static int nstates;

/* mt_meet(): waits until every state of the round called it as often (at most 10 s, then
 * returns false), so that first uses (require, the first base64) happen at the same moment
 * on every thread: what would race, races. */
static pthread_mutex_t meet_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t meet_cv = PTHREAD_COND_INITIALIZER;
static int meet_count, meet_gen;

static int mt_meet(lua_State *L) {
  struct timespec until;
  int gen, ok = 1;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  pthread_mutex_lock(&meet_mu);
  gen = meet_gen;
  if (++meet_count == nstates) {
    meet_count = 0;
    meet_gen++;
    pthread_cond_broadcast(&meet_cv);
  }
  while (gen == meet_gen && ok)
    ok = pthread_cond_timedwait(&meet_cv, &meet_mu, &until) == 0;
  if (gen == meet_gen) meet_count--;   /* gave up: no longer counted */
  pthread_mutex_unlock(&meet_mu);
  lua_pushboolean(L, gen != meet_gen);
  return 1;
}

static void *run_state(void *arg) {
  Slot *s = arg;
  const char *mode = modes[s->index % 4];
  lua_State *L = luaL_newstate();
  if (!L) {
    snprintf(s->verdict, sizeof s->verdict, "luaL_newstate failed");
    return NULL;
  }
  /* generational as lua.c, or incremental with a new cycle as soon as one ends (pause 100),
   * so that finalizers run while transfers and jobs are in flight */
  if (s->index % 2) lua_gc(L, LUA_GCGEN, 0, 0);
  else lua_gc(L, LUA_GCINC, 100, 400, 0);
  luaL_openlibs(L);
  lua_register(L, "mt_meet", mt_meet);
  if (luaL_loadfile(L, script) != LUA_OK) {
    snprintf(s->verdict, sizeof s->verdict, "%s", lua_tostring(L, -1));
    lua_close(L);
    return NULL;
  }
  lua_pushstring(L, s->index % 8 >= 4 ? tls_url : url);   /* half of them over TLS */
  lua_pushstring(L, ca);
  lua_pushinteger(L, s->index);
  lua_pushstring(L, mode);
  lua_pushinteger(L, s->round);
  if (lua_pcall(L, 5, 1, 0) != LUA_OK || !lua_isstring(L, -1))
    snprintf(s->verdict, sizeof s->verdict, "state %d (%s): %s", s->index, mode,
             lua_isstring(L, -1) ? lua_tostring(L, -1) : "no verdict");
  else
    snprintf(s->verdict, sizeof s->verdict, "%s", lua_tostring(L, -1));
  lua_settop(L, 0);
  if (strcmp(mode, "handoff") == 0) s->L = L;   /* the main thread closes it */
  else lua_close(L);                            /* transfers and jobs may be in flight */
  return NULL;
}

int main(int argc, char **argv) {
  static Slot slots[MAX_STATES];
  int n, rounds, bad = 0;
  if (argc != 7 || (n = atoi(argv[5])) < 1 || n > MAX_STATES || (rounds = atoi(argv[6])) < 1) {
    fprintf(stderr, "usage: mt_host SCRIPT HTTP_URL HTTPS_URL CA_FILE NSTATES(1..%d) ROUNDS\n",
            MAX_STATES);
    return 2;
  }
  script = argv[1];
  url = argv[2];
  tls_url = argv[3];
  ca = argv[4];
  nstates = n;
  for (int r = 0; r < rounds && !bad; r++) {
    for (int i = 0; i < n; i++) {
      memset(&slots[i], 0, sizeof slots[i]);
      slots[i].index = i;
      slots[i].round = r;
      if (pthread_create(&slots[i].tid, NULL, run_state, &slots[i]) != 0) {
        fprintf(stderr, "mt_host: pthread_create failed\n");
        return 1;
      }
    }
    for (int i = 0; i < n; i++) {
      pthread_join(slots[i].tid, NULL);
      if (strncmp(slots[i].verdict, "ok", 2) != 0) {
        fprintf(stderr, "mt_host: round %d: %s\n", r, slots[i].verdict);
        bad = 1;
      }
      if (slots[i].L) lua_close(slots[i].L);   /* made on another thread, which has ended */
    }
  }
  if (bad) return 1;
  printf("mt_host: ok %d states x %d rounds\n", n, rounds);
  return 0;
}
