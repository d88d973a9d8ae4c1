// layerfs-launch: bin/layerfs itself (a symlink to it). A mount is handed to the standby daemon if
// one is waiting (src/standby.ts: a daemon already started, its code loaded and run once), which
// serves it at once; everything else, and every mount the standby declines, goes to Node as before
// (node dist/src/boot.js ARGS). Starting Node and loading layerfs costs ~140 ms, a C program ~1 ms;
// a shell script in front of it cost ~0.5 ms more per call. The installation's root is found from
// /proc/self/exe (ROOT/native/build/Release/layerfs-launch), so bin/layerfs may be linked anywhere.
//
// The standby listens on an abstract unix socket named for this user and its user, mount and pid
// namespaces; both ends check the other's uid (SO_PEERCRED), so nobody else's standby is used.
// Request: u32 length, then NUL-terminated fields: magic, the boot script it would run, cwd, umask
// (octal), stderr terminal columns (0: not a terminal), argc, args, envc, env. Answers: frames of a type byte and a u32
// length: 'e' bytes for stderr, 'x' the exit code (decimal), 'f' declined (run Node instead), 'n'
// the command line of the next standby (with the mount it is to prepare: src/standby.ts), which a child of this launcher starts (detached, at low
// priority) a second after the mount is live: a fork from this small process costs nothing, where
// the daemon's own would stall the mount's first requests.
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <limits.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include "fd_io.h"
#include "priority.h"

#define MAGIC "layerfs-standby-2"

extern char **environ;

static char **node_argv;

static void run_node(void) {
  execvp("node", node_argv);
  fprintf(stderr, "layerfs: cannot run node: %s\n", strerror(errno));
  exit(127);
}

static unsigned long ns_inode(const char *name) {
  char path[64], link[64];
  snprintf(path, sizeof path, "/proc/self/ns/%s", name);
  ssize_t n = readlink(path, link, sizeof link - 1);
  if (n <= 0) return 0;
  link[n] = 0;
  char *open = strchr(link, '[');
  return open ? strtoul(open + 1, NULL, 10) : 0;
}

// The standby's address: must match standbyAddress() in src/standby.ts.
static socklen_t standby_address(struct sockaddr_un *sa) {
  memset(sa, 0, sizeof *sa);
  sa->sun_family = AF_UNIX;
  snprintf(sa->sun_path + 1, sizeof sa->sun_path - 1, "layerfs-standby-%lu-%lu-%lu-%u",
           ns_inode("user"), ns_inode("mnt"), ns_inode("pid"), (unsigned)getuid());
  return sizeof *sa; // Node (libuv) binds abstract names padded with NULs to the whole sun_path
}

struct buf { char *p; size_t len, cap; };

static void put(struct buf *b, const char *s, size_t n) {
  if (b->len + n + 1 > b->cap) {
    b->cap = (b->len + n + 1) * 2;
    b->p = realloc(b->p, b->cap);
    if (!b->p) run_node();
  }
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len++] = 0;
}

static void put_num(struct buf *b, long v, int octal) {
  char s[32];
  int n = snprintf(s, sizeof s, octal ? "%lo" : "%ld", v);
  put(b, s, (size_t)n);
}

// The mountpoint a mount command names, as src/options.ts parseArgs reads it: the last positional
// argument (not a flag, not the value of -o or --platform), resolved against `cwd` and through
// symlinks as the mount table shows it. NULL if there is none.
static char *mountpoint_of(int argc, char **argv, const char *cwd) {
  const char *last = NULL;
  int i = argc > 0 && strcmp(argv[0], "mount") == 0 ? 1 : 0;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) { if (i + 1 < argc) last = argv[argc - 1]; break; }
    if (strcmp(a, "-o") == 0 || strcmp(a, "--platform") == 0) { i++; continue; }
    if (a[0] == '-' && a[1] != 0) continue;
    last = a;
  }
  if (!last) return NULL;
  static char joined[PATH_MAX * 2], resolved[PATH_MAX];
  if (last[0] == '/') snprintf(joined, sizeof joined, "%s", last);
  else snprintf(joined, sizeof joined, "%s/%s", cwd, last);
  return realpath(joined, resolved) ? resolved : joined;
}

