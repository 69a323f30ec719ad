/* A test-only Lua module (built by tests/fork_spec.lua into a temp dir): fork() and waitpid()
 * for scripts that check what a forked child may and may not do with llmux objects. */
#include <errno.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <lauxlib.h>
#include <lua.h>

/* fork() -> pid (0 in the child) */
static int tf_fork(lua_State *L) {
  pid_t pid;
  fflush(NULL);
  pid = fork();
  if (pid < 0) return luaL_error(L, "fork: %s", strerror(errno));
  lua_pushinteger(L, pid);
  return 1;
}

/* wait(pid) -> exit status (128 + signal when killed) */
static int tf_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int st;
  while (waitpid(pid, &st, 0) < 0)
    if (errno != EINTR) return luaL_error(L, "waitpid: %s", strerror(errno));
  lua_pushinteger(L, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  return 1;
}

int luaopen_testfork(lua_State *L);
int luaopen_testfork(lua_State *L) {
  static const luaL_Reg f[] = { { "fork", tf_fork }, { "wait", tf_wait }, { NULL, NULL } };
  luaL_newlib(L, f);
  return 1;
}
