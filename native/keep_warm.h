// A thread that wakes the daemon's process every 100 ms (by default) while its mount is in
// use (see keep_warm.c for why). It watches the reader's own count of requests; keep_warm_request()
// is on the reader's path: a flag read.
#ifndef LAYERFS_KEEP_WARM_H
#define LAYERFS_KEEP_WARM_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

typedef struct {
  const _Atomic uint64_t *requests; // the reader's count (fuse_ll.c); the thread ticks on while it moves
  atomic_int asleep;    // the thread waits for a request (no ticks)
  atomic_int stopping;
  long tick_ms;
  pthread_mutex_t lock;
  pthread_cond_t cond;
  pthread_t thread;
} KeepWarm;

// Started asleep (it ticks once requests come); NULL when LAYERFS_KEEP_WARM_MS=0 or no thread.
KeepWarm *keep_warm_start(const _Atomic uint64_t *requests);
void keep_warm_wake(KeepWarm *k);
// Ends the thread (at once, not at its next tick) and frees it; NULL is fine.
void keep_warm_stop(KeepWarm *k);

// A request came, and the count moved (a seq_cst store: against the thread's store of `asleep`
// then load of the count, one of the two sees the other): the thread ticks on (woken if asleep).
static inline void keep_warm_request(KeepWarm *k) {
  if (k && atomic_load(&k->asleep)) keep_warm_wake(k);
}

#endif
