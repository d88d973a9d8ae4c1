#define _GNU_SOURCE
#include "setids.h"
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

// Whether process `pid` has group `gid` among its supplementary groups (/proc/PID/status).
static int in_groups(uint32_t pid, uint32_t gid) {
  char path[40], line[4096];
  snprintf(path, sizeof path, "/proc/%u/status", pid);
  FILE *f = fopen(path, "re");
  if (!f) return 0;
  int found = 0;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, "Groups:", 7) != 0) continue;
    for (char *p = line + 7, *end; ; p = end) {
      unsigned long g = strtoul(p, &end, 10);
      if (end == p) break;
      if (g == gid) { found = 1; break; }
    }
    break;
  }
  fclose(f);
  return found;
}

int drop_setids(int fd, const char *path, uint32_t gid, uint32_t pid) {
  struct stat st;
  if ((fd >= 0 ? fstat(fd, &st) : lstat(path, &st)) != 0) return -errno;
  if (!S_ISREG(st.st_mode)) return 0;
  mode_t kill = st.st_mode & S_ISUID;
  if ((st.st_mode & S_ISGID) && ((st.st_mode & S_IXGRP) || (st.st_gid != gid && !in_groups(pid, st.st_gid)))) kill |= S_ISGID;
  if (!kill) return 0;
  mode_t mode = (st.st_mode & 07777) & ~kill;
  // a regular file, as lstat saw it: chmod's following of symlinks does not apply
  if ((fd >= 0 ? fchmod(fd, mode) : chmod(path, mode)) != 0) return -errno;
  return 1;
}
