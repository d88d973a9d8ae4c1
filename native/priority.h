// A thread's scheduling and I/O priority as a standby and its launcher set them (shared by both
// addons and the launcher).
#ifndef LAYERFS_PRIORITY_H
#define LAYERFS_PRIORITY_H
#include <sys/types.h>

// Thread `tid` (0: the calling one) to low priority — I/O class idle, and nice 10 for root (raising
// nice again needs root) — or back to the defaults (best effort 4, nice 0).
void set_thread_priority(pid_t tid, int low);

// Every thread of this process, as set_thread_priority (listed from /proc/self/task: ~50 µs).
void set_process_priority(int low);

#endif