// Whether a FUSE filesystem is mounted at `path` (this mount namespace's table; escapes undone).
static int fuse_mounted_at(const char *path) {
  FILE *f = fopen("/proc/self/mountinfo", "re");
  if (!f) return 1; // cannot tell: as if it were
  static char line[PATH_MAX * 4 + 512], mnt[PATH_MAX * 4];
  int found = 0;
  while (!found && fgets(line, sizeof line, f)) {
    // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS... - FSTYPE SOURCE SUPEROPTS
    char *q = line;
    for (int field = 0; field < 4 && q; field++) q = strchr(q, ' '), q = q ? q + 1 : NULL;
    char *dash = q ? strstr(q, " - ") : NULL;
    if (!dash) continue;
    size_t n = 0;
    for (; *q && *q != ' ' && n < sizeof mnt - 1; q++) {
      if (q[0] == '\\' && q[1] >= '0' && q[1] <= '3' && q[2] >= '0' && q[2] <= '7' && q[3] >= '0' && q[3] <= '7') {
        mnt[n++] = (char)((q[1] - '0') * 64 + (q[2] - '0') * 8 + (q[3] - '0'));
        q += 3;
      } else mnt[n++] = *q;
    }
    mnt[n] = 0;
    found = strcmp(mnt, path) == 0 && strncmp(dash + 3, "fuse", 4) == 0;
  }
  fclose(f);
  return found;
}

// The next standby's starter, forked while the standby works on the request (the ~2 ms this
// launcher would only wait; forked after the answer, the fork and the child's first steps were on
// the mount's path: ~0.4 ms, and the child's page faults took CPU from what ran next). Its own
// session, no terminal, stdio on /dev/null, no other descriptor but the pipe's read end (fd 3),
// on which this launcher writes the next standby's command line once the mount is live (EOF: none
// is to start: the mount failed, or Node serves it). The write end returned (-1: none forked).
static int fork_standby_starter(int argc, char **argv, const char *cwd) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  pid_t pid = fork();
  if (pid != 0) {
    close(p[0]);
    if (pid < 0) { close(p[1]); return -1; }
    return p[1];
  }
  close(p[1]);
  setsid();
  int nul = open("/dev/null", O_RDWR);
  if (nul < 0 || dup2(p[0], 3) != 3) _exit(1);
  dup2(nul, 0); dup2(nul, 1); dup2(nul, 2);
  syscall(SYS_close_range, 4U, ~0U, 0U); // nothing of the caller's held open (a pipe it waits on)
  const char *mountpoint = mountpoint_of(argc, argv, cwd);
  if (chdir("/") != 0) _exit(1);
  // a second later, and only if none waits then: a mount that ends soon gives its daemon back as
  // the standby, and a new one would start for nothing, competing with the mount's first reads
  struct timespec delay = { .tv_sec = 1, .tv_nsec = 0 };
  while (nanosleep(&delay, &delay) != 0 && errno == EINTR) {}
  static char cmdline[65536];
  size_t n = 0;
  for (ssize_t r; n < sizeof cmdline - 1 && (r = read(3, cmdline + n, sizeof cmdline - 1 - n)) != 0; ) {
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) _exit(1);
    n += (size_t)r;
  }
  close(3);
  if (n == 0) _exit(0);
  cmdline[n] = 0;
  char *args[64];
  int k = 0;
  for (char *q = cmdline; q < cmdline + n && k < 63; q += strlen(q) + 1) args[k++] = q;
  args[k] = NULL;
  int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa;
  socklen_t salen = standby_address(&sa);
  if (probe >= 0 && connect(probe, (struct sockaddr *)&sa, salen) == 0) _exit(0);
  if (probe >= 0) close(probe);
  // none waits, but the mount has ended: its daemon gives itself back as the standby, only busy
  // now with a mount made since (a loop of short mounts: a new one booting here took CPU from
  // every mount that followed, 40-56 ms to mount and list against 25-30)
  if (mountpoint && !fuse_mounted_at(mountpoint)) _exit(0);
  // low priority while it starts (it must not slow the mount just made), given up when it takes
  // a mount (src/standby.ts): idle I/O class, and nice 10 for root only (raising one's priority
  // again needs CAP_SYS_NICE)
  set_thread_priority(0, 1);
  execv(args[0], args);
  _exit(127);
}

// Commands that never go to the standby: they are not mounts, or they stay in the foreground.
static int not_for_standby(int argc, char **argv) {
  if (argc < 1) return 1;
  static const char *const words[] = { "umount", "stats", "tree", "cache", "standby", "help", "-h", "--help", "-V", "--version", NULL };
  for (int i = 0; words[i]; i++) if (strcmp(argv[0], words[i]) == 0) return 1;
  for (int i = 0; i < argc; i++) if (strcmp(argv[i], "-f") == 0 || strcmp(argv[i], "--foreground") == 0) return 1;
  return 0;
}

