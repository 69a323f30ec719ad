/* The worker pool (see pool.h): one process-wide FIFO queue under one mutex, workers parked on
 * a condition variable, a done list and an eventfd per port. Jobs are few and large (an image,
 * a multi-megabyte string), so one lock is never contended enough to matter. */
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>
#include "pool.h"

struct lmx_Port {
  int fd;                       /* eventfd: readable while head is not NULL */
  int refs;                     /* the owner's and each submitted job's */
  lmx_Job *head, *tail;         /* done jobs, oldest first */
  lmx_Port *prev, *next;        /* every live port, for the fork handler */
};

typedef struct Worker {
  pthread_t tid;
  lmx_Job *cur;                 /* the job it runs, for the fork handler */
} Worker;

static struct {
  pthread_mutex_t mu;
  pthread_cond_t work;          /* a job was queued */
  pthread_cond_t done;          /* a job finished: lmx_pool_finish waits on it */
  lmx_Job *head, *tail;         /* queued jobs */
  int queued, running, nthreads, target;
  uint64_t ndone;
  lmx_Port *ports;              /* live ports */
  Worker w[LMX_POOL_MAX];
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER,
           NULL, NULL, 0, 0, 0, LMX_POOL_THREADS, 0, NULL, { { 0, NULL } } };

static void lock(void) { pthread_mutex_lock(&pool.mu); }
/* Makes p's eventfd readable (it has one unless a forked child could not get its own). */
static void wake_port(lmx_Port *p) {
  uint64_t one = 1;
  if (p->fd >= 0) while (write(p->fd, &one, sizeof one) < 0 && errno == EINTR) {}
}
static void unlock(void) { pthread_mutex_unlock(&pool.mu); }

/* Under the lock. The eventfd goes readable with the first done job only: the reader clears it
 * when it takes the last, so the counter never overflows however many jobs finish. */
static void announce(lmx_Job *j) {
  lmx_Port *p = j->port;
  j->state = LMX_JOB_DONE;
  j->next = NULL;
  j->listed = 1;
  if (p->tail) p->tail->next = j;
  else {
    p->head = j;
    wake_port(p);
  }
  p->tail = j;
  pthread_cond_broadcast(&pool.done);
}

/* Under the lock: j no longer reads its pinned buffer. Returns a buffer to free (after
 * unlocking) when the owner let go of it meanwhile. */
static void *unpin(lmx_Job *j) {
  lmx_Pin *pin = j->pin;
  void *orphan = NULL;
  if (pin && --pin->readers == 0) {
    orphan = pin->orphan;
    pin->orphan = NULL;
  }
  j->pin = NULL;
  return orphan;
}

static void *worker(void *arg) {
  Worker *me = arg;
  lock();
  for (;;) {
    lmx_Job *j;
    void *orphan;
    while (!pool.head) pthread_cond_wait(&pool.work, &pool.mu);
    j = pool.head;
    pool.head = j->next;
    if (!pool.head) pool.tail = NULL;
    pool.queued--;
    pool.running++;
    j->state = LMX_JOB_RUNNING;
    me->cur = j;
    unlock();
    j->run(j);
    lock();
    me->cur = NULL;
    pool.running--;
    pool.ndone++;
    j->ran = 1;
    orphan = unpin(j);
    announce(j);        /* after this j belongs to its owner again: not touched below */
    if (orphan) {
      unlock();
      free(orphan);
      lock();
    }
  }
  return NULL;
}

/* In a forked child only the forking thread exists: jobs that were queued or running would
 * never finish, and whoever waits for them would hang. They end as not run.
 * A port's eventfd is one kernel object shared with the parent: were the child to read it,
 * the parent would miss a wake-up and hang; to write it, the parent would spin. So the child
 * gets a fresh eventfd under the same number (an epoll set watching the old one is the
 * parent's too, and the Multi refuses to run in a child anyway), readable when it has news. */
