/* A small pool of worker threads for CPU-heavy byte work (PNG, resize, base64) off the Lua
 * thread. Pure C: no Lua header; workers run a job's function on memory the job owns or
 * borrows and never touch a lua_State.
 *
 * A job is announced on a port when it is done: the port's done list plus an eventfd that is
 * readable while the list is not empty, so an event loop (the Multi's epoll set) wakes on
 * completion. One port per lua_State keeps states of one process apart.
 *
 * Threads start on the first submit and are never stopped: Lua may dlclose the module, so the
 * first start pins it in memory (RTLD_NODELETE) and idle workers stay parked until the
 * process exits. */
#ifndef LMX_POOL_H
#define LMX_POOL_H
#include <stddef.h>
#include <stdint.h>

#define LMX_POOL_THREADS 2      /* default number of workers */
#define LMX_POOL_MAX 64         /* the most lmx_pool_threads accepts */

typedef struct lmx_Port lmx_Port;
typedef struct lmx_Job lmx_Job;

/* Readers of a buffer the owner may want to free while jobs still read it (an Image's
 * pixels). Guarded by the pool lock. */
typedef struct lmx_Pin {
  int readers;
  void *orphan;                 /* freed by the last reader when the owner let go first */
} lmx_Pin;

enum { LMX_JOB_NEW, LMX_JOB_QUEUED, LMX_JOB_RUNNING, LMX_JOB_DONE };

/* Embed as the first member of the caller's job struct. Fields other than run and pin are the
 * pool's; state is guarded by the pool lock. */
struct lmx_Job {
  void (*run)(lmx_Job *j);      /* on a worker: reads the inputs, writes the outputs */
  lmx_Pin *pin;                 /* optional: held from submit until run returns */
  lmx_Port *port;               /* where j is announced; a counted reference until finish */
  lmx_Job *next;                /* queue or done-list link */
  int state;
  int ran;                      /* run completed (not cancelled, not lost in a fork) */
  int listed;                   /* in its port's done list */
};

typedef struct lmx_PoolStats {
  int threads, target, queued, running;
  uint64_t done;                /* jobs run to completion since the process started */
} lmx_PoolStats;

/* Forks this process went through (incremented in the child): an object made before a fork
 * compares it to tell it was inherited. */
extern unsigned lmx_forks;
/* Pins the module in memory and installs the fork handler; once per process, at load. */
void lmx_pool_init(void);

/* Sets the number of workers (1..LMX_POOL_MAX). Workers already running are kept (fewer
 * cannot be asked for once started); more start with the next submit. Returns the target. */
int lmx_pool_threads(int n);
void lmx_pool_stats(lmx_PoolStats *s);

/* A new port (one reference), or NULL with errno set. */
lmx_Port *lmx_port_new(void);
/* The port's eventfd; -1 when a forked child could not get one of its own. */
int lmx_port_fd(const lmx_Port *p);
/* Drops the owner's reference; the port (and its eventfd) goes with the last job's. */
void lmx_port_release(lmx_Port *p);
/* Pops one done job, or NULL; the eventfd is cleared when the list becomes empty. */
lmx_Job *lmx_port_pop(lmx_Port *p);

/* Queues j (state NEW, run set) for a worker, starting workers as needed; takes a reference
 * on p and a reader on j->pin. Returns 0, or an errno when no worker could be started (j is
 * then untouched and may run inline instead). */
int lmx_pool_submit(lmx_Port *p, lmx_Job *j);
/* j's state (LMX_JOB_*), read under the pool lock. */
int lmx_job_state(lmx_Job *j);
/* Before j's memory is released: a queued job is cancelled, a running one waited for (it
 * reads memory its owner is about to free); j leaves its port's list and drops its port
 * reference. Idempotent. Returns j->ran. */
int lmx_pool_finish(lmx_Job *j);

/* Ends j early but keeps it announced: a queued job is cancelled (and announced on its port
 * as done, not run), a running one waited for; a done one stays where it is. Whoever collects
 * the port's done jobs still gets j (and then calls lmx_pool_finish). Returns j->ran. */
int lmx_pool_abandon(lmx_Job *j);
/* Blocks until j is done (run, cancelled or lost in a fork). */
void lmx_job_wait(lmx_Job *j);

/* The owner lets go of mem: returns 1 when nobody reads it (the owner frees it now), 0 when
 * the last reader will. */
int lmx_pin_close(lmx_Pin *p, void *mem);
#endif
