/* C test of src/pool.c, without Lua, meant for ThreadSanitizer too (make pooltest): jobs on two
 * ports waited for through epoll, FIFO completion per worker, cancel of queued jobs, waiting
 * finish of running ones, abandoned jobs still announced, pinned buffers handed to the last
 * reader, a port released before its jobs, and a forked child that neither reads nor writes
 * its parent's eventfd. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include "pool.h"

#define CHECK(c) do { if (!(c)) { fprintf(stderr, "%s:%d: CHECK(%s)\n", __FILE__, __LINE__, \
                                   #c); exit(1); } } while (0)

typedef struct T {
  lmx_Job base;
  const unsigned char *in;      /* read by the worker: pinned or owned by the test */
  size_t n;
  unsigned long sum, want;       /* computed by the worker; by the test beforehand */
  int spin_ms;
} T;

static void spin(int ms) {
  struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
  nanosleep(&ts, NULL);
}

static void run(lmx_Job *b) {
  T *t = (T *)b;
  unsigned long s = 0;
  if (t->spin_ms) spin(t->spin_ms);
  for (size_t i = 0; i < t->n; i++) s += t->in[i];
  t->sum = s;
}

static unsigned long expect(const unsigned char *p, size_t n) {
  unsigned long s = 0;
  for (size_t i = 0; i < n; i++) s += p[i];
  return s;
}

static int readable(lmx_Port *p) {
  struct pollfd pf = { lmx_port_fd(p), POLLIN, 0 };
  return poll(&pf, 1, 0) == 1 && (pf.revents & POLLIN);
}

/* Waits (at most 10 s) until jobs[from..from+n-1] all run: on a loaded machine a worker can
 * take long to pick a job up, so the checks that want jobs running wait for it. */
static int running(T *jobs, int from, int n) {
  for (int tries = 0; tries < 10000; tries++) {
    int k = 0;
    for (int i = from; i < from + n; i++) k += lmx_job_state(&jobs[i].base) == LMX_JOB_RUNNING;
    if (k == n) return 1;
    spin(1);
  }
  return 0;
}

static void slow(T *t, const unsigned char *in, int ms) {
  memset(t, 0, sizeof *t);
  t->base.run = run;
  t->in = in;
  t->n = 16;
  t->want = expect(in, 16);
  t->spin_ms = ms;
}

/* Waits on epoll for p's eventfd and pops everything done; returns the count. */
static int collect(int ep, lmx_Port *p, int want) {
  int got = 0, rounds = 0;
  while (got < want && rounds++ < 1000) {
    struct epoll_event ev;
    lmx_Job *j;
    epoll_wait(ep, &ev, 1, 100);
    while ((j = lmx_port_pop(p))) {
      CHECK(j->ran);
      CHECK(((T *)j)->sum == ((T *)j)->want);
      got++;
    }
  }
  return got;
}