// ROOT/dist/src/boot.js, ROOT holding native/build/Release/ with this executable; NULL if it is not there.
static char *boot_script(void) {
  static char path[PATH_MAX + 32];
  ssize_t n = readlink("/proc/self/exe", path, PATH_MAX);
  if (n <= 0) return NULL;
  path[n] = 0;
  for (int up = 0; up < 4; up++) { // .../native/build/Release/layerfs-launch -> ...
    char *slash = strrchr(path, '/');
    if (!slash) return NULL;
    *slash = 0;
  }
  strcat(path, "/dist/src/boot.js");
  return access(path, R_OK) == 0 ? path : NULL;
}

int main(int argc, char **argv) {
  // layerfs makes no TLS connections: a CA bundle named by NODE_EXTRA_CA_CERTS is parsed at every
  // Node start all the same (50 ms of a 70 ms start on our CI machines)
  unsetenv("NODE_EXTRA_CA_CERTS");
  char *boot = boot_script();
  if (!boot) { fprintf(stderr, "layerfs: cannot find dist/src/boot.js next to %s (run make build)\n", argv[0]); return 1; }
  node_argv = calloc((size_t)argc + 2, sizeof *node_argv);
  if (!node_argv) return 1;
  node_argv[0] = "node";
  node_argv[1] = boot;
  for (int i = 1; i < argc; i++) node_argv[i + 1] = argv[i];
  // from here on, args are argv[1..]
  argc -= 1;
  argv += 1;

  const char *off = getenv("LAYERFS_STANDBY");
  if ((off && strcmp(off, "0") == 0) || not_for_standby(argc, argv)) run_node();

  // the whole request is made before the standby is woken, and sent in one write: it then reads it
  // in one go (two writes could reach it as two reads, one more turn of its event loop)
  struct buf req = { calloc(1, 4096), 4, 4096 }; // its first 4 bytes: the length, filled in below
  if (!req.p) run_node();
  put(&req, MAGIC, strlen(MAGIC));
  put(&req, boot, strlen(boot));
  char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) run_node();
  put(&req, cwd, strlen(cwd));
  mode_t mask = umask(0);
  umask(mask);
  put_num(&req, mask, 1);
  struct winsize ws;
  put_num(&req, isatty(2) && ioctl(2, TIOCGWINSZ, &ws) == 0 ? (ws.ws_col ? ws.ws_col : 80) : 0, 0);
  put_num(&req, argc, 0);
  for (int i = 0; i < argc; i++) put(&req, argv[i], strlen(argv[i]));
  long envc = 0;
  for (char **e = environ; *e; e++) envc++;
  put_num(&req, envc, 0);
  for (char **e = environ; *e; e++) put(&req, *e, strlen(*e));
  uint32_t len = (uint32_t)(req.len - 4);
  memcpy(req.p, &len, 4);

  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  struct sockaddr_un sa;
  socklen_t salen = standby_address(&sa);
  if (fd < 0 || connect(fd, (struct sockaddr *)&sa, salen) != 0) run_node();
  struct ucred cred;
  socklen_t clen = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.uid != getuid()) run_node();
  if (write_all(fd, req.p, req.len) != 0) run_node();
  int starter = fork_standby_starter(argc, argv, cwd);

  int said = 0; // whether anything reached the user: after that, declining is no longer possible
  char *next = NULL;
  uint32_t next_len = 0;
  for (;;) {
    char head[5];
    int r = read_all(fd, head, 5);
    if (r <= 0) {
      if (!said) run_node(); // the standby went away before answering: as if there were none
      fprintf(stderr, "layerfs: the standby daemon ended before answering\n");
      return 1;
    }
    uint32_t n;
    memcpy(&n, head + 1, 4);
    char *body = malloc((size_t)n + 1);
    if (!body || (n > 0 && read_all(fd, body, n) != 1)) {
      fprintf(stderr, "layerfs: the standby daemon ended before answering\n");
      return 1;
    }
    body[n] = 0;
    if (head[0] == 'f' && !said) { close(fd); run_node(); }
    if (head[0] == 'e') { said = 1; write_all(2, body, n); }
    if (head[0] == 'n') { next = body; next_len = n; continue; }
    if (head[0] == 'x') {
      int code = atoi(body);
      if (code == 0 && next && starter >= 0) {
        signal(SIGPIPE, SIG_IGN); // a starter gone: no standby, and still this mount's exit code
        write_all(starter, next, next_len);
      }
      return code; // the starter's pipe closes with this process
    }
    free(body);
  }
}