unsigned lmx_forks;

static void prepare(void) { lock(); }
static void parent(void) { unlock(); }
static void child(void) {
  lmx_Job *j;
  lmx_Port *p;
  pthread_cond_init(&pool.work, NULL);   /* their waiters were threads of the parent */
  pthread_cond_init(&pool.done, NULL);
  lmx_forks++;
  for (p = pool.ports; p; p = p->next) {
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0) {                       /* none to be had: no eventfd rather than a shared one */
      if (p->fd >= 0) close(p->fd);
      p->fd = -1;
      continue;
    }
    if (p->fd >= 0 && dup3(fd, p->fd, O_CLOEXEC) >= 0) close(fd);
    else {
      if (p->fd >= 0) close(p->fd);
      p->fd = fd;
    }
    if (p->head) wake_port(p);
  }
  for (int i = 0; i < pool.nthreads; i++) {
    if ((j = pool.w[i].cur)) {
      pool.w[i].cur = NULL;
      free(unpin(j));   /* the child's own copy of an orphaned buffer */
      announce(j);
    }
  }
  while ((j = pool.head)) {
    pool.head = j->next;
    free(unpin(j));
    announce(j);
  }
  pool.tail = NULL;
  pool.queued = pool.running = pool.nthreads = 0;
  unlock();
}

/* Threads and the fork handler run code of this module: were Lua to dlclose it (lua_close
 * does), a worker or the next fork would jump into unmapped memory. So once loaded, the module
 * stays loaded for good (a few hundred KiB of a process that used it once). */
static void pin_module(void) {
  Dl_info info;
  if (dladdr((void *)&pin_module, &info) && info.dli_fname)
    (void)dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  pthread_atfork(prepare, parent, child);
}
static pthread_once_t pinned = PTHREAD_ONCE_INIT;

void lmx_pool_init(void) { pthread_once(&pinned, pin_module); }

/* Under the lock: starts workers up to the target (the module is pinned by then: ports come
 * first). Workers block every signal, so signals (SIGINT for lua.c's handler, which sets a
 * hook on the main state) reach the main thread. */
static int start(void) {
  sigset_t all, old;
  int err = 0;
  if (pool.nthreads >= pool.target) return 0;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  while (pool.nthreads < pool.target) {
    Worker *w = &pool.w[pool.nthreads];
    pthread_attr_t at;
    pthread_attr_init(&at);
    pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
    err = pthread_create(&w->tid, &at, worker, w);
    pthread_attr_destroy(&at);
    if (err) break;
    pool.nthreads++;
  }
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return pool.nthreads > 0 ? 0 : err;
}

int lmx_pool_threads(int n) {
  if (n < 1) n = 1;
  if (n > LMX_POOL_MAX) n = LMX_POOL_MAX;
  lock();
  pool.target = n;
  unlock();
  return n;
}

void lmx_pool_stats(lmx_PoolStats *s) {
  lock();
  s->threads = pool.nthreads;
  s->target = pool.target;
  s->queued = pool.queued;
  s->running = pool.running;
  s->done = pool.ndone;
  unlock();
}

lmx_Port *lmx_port_new(void) {
  lmx_Port *p;
  lmx_pool_init();
  if (!(p = calloc(1, sizeof *p))) return NULL;
  p->fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (p->fd < 0) {
    int e = errno;
    free(p);
    errno = e;
    return NULL;
  }
  p->refs = 1;
  lock();
  p->next = pool.ports;
  if (pool.ports) pool.ports->prev = p;
  pool.ports = p;
  unlock();
  return p;
}

int lmx_port_fd(const lmx_Port *p) { return p->fd; }

/* Under the lock; the caller frees the returned port (no longer listed) after unlocking. */
static lmx_Port *unref(lmx_Port *p) {
  if (--p->refs > 0) return NULL;
  if (p->prev) p->prev->next = p->next;
  else pool.ports = p->next;
  if (p->next) p->next->prev = p->prev;
  return p;
}