int main(void) {
  enum { N = 200 };
  static T jobs[N];
  size_t len = 1 << 16;
  unsigned char *buf = malloc(len);
  lmx_Port *a = lmx_port_new(), *b = lmx_port_new();
  int ep = epoll_create1(0);
  struct epoll_event ev;
  lmx_PoolStats st;
  CHECK(buf && a && b && ep >= 0);
  for (size_t i = 0; i < len; i++) buf[i] = (unsigned char)(i * 31 + 7);
  CHECK(lmx_pool_threads(3) == 3);
  memset(&ev, 0, sizeof ev);
  ev.events = EPOLLIN;
  CHECK(epoll_ctl(ep, EPOLL_CTL_ADD, lmx_port_fd(a), &ev) == 0);

  /* many jobs on two ports */
  for (int i = 0; i < N; i++) {
    T *t = &jobs[i];
    memset(t, 0, sizeof *t);
    t->base.run = run;
    t->in = buf + (size_t)i * 100;
    t->n = len - (size_t)i * 100;
    t->want = expect(t->in, t->n);
    CHECK(lmx_pool_submit(i % 2 ? b : a, &t->base) == 0);
  }
  CHECK(collect(ep, a, N / 2) == N / 2);
  for (int i = 1; i < N; i += 2) {             /* b's: done once their state says so */
    while (lmx_job_state(&jobs[i].base) != LMX_JOB_DONE) spin(1);
    CHECK(jobs[i].sum == jobs[i].want);
    lmx_pool_finish(&jobs[i].base);
  }
  for (int i = 0; i < N; i++) {
    CHECK(jobs[i].base.state == LMX_JOB_DONE && jobs[i].base.ran);
    CHECK(lmx_pool_finish(&jobs[i].base) == 1);                    /* idempotent */
  }
  lmx_pool_stats(&st);
  CHECK(st.threads == 3 && st.queued == 0 && st.running == 0 && st.done >= N);

  /* queued jobs behind slow ones are cancelled; running ones are waited for */
  for (int i = 0; i < 12; i++) {
    T *t = &jobs[i];
    memset(t, 0, sizeof *t);
    t->base.run = run;
    t->in = buf;
    t->n = 16;
    t->spin_ms = 30;
    CHECK(lmx_pool_submit(a, &t->base) == 0);
  }
  int ran = 0, first = 0;
  while (first < 10000 && lmx_job_state(&jobs[0].base) != LMX_JOB_RUNNING) { spin(1); first++; }
  CHECK(first < 10000);   /* a worker has begun; the rest may or may not have */
  for (int i = 11; i >= 0; i--) ran += lmx_pool_finish(&jobs[i].base);
  CHECK(ran >= 1 && ran < 12);
  CHECK(lmx_port_pop(a) == NULL);                     /* finish unlisted them all */

  /* a pinned buffer closed by its owner mid-run is freed by the last reader */
  {
    lmx_Pin pin = { 0, NULL };
    unsigned char *px = malloc(len);
    CHECK(px);
    memcpy(px, buf, len);
    for (int i = 0; i < 4; i++) {
      T *t = &jobs[i];
      memset(t, 0, sizeof *t);
      t->base.run = run;
      t->base.pin = &pin;
      t->in = px;
      t->n = len;
      t->want = expect(px, len);
      t->spin_ms = 10;
      CHECK(lmx_pool_submit(a, &t->base) == 0);
    }
    CHECK(lmx_pin_close(&pin, px) == 0);              /* readers remain: ownership passes */
    CHECK(collect(ep, a, 4) == 4);
    for (int i = 0; i < 4; i++) lmx_pool_finish(&jobs[i].base);
    CHECK(pin.readers == 0 && pin.orphan == NULL);
    CHECK(lmx_pin_close(&pin, NULL) == 1);
  }

  /* the owner drops a port with jobs in flight: the port lives until their finish */
  for (int i = 0; i < 8; i++) {
    T *t = &jobs[i];
    memset(t, 0, sizeof *t);
    t->base.run = run;
    t->in = buf;
    t->n = len;
    t->spin_ms = 2;
    CHECK(lmx_pool_submit(b, &t->base) == 0);
  }
  lmx_port_release(b);
  for (int i = 0; i < 8; i++) {
    while (lmx_job_state(&jobs[i].base) != LMX_JOB_DONE) spin(1);
    CHECK(lmx_pool_finish(&jobs[i].base) == 1 && jobs[i].sum == expect(buf, len));
  }

  /* abandon: a running job is waited for, a queued one cancelled, and both stay announced */
  CHECK(lmx_port_pop(a) == NULL && !readable(a));
  for (int i = 0; i < 4; i++) {
    slow(&jobs[i], buf, 40);
    CHECK(lmx_pool_submit(a, &jobs[i].base) == 0);
  }
  CHECK(running(jobs, 0, 3));                         /* 3 workers: 0-2 run, 3 is queued */
  ran = 0;
  for (int i = 3; i >= 1; i--) ran += lmx_pool_abandon(&jobs[i].base);
  CHECK(ran == 2 && !jobs[3].base.ran && jobs[3].base.state == LMX_JOB_DONE);
  lmx_job_wait(&jobs[0].base);                        /* blocks until run */
  CHECK(jobs[0].base.state == LMX_JOB_DONE && jobs[0].sum == jobs[0].want);
  for (int i = 0; i < 4; i++) lmx_job_wait(&jobs[i].base);  /* all done: returns at once */
  CHECK(readable(a));
  {
    int popped = 0, seen[4] = { 0 };
    lmx_Job *j;
    while ((j = lmx_port_pop(a))) { seen[(T *)j - jobs] = 1; popped++; }
    CHECK(popped == 4 && seen[0] && seen[1] && seen[2] && seen[3] && !readable(a));
    for (int i = 0; i < 4; i++) lmx_pool_finish(&jobs[i].base);
  }

  /* fork: the child's pops and announcements stay off the parent's eventfd */
  {
    int status;
    pid_t pid;
    slow(&jobs[0], buf, 0);
    slow(&jobs[1], buf, 1000);                        /* still running after two forks */
    CHECK(lmx_pool_submit(a, &jobs[0].base) == 0);
    lmx_job_wait(&jobs[0].base);                      /* done and listed: a is readable */
    CHECK(lmx_pool_submit(a, &jobs[1].base) == 0);
    CHECK(running(jobs, 1, 1));                       /* running at the fork */
    CHECK(readable(a));
    unsigned forks = lmx_forks;
    if ((pid = fork()) == 0) {
      /* the running job is lost here: announced as not run. Popping both empties the child's
       * list and so reads its eventfd, which must not be the parent's. */
      lmx_Job *x = lmx_port_pop(a), *y = lmx_port_pop(a);
      int ok = lmx_forks == forks + 1 && x == &jobs[0].base && x->ran &&
               y == &jobs[1].base && !y->ran && !lmx_port_pop(a) && !readable(a);
      _exit(ok ? 0 : 3);
    }
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(lmx_forks == forks);
    CHECK(readable(a));                               /* the parent still sees its done job */
    CHECK(lmx_port_pop(a) == &jobs[0].base && !readable(a));
    /* a child that announces a lost job (writing its eventfd) and exits: the parent's stays
     * quiet until its own job ends */
    if ((pid = fork()) == 0) _exit(readable(a) ? 0 : 3);
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(!readable(a) && lmx_job_state(&jobs[1].base) == LMX_JOB_RUNNING);
    lmx_job_wait(&jobs[1].base);
    CHECK(readable(a) && lmx_port_pop(a) == &jobs[1].base && jobs[1].base.ran);
    lmx_pool_finish(&jobs[0].base);
    lmx_pool_finish(&jobs[1].base);
  }
  lmx_port_release(a);
  free(buf);
  puts("pool_test: ok");
  return 0;
}
