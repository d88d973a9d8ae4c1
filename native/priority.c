#define _GNU_SOURCE
#include "priority.h"
#include <dirent.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

void set_thread_priority(pid_t tid, int low) {
  // IOPRIO_PRIO_VALUE(class, data) = class << 13 | data; class 2 = best effort, 3 = idle
  syscall(SYS_ioprio_set, 1 /* IOPRIO_WHO_PROCESS */, tid, low ? (3 << 13) : (2 << 13) | 4);
  if (geteuid() == 0) setpriority(PRIO_PROCESS, (id_t)tid, low ? 10 : 0);
}

void set_process_priority(int low) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return;
  for (struct dirent *e; (e = readdir(d)) != NULL;) {
    int tid = atoi(e->d_name);
    if (tid > 0) set_thread_priority(tid, low);
  }
  closedir(d);
}