static void port_free(lmx_Port *p) {
  if (!p) return;
  if (p->fd >= 0) close(p->fd);
  free(p);
}

void lmx_port_release(lmx_Port *p) {
  lmx_Port *dead;
  lock();
  dead = unref(p);
  unlock();
  port_free(dead);
}

/* Under the lock. */
static void unlist(lmx_Port *p, lmx_Job *j) {
  lmx_Job **pp = &p->head, *prev = NULL;
  uint64_t v;
  while (*pp && *pp != j) { prev = *pp; pp = &(*pp)->next; }
  if (!*pp) return;
  *pp = j->next;
  if (p->tail == j) p->tail = prev;
  j->next = NULL;
  j->listed = 0;
  if (!p->head && p->fd >= 0) while (read(p->fd, &v, sizeof v) < 0 && errno == EINTR) {}
}

lmx_Job *lmx_port_pop(lmx_Port *p) {
  lmx_Job *j;
  lock();
  if ((j = p->head)) unlist(p, j);
  unlock();
  return j;
}

int lmx_pool_submit(lmx_Port *p, lmx_Job *j) {
  int err;
  lock();
  if ((err = start()) != 0) {
    unlock();
    return err;
  }
  j->port = p;
  p->refs++;
  if (j->pin) j->pin->readers++;
  j->state = LMX_JOB_QUEUED;
  j->ran = j->listed = 0;
  j->next = NULL;
  if (pool.tail) pool.tail->next = j; else pool.head = j;
  pool.tail = j;
  pool.queued++;
  pthread_cond_signal(&pool.work);
  unlock();
  return 0;
}

int lmx_job_state(lmx_Job *j) {
  int st;
  lock();
  st = j->state;
  unlock();
  return st;
}

/* Under the lock: takes queued j off the queue (it will not run); returns what unpin does. */
static void *dequeue(lmx_Job *j) {
  lmx_Job **pp = &pool.head, *prev = NULL;
  while (*pp && *pp != j) { prev = *pp; pp = &(*pp)->next; }
  if (*pp) {
    *pp = j->next;
    if (pool.tail == j) pool.tail = prev;
    pool.queued--;
  }
  return unpin(j);
}

int lmx_pool_finish(lmx_Job *j) {
  lmx_Port *dead = NULL;
  void *orphan = NULL;
  int ran;
  lock();
  if (j->state == LMX_JOB_QUEUED) {
    orphan = dequeue(j);
    j->state = LMX_JOB_DONE;
  }
  while (j->state == LMX_JOB_RUNNING) pthread_cond_wait(&pool.done, &pool.mu);
  if (j->port) {
    if (j->listed) unlist(j->port, j);
    dead = unref(j->port);
    j->port = NULL;
  }
  ran = j->ran;
  unlock();
  free(orphan);
  port_free(dead);
  return ran;
}

int lmx_pool_abandon(lmx_Job *j) {
  void *orphan = NULL;
  int ran;
  lock();
  if (j->state == LMX_JOB_QUEUED) {
    orphan = dequeue(j);
    if (j->port) announce(j);
    else j->state = LMX_JOB_DONE;
  }
  while (j->state == LMX_JOB_RUNNING) pthread_cond_wait(&pool.done, &pool.mu);
  ran = j->ran;
  unlock();
  free(orphan);
  return ran;
}

void lmx_job_wait(lmx_Job *j) {
  lock();
  while (j->state == LMX_JOB_QUEUED || j->state == LMX_JOB_RUNNING)
    pthread_cond_wait(&pool.done, &pool.mu);
  unlock();
}

int lmx_pin_close(lmx_Pin *p, void *mem) {
  int now;
  lock();
  now = p->readers == 0;
  if (!now) p->orphan = mem;
  unlock();
  return now;
}
