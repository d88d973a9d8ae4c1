// fuse_ll: libfuse 3's low-level API served on Node's own thread. The /dev/fuse descriptor is
// polled by libuv; each request is read and handed to one JS dispatch function right there, and
// JS answers (at once or later) through the ll* reply functions. No thread hop and no semaphore
// per request, unlike fuse-native (which parks a libfuse thread while JS works); and READDIRPLUS,
// directory and symlink caching, which libfuse 2's high-level API cannot give.
#define FUSE_USE_VERSION 35
#define _GNU_SOURCE
#include <node_api.h>
#include "copy_range.h"
#include "now_ns.h"
#include "setids.h"
#include <uv.h>
#include <fuse_lowlevel.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <poll.h>
#include <sched.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/uio.h>
#include <sys/xattr.h>
#include <sys/stat.h>
#include <sys/mount.h>
#include <sys/vfs.h>
#include "fuse_ll.h"
#include "keep_warm.h"
#include "priority.h"

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, "napi call failed: " #call); return NULL; } } while (0)

enum {
  OP_LOOKUP = 1, OP_FORGET, OP_GETATTR, OP_READLINK, OP_OPEN, OP_READ, OP_RELEASE, OP_OPENDIR,
  OP_READDIR, OP_RELEASEDIR, OP_STATFS, OP_GETXATTR, OP_LISTXATTR, OP_INIT, OP_DESTROY,
  OP_SETATTR, OP_MKNOD, OP_MKDIR, OP_SYMLINK, OP_LINK, OP_UNLINK, OP_RMDIR, OP_RENAME, OP_CREATE,
  OP_WRITE, OP_FLUSH, OP_FSYNC, OP_SETXATTR, OP_REMOVEXATTR,
  OP_NOTES, // not a request: copy-ups the reader thread ran (see plan_open) wait in llNotes
};

struct Session {
  napi_env env;
  struct fuse_session *se;
  uv_poll_t poll;
  napi_ref dispatch;
  napi_ref self;
  napi_async_context actx;
  struct fuse_buf buf;
  int polling;
  int ended;
  struct Direct **direct; // hash buckets: handles (or nodes) whose reads C serves itself
  size_t direct_cap, direct_count;
  char *rbuf; size_t rcap;
  int js_open; napi_handle_scope js_scope; napi_callback_scope js_cscope;
  _Atomic uint64_t *layer_counts; size_t nlayers; // [reads, bytes] per layer position, for the stats
  // the reader thread (see reader_main): it blocks on /dev/fuse, answers direct READs and WRITEs
  // itself and queues the rest for Node's thread
  int threaded;
  pthread_t reader;
  KeepWarm *keep_warm; // wakes the process while the mount is in use (keep_warm.c)
  // requests the reader read (the keep-warm thread watches it), whether it polls now, its trials
  // run: for the stats (llReaderStats)
  _Atomic uint64_t reader_requests; atomic_int reader_polling, reader_trials;
  atomic_int reader_done, stopping;
  uv_async_t async; int async_closed;
  pthread_mutex_t qlock;
  struct Queued *qhead, *qtail;
  pthread_rwlock_t dlock; // the direct table: Node's thread changes it, the reader looks up in it
  char *trbuf; size_t trcap; // the reader's read buffer
  // a read-only mount whose kernel lets OPEN/OPENDIR go unanswered (ENOSYS once, then never sent):
  // the reader answers them, without waking Node's thread for a mount's first `ls` or read
  int read_only;
  // a writable mount that copies up at a file's first write, not at its open for writing (lowlevel.ts
  // copyUpAtWrite): with the kernel's leave, no OPEN or RELEASE either, READs and WRITEs by node
  int copy_up_at_write;
  atomic_int enosys_open, enosys_opendir;
  uint64_t native_fh; // the next handle C opens itself (NATIVE_FH + this), under dlock
  uint64_t native_dir_fh; // the next directory handle C opens itself (NATIVE_FH + this), on the reader
  int statfs_fd; // what STATFS reports on (llStatfsAt: the upper dir, or the top layer), O_PATH; -1: JS answers
  // INIT answered on the reader thread (see reader_main): what ll_init learnt, for JS's OP_INIT
  int init_on_reader, init_no_open;
  // the kernel lets OPENDIR go unanswered (FUSE_NO_OPENDIR_SUPPORT), and every change on this mount is
  // an llChange (llPlanRoots): JS keeps listings by node, made stale by the attribute epoch. Set on
  // two threads (ll_init, llPlanRoots) in either order: each checks the other's
  atomic_int init_no_opendir, planning;
  // moves whenever JS drops the KEY_NO_CAPS marks (a security.capability set or removed): a plan
  // made before then no longer tells whether its file has one (planned_without_caps)
  atomic_int caps_gen;
  // the kernel's INIT, seen by io_read for io_writev (HANDLE_KILLPRIV_V2): its unique, and whether the
  // kernel offered HANDLE_KILLPRIV_V2
  _Atomic uint64_t init_unique; int init_offers_v2, want_v2;
  // the request Node's thread is processing asks for set-user/group-ID bits to go (kills_setids)
  int kill_now;
  // copy-ups planned by JS at LOOKUP and run by the reader thread at OPEN (see plan_open), and what
  // they did, for JS. Under plock: JS takes it to begin or end a change of its own (llChange).
  pthread_mutex_t plock;
  uint64_t epoch; // moves on the changes JS begins or ends that stale plans (llChange): a plan is good only in its own epoch
  int busy;       // JS's changes under way: no plan runs meanwhile
  struct Plan *plans; int nplans; uint32_t plan_seq;
  struct Note *notes, *notes_tail;
  int plan_notes; // of those, notes of plans run (what JS's view of the upper lacks until it reads them)
  char *plan_upper, *plan_temp; size_t plan_upper_len, plan_temp_len; // llPlanRoots
  uint64_t temp_seq; // names of the entries plans build in plan_temp
  int plan_workfd;   // plan_temp, open
  // LOOKUPs JS answered ahead (see lookup_pushed): hash buckets by (parent, name), all of push_epoch
  struct Pushed **pushed; uint64_t push_epoch;
  // attributes of nodes that only a change can change, for GETATTR (see answer_getattr); under plock
  struct AttrEntry **attrs; uint64_t attr_epoch, attrs_epoch;
  // GETATTR of a node whose upper file is written by node (see upper_getattr; llUpperAttrs): the
  // upper's inode space (JS's inode numbers there are this plus st_ino; 0 until then: JS answers
  // them), the attribute timeout of a single-name file in seconds
  _Atomic uint64_t upper_ino_base; _Atomic double upper_attr_valid;
  // the ends of listings JS gave out whole (see dir_end); under plock
  struct DirEnd *dir_ends;
  // the root's attributes, for the kernel's first GETATTR of it (see root_getattr); under plock
  struct kernel_attr_out *root_attr;
  // the root's listing, for the kernel's READDIRPLUS of it (see root_readdir); under plock
  struct RootList *root_list;
  // listings JS made ahead of the kernel's asking, by node (see ahead_readdir); under plock. JS is
  // woken once no more than ahead_low of them are left (0: not at all)
  struct Ahead **ahead; int ahead_count, ahead_low;
  // a session made ahead of its mount (llPrepare): /dev/fuse open, the reader parked until
  // session_go mounts it (the standby's gate, standby_gate.c); the mount it made, unmounted here
  int prepared, dev_fd, went;
  pthread_mutex_t golock; pthread_cond_t gocond;
  char *own_mnt;
  // the storer (see want_store): a thread that pushes the bytes around random reads of immutable
  // files into the kernel's page cache; started at its first job
  _Atomic uint32_t store_window; // bytes, a power of two (llReadaround); 0: none
  int storer_started, storer_stop;
  pthread_t storer;
  pthread_mutex_t slock; pthread_cond_t scond;
  struct StoreJob *sq; unsigned sq_head, sq_tail;
  char *sbuf; size_t scap;
};

typedef struct Queued { struct Queued *next; size_t len; char data[]; } Queued;

// The kernel's request and reply layouts (linux/fuse.h) that answer_direct reads and writes; spelt
// out here because that header clashes with libfuse's.
enum { KERNEL_FUSE_READDIRPLUS = 44, KERNEL_FUSE_READDIR = 28, KERNEL_FUSE_RELEASEDIR = 29, KERNEL_FUSE_LOOKUP = 1, KERNEL_FUSE_GETATTR = 3, KERNEL_FUSE_OPEN = 14, KERNEL_FUSE_READ = 15, KERNEL_FUSE_WRITE = 16, KERNEL_FUSE_RELEASE = 18, KERNEL_FUSE_GETXATTR = 22, KERNEL_FUSE_FLUSH = 25, KERNEL_FUSE_INIT = 26, KERNEL_FUSE_OPENDIR = 27, KERNEL_FUSE_CREATE = 35, KERNEL_FUSE_STATX = 52, KERNEL_FUSE_STATFS = 17 };
struct kernel_in_header { uint32_t len, opcode; uint64_t unique, nodeid; uint32_t uid, gid, pid; uint16_t total_extlen, padding; };
struct kernel_rw_in { uint64_t fh, offset; uint32_t size, rw_flags; uint64_t lock_owner; uint32_t flags, padding; };
struct kernel_out_header { uint32_t len; int32_t error; uint64_t unique; };
struct kernel_write_out { uint32_t size, padding; };
struct kernel_open_in { uint32_t flags, open_flags; };
struct kernel_open_out { uint64_t fh; uint32_t open_flags; int32_t padding; };
struct kernel_release_in { uint64_t fh; uint32_t flags, release_flags; uint64_t lock_owner; };
struct kernel_create_in { uint32_t flags, mode, umask, open_flags; };
// HANDLE_KILLPRIV_V2 (see io_writev) and the flags of the requests it then marks
enum { KERNEL_HANDLE_KILLPRIV = 1u << 19, KERNEL_HANDLE_KILLPRIV_V2 = 1u << 28, KERNEL_WRITE_KILL_SUIDGID = 1u << 2,
       KERNEL_OPEN_KILL_SUIDGID = 1u << 0, KERNEL_FOPEN_KEEP_CACHE = 1u << 1,
       KERNEL_FOPEN_CACHE_DIR = 1u << 3 };
struct kernel_attr {
  uint64_t ino, size, blocks, atime, mtime, ctime;
  uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct kernel_entry_out { uint64_t nodeid, generation, entry_valid, attr_valid; uint32_t entry_valid_nsec, attr_valid_nsec; struct kernel_attr attr; };
struct kernel_attr_out { uint64_t attr_valid; uint32_t attr_valid_nsec, dummy; struct kernel_attr attr; };
struct kernel_dirent { uint64_t ino, off; uint32_t namelen, type; };
struct kernel_statfs_out { uint64_t blocks, bfree, bavail, files, ffree; uint32_t bsize, namelen, frsize, padding, spare[6]; };

// A file whose bytes lie in order in a local descriptor (a plain tar member, a directory layer's
// file, an upper file): its READs are answered here with pread, without a call into JS. JS sets
// and drops these (it owns the descriptors and drops an entry before it closes one).
typedef struct Direct {
  uint64_t key;
  int fd;
  int layer;
  int64_t base;  // offset of the file's byte 0 in fd
  int64_t limit; // its length, or -1: up to fd's end (an upper file, which may grow)
  int writable;  // WRITEs too (an upper file): pwrite at the offset
  uint64_t node; // a handle C opened itself (NATIVE_FH): its node
  char *path;    // KEY_OPENABLE: the upper file's path (malloc'd)
  int64_t read_end;     // where the last READ answered from it ended (see want_store)
  int64_t stored_from;  // the last window queued for storing from it, or -1
  uint64_t serial;      // which registration this is: a handle's number is used again once released
  int owned;            // fd is C's, closed when the entry goes (plan_write's upper file, by node)
  struct Direct *next;
} Direct;

#define KEY_BY_NODE (1ULL << 63) // keyed by nodeid: read-only mounts without OPEN send fh 0
// A node whose upper file was seen without security.capability when opened for writing: the kernel
// asks for that xattr before every write(2) (to drop it), and C answers ENODATA without JS. JS
// clears them all whenever any security.capability is set or removed.
#define KEY_NO_CAPS (1ULL << 62)
// A node whose upper file C may open itself (OPEN and RELEASE answered on the reader thread, without
// JS): a regular upper file JS opened once, by its path in the upper dir. JS drops them all whenever
// a name changes (unlink, rename, link, rmdir, xattrs), and a node's when the kernel forgets it.
#define KEY_OPENABLE (1ULL << 61)
// A directory handle C opened (open_dir) whose listing JS made, at a READDIR: its RELEASEDIR goes
// to JS, which drops the listing. The others C releases itself.
#define KEY_LISTED (1ULL << 60)
// Handles C opened itself are numbered from here; JS's are below 2^32.
#define NATIVE_FH (1ULL << 32)

static int is_native_fh(uint64_t key) { return key >= NATIVE_FH && !(key & (KEY_BY_NODE | KEY_NO_CAPS | KEY_OPENABLE | KEY_LISTED)); }

static size_t direct_slot(Session *s, uint64_t key) {
  key ^= key >> 33; key *= 0xff51afd7ed558ccdULL; key ^= key >> 33;
  return (size_t)key & (s->direct_cap - 1);
}

static Direct *direct_find(Session *s, uint64_t key) {
  if (!s->direct_count) return NULL;
  for (Direct *d = s->direct[direct_slot(s, key)]; d; d = d->next) if (d->key == key) return d;
  return NULL;
}

static void direct_drop(Session *s, uint64_t key) {
  if (!s->direct_count) return;
  for (Direct **p = &s->direct[direct_slot(s, key)]; *p; p = &(*p)->next) {
    if ((*p)->key != key) continue;
    Direct *d = *p;
    *p = d->next;
    if (d->owned) close(d->fd);
    free(d->path);
    free(d);
    s->direct_count--;
    return;
  }
}

static Direct *direct_set(Session *s, uint64_t key, int fd, int64_t base, int64_t limit, int layer, int writable) {
  direct_drop(s, key);
  if (s->direct_count + 1 > s->direct_cap) { // grow (and rehash) at load factor 1
    size_t cap = s->direct_cap ? s->direct_cap * 2 : 256;
    Direct **old = s->direct; size_t oldcap = s->direct_cap;
    s->direct = calloc(cap, sizeof *s->direct);
    s->direct_cap = cap;
    for (size_t i = 0; i < oldcap; i++) for (Direct *d = old[i], *n; d; d = n) {
      n = d->next; size_t b = direct_slot(s, d->key); d->next = s->direct[b]; s->direct[b] = d;
    }
    free(old);
  }
  Direct *d = malloc(sizeof *d);
  static _Atomic uint64_t serials; // one count for every session of the process
  *d = (Direct){ key, fd, layer, base, limit, writable, 0, NULL, 0, -1, atomic_fetch_add(&serials, 1) + 1, 0, NULL };
  size_t b = direct_slot(s, key);
  d->next = s->direct[b]; s->direct[b] = d;
  s->direct_count++;
  return d;
}

static void direct_free_all(Session *s) {
  for (size_t i = 0; i < s->direct_cap; i++) for (Direct *d = s->direct[i], *n; d; d = n) {
    n = d->next;
    if (is_native_fh(d->key) || d->owned) close(d->fd); // a descriptor C opened, still open at the session's end
    free(d->path); free(d);
  }
  free(s->direct); s->direct = NULL; s->direct_cap = s->direct_count = 0;
}

// Per layer position: reads answered, their bytes, windows stored by the readaround, their bytes.
#define LAYER_COUNTS 4
static void count_read(Session *s, Direct *d, size_t got) {
  if (d->layer >= 0 && (size_t)d->layer < s->nlayers) {
    atomic_fetch_add(&s->layer_counts[LAYER_COUNTS * d->layer], 1);
    atomic_fetch_add(&s->layer_counts[LAYER_COUNTS * d->layer + 1], got);
  }
}

// How many of the `size` bytes a read at `off` asks for lie before `end` (a file's length).
static size_t before_end(int64_t end, size_t size, off_t off) {
  return off >= end ? 0 : (int64_t)(off + size) > end ? (size_t)(end - off) : size;
}

// Reads up to `size` bytes of d's file at `off` into a buffer grown as needed (the caller's own:
// Node's thread and the reader thread each have one); the count read, or -errno.
static ssize_t direct_pread(Direct *d, char **buf, size_t *cap, size_t size, off_t off) {
  if (d->limit >= 0) size = before_end(d->limit, size, off);
  if (size > *cap) {
    free(*buf);
    *buf = malloc(size);
    *cap = *buf ? size : 0;
    if (!*buf) return -ENOMEM;
  }
  size_t got = 0;
  while (got < size) {
    ssize_t n = pread(d->fd, *buf + got, size - got, d->base + off + (off_t)got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    if (n == 0) break;
    got += (size_t)n;
  }
  return (ssize_t)got;
}

// Writes all of `data` to d's file at `off`; the count written, or -errno.
static ssize_t direct_pwrite(Direct *d, const char *data, size_t size, off_t off) {
  size_t done = 0;
  while (done < size) {
    ssize_t n = pwrite(d->fd, data + done, size - done, d->base + off + (off_t)done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return -errno;
    done += (size_t)n;
  }
  return (ssize_t)done;
}

// Whether the request in `msg` asks for set-ID bits to go (HANDLE_KILLPRIV_V2, drop_setids): a WRITE, or an OPEN
// or CREATE with O_TRUNC, from a caller without CAP_FSETID. A truncating SETATTR says so in what
// libfuse passes on (its FUSE_SET_ATTR_KILL_SUID is the kernel's FATTR_KILL_SUIDGID).
static int kills_setids(const char *msg, size_t len) {
  const struct kernel_in_header *in = (const void *)msg;
  if (len < sizeof *in) return 0;
  const char *arg = msg + sizeof *in;
  size_t n = len - sizeof *in;
  switch (in->opcode) {
    case KERNEL_FUSE_WRITE:
      return n >= sizeof(struct kernel_rw_in) && (((const struct kernel_rw_in *)arg)->rw_flags & KERNEL_WRITE_KILL_SUIDGID);
    case KERNEL_FUSE_OPEN:
      return n >= sizeof(struct kernel_open_in) && (((const struct kernel_open_in *)arg)->open_flags & KERNEL_OPEN_KILL_SUIDGID);
    case KERNEL_FUSE_CREATE:
      return n >= sizeof(struct kernel_create_in) && (((const struct kernel_create_in *)arg)->open_flags & KERNEL_OPEN_KILL_SUIDGID);
    default:
      return 0;
  }
}

// The kernel's cached attributes of `ino` are stale (notify_inval_inode, attributes only).
static void inval_attr(Session *s, uint64_t ino) {
  if (s->se && !s->ended) fuse_lowlevel_notify_inval_inode(s->se, (fuse_ino_t)ino, -1, 0);
}

static void serve_direct(Session *s, fuse_req_t req, Direct *d, size_t size, off_t off) {
  ssize_t got = direct_pread(d, &s->rbuf, &s->rcap, size, off);
  if (got < 0) { fuse_reply_err(req, (int)-got); return; }
  count_read(s, d, (size_t)got);
  fuse_reply_buf(req, s->rbuf, (size_t)got);
}

// The direct table under its lock, for Node's thread (which alone changes it) and the reader.
static void direct_set_locked(Session *s, uint64_t key, int fd, int64_t base, int64_t limit, int layer, int writable) {
  pthread_rwlock_wrlock(&s->dlock);
  direct_set(s, key, fd, base, limit, layer, writable);
  pthread_rwlock_unlock(&s->dlock);
}

static void direct_drop_locked(Session *s, uint64_t key) {
  pthread_rwlock_wrlock(&s->dlock); // waits for a read the reader is answering from that descriptor
  direct_drop(s, key);
  pthread_rwlock_unlock(&s->dlock);
}

// Whether node `ino` is known to have no security.capability (see KEY_NO_CAPS).
static int known_without_caps(Session *s, uint64_t ino) {
  pthread_rwlock_rdlock(&s->dlock);
  int none = direct_find(s, ino | KEY_NO_CAPS) != NULL;
  pthread_rwlock_unlock(&s->dlock);
  return none;
}

// The attribute layout JS fills in (a Float64Array): see src/fuse/lowlevel.ts.
enum { A_INO, A_MODE, A_NLINK, A_UID, A_GID, A_RDEV, A_SIZE, A_BLOCKS, A_BLKSIZE, A_ATIME, A_ATIMENS, A_MTIME, A_MTIMENS, A_CTIME, A_CTIMENS, A_COUNT };

static void fill_stat(struct stat *st, const double *a) {
  memset(st, 0, sizeof *st);
  st->st_ino = (ino_t)a[A_INO]; st->st_mode = (mode_t)a[A_MODE]; st->st_nlink = (nlink_t)a[A_NLINK];
  st->st_uid = (uid_t)a[A_UID]; st->st_gid = (gid_t)a[A_GID]; st->st_rdev = (dev_t)a[A_RDEV];
  st->st_size = (off_t)a[A_SIZE]; st->st_blocks = (blkcnt_t)a[A_BLOCKS]; st->st_blksize = (blksize_t)a[A_BLKSIZE];
  st->st_atim.tv_sec = (time_t)a[A_ATIME]; st->st_atim.tv_nsec = (long)a[A_ATIMENS];
  st->st_mtim.tv_sec = (time_t)a[A_MTIME]; st->st_mtim.tv_nsec = (long)a[A_MTIMENS];
  st->st_ctim.tv_sec = (time_t)a[A_CTIME]; st->st_ctim.tv_nsec = (long)a[A_CTIMENS];
}

// ---------------------------------------------------------------- requests to JS

// Calls dispatch(op, req, ino, a, b, c); we are inside the poll callback's scopes.
static void enter_js(Session *s);
static napi_env js_env(fuse_req_t req) { Session *s = fuse_req_userdata(req); enter_js(s); return s->env; }

static void dispatch_to4(Session *s, fuse_req_t req, int op, fuse_ino_t ino, napi_value a, napi_value b, napi_value c, napi_value d) {
  enter_js(s); // (the caller may have made its arguments in it already)
  napi_env env = s->env;
  napi_value fn, argv[7], undefined, result;
  napi_get_reference_value(env, s->dispatch, &fn);
  napi_get_undefined(env, &undefined);
  napi_create_int32(env, op, &argv[0]);
  napi_create_double(env, (double)(uintptr_t)req, &argv[1]);
  napi_create_double(env, (double)ino, &argv[2]);
  argv[3] = a ? a : undefined; argv[4] = b ? b : undefined; argv[5] = c ? c : undefined; argv[6] = d ? d : undefined;
  if (napi_call_function(env, undefined, fn, 7, argv, &result) != napi_ok) {
    napi_value exc;
    napi_get_and_clear_last_exception(env, &exc);
    if (req) fuse_reply_err(req, EIO); // JS failed before it could answer
  }
}

static void dispatch_to(Session *s, fuse_req_t req, int op, fuse_ino_t ino, napi_value a, napi_value b, napi_value c) {
  dispatch_to4(s, req, op, ino, a, b, c, NULL);
}

static void dispatch(fuse_req_t req, int op, fuse_ino_t ino, napi_value a, napi_value b, napi_value c) {
  dispatch_to(fuse_req_userdata(req), req, op, ino, a, b, c);
}

static void dispatch4(fuse_req_t req, int op, fuse_ino_t ino, napi_value a, napi_value b, napi_value c, napi_value d) {
  dispatch_to4(fuse_req_userdata(req), req, op, ino, a, b, c, d);
}

static napi_value num(napi_env env, double v) { napi_value r; napi_create_double(env, v, &r); return r; }
static napi_value latin1(napi_env env, const char *s) { napi_value r; napi_create_string_latin1(env, s, NAPI_AUTO_LENGTH, &r); return r; }

// What INIT learnt, told to JS (on Node's thread).
static void tell_js_init(Session *s) {
  enter_js(s);
  dispatch_to(s, NULL, OP_INIT, 0, num(s->env, atomic_load(&s->init_no_opendir)), num(s->env, s->init_no_open), NULL);
}

// Copy-ups the reader thread ran from plans: JS reads them (llNotes) before any later request.
static void tell_js_notes(Session *s) {
  dispatch_to(s, NULL, OP_NOTES, 0, NULL, NULL, NULL);
}

static void ll_init(void *userdata, struct fuse_conn_info *conn) {
  // READDIRPLUS always (a walk then needs no LOOKUP per entry); symlinks and listings cached
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  conn->want &= ~FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_CACHE_SYMLINKS) conn->want |= FUSE_CAP_CACHE_SYMLINKS;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // requests of up to 1 MiB (libfuse 3 derives the kernel's max_pages from max_write): fewer, larger
  // READs for sequential reads, fewer WRITEs for big writes
  conn->max_readahead = 1 << 20;
  conn->max_write = 1 << 20;
  // tell JS what the kernel offers (it may then answer OPENDIR with ENOSYS: no OPENDIR/RELEASEDIR)
  Session *s = userdata;
  atomic_store(&s->init_no_opendir, (conn->capable & FUSE_CAP_NO_OPENDIR_SUPPORT) ? 1 : 0);
  s->init_no_open = (conn->capable & FUSE_CAP_NO_OPEN_SUPPORT) ? 1 : 0;
  atomic_store(&s->enosys_open, (s->read_only || s->copy_up_at_write) && s->init_no_open);
  // without OPEN the kernel would take an O_TRUNC as done by it (atomic_o_trunc): a SETATTR of the size must come
  if (!s->read_only && s->copy_up_at_write && s->init_no_open) conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  // a writable mount too, where JS can tell a stale listing (see init_no_opendir): a walk then makes
  // one request per directory (its GETATTR) where OPENDIR and RELEASEDIR made three
  if (atomic_load(&s->init_no_opendir) && (s->read_only || atomic_load(&s->planning))) atomic_store(&s->enosys_opendir, 1);
  if (!s->init_on_reader) tell_js_init(s); // else no JS on this thread: on_queued tells it
}

static void ll_lookup(fuse_req_t req, fuse_ino_t parent, const char *name) {
  dispatch(req, OP_LOOKUP, parent, latin1(js_env(req), name), NULL, NULL);
}

static void ll_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  Session *s = fuse_req_userdata(req);
  enter_js(s);
  dispatch_to(s, NULL, OP_FORGET, ino, num(s->env, (double)nlookup), NULL, NULL);
  fuse_reply_none(req);
}

static void ll_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets) {
  Session *s = fuse_req_userdata(req);
  enter_js(s);
  for (size_t i = 0; i < count; i++) dispatch_to(s, NULL, OP_FORGET, forgets[i].ino, num(s->env, (double)forgets[i].nlookup), NULL, NULL);
  fuse_reply_none(req);
}

static void ll_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  dispatch(req, OP_GETATTR, ino, num(js_env(req), fi ? (double)fi->fh : -1), NULL, NULL);
}
static void ll_readlink(fuse_req_t req, fuse_ino_t ino) { dispatch(req, OP_READLINK, ino, NULL, NULL, NULL); }

static void ll_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  Session *s = fuse_req_userdata(req);
  napi_env env = js_env(req);
  dispatch(req, OP_OPEN, ino, num(env, fi->flags), num(env, s->kill_now), NULL);
}

static void ll_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  Session *s = fuse_req_userdata(req);
  pthread_rwlock_rdlock(&s->dlock);
  Direct *d = direct_find(s, fi->fh ? fi->fh : (ino | KEY_BY_NODE));
  if (d) { serve_direct(s, req, d, size, off); pthread_rwlock_unlock(&s->dlock); return; }
  pthread_rwlock_unlock(&s->dlock);
  enter_js(s);
  napi_env env = s->env;
  dispatch(req, OP_READ, ino, num(env, (double)fi->fh), num(env, (double)size), num(env, (double)off));
}

static void ll_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  dispatch(req, OP_RELEASE, ino, num(js_env(req), (double)fi->fh), NULL, NULL);
}

static void ll_opendir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) { dispatch(req, OP_OPENDIR, ino, NULL, NULL, NULL); }

static void ll_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  napi_env env = js_env(req);
  dispatch(req, OP_READDIR, ino, num(env, (double)fi->fh), num(env, (double)size), num(env, (double)off));
}

static void ll_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, struct fuse_file_info *fi) {
  // plain readdir (READDIRPLUS refused by the kernel): the same listing, told apart by a negative size
  napi_env env = js_env(req);
  dispatch(req, OP_READDIR, ino, num(env, (double)fi->fh), num(env, -(double)size), num(env, (double)off));
}

static void ll_releasedir(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) {
  dispatch(req, OP_RELEASEDIR, ino, num(js_env(req), (double)fi->fh), NULL, NULL);
}

static void ll_statfs(fuse_req_t req, fuse_ino_t ino) { dispatch(req, OP_STATFS, ino, NULL, NULL, NULL); }

static void ll_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size) {
  Session *s = fuse_req_userdata(req);
  if (strcmp(name, "security.capability") == 0 && known_without_caps(s, ino)) { fuse_reply_err(req, ENODATA); return; }
  napi_env env = js_env(req);
  dispatch(req, OP_GETXATTR, ino, latin1(env, name), num(env, (double)size), NULL);
}

static void ll_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  dispatch(req, OP_LISTXATTR, ino, num(js_env(req), (double)size), NULL, NULL);
}

static napi_value bytes(napi_env env, const void *data, size_t len) { napi_value r; napi_create_buffer_copy(env, len, data, NULL, &r); return r; }
#define ENV(req) js_env(req)

// setattr: [valid, mode, uid, gid, size, atime, atimensec, mtime, mtimensec, fh or -1]
static void ll_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set, struct fuse_file_info *fi) {
  napi_env env = ENV(req);
  napi_value arr;
  napi_create_array_with_length(env, 10, &arr);
  double v[10] = { to_set, attr->st_mode, attr->st_uid, attr->st_gid, (double)attr->st_size,
    (double)attr->st_atim.tv_sec, attr->st_atim.tv_nsec, (double)attr->st_mtim.tv_sec, attr->st_mtim.tv_nsec, fi ? (double)fi->fh : -1 };
  for (uint32_t i = 0; i < 10; i++) napi_set_element(env, arr, i, num(env, v[i]));
  dispatch(req, OP_SETATTR, ino, arr, NULL, NULL);
}
static void ll_mknod(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, dev_t rdev) {
  napi_env env = ENV(req); dispatch(req, OP_MKNOD, parent, latin1(env, name), num(env, mode), num(env, (double)rdev));
}
static void ll_mkdir(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode) {
  napi_env env = ENV(req); dispatch(req, OP_MKDIR, parent, latin1(env, name), num(env, mode), NULL);
}
static void ll_symlink(fuse_req_t req, const char *link, fuse_ino_t parent, const char *name) {
  napi_env env = ENV(req); dispatch(req, OP_SYMLINK, parent, latin1(env, name), latin1(env, link), NULL);
}
static void ll_link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char *newname) {
  napi_env env = ENV(req); dispatch(req, OP_LINK, ino, num(env, (double)newparent), latin1(env, newname), NULL);
}
static void ll_unlink(fuse_req_t req, fuse_ino_t parent, const char *name) { dispatch(req, OP_UNLINK, parent, latin1(ENV(req), name), NULL, NULL); }
static void ll_rmdir(fuse_req_t req, fuse_ino_t parent, const char *name) { dispatch(req, OP_RMDIR, parent, latin1(ENV(req), name), NULL, NULL); }
static void ll_rename(fuse_req_t req, fuse_ino_t parent, const char *name, fuse_ino_t newparent, const char *newname, unsigned int flags) {
  napi_env env = ENV(req);
  dispatch4(req, OP_RENAME, parent, latin1(env, name), num(env, (double)newparent), latin1(env, newname), num(env, flags));
}
static void ll_create(fuse_req_t req, fuse_ino_t parent, const char *name, mode_t mode, struct fuse_file_info *fi) {
  Session *s = fuse_req_userdata(req);
  napi_env env = ENV(req); dispatch4(req, OP_CREATE, parent, latin1(env, name), num(env, mode), num(env, fi->flags), num(env, s->kill_now));
}
static void ll_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off, struct fuse_file_info *fi) {
  Session *s = fuse_req_userdata(req);
  pthread_rwlock_rdlock(&s->dlock);
  Direct *d = direct_find(s, fi->fh ? fi->fh : (ino | KEY_BY_NODE)); // by node: a mount without OPEN
  if (d && d->writable) {
    const struct fuse_ctx *who = fuse_req_ctx(req);
    int dropped = s->kill_now && drop_setids(d->fd, NULL, who->gid, who->pid) > 0;
    ssize_t done = direct_pwrite(d, buf, size, off);
    pthread_rwlock_unlock(&s->dlock);
    if (dropped) inval_attr(s, ino); // before the reply: the writer's next stat asks again
    if (done < 0) fuse_reply_err(req, (int)-done);
    else fuse_reply_write(req, (size_t)done);
    return;
  }
  pthread_rwlock_unlock(&s->dlock);
  napi_env env = ENV(req);
  dispatch4(req, OP_WRITE, ino, num(env, (double)fi->fh), bytes(env, buf, size), num(env, (double)off), num(env, s->kill_now));
}
// Nothing to do at close: ENOSYS tells the kernel so once, and it sends no FLUSH again.
static void ll_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi) { fuse_reply_err(req, ENOSYS); }
static void ll_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi) {
  napi_env env = ENV(req); dispatch(req, OP_FSYNC, ino, num(env, (double)fi->fh), num(env, datasync), NULL);
}
static void ll_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value, size_t size, int flags) {
  napi_env env = ENV(req); dispatch(req, OP_SETXATTR, ino, latin1(env, name), bytes(env, value, size), num(env, flags));
}
static void ll_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name) { dispatch(req, OP_REMOVEXATTR, ino, latin1(ENV(req), name), NULL, NULL); }

static const struct fuse_lowlevel_ops ops = {
  .init = ll_init, .lookup = ll_lookup, .forget = ll_forget, .forget_multi = ll_forget_multi, .getattr = ll_getattr,
  .readlink = ll_readlink, .open = ll_open, .read = ll_read, .release = ll_release, .opendir = ll_opendir,
  .readdir = ll_readdir, .readdirplus = ll_readdirplus, .releasedir = ll_releasedir, .statfs = ll_statfs,
  .getxattr = ll_getxattr, .listxattr = ll_listxattr,
  .setattr = ll_setattr, .mknod = ll_mknod, .mkdir = ll_mkdir, .symlink = ll_symlink, .link = ll_link, .unlink = ll_unlink,
  .rmdir = ll_rmdir, .rename = ll_rename, .create = ll_create, .write = ll_write, .flush = ll_flush, .fsync = ll_fsync,
  .setxattr = ll_setxattr, .removexattr = ll_removexattr,
};

// ---------------------------------------------------------------- the loop

static void session_end(Session *s) {
  if (s->ended) return;
  s->ended = 1;
  if (s->polling) { uv_poll_stop(&s->poll); s->polling = 0; }
  napi_env env = s->env;
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value fn, undefined, argv[7], self;
  napi_get_reference_value(env, s->dispatch, &fn);
  napi_get_undefined(env, &undefined);
  napi_get_reference_value(env, s->self, &self);
  napi_create_int32(env, OP_DESTROY, &argv[0]);
  for (int i = 1; i < 7; i++) argv[i] = undefined;
  napi_callback_scope cscope;
  napi_open_callback_scope(env, self, s->actx, &cscope);
  napi_call_function(env, undefined, fn, 7, argv, NULL);
  napi_close_callback_scope(env, cscope);
  napi_close_handle_scope(env, scope);
}

// JS scopes are opened only when a request of the batch goes to JS: READs answered in C need none.
static void enter_js(Session *s) {
  if (s->js_open) return;
  s->js_open = 1;
  napi_open_handle_scope(s->env, &s->js_scope);
  napi_value self;
  napi_get_reference_value(s->env, s->self, &self);
  napi_open_callback_scope(s->env, self, s->actx, &s->js_cscope); // promise reactions run when it closes
}

static void leave_js(Session *s) {
  if (!s->js_open) return;
  s->js_open = 0;
  napi_close_callback_scope(s->env, s->js_cscope);
  napi_close_handle_scope(s->env, s->js_scope);
}

// A request handled on Node's thread; its handlers learn from kill_now whether it asks for
// set-user/group-ID bits to go (kills_setids).
static void process_on_node(Session *s, struct fuse_buf *b, size_t len) {
  s->kill_now = !(b->flags & FUSE_BUF_IS_FD) && kills_setids(b->mem, len);
  fuse_session_process_buf(s->se, b);
  s->kill_now = 0;
}

// libfuse 3.14 cannot ask for HANDLE_KILLPRIV_V2 (3.17 can), so its INIT reply is amended on the way
// out. With it the kernel no longer asks for security.capability before every write(2) once it has
// seen a file has none (a round trip per write: 20,000 4 KiB writes took 1.0 s, half of it in
// GETXATTRs), and marks the requests whose set-user/group-ID bits the daemon must drop (drop_setids).
// Capabilities go by themselves: the daemon's own writes, truncations and chowns on the upper file
// drop security.capability whoever runs them.
static ssize_t io_read(int fd, void *buf, size_t len, void *userdata) {
  ssize_t n = read(fd, buf, len);
  const struct kernel_in_header *in = buf;
  if (n >= (ssize_t)(sizeof *in + 4 * sizeof(uint32_t)) && in->opcode == KERNEL_FUSE_INIT) {
    Session *s = userdata;
    const uint32_t *init = (const uint32_t *)(in + 1); // fuse_init_in: major, minor, max_readahead, flags
    s->init_offers_v2 = s->want_v2 && (init[3] & KERNEL_HANDLE_KILLPRIV_V2) != 0;
    atomic_store(&s->init_unique, in->unique);
  }
  return n;
}

static ssize_t io_writev(int fd, struct iovec *iov, int count, void *userdata) {
  Session *s = userdata;
  if (atomic_load(&s->init_unique) && count >= 2 && iov[0].iov_len >= sizeof(struct kernel_out_header)) {
    const struct kernel_out_header *out = iov[0].iov_base;
    if (out->unique == atomic_load(&s->init_unique)) {
      atomic_store(&s->init_unique, 0);
      if (s->init_offers_v2 && out->error == 0 && iov[1].iov_len >= 4 * sizeof(uint32_t)) {
        uint32_t *flags = (uint32_t *)iov[1].iov_base + 3; // fuse_init_out: major, minor, max_readahead, flags
        *flags = (*flags & ~(uint32_t)KERNEL_HANDLE_KILLPRIV) | KERNEL_HANDLE_KILLPRIV_V2;
      }
    }
  }
  return writev(fd, iov, count);
}

// Puts io_read and io_writev between libfuse and /dev/fuse, once the session has its descriptor.
static void use_io_hooks(Session *s) {
  static const struct fuse_custom_io io = { .writev = io_writev, .read = io_read };
  if (fuse_session_custom_io(s->se, &io, fuse_session_fd(s->se)) != 0) s->want_v2 = 0;
}

static void on_readable(uv_poll_t *handle, int status, int events) {
  Session *s = handle->data;
  int end = 0;
  // a batch: requests that are already there, without starving the rest of the loop
  for (int i = 0; i < 64; i++) {
    int res = fuse_session_receive_buf(s->se, &s->buf);
    if (res == -EAGAIN || res == -EINTR) break;
    if (res <= 0) { end = 1; break; }
    process_on_node(s, &s->buf, (size_t)res);
    if (fuse_session_exited(s->se)) { end = 1; break; }
  }
  leave_js(s);
  if (end) session_end(s);
}

// ---------------------------------------------------------------- the reader thread

// A reply that is only a status (0 or -errno), written to /dev/fuse from the reader thread.
static void reply_status(Session *s, uint64_t unique, int32_t error) {
  struct kernel_out_header out = { sizeof out, error, unique };
  while (write(fuse_session_fd(s->se), &out, sizeof out) < 0 && errno == EINTR) {}
}

// A reply with `len` bytes of `arg` (fuse_open_out, fuse_entry_out...), written from the reader thread.
static void reply_arg(Session *s, uint64_t unique, const void *arg, size_t len) {
  struct kernel_out_header out = { sizeof out + (uint32_t)len, 0, unique };
  struct iovec iov[2] = { { &out, sizeof out }, { (void *)arg, len } };
  while (writev(fuse_session_fd(s->se), iov, 2) < 0 && errno == EINTR) {}
}

// Whether the file open at fd has no security.capability (the kernel's check before each write can
// then be answered here: see KEY_NO_CAPS).
static int without_caps(int fd) {
  return fgetxattr(fd, "security.capability", NULL, 0) < 0 && errno == ENODATA;
}

// A handle C opened itself for node `node` (under dlock, written): its READs and WRITEs served here.
static uint64_t native_fh_set(Session *s, uint64_t node, int fd, int writable, int no_caps) {
  uint64_t fh;
  do { fh = NATIVE_FH + (s->native_fh++ & 0x0fffffffULL); } while (direct_find(s, fh));
  direct_set(s, fh, fd, 0, -1, 0, writable)->node = node;
  if (no_caps) direct_set(s, node | KEY_NO_CAPS, -1, 0, 0, -1, 0);
  return fh;
}

// OPEN's answer for the file open at fd: the kernel keeps its page cache (FOPEN_KEEP_CACHE), as JS's
// answers do, unless the file has other names (separate nodes here, whose writes this node's cache
// would not see).
static void reply_open(Session *s, uint64_t unique, uint64_t fh, uint32_t open_flags) {
  struct kernel_open_out oo = { fh, open_flags, 0 };
  reply_arg(s, unique, &oo, sizeof oo);
}

static void reply_open_fh(Session *s, uint64_t unique, uint64_t fh, int fd) {
  struct stat st;
  reply_open(s, unique, fh, fstat(fd, &st) == 0 && st.st_nlink <= 1 ? KERNEL_FOPEN_KEEP_CACHE : 0);
}

// OPEN of a node JS made openable (KEY_OPENABLE): the upper file opened here, its READs and WRITEs
// then answered here too; `kill`: its set-ID bits go with it (kills_setids). 1 if answered; 0 to
// leave it to JS (not openable, the open failed, or the path is another file's now: JS then opens
// it, or says why not).
static int open_native(Session *s, const struct kernel_in_header *in, const struct kernel_open_in *arg, int kill) {
  int flags = (int)arg->flags;
  int writable = (flags & O_ACCMODE) != O_RDONLY;
  if ((flags & O_TRUNC) && !writable) return 0;
  // the path copied out, and the file opened, without the lock: Node's thread reads the table meanwhile
  pthread_rwlock_rdlock(&s->dlock);
  Direct *o = direct_find(s, in->nodeid | KEY_OPENABLE);
  char *path = o ? strdup(o->path) : NULL;
  pthread_rwlock_unlock(&s->dlock);
  if (!path) return 0;
  // O_NONBLOCK: never blocked on a fifo now at the path (as JS's upper opens, upper.ts UPPER_OPEN).
  // Not O_TRUNC: a rename JS began since the table was read may have given the path to another
  // file, which must not lose its data; this one is truncated once it is known to be the node's
  int fd = open(path, (flags & ~(O_CREAT | O_EXCL | O_NOCTTY | O_TRUNC)) | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
  if (fd < 0) { free(path); return 0; }
  struct stat st;
  // the kernel sends OPEN for regular files only: anything else is another file at the path now
  int regular = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
  // JS clears the table when it takes a request that changes a name, before it changes anything:
  // an entry still there after the open means the name stood when the file was opened
  pthread_rwlock_rdlock(&s->dlock);
  o = direct_find(s, in->nodeid | KEY_OPENABLE);
  int stands = o && strcmp(o->path, path) == 0;
  pthread_rwlock_unlock(&s->dlock);
  free(path);
  if (!regular || !stands || ((flags & O_TRUNC) && ftruncate(fd, 0) != 0)) { close(fd); return 0; }
  int dropped = kill && drop_setids(fd, NULL, in->gid, in->pid) > 0; // truncated by a caller without CAP_FSETID
  // as llNoCaps: the kernel asks for security.capability before each write(2)
  int no_caps = writable && without_caps(fd);
  pthread_rwlock_wrlock(&s->dlock);
  uint64_t fh = native_fh_set(s, in->nodeid, fd, writable, no_caps);
  pthread_rwlock_unlock(&s->dlock);
  if (dropped) inval_attr(s, in->nodeid);
  reply_open(s, in->unique, fh, st.st_nlink <= 1 ? KERNEL_FOPEN_KEEP_CACHE : 0);
  return 1;
}

// OPEN for reading of a node whose bytes JS registered by node (a lower tar member: see LOOKUP in
// lowlevel.ts): answered here with handle 0, its READs then served by node as on a read-only mount,
// and its RELEASE answered here too. JS drops the registration when the file is copied up (and
// plan_open does for its own copy-ups): a READ that then finds none goes to JS, which reads the
// node's file as its path now shows it. A lower file's bytes change only by a copy-up, so the kernel
// keeps its page cache.
static int open_by_node(Session *s, const struct kernel_in_header *in, const struct kernel_open_in *arg) {
  if (s->read_only || ((int)arg->flags & O_ACCMODE) != O_RDONLY || ((int)arg->flags & O_TRUNC)) return 0;
  pthread_rwlock_rdlock(&s->dlock);
  Direct *d = direct_find(s, in->nodeid | KEY_BY_NODE);
  int lower = d && d->limit >= 0 && !d->writable;
  pthread_rwlock_unlock(&s->dlock);
  if (!lower) return 0;
  reply_open(s, in->unique, 0, KERNEL_FOPEN_KEEP_CACHE);
  return 1;
}

// Directory handles on a writable mount whose kernel still sends OPENDIR (it lacks
// FUSE_NO_OPENDIR_SUPPORT, or JS does not plan: see init_no_opendir): OPENDIR answered here, with the kernel keeping the listing
// it reads (FOPEN_CACHE_DIR; a change through the mount drops it, and nothing else changes a
// directory of the union), so a warm walk makes no call into JS. A READDIR that comes (nothing
// cached) goes to JS, which makes the listing of the request's node for the handle; the handle is
// then marked (KEY_LISTED) so that its RELEASEDIR goes to JS too. 1 if answered here.
static int open_dir(Session *s, const struct kernel_in_header *in, const char *msg, size_t len) {
  if (s->read_only) return 0;
  if (in->opcode == KERNEL_FUSE_OPENDIR) {
    reply_open(s, in->unique, NATIVE_FH + (s->native_dir_fh++ & 0x0fffffffULL), KERNEL_FOPEN_KEEP_CACHE | KERNEL_FOPEN_CACHE_DIR);
    return 1;
  }
  if (len < sizeof *in + sizeof(uint64_t)) return 0;
  uint64_t fh = *(const uint64_t *)(msg + sizeof *in); // fuse_read_in and fuse_release_in start with it
  if (fh < NATIVE_FH) return 0;
  pthread_rwlock_wrlock(&s->dlock);
  int listed = direct_find(s, fh | KEY_LISTED) != NULL;
  if (in->opcode == KERNEL_FUSE_RELEASEDIR) {
    if (listed) direct_drop(s, fh | KEY_LISTED);
  } else if (!listed) {
    direct_set(s, fh | KEY_LISTED, -1, 0, 0, -1, 0);
  }
  pthread_rwlock_unlock(&s->dlock);
  if (in->opcode != KERNEL_FUSE_RELEASEDIR || listed) return 0;
  reply_status(s, in->unique, 0);
  return 1;
}

// ---------------------------------------------------------------- copy-ups planned by JS

// A first write's copy-up, planned by JS when it answers the LOOKUP of a lower file
// (src/upper/copy-up.ts planNow: the entries to make, parents first, each with everything
// finishEntry needs) and run here when the kernel's OPEN for writing comes: the OPEN then needs no
// call into JavaScript, which on a daemon that has just woken cost more than the syscalls
// (native-notes/fuse-lowlevel.md "First copy-ups run by the reader thread"). A plan is good only
// in the epoch it was made in: every change JS begins or ends moves the epoch on, and none runs
// while a change of JS's is under way. Plans do not change what other plans rely on (the lowers,
// and what JS did): a directory an earlier plan made is there already and is used as it is, and
// nothing is renamed over an existing name. What a plan did waits in a Note for JS (its caches, the
// stats); JS reads the notes before any later request, before it begins a change and before it
// makes a plan.
typedef struct PlanEntry {
  int dir;                  // a directory, else a regular file
  mode_t mode; uid_t uid; gid_t gid;
  struct timespec times[2]; // atime, mtime
  int src_fd; int64_t src_off, size; // a file's bytes, in order (a plain tar member)
  const char *tmp, *real, *parent; // where it is built, where it goes, the directory it goes into
  const char *xattrs; size_t xattrs_len; // name\0, u32 length, value; names as stored
} PlanEntry;

typedef struct Plan {
  struct Plan *next;
  uint64_t node, epoch;
  int caps_gen; // the session's caps_gen when it was made
  uint32_t id;
  size_t n;
  PlanEntry *e;
  char *blob;
} Plan;

typedef struct Note {
  struct Note *next;
  uint64_t id;
  int n, done, err; // entries planned, entries made, the errno that stopped it (0: none); n -1: a
                    // LOOKUP answered here (lookup_pushed) for node `id`; n -2: node `id` went out
                    // in the root's listing (root_readdir); n -3: node `id`'s listing made ahead
                    // went out (ahead_readdir)
  double ns[];      // each entry's time; -1: not made here (an earlier plan had made it)
} Note;

#define PLAN_FIELDS 12 // per entry in llPlan's numbers (see lowlevel.ts planFields)
#define PLANS_KEPT 64

static void plan_free(Plan *p) { if (p) { free(p->e); free(p->blob); free(p); } }

// Queues a request (or a marker: len 0 INIT, len 1 notes) for Node's thread, after those queued
// before, and wakes that thread (queue_note does not).
static void queue_add(Session *s, const void *data, size_t len, int wake) {
  Queued *q = malloc(sizeof *q + len);
  if (!q) return;
  q->next = NULL; q->len = len;
  memcpy(q->data, data, len);
  pthread_mutex_lock(&s->qlock);
  if (s->qtail) s->qtail->next = q; else s->qhead = q;
  s->qtail = q;
  pthread_mutex_unlock(&s->qlock);
  if (wake) uv_async_send(&s->async);
}

static void queue_push(Session *s, const void *data, size_t len) { queue_add(s, data, len, 1); }

// The notes marker, after what C answered itself: JS reads the notes when it next wakes, for a
// request (the marker comes first) or on its own (llNotes: the stats, the unmount). Woken for the
// marker, Node's thread took the CPU from the process the answer woke, on 2 cores, to read them
// (and push what the notes called for) while that process waited: ~150-400 µs of each C answer.
static void queue_note(Session *s) { queue_add(s, "N", 1, 0); }

// Adds a note for JS (under plock).
static void note_add(Session *s, Note *note) {
  if (s->notes_tail) s->notes_tail->next = note; else s->notes = note;
  s->notes_tail = note;
}

// One entry, as CopyUp.finishEntry makes it: built in the work dir (the file with its bytes), owner
// and mode where the work dir gave others, xattrs (those the upper refuses are left out, as JS
// does), times; then renamed into `dir` (the upper directory it goes in, open) and dir's times put
// back. Through descriptors: each path-based call walked the whole upper path again (~5 µs a call).
// The xattr at *at in a plan entry's list (name, NUL, 4-byte length, value): its name, value and
// length, with *at moved past it. 1; 0 at the list's end; -1 where the list is malformed.
static int next_xattr(const PlanEntry *e, size_t *at, const char **name, const char **value, uint32_t *vlen) {
  if (*at >= e->xattrs_len) return 0;
  const char *x = e->xattrs + *at;
  size_t nlen = strnlen(x, e->xattrs_len - *at);
  if (*at + nlen + 5 > e->xattrs_len) return -1;
  memcpy(vlen, x + nlen + 1, 4);
  if (*at + nlen + 5 + *vlen > e->xattrs_len) return -1;
  *name = x;
  *value = x + nlen + 5;
  *at += nlen + 5 + *vlen;
  return 1;
}

// 0 (made), -1 (a directory already there: an earlier plan made it), or an errno; nothing is left
// in the work dir. A directory's descriptor in *made, for the entries below it.
static int plan_entry(Session *s, const PlanEntry *e, int dir, int *made) {
  const char *name = strrchr(e->real, '/') + 1;
  *made = -1;
  struct stat st;
  if (e->dir && fstatat(dir, name, &st, AT_SYMLINK_NOFOLLOW) == 0) {
    if (!S_ISDIR(st.st_mode)) return EEXIST;
    *made = openat(dir, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    return *made < 0 ? errno : -1;
  }
  int fd;
  if (e->dir) {
    if (mkdirat(s->plan_workfd, e->tmp, e->mode & 0777) < 0) return errno;
    fd = openat(s->plan_workfd, e->tmp, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  } else {
    fd = openat(s->plan_workfd, e->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, e->mode & 0777);
  }
  if (fd < 0) { int err = errno; if (e->dir) unlinkat(s->plan_workfd, e->tmp, AT_REMOVEDIR); return err; }
  int err = 0;
  if (!e->dir && e->size > 0) {
    const char *what = "";
    int64_t got = copy_range(e->src_fd, e->src_off, fd, 0, e->size, &what);
    err = got < 0 ? errno : got != e->size ? EIO : 0;
  }
  int chown_needed = 0;
  if (!err) {
    chown_needed = fstat(fd, &st) != 0 || st.st_uid != e->uid || st.st_gid != e->gid;
    if (chown_needed && fchown(fd, e->uid, e->gid) < 0) err = errno;
  }
  // after chown, which clears setuid and setgid
  if (!err && (chown_needed || (st.st_mode & 07777) != (e->mode & 07777)) && fchmod(fd, e->mode & 07777) < 0) err = errno;
  const char *xname, *xvalue;
  uint32_t vlen;
  for (size_t at = 0; !err;) {
    int got = next_xattr(e, &at, &xname, &xvalue, &vlen);
    if (got <= 0) { if (got < 0) err = EINVAL; break; }
    fsetxattr(fd, xname, xvalue, vlen, 0); // refused (security.*, trusted.*): usable without it
  }
  if (!err && futimens(fd, e->times) < 0) err = errno;
  struct stat ps;
  int known = !err && fstat(dir, &ps) == 0;
  // never over anything: a file there is not ours to replace
  if (!err && renameat2(s->plan_workfd, e->tmp, dir, name, RENAME_NOREPLACE) < 0) err = errno;
  if (err) {
    close(fd);
    unlinkat(s->plan_workfd, e->tmp, e->dir ? AT_REMOVEDIR : 0);
    return err;
  }
  if (known) {
    struct timespec pt[2] = { ps.st_atim, ps.st_mtim };
    futimens(dir, pt);
  }
  if (e->dir) *made = fd; else close(fd);
  return 0;
}

// Runs the copy-up JS planned for `node` and opens its upper file with `flags`: the descriptor, with
// the upper file's path in *real (malloc'd); -1 where nothing was done (no plan, a stale one), -2
// where a step failed. Where it ran (a descriptor or -2) the caller then queues its note
// (queue_note) once it has answered: the marker goes ahead of every later request, and of this one
// if JS answers it.
static int plan_run(Session *s, uint64_t node, int flags, char **real) {
  *real = NULL;
  if (s->plan_workfd < 0) return -1;
  pthread_mutex_lock(&s->plock);
  Plan **pp = &s->plans;
  while (*pp && (*pp)->node != node) pp = &(*pp)->next;
  Plan *p = *pp;
  if (!p || p->epoch != s->epoch || s->busy > 0) { pthread_mutex_unlock(&s->plock); return -1; }
  s->attr_epoch++; // a copy-up: the attributes C holds (answer_getattr) may be the file's or its directories'
  *pp = p->next;
  s->nplans--;
  Note *note = calloc(1, sizeof *note + p->n * sizeof(double));
  size_t done = 0;
  int dir = open(p->e[0].parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  int err = dir < 0 ? errno : 0;
  for (; !err && done < p->n; done++) {
    int64_t t0 = now_ns();
    int made;
    int r = plan_entry(s, &p->e[done], dir, &made);
    if (note) note->ns[done] = r == 0 ? (double)(now_ns() - t0) : -1; // -1: not made here
    if (r > 0) { err = r; break; }
    if (made >= 0) { close(dir); dir = made; }
  }
  int fd = -1;
  if (!err) {
    fd = openat(dir, strrchr(p->e[p->n - 1].real, '/') + 1, (flags & ~(O_CREAT | O_EXCL | O_NOCTTY)) | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) err = errno;
  }
  if (dir >= 0) close(dir);
  if (note) {
    note->id = p->id; note->n = (int)p->n; note->done = (int)done; note->err = err;
    note_add(s, note);
    s->plan_notes++;
  }
  pthread_mutex_unlock(&s->plock);
  if (fd >= 0) *real = strdup(p->e[p->n - 1].real);
  plan_free(p);
  return fd >= 0 ? fd : -2;
}

// OPEN for writing (not O_TRUNC) of a node JS planned a copy-up for: the plan run, the upper file
// opened here as open_native does. 1 if answered; 0 to leave the OPEN to JS (no plan, a stale one,
// or a step failed: JS then reads the note first, and copies or says why not).
static int plan_open(Session *s, const struct kernel_in_header *in, const struct kernel_open_in *arg) {
  int flags = (int)arg->flags;
  if ((flags & O_ACCMODE) == O_RDONLY || (flags & O_TRUNC)) return 0;
  char *path;
  int fd = plan_run(s, in->nodeid, flags, &path);
  if (fd < 0) {
    if (fd == -2) queue_note(s);
    return 0;
  }
  int no_caps = without_caps(fd);
  pthread_rwlock_wrlock(&s->dlock);
  direct_drop(s, in->nodeid | KEY_BY_NODE); // its lower bytes: the node's READs by node go to JS now
  uint64_t fh = native_fh_set(s, in->nodeid, fd, 1, no_caps);
  // its next OPENs as a file in the upper (as JS's openable() would say after its own copy-up)
  if (path) direct_set(s, in->nodeid | KEY_OPENABLE, -1, 0, 0, -1, 0)->path = path;
  pthread_rwlock_unlock(&s->dlock);
  reply_open_fh(s, in->unique, fh, fd);
  queue_note(s);
  return 1;
}

// Whether node's current plan says its file has no security.capability (the kernel asks before
// the first write to a file, which on a mount without OPEN is the one that copies it up; with
// OPEN, plan_open's upper file tells, see KEY_NO_CAPS).
static int planned_without_caps(Session *s, uint64_t node) {
  int none = 0;
  pthread_mutex_lock(&s->plock);
  for (Plan *p = s->plans; p; p = p->next) {
    if (p->node != node) continue;
    if (p->epoch != s->epoch || p->caps_gen != atomic_load(&s->caps_gen)) break;
    const char *xname, *xvalue;
    uint32_t vlen;
    size_t at = 0;
    int got;
    while ((got = next_xattr(&p->e[p->n - 1], &at, &xname, &xvalue, &vlen)) > 0 && strcmp(xname, "security.capability") != 0) {}
    none = got == 0; // the whole list read, no capability in it
    break;
  }
  pthread_mutex_unlock(&s->plock);
  return none;
}

// A WRITE by node (a mount that copies up at the first write: no OPEN) of a node with no upper
// file to write yet, whose copy-up JS planned: the plan run here, and the upper file, opened for
// reading and writing, then serves the node's READs and WRITEs by node (answer_direct goes on to
// answer this one), closed when the entry goes. 1 if so; 0 where no plan ran (JS copies up at the
// WRITE).
static int plan_write(Session *s, uint64_t node) {
  char *path;
  int fd = plan_run(s, node, O_RDWR, &path);
  free(path);
  if (fd >= 0) {
    int no_caps = without_caps(fd);
    pthread_rwlock_wrlock(&s->dlock);
    direct_set(s, node | KEY_BY_NODE, fd, 0, -1, 0, 1)->owned = 1; // replaces its lower bytes' entry
    if (no_caps) direct_set(s, node | KEY_NO_CAPS, -1, 0, 0, -1, 0); // as native_fh_set
    pthread_rwlock_unlock(&s->dlock);
  }
  // ahead of the WRITE's answer: JS learns of the copy-up before the writer's next request
  if (fd != -1) queue_note(s);
  return fd >= 0;
}

// ---------------------------------------------------------------- LOOKUPs answered ahead

// When JS answers the LOOKUP of a directory that lies in one lower layer, it also pushes the
// answers for the regular files and the subdirectories in it, and for the files in those (llPush),
// with the files' copy-ups planned: the kernel's LOOKUPs of them, and then a file's OPEN for
// writing, are answered here without a call into JavaScript
// (a first write to a file whose directory is known: ~100-170 µs of JS on a daemon that has just
// woken; fuse-overlayfs answers it from its own cache in ~10). An answer is good in the epoch it was
// pushed in, once (the kernel then holds the node, and JS learns of it from a note before any later
// request); none is given while a change of JS's is under way.
typedef struct Pushed {
  struct Pushed *next;
  uint64_t parent;
  struct kernel_entry_out entry;
  char name[];
} Pushed;

#define PUSHED_BUCKETS 1024

static size_t pushed_slot(uint64_t parent, const char *name) {
  uint64_t h = parent * 0x9e3779b97f4a7c15ULL;
  for (const unsigned char *c = (const unsigned char *)name; *c; c++) h = (h ^ *c) * 0x100000001b3ULL;
  return (size_t)(h ^ (h >> 29)) & (PUSHED_BUCKETS - 1);
}

static void pushed_clear(Session *s) {
  if (!s->pushed) return;
  for (size_t i = 0; i < PUSHED_BUCKETS; i++) for (Pushed *p = s->pushed[i], *n; p; p = n) { n = p->next; free(p); }
  memset(s->pushed, 0, PUSHED_BUCKETS * sizeof *s->pushed);
}

// The pushed answer for LOOKUP(parent, name), taken out of the table (under plock); NULL if none.
static Pushed *pushed_take(Session *s, uint64_t parent, const char *name) {
  if (!s->pushed) return NULL;
  for (Pushed **q = &s->pushed[pushed_slot(parent, name)]; *q; q = &(*q)->next) {
    if ((*q)->parent == parent && strcmp((*q)->name, name) == 0) { Pushed *p = *q; *q = p->next; return p; }
  }
  return NULL;
}

static void pushed_remove(Session *s, uint64_t parent, const char *name) { free(pushed_take(s, parent, name)); }

// LOOKUP of a name JS pushed: answered from it. 1 if answered; 0 to leave it to JS.
static int lookup_pushed(Session *s, const struct kernel_in_header *in, const char *name, size_t len) {
  if (!s->pushed || len == 0 || name[len - 1] != 0) return 0;
  Note *note = calloc(1, sizeof *note);
  if (!note) return 0;
  pthread_mutex_lock(&s->plock);
  Pushed *p = s->busy == 0 && s->push_epoch == s->epoch ? pushed_take(s, in->nodeid, name) : NULL;
  if (!p) { pthread_mutex_unlock(&s->plock); free(note); return 0; }
  note->id = p->entry.nodeid; note->n = -1;
  note_add(s, note);
  pthread_mutex_unlock(&s->plock);
  reply_arg(s, in->unique, &p->entry, sizeof p->entry);
  queue_note(s); // JS counts the lookup before any later request (a FORGET of it among them)
  free(p);
  return 1;
}

// The kernel's first GETATTR of the root, from what JS gave at mount (llRootAttr): the first `ls`
// or path walk of a fresh mount asks it (default_permissions needs the root's mode), and Node's
// thread, woken for it, answered in ~300-500 µs where a reader thread answers in ~10 µs. Once, and
// only while no change has begun since (llChange drops it): later ones are JS's.
static int root_getattr(Session *s, const struct kernel_in_header *in) {
  struct kernel_attr_out out;
  pthread_mutex_lock(&s->plock);
  struct kernel_attr_out *a = s->busy == 0 ? s->root_attr : NULL;
  if (a) { out = *a; free(a); s->root_attr = NULL; }
  pthread_mutex_unlock(&s->plock);
  if (!a) return 0;
  reply_arg(s, in->unique, &out, sizeof out);
  return 1;
}

static struct kernel_attr kernel_attr_of(const double *a);

// READDIRPLUS records of a listing's n entries (names[i], node ids[i] (0: none), attributes, offset
// offs[i], else i + 1), as the kernel reads them; each record's start in at[i] and the end in
// at[n]. NULL if a name is not one (or no memory).
static char *dirplus_records(napi_env env, napi_value names, uint32_t n, const double *ids, const double *attrs,
                             uint64_t timeout, const double *offs, size_t *at) {
  char *buf = malloc((size_t)n * (sizeof(struct kernel_entry_out) + sizeof(struct kernel_dirent) + 264) + 1);
  if (!buf) return NULL;
  size_t used = 0;
  for (uint32_t i = 0; i < n; i++) {
    char name[256]; size_t len = 0;
    napi_value v;
    if (napi_get_element(env, names, i, &v) != napi_ok || napi_get_value_string_latin1(env, v, name, sizeof name, &len) != napi_ok
        || len == 0 || len >= sizeof name - 1) { free(buf); return NULL; }
    at[i] = used;
    struct kernel_entry_out e = { .nodeid = (uint64_t)ids[i], .generation = 1, .entry_valid = timeout, .attr_valid = timeout,
                                  .attr = kernel_attr_of(attrs + (size_t)i * A_COUNT) };
    struct kernel_dirent d = { .ino = e.attr.ino, .off = offs ? (uint64_t)offs[i] : i + 1, .namelen = (uint32_t)len,
                               .type = (e.attr.mode & 0170000) >> 12 };
    size_t rec = (sizeof e + sizeof d + len + 7) & ~(size_t)7;
    memset(buf + used, 0, rec);
    memcpy(buf + used, &e, sizeof e);
    memcpy(buf + used + sizeof e, &d, sizeof d);
    memcpy(buf + used + sizeof e + sizeof d, name, len);
    used += rec;
  }
  at[n] = used;
  return buf;
}

// The root's listing, given by JS at mount (llRootList) as READDIRPLUS records: the first `ls` of a
// fresh read-only mount is then answered without Node's thread, which, woken for it, took ~400-700
// µs to answer where the reader thread takes ~10. Each entry goes out once (its node's lookup, which
// the kernel then holds, reaches JS in a note), in order from the first: a READDIRPLUS of the root
// at any other place goes to JS and ends it, since JS's own answer may drop the nodes of entries it
// has no room for. Once all went out, the end of the listing is answered here as often as asked:
// only where nothing changes (read-only, no OPENDIR).
typedef struct RootList {
  uint32_t n, next; // entries; the next to go out (the offset the kernel continues at)
  int ended;        // all went out: only the end is answered
  uint64_t *ids;    // each entry's node (0: "." and "..")
  size_t *at;       // each entry's record in buf, and the end (n + 1)
  char *buf;
} RootList;

static void root_list_free(RootList *l) { if (l) { free(l->ids); free(l->at); free(l->buf); free(l); } }

static int root_readdir(Session *s, const struct kernel_in_header *in, const struct kernel_rw_in *arg) {
  if (!s->read_only || !atomic_load(&s->enosys_opendir)) return 0;
  pthread_mutex_lock(&s->plock);
  RootList *l = s->busy == 0 ? s->root_list : NULL;
  if (!l || arg->offset != l->next || (l->ended ? 0 : arg->size < l->at[l->next + 1] - l->at[l->next])) {
    if (l && !l->ended) { root_list_free(l); s->root_list = NULL; } // to JS from here on
    pthread_mutex_unlock(&s->plock);
    return 0;
  }
  uint32_t first = l->next, end = first;
  while (!l->ended && end < l->n && l->at[end + 1] - l->at[first] <= arg->size) {
    if (l->ids[end]) {
      Note *note = calloc(1, sizeof *note);
      if (!note) break;
      note->id = l->ids[end]; note->n = -2;
      note_add(s, note);
    }
    end++;
  }
  l->next = end;
  if (end == l->n) l->ended = 1;
  reply_arg(s, in->unique, l->buf + l->at[first], l->at[end] - l->at[first]); // under plock: JS may drop the list
  pthread_mutex_unlock(&s->plock);
  if (end > first) queue_note(s); // JS counts the lookups before any later request
  return 1;
}

// GETATTR of a node JS gave the attributes of (llAttrs): an entry that lies in the lower layers
// alone (a tar member or directory nothing has copied up), whose attributes change only through a
// change made through the mount. On a writable mount the kernel asks again for a directory after
// each listing of it and for a file after each read (their atime went stale), so a warm walk or
// read of a tree asks once per entry: each a wake of Node's thread (~100 µs), fuse-overlayfs's
// ~15 µs. Entries are good while no change of JS's is under way and none began since they were
// given (attr_epoch: every change moves it, begun or ended, and so does a copy-up C runs itself).
typedef struct AttrEntry { struct AttrEntry *next; uint64_t node; struct kernel_attr_out out; } AttrEntry;
#define ATTR_BUCKETS 4096

static void attrs_clear(Session *s) {
  if (!s->attrs) return;
  for (size_t i = 0; i < ATTR_BUCKETS; i++) for (AttrEntry *a = s->attrs[i], *n; a; a = n) { n = a->next; free(a); }
  memset(s->attrs, 0, ATTR_BUCKETS * sizeof *s->attrs);
}

static AttrEntry **attr_slot(Session *s, uint64_t node) {
  AttrEntry **q = &s->attrs[(node * 0x9e3779b97f4a7c15ULL >> 40) & (ATTR_BUCKETS - 1)];
  while (*q && (*q)->node != node) q = &(*q)->next;
  return q;
}

// Whether what JS read in attribute epoch `epoch` still holds: no change of JS's under way, none
// begun since, no copy-up C ran that JS has not read of (plan notes). Under plock.
static int attr_epoch_stands(const Session *s, uint64_t epoch) {
  return s->busy == 0 && !s->plan_notes && epoch == s->attr_epoch;
}

// The end of a listing JS gave out whole: after the READDIR reply that held its last entries the
// kernel asks once more, at the last entry's offset, and gets nothing. Answered here, a cold walk
// does not wait for Node's thread for half of its READDIRs. JS registers the end in its reply
// (llReplyDir), before the reply goes out; a slot per directory hash, used once; on a writable
// mount only while the attribute epoch the listing was begun in stands (a change moves it).
typedef struct DirEnd { uint64_t node, off, epoch; } DirEnd;
#define DIR_ENDS 256
static DirEnd *dir_end_slot(Session *s, uint64_t node) { return &s->dir_ends[(node * 0x9e3779b97f4a7c15ULL >> 40) & (DIR_ENDS - 1)]; }

// Registers the end of node's listing at offset `off`, read in `epoch`. Under plock.
static void dir_end_set(Session *s, uint64_t node, uint64_t off, uint64_t epoch) {
  if (!s->dir_ends) s->dir_ends = calloc(DIR_ENDS, sizeof *s->dir_ends);
  if (s->dir_ends) *dir_end_slot(s, node) = (DirEnd){ node, off, epoch };
}

static int dir_end(Session *s, const struct kernel_in_header *in, const struct kernel_rw_in *arg) {
  if (arg->fh != 0) return 0; // listings by node only (no OPENDIR)
  pthread_mutex_lock(&s->plock);
  DirEnd *e = s->dir_ends ? dir_end_slot(s, in->nodeid) : NULL;
  int hit = e && e->node == in->nodeid && e->off == arg->offset
            && (s->read_only || attr_epoch_stands(s, e->epoch));
  if (e && e->node == in->nodeid) e->node = 0;
  pthread_mutex_unlock(&s->plock);
  if (hit) reply_status(s, in->unique, 0);
  return hit;
}

// Listings JS made ahead of the kernel's asking (llAhead): after it answers a READDIRPLUS itself, JS
// lists the subdirectories in the order a walk takes them (depth first) while the walker works, and
// gives each listing here whole, by node, with its records ready. The READDIRPLUS of such a
// directory at its start, if the whole listing fits, is then answered on the reader thread: a cold
// `find` waited for Node's thread at every directory (~300-600 µs each, fuse tracepoints), most of
// it JavaScript that can as well run while the walker is busy. Each goes out once; its entries'
// lookups, which the kernel then holds, reach JS in one note. On a writable mount only while the
// attribute epoch it was made in stands. Anything else goes to JS, which takes the listing back.
typedef struct Ahead { struct Ahead *next; uint64_t node, epoch, end_off; size_t len; char *buf; } Ahead;
static void ahead_free(Ahead *a) { if (a) { free(a->buf); free(a); } }
#define AHEAD_BUCKETS 1024
static Ahead **ahead_slot(Session *s, uint64_t node) {
  Ahead **q = &s->ahead[(node * 0x9e3779b97f4a7c15ULL >> 40) & (AHEAD_BUCKETS - 1)];
  while (*q && (*q)->node != node) q = &(*q)->next;
  return q;
}

// Takes node's listing out of the table (NULL: none). Under plock.
static Ahead *ahead_take(Session *s, uint64_t node) {
  if (!s->ahead) return NULL;
  Ahead **q = ahead_slot(s, node), *a = *q;
  if (a) { *q = a->next; s->ahead_count--; }
  return a;
}

static void ahead_clear(Session *s) {
  for (size_t i = 0; s->ahead && i < AHEAD_BUCKETS; i++) for (Ahead *a = s->ahead[i], *n; a; a = n) { n = a->next; ahead_free(a); }
  if (s->ahead) memset(s->ahead, 0, AHEAD_BUCKETS * sizeof *s->ahead);
  s->ahead_count = 0;
}

static int ahead_readdir(Session *s, const struct kernel_in_header *in, const struct kernel_rw_in *arg) {
  if (arg->fh != 0 || arg->offset != 0 || !s->ahead || !atomic_load(&s->enosys_opendir)) return 0;
  Note *note = calloc(1, sizeof *note);
  if (!note) return 0;
  pthread_mutex_lock(&s->plock);
  Ahead *a = *ahead_slot(s, in->nodeid);
  if (!a || a->len > arg->size || !(s->read_only || attr_epoch_stands(s, a->epoch))) {
    pthread_mutex_unlock(&s->plock);
    free(note);
    return 0;
  }
  ahead_take(s, a->node);
  note->id = a->node; note->n = -3;
  note_add(s, note);
  dir_end_set(s, a->node, a->end_off, a->epoch);
  int wake = s->ahead_low > 0 && s->ahead_count <= s->ahead_low;
  if (wake) s->ahead_low = 0;
  pthread_mutex_unlock(&s->plock);
  reply_arg(s, in->unique, a->buf, a->len);
  ahead_free(a);
  queue_add(s, "N", 1, wake); // JS counts the lookups before any later request; woken to list more
  return 1;
}

// GETATTR of a node whose upper file is open by node for writing (plan_write's, or JS's for a first
// write it copied up): that file's attributes, as LayerFs gives an upper file's (its inode number in
// the upper's space, blksize 4096), from fstat. The kernel asks for them after a write, at the next
// open from another process (its mode went stale): JS answered after a wake of Node's thread and,
// after a copy-up C ran, a walk of the path in the upper again (~1.4 ms of a second `printf >>` in
// a new shell, fuse tracepoints; fuse-overlayfs ~70 µs). The descriptor is the node's own file
// whatever happened to its name since: a rename keeps it, an unlink leaves it at nlink 0, as JS's
// answer through the handle it keeps (goneStat). Only a file of one name keeps the timeout.
static int upper_getattr(Session *s, const struct kernel_in_header *in) {
  uint64_t ino_base = atomic_load(&s->upper_ino_base);
  if (!ino_base) return 0;
  struct stat st;
  pthread_rwlock_rdlock(&s->dlock); // the entry's descriptor stays open meanwhile
  Direct *d = direct_find(s, in->nodeid | KEY_BY_NODE);
  int ok = d && d->writable && d->base == 0 && d->limit < 0 && fstat(d->fd, &st) == 0 && S_ISREG(st.st_mode);
  pthread_rwlock_unlock(&s->dlock);
  if (!ok) return 0;
  double valid = st.st_nlink == 1 ? atomic_load(&s->upper_attr_valid) : 0;
  struct kernel_attr_out out = {
    .attr_valid = (uint64_t)valid, .attr_valid_nsec = (uint32_t)((valid - (double)(uint64_t)valid) * 1e9),
    .attr = {
      .ino = ino_base + (st.st_ino ? (uint64_t)st.st_ino : 1), .size = (uint64_t)st.st_size,
      .blocks = (uint64_t)st.st_blocks, .atime = (uint64_t)st.st_atim.tv_sec, .mtime = (uint64_t)st.st_mtim.tv_sec,
      .ctime = (uint64_t)st.st_ctim.tv_sec, .atimensec = (uint32_t)st.st_atim.tv_nsec, .mtimensec = (uint32_t)st.st_mtim.tv_nsec,
      .ctimensec = (uint32_t)st.st_ctim.tv_nsec, .mode = st.st_mode, .nlink = (uint32_t)st.st_nlink, .uid = st.st_uid,
      .gid = st.st_gid, .rdev = (uint32_t)st.st_rdev, .blksize = 4096,
    },
  };
  reply_arg(s, in->unique, &out, sizeof out);
  return 1;
}

static int answer_getattr(Session *s, const struct kernel_in_header *in) {
  if (!s->attrs) return upper_getattr(s, in);
  pthread_mutex_lock(&s->plock);
  AttrEntry *a = attr_epoch_stands(s, s->attrs_epoch) ? *attr_slot(s, in->nodeid) : NULL;
  struct kernel_attr_out out;
  if (a) out = a->out;
  pthread_mutex_unlock(&s->plock);
  if (!a) return upper_getattr(s, in);
  reply_arg(s, in->unique, &out, sizeof out);
  return 1;
}

// STATFS (`df`, and `find` once per run): what the filesystem under the upper dir (or the top layer)
// reports, as JS's LayerFs.statfs says it, without a trip through Node's thread pool (0.4 ms).
static int answer_statfs(Session *s, const struct kernel_in_header *in) {
  struct statfs st;
  if (s->statfs_fd < 0 || fstatfs(s->statfs_fd, &st) != 0) return 0;
  struct kernel_statfs_out out = {
    .blocks = st.f_blocks, .bfree = st.f_bfree, .bavail = st.f_bavail, .files = st.f_files, .ffree = st.f_ffree,
    .bsize = (uint32_t)st.f_bsize, .namelen = 255, .frsize = (uint32_t)st.f_bsize,
  };
  reply_arg(s, in->unique, &out, sizeof out);
  return 1;
}

// Random reads of immutable files. The kernel reads a single page for a read it takes for random
// (no readahead), so a program reading a big lower file here and there pays a request per 4 KiB
// page. On a read-only mount nothing changes a file's bytes, so after answering such a READ the
// window of store_window bytes around it is pushed into the kernel's page cache for the node
// (FUSE_NOTIFY_STORE): later reads near it need no request. A thread of its own does it: the store
// waits for any page the kernel has locked for a READ still queued, which only the reader answers.
#define STORE_QUEUE 64
#define KERNEL_FUSE_NOTIFY_STORE 4
// A job reads its bytes from a registered descriptor (key, serial) or carries them (data, from JS:
// a gzip member's window it inflated; malloc'd, the storer frees it).
typedef struct StoreJob { uint64_t key, serial, node; int64_t off; uint32_t size; int layer; char *data; } StoreJob;
struct kernel_notify_store_out { uint64_t nodeid, offset; uint32_t size, padding; };

static void *storer_main(void *arg) {
  Session *s = arg;
  sigset_t mask;
  sigfillset(&mask);
  pthread_sigmask(SIG_SETMASK, &mask, NULL);
  for (;;) {
    pthread_mutex_lock(&s->slock);
    while (s->sq_head == s->sq_tail && !s->storer_stop) pthread_cond_wait(&s->scond, &s->slock);
    if (s->storer_stop) { pthread_mutex_unlock(&s->slock); break; }
    StoreJob job = s->sq[s->sq_head++ % STORE_QUEUE];
    pthread_mutex_unlock(&s->slock);
    ssize_t got;
    const char *bytes = job.data;
    pthread_rwlock_rdlock(&s->dlock); // the descriptor stays open while it is read
    if (bytes) got = job.size;
    else {
      Direct *d = direct_find(s, job.key);
      if (d && d->serial != job.serial) d = NULL; // released since, and the number given to another file
      got = d ? direct_pread(d, &s->sbuf, &s->scap, job.size, job.off) : -ENOENT;
      bytes = s->sbuf;
      job.layer = d ? d->layer : -1;
    }
    if (got > 0 && job.layer >= 0 && (size_t)job.layer < s->nlayers) {
      atomic_fetch_add(&s->layer_counts[LAYER_COUNTS * job.layer + 2], 1);
      atomic_fetch_add(&s->layer_counts[LAYER_COUNTS * job.layer + 3], got);
    }
    pthread_rwlock_unlock(&s->dlock);
    if (got > 0) {
      struct kernel_notify_store_out st = { job.node, (uint64_t)job.off, (uint32_t)got, 0 };
      struct kernel_out_header out = { (uint32_t)(sizeof out + sizeof st + (size_t)got), KERNEL_FUSE_NOTIFY_STORE, 0 };
      struct iovec iov[3] = { { &out, sizeof out }, { &st, sizeof st }, { (void *)bytes, (size_t)got } };
      // ENOENT: the kernel no longer has the node; anything else: the mount is going
      while (writev(fuse_session_fd(s->se), iov, 3) < 0 && errno == EINTR) {}
    }
    free(job.data);
  }
  return NULL;
}

// Hands a job to the storer, started at the first; dropped (its data freed) when the storer is
// behind or stopped.
static void store_queue(Session *s, StoreJob job) {
  pthread_mutex_lock(&s->slock);
  if (!s->storer_started && !s->storer_stop) {
    s->sq = calloc(STORE_QUEUE, sizeof *s->sq);
    s->storer_started = s->sq && pthread_create(&s->storer, NULL, storer_main, s) == 0;
    if (!s->storer_started) s->store_window = 0;
  }
  int queued = !s->storer_stop && s->storer_started && s->sq_tail - s->sq_head < STORE_QUEUE;
  if (queued) {
    s->sq[s->sq_tail++ % STORE_QUEUE] = job;
    pthread_cond_signal(&s->scond);
  }
  pthread_mutex_unlock(&s->slock);
  if (!queued) free(job.data);
}

// After a READ of `size` bytes at `off` from d (under dlock, on the thread answering it): queues
// the window around it if the read looks random (small, not where the last one ended, not at the
// start: the kernel reads ahead for those itself) and the file is big enough for a window to
// bring more than the read did.
static void want_store(Session *s, Direct *d, uint64_t node, uint32_t size, int64_t off, ssize_t got) {
  int64_t end = off + (got > 0 ? got : 0), last = d->read_end;
  d->read_end = end;
  uint32_t w = s->store_window;
  if (!w || !s->read_only || d->limit < 2 * (int64_t)w || got <= 0 || size >= w || off == 0 || off == last) return;
  int64_t from = off & ~(int64_t)(w - 1);
  if (from == d->stored_from) return;
  d->stored_from = from;
  store_queue(s, (StoreJob){ d->key, d->serial, node, from, (uint32_t)(d->limit - from < w ? d->limit - from : w), d->layer, NULL });
}

static void stop_storer(Session *s) {
  pthread_mutex_lock(&s->slock);
  s->storer_stop = 1;
  int started = s->storer_started;
  pthread_cond_signal(&s->scond);
  pthread_mutex_unlock(&s->slock);
  if (started) pthread_join(s->storer, NULL);
  s->storer_started = 0;
  for (; s->sq && s->sq_head != s->sq_tail; s->sq_head++) free(s->sq[s->sq_head % STORE_QUEUE].data);
  free(s->sq); s->sq = NULL;
  free(s->sbuf); s->sbuf = NULL;
}

// A READ of a file (a tar member, a lower or an upper file) answered by splice: its pages
// go into a pipe of the reader's and from there into /dev/fuse, so the bytes are copied once (into
// the kernel's page) where pread and writev copied them twice; fuse-overlayfs answers reads so too.
// A cold 1 GiB read, 128 KiB a READ: median 45 -> 27 µs a READ. Small reads keep pread and writev:
// 3 system calls (header, file, out) against 2 cost more than a copy of a few KiB saves.
#define SPLICE_READ_MIN (32 << 10)
// -1 until first needed, and again after an error that may have left bytes in it.
static __thread int reply_pipe[2] = { -1, -1 };
static __thread size_t reply_pipe_slots;

static void drop_reply_pipe(void) {
  if (reply_pipe[0] >= 0) { close(reply_pipe[0]); close(reply_pipe[1]); }
  reply_pipe[0] = reply_pipe[1] = -1;
}

// Fills the pipe with the reply to READ `unique`: its header, then `want` bytes of d at `off` (the
// caller clamped `want` to the file's end). 1 if the pipe holds all of it, 0 if not (then the pipe
// is empty or dropped, and nothing was sent). Under dlock: d's descriptor stays open meanwhile.
static int splice_read_fill(Direct *d, uint64_t unique, size_t want, off_t off) {
  if (reply_pipe[0] < 0) {
    // non-blocking: a full pipe (which the slot count below rules out) fails instead of hanging
    if (pipe2(reply_pipe, O_CLOEXEC | O_NONBLOCK) < 0) return 0;
    int size = fcntl(reply_pipe[1], F_SETPIPE_SZ, 1 << 20); // pipe-max-size's default; 128 KiB would do for readahead
    if (size < 0) size = fcntl(reply_pipe[1], F_GETPIPE_SZ);
    reply_pipe_slots = size > 0 ? (size_t)size / 4096 : 16;
  }
  // a pipe slot per page touched (splice cuts at page boundaries), one for the header
  int64_t start = d->base + off;
  if ((size_t)((start + (int64_t)want - 1) / 4096 - start / 4096 + 2) > reply_pipe_slots) return 0;
  struct kernel_out_header out = { (uint32_t)(sizeof out + want), 0, unique };
  if (write(reply_pipe[1], &out, sizeof out) != (ssize_t)sizeof out) { drop_reply_pipe(); return 0; }
  size_t held = 0;
  while (held < want) {
    loff_t pos = start + (loff_t)held;
    ssize_t n = splice(d->fd, &pos, reply_pipe[1], NULL, want - held, 0); // (the pipe's O_NONBLOCK holds)
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break; // the file shrank, or cannot be spliced (EINVAL): pread then
    held += (size_t)n;
  }
  if (held < want) { drop_reply_pipe(); return 0; }
  return 1;
}

// Sends what splice_read_fill put in the pipe, `len` bytes. 1 if sent or the request is gone
// (ENOENT: interrupted, as a writev would find), 0 if /dev/fuse refused it (nothing answered).
static int splice_read_send(Session *s, size_t len) {
  ssize_t sent;
  while ((sent = splice(reply_pipe[0], NULL, fuse_session_fd(s->se), NULL, len, 0)) < 0 && errno == EINTR) {}
  if (sent == (ssize_t)len) return 1;
  int gone = sent < 0 && errno == ENOENT;
  drop_reply_pipe(); // it may hold what was not taken
  return gone;
}

// A request answered on the reader thread where it can be, straight from the request bytes (libfuse
// is not involved: no request object): those the functions above answer, then a direct READ or
// WRITE (pread or pwrite, then the reply written to /dev/fuse). 1 if answered, 0 if not (it then
// goes to Node's thread).
static int answer_direct(Session *s, const char *msg, size_t len) {
  const struct kernel_in_header *in = (const void *)msg;
  // READ, WRITE, READDIR and READDIRPLUS start with it
  const struct kernel_rw_in *rw = len >= sizeof *in + sizeof(struct kernel_rw_in) ? (const void *)(msg + sizeof *in) : NULL;
  // STATX (Linux 6.6+), which libfuse 3.14 does not know: the kernel asks it first for a stat(2)
  // whose attributes it lacks, and after ENOSYS uses GETATTR for the rest of the mount. Answered
  // here, a fresh mount's first `ls` or `stat` does not wait for Node's thread for it
  if (in->opcode == KERNEL_FUSE_STATX || in->opcode == KERNEL_FUSE_FLUSH || (in->opcode == KERNEL_FUSE_OPEN && atomic_load(&s->enosys_open))
      || (in->opcode == KERNEL_FUSE_OPENDIR && atomic_load(&s->enosys_opendir))) {
    // nothing to do at close (ll_flush), nor to open on a read-only mount that need not (see
    // ll_init): ENOSYS here, without waking Node's thread
    reply_status(s, in->unique, -ENOSYS);
    return 1;
  }
  if (in->opcode == KERNEL_FUSE_LOOKUP && len > sizeof *in) return lookup_pushed(s, in, msg + sizeof *in, len - sizeof *in);
  if (in->opcode == KERNEL_FUSE_STATFS) return answer_statfs(s, in);
  if (in->opcode == KERNEL_FUSE_GETATTR && in->nodeid == 1 && s->root_attr) return root_getattr(s, in);
  if (in->opcode == KERNEL_FUSE_GETATTR) return answer_getattr(s, in);
  if (in->opcode == KERNEL_FUSE_READDIRPLUS && in->nodeid == 1 && rw && root_readdir(s, in, rw)) return 1;
  if (in->opcode == KERNEL_FUSE_READDIRPLUS && rw && ahead_readdir(s, in, rw)) return 1;
  if ((in->opcode == KERNEL_FUSE_READDIRPLUS || in->opcode == KERNEL_FUSE_READDIR) && rw && dir_end(s, in, rw)) return 1;
  if (in->opcode == KERNEL_FUSE_OPENDIR || in->opcode == KERNEL_FUSE_RELEASEDIR || in->opcode == KERNEL_FUSE_READDIR
      || in->opcode == KERNEL_FUSE_READDIRPLUS) return open_dir(s, in, msg, len);
  if (in->opcode == KERNEL_FUSE_OPEN && len >= sizeof *in + sizeof(struct kernel_open_in)) {
    const struct kernel_open_in *arg = (const void *)(msg + sizeof *in);
    return open_native(s, in, arg, kills_setids(msg, len)) || plan_open(s, in, arg) || open_by_node(s, in, arg);
  }
  if (in->opcode == KERNEL_FUSE_RELEASE && len >= sizeof *in + sizeof(struct kernel_release_in)) {
    const struct kernel_release_in *rel = (const void *)(msg + sizeof *in);
    if (rel->fh == 0 && !s->read_only) { reply_status(s, in->unique, 0); return 1; } // open_by_node's
    if (rel->fh < NATIVE_FH) return 0;
    pthread_rwlock_wrlock(&s->dlock); // waits for a READ or WRITE being answered from it
    Direct *d = direct_find(s, rel->fh);
    int fd = d ? d->fd : -1;
    direct_drop(s, rel->fh);
    pthread_rwlock_unlock(&s->dlock);
    if (fd >= 0) close(fd);
    reply_status(s, in->unique, 0);
    return 1;
  }
  if (in->opcode == KERNEL_FUSE_GETXATTR && len >= sizeof *in + 8 + sizeof "security.capability"
      && memcmp(msg + sizeof *in + 8, "security.capability", sizeof "security.capability") == 0) {
    // the kernel's check before each write(2): answered here for a node known to have none
    if (!known_without_caps(s, in->nodeid) && !(s->copy_up_at_write && planned_without_caps(s, in->nodeid))) return 0;
    reply_status(s, in->unique, -ENODATA);
    return 1;
  }
  if ((in->opcode != KERNEL_FUSE_READ && in->opcode != KERNEL_FUSE_WRITE) || !rw) return 0;
  uint64_t key = rw->fh ? rw->fh : (in->nodeid | KEY_BY_NODE);
  pthread_rwlock_rdlock(&s->dlock);
  Direct *d = direct_find(s, key);
  if (in->opcode == KERNEL_FUSE_WRITE && !rw->fh && s->copy_up_at_write && !(d && d->writable)) {
    // a node's first WRITE on a mount without OPEN: its planned copy-up, else JS's
    pthread_rwlock_unlock(&s->dlock);
    if (!plan_write(s, in->nodeid)) return 0;
    pthread_rwlock_rdlock(&s->dlock);
    d = direct_find(s, key);
  }
  if (!d || (in->opcode == KERNEL_FUSE_WRITE && !d->writable)) { pthread_rwlock_unlock(&s->dlock); return 0; }
  struct kernel_out_header out = { sizeof out, 0, in->unique };
  struct iovec iov[2] = { { &out, sizeof out }, { NULL, 0 } };
  int n_iov = 1;
  struct kernel_write_out wout = { 0, 0 };
  int dropped = 0;
  off_t off = (off_t)rw->offset;
  if (in->opcode == KERNEL_FUSE_READ) {
    // the length the reply's header gives: an upper file's (which may change) as fstat sees it now;
    // a write or truncation after that leaves a short splice, answered by pread instead
    int64_t end = d->limit;
    struct stat st;
    if (end < 0 && rw->size >= SPLICE_READ_MIN && fstat(d->fd, &st) == 0 && S_ISREG(st.st_mode)) end = st.st_size - d->base;
    size_t want = end < 0 ? 0 : before_end(end, rw->size, off);
    int counted = 0; // the read is in the stats already (a splice /dev/fuse refused)
    if (want >= SPLICE_READ_MIN && splice_read_fill(d, in->unique, want, off)) {
      count_read(s, d, want);
      want_store(s, d, in->nodeid, rw->size, off, (ssize_t)want);
      pthread_rwlock_unlock(&s->dlock); // the pipe holds the pages: the descriptor may go
      if (splice_read_send(s, sizeof out + want)) return 1;
      counted = 1;
      pthread_rwlock_rdlock(&s->dlock); // refused: answered as below, if d is still there
      d = direct_find(s, key);
      if (!d) { pthread_rwlock_unlock(&s->dlock); return 0; }
    }
    ssize_t got = direct_pread(d, &s->trbuf, &s->trcap, rw->size, off);
    if (got < 0) out.error = (int32_t)got;
    else { if (!counted) count_read(s, d, (size_t)got); iov[1] = (struct iovec){ s->trbuf, (size_t)got }; n_iov = 2; out.len += (uint32_t)got; }
    if (!counted) want_store(s, d, in->nodeid, rw->size, off, got);
  } else {
    if (sizeof *in + sizeof(struct kernel_rw_in) + rw->size > len) { pthread_rwlock_unlock(&s->dlock); return 0; }
    dropped = kills_setids(msg, len) && drop_setids(d->fd, NULL, in->gid, in->pid) > 0;
    ssize_t done = direct_pwrite(d, msg + sizeof *in + sizeof(struct kernel_rw_in), rw->size, off);
    if (done < 0) out.error = (int32_t)done;
    else { wout.size = (uint32_t)done; iov[1] = (struct iovec){ &wout, sizeof wout }; n_iov = 2; out.len += sizeof wout; }
  }
  pthread_rwlock_unlock(&s->dlock);
  if (dropped) inval_attr(s, in->nodeid); // before the reply: the writer's next stat asks again
  while (writev(fuse_session_fd(s->se), iov, n_iov) < 0 && errno == EINTR) {}
  return 1;
}

// A prepared session's reader waits for its mount (session_go); 0 if the session was given up.
static int reader_wait_go(Session *s) {
  pthread_mutex_lock(&s->golock);
  while (!s->went && !atomic_load(&s->stopping)) pthread_cond_wait(&s->gocond, &s->golock);
  int went = s->went;
  pthread_mutex_unlock(&s->golock);
  if (went) set_thread_priority(0, 0); // it serves at normal priority (a standby's threads wait at low)
  return went;
}

// How long the reader polls for the next request (see reader_main): LAYERFS_SPIN_US microseconds
// (0: never), by default 100, none where the process may use only one CPU.
static int64_t reader_spin_ns(void) {
  const char *env = getenv("LAYERFS_SPIN_US");
  long us = env && *env ? atol(env) : 100;
  cpu_set_t cpus;
  if (us <= 0 || sched_getaffinity(0, sizeof cpus, &cpus) != 0 || CPU_COUNT(&cpus) < 2) return 0;
  return (int64_t)us * 1000;
}

// Whether the reader polls after a request, decided by trying both. Polling pays where waking a
// sleeping vCPU is dear (session 21's machine: the warm read of 20,000 files on a writable mount
// 2.2-4.4 s asleep, 1.0-2.1 s polling) and costs where it is not: on another machine of the same
// kind the same pipeline took 1.6-2.2 s asleep and 2.5-2.9 s polling (the program's own kernel
// time rose by ~12 µs a request while the reader polled; in-process reads there were still faster
// polling, 29 against 40 µs a file). So the reader times its requests: the interval from one
// request's arrival to the next, where it is short (a program waiting on us), is what either way
// costs. A trial alternates blocks of requests polling and sleeping; the cheaper way is kept until
// the next trial. Polling must win by a little: it takes a CPU.
enum {
  POLL_SHORT_NS = 1000000,   // longer intervals: the program was doing something else
  POLL_BLOCK = 64,           // short intervals per block of a trial
  POLL_BLOCKS = 8,           // blocks per trial, alternating, polling first
  POLL_FIRST_TRIAL = 256,    // short intervals before the first trial
  POLL_PERIOD = 16384,       // short intervals between trials
};
typedef struct {
  int64_t spin_ns;  // 0: never poll
  int polling;      // the way in use
  int64_t last;     // the last request's arrival
  int block, in_block; // in a trial: the block (1-based) and its intervals so far; block 0: none
  int64_t sum[2]; int n[2]; // a trial's short intervals, by way (1: polling)
  int until_trial;  // short intervals before the next trial
  int trials;       // run to their end (for the stats)
} Poller;

static void poller_init(Poller *p, int64_t spin_ns) {
  memset(p, 0, sizeof *p);
  p->spin_ns = spin_ns;
  // LAYERFS_SPIN_TRIALS=0: always poll (to measure one way against the other). Otherwise asleep
  // until a trial says polling pays: a mount with few requests never has one, and polling cost
  // there (1-byte appends from new processes, the mounts side by side: 11.79 ms a shell polling,
  // 11.53 asleep, fuse-overlayfs 11.49)
  const char *env = getenv("LAYERFS_SPIN_TRIALS");
  p->until_trial = env && *env && atoi(env) == 0 ? INT_MAX : POLL_FIRST_TRIAL;
  p->polling = spin_ns > 0 && p->until_trial == INT_MAX;
}

// A request arrived at `now` (a poller that may poll: spin_ns > 0); p->polling is then the way to
// wait for the next one.
static void poller_arrived(Poller *p, int64_t now) {
  int64_t gap = now - p->last;
  p->last = now;
  if (gap <= 0 || gap >= POLL_SHORT_NS) return;
  if (!p->block) {
    if (p->until_trial == INT_MAX || --p->until_trial > 0) return;
    p->block = 1, p->in_block = 0, p->polling = 1;
    p->sum[0] = p->sum[1] = 0, p->n[0] = p->n[1] = 0;
    return;
  }
  p->sum[p->polling] += gap, p->n[p->polling]++;
  if (++p->in_block < POLL_BLOCK) return;
  p->in_block = 0;
  if (++p->block <= POLL_BLOCKS) { p->polling = !p->polling; return; }
  // mean polling < 97% of mean sleeping, in integers
  p->polling = p->sum[1] * 100 * p->n[0] < p->sum[0] * 97 * p->n[1];
  p->block = 0, p->until_trial = POLL_PERIOD, p->trials++;
}

// O_NONBLOCK on or off: 0, or -1 with errno.
static int set_nonblocking(int fd, int on) {
  int fl = fcntl(fd, F_GETFL);
  return fl < 0 ? -1 : fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

// The reader ends: its keep-warm thread with it (nothing counts requests any more; a daemon whose
// mount ended serves on as the standby), then the flag stop_reader and on_queued wait for.
static void reader_ends(Session *s) {
  keep_warm_stop(s->keep_warm);
  s->keep_warm = NULL;
  atomic_store(&s->reader_done, 1);
}

static void *reader_main(void *arg) {
  Session *s = arg;
  // signals for the process go to Node's threads; this one takes only the wake-up of stop_reader
  sigset_t mask;
  sigfillset(&mask);
  sigdelset(&mask, SIGRTMIN + 2);
  pthread_sigmask(SIG_SETMASK, &mask, NULL);
  if (s->prepared && !reader_wait_go(s)) {
    reader_ends(s);
    return NULL;
  }
  struct fuse_buf buf;
  memset(&buf, 0, sizeof buf);
  // After a request the reader may poll /dev/fuse for a while before it sleeps in poll(2), so that
  // the next request of a program at work finds it running (Poller says whether it does). Where
  // the process has one CPU to run on, the poll would only hold up the program that asks. The
  // descriptor is non-blocking only while the reader polls: asleep, it blocks in read(2), one call
  // a request where a non-blocking read came before each poll(2).
  Poller poller;
  poller_init(&poller, reader_spin_ns());
  int fd = fuse_session_fd(s->se);
  int nonblocking = poller.spin_ns && set_nonblocking(fd, 1) == 0;
  if (!nonblocking) poller_init(&poller, 0);
  else if (!poller.polling && set_nonblocking(fd, 0) == 0) nonblocking = 0; // asleep until a trial
  int64_t last = 0; // when the reader last found nothing after a request
  int answered = 0;
  uint64_t requests = 0;
  atomic_store(&s->reader_polling, poller.polling);
  while (!atomic_load(&s->stopping)) {
    int res = fuse_session_receive_buf(s->se, &buf);
    if (res == -EAGAIN) {
      int64_t now = now_ns();
      if (answered) { last = now; answered = 0; }
      if (poller.polling && now - last < poller.spin_ns) { sched_yield(); continue; } // yields only to what waits for this CPU
      struct pollfd p = { fd, POLLIN, 0 };
      poll(&p, 1, -1); // a signal (stop_reader) ends it too
      continue;
    }
    if (res == -EINTR) continue;
    if (res <= 0) break; // ENODEV: unmounted
    answered = 1;
    atomic_store(&s->reader_requests, ++requests); // only this thread writes it; the keep-warm thread reads it
    keep_warm_request(s->keep_warm);
    if (poller.spin_ns) {
      poller_arrived(&poller, now_ns());
      if (poller.polling != nonblocking && set_nonblocking(fd, poller.polling) == 0) nonblocking = poller.polling;
      atomic_store_explicit(&s->reader_polling, poller.polling, memory_order_relaxed);
      atomic_store_explicit(&s->reader_trials, poller.trials, memory_order_relaxed);
    }
    if (!(buf.flags & FUSE_BUF_IS_FD) && answer_direct(s, buf.mem, (size_t)res)) continue;
    // INIT answered here: the kernel holds every request until it is, and Node's thread may be busy
    // (a daemon just mounted sets up its control socket and record: 0.5-4 ms after a cold cache).
    // JS learns what it needs from an empty entry queued after it, before any later request.
    int init = !(buf.flags & FUSE_BUF_IS_FD) && (size_t)res >= sizeof(struct kernel_in_header)
      && ((const struct kernel_in_header *)buf.mem)->opcode == KERNEL_FUSE_INIT;
    if (init) {
      s->init_on_reader = 1;
      fuse_session_process_buf(s->se, &buf);
      s->init_on_reader = 0;
    }
    queue_push(s, buf.mem, init ? 0 : (size_t)res);
  }
  free(buf.mem);
  drop_reply_pipe();
  reader_ends(s);
  uv_async_send(&s->async);
  return NULL;
}

// On Node's thread: the requests the reader queued, handled as on_readable handles them.
static void on_queued(uv_async_t *handle) {
  Session *s = handle->data;
  if (!s->se || s->ended) return;
  for (;;) {
    pthread_mutex_lock(&s->qlock);
    Queued *q = s->qhead;
    s->qhead = s->qtail = NULL;
    pthread_mutex_unlock(&s->qlock);
    if (!q) break;
    while (q) {
      Queued *next = q->next;
      if (s->se && !s->ended && q->len == 0) tell_js_init(s); // INIT, answered on the reader thread
      else if (s->se && !s->ended && q->len == 1) tell_js_notes(s); // copy-ups run from plans
      else if (s->se && !s->ended) {
        struct fuse_buf b = { .size = q->len, .flags = 0, .mem = q->data };
        process_on_node(s, &b, q->len);
      }
      free(q);
      q = next;
    }
    leave_js(s);
  }
  if (atomic_load(&s->reader_done) && !atomic_load(&s->stopping)) {
    session_end(s); // unmounted from outside
    if (!s->async_closed) { s->async_closed = 1; uv_close((uv_handle_t *)&s->async, NULL); }
  }
}

static void wake_reader(int sig) { (void)sig; } // only to interrupt its read(2)

// Stops the reader: it is blocked in read(2) on /dev/fuse until a request comes or a signal lands.
static int stop_reader(Session *s) {
  atomic_store(&s->stopping, 1);
  pthread_mutex_lock(&s->golock); // a prepared session's reader waits for its mount
  pthread_cond_broadcast(&s->gocond);
  pthread_mutex_unlock(&s->golock);
  for (int i = 0; i < 400 && !atomic_load(&s->reader_done); i++) {
    pthread_kill(s->reader, SIGRTMIN + 2);
    usleep(2500);
  }
  if (!atomic_load(&s->reader_done)) { pthread_detach(s->reader); return 0; }
  pthread_join(s->reader, NULL);
  return 1;
}

// Unmounts what the session mounted: libfuse's mount, or session_go's (libfuse knows no mountpoint
// for it); a prepared session never mounted closes its /dev/fuse descriptor.
static void unmount_session(Session *s) {
  fuse_session_unmount(s->se);
  if (s->own_mnt) { umount2(s->own_mnt, MNT_DETACH); free(s->own_mnt); s->own_mnt = NULL; }
  pthread_mutex_lock(&s->golock);
  if (s->prepared && !s->went && s->dev_fd >= 0) { close(s->dev_fd); s->dev_fd = -1; }
  pthread_mutex_unlock(&s->golock);
}

static void finalize_session(napi_env env, void *data, void *hint) {
  Session *s = data;
  if (s->se) {
    unmount_session(s);
    stop_storer(s);
    if (!s->threaded || stop_reader(s)) fuse_session_destroy(s->se);
  }
  free(s->own_mnt);
  free(s->buf.mem);
  direct_free_all(s);
  for (Plan *p = s->plans, *n; p; p = n) { n = p->next; plan_free(p); }
  for (Note *p = s->notes, *n; p; p = n) { n = p->next; free(p); }
  free(s->plan_upper); free(s->plan_temp);
  if (s->plan_workfd >= 0) close(s->plan_workfd);
  if (s->statfs_fd >= 0) close(s->statfs_fd);
  pushed_clear(s); free(s->pushed); attrs_clear(s); free(s->attrs); free(s->dir_ends); free(s->root_attr); root_list_free(s->root_list);
  ahead_clear(s); free(s->ahead);
  free(s->rbuf);
  free(s->layer_counts);
  free(s);
}

// A session: mounted at `mnt` now (libfuse mounts it), or, with mnt NULL, prepared for session_go:
// /dev/fuse opened and the reader parked. Throws when that fails.
static napi_value start_session(napi_env env, const char *mnt, const char *opts, napi_value dispatch) {
  const char *no_thread = getenv("LAYERFS_FUSE_THREAD");
  int threaded = !(no_thread && strcmp(no_thread, "0") == 0);
  if (!mnt && !threaded) { napi_throw_error(env, NULL, "a prepared session needs the reader thread"); return NULL; }
  Session *s = calloc(1, sizeof *s);
  s->env = env;
  s->dev_fd = -1;
  // lowlevel.ts puts ro or rw first, after "w:" for a mount that copies up at the first write
  s->copy_up_at_write = strncmp(opts, "w:", 2) == 0;
  if (s->copy_up_at_write) opts += 2;
  char *fargv[] = { "layerfs", "-o", (char *)opts, NULL };
  s->read_only = strncmp(opts, "ro,", 3) == 0;
  struct fuse_args args = FUSE_ARGS_INIT(3, fargv);
  s->se = fuse_session_new(&args, &ops, sizeof ops, s);
  if (!s->se) { free(s); napi_throw_error(env, NULL, "fuse_session_new failed (bad options?)"); return NULL; }
  if (mnt && fuse_session_mount(s->se, mnt) != 0) {
    fuse_session_destroy(s->se); free(s);
    napi_throw_error(env, NULL, "mounting failed (see the line libfuse printed)");
    return NULL;
  }
  if (!mnt && (s->dev_fd = open("/dev/fuse", O_RDWR | O_CLOEXEC)) < 0) {
    fuse_session_destroy(s->se); free(s);
    napi_throw_error(env, NULL, "cannot open /dev/fuse");
    return NULL;
  }
  s->prepared = !mnt;
  const char *v2 = getenv("LAYERFS_KILLPRIV_V2"); // 0: leave libfuse's INIT as it is (to compare)
  s->want_v2 = !(v2 && strcmp(v2, "0") == 0);
  if (mnt) use_io_hooks(s);
  uv_loop_t *loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  pthread_rwlock_init(&s->dlock, NULL);
  pthread_mutex_init(&s->qlock, NULL);
  pthread_mutex_init(&s->plock, NULL);
  pthread_mutex_init(&s->golock, NULL);
  pthread_cond_init(&s->gocond, NULL);
  pthread_mutex_init(&s->slock, NULL);
  pthread_cond_init(&s->scond, NULL);
  s->plan_workfd = -1;
  s->statfs_fd = -1;
  s->threaded = threaded;
  if (s->threaded) {
    static int handler_set = 0;
    if (!handler_set) {
      struct sigaction sa;
      memset(&sa, 0, sizeof sa);
      sa.sa_handler = wake_reader; // no SA_RESTART: the read returns EINTR
      sigaction(SIGRTMIN + 2, &sa, NULL);
      handler_set = 1;
    }
    uv_async_init(loop, &s->async, on_queued);
    s->async.data = s;
    s->keep_warm = keep_warm_start(&s->reader_requests);
    if (pthread_create(&s->reader, NULL, reader_main, s) != 0) {
      uv_close((uv_handle_t *)&s->async, NULL);
      s->threaded = 0;
      keep_warm_stop(s->keep_warm); // Node's thread reads: nothing counts requests
      s->keep_warm = NULL;
      if (s->prepared) { // nothing mounted yet: given up
        close(s->dev_fd); fuse_session_destroy(s->se); free(s);
        napi_throw_error(env, NULL, "cannot start the reader thread");
        return NULL;
      }
    }
  }
  if (!s->threaded) {
    int fd = fuse_session_fd(s->se);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    uv_poll_init(loop, &s->poll, fd);
    s->poll.data = s;
    uv_poll_start(&s->poll, UV_READABLE, on_readable);
    s->polling = 1;
  }
  napi_value ext, name;
  CHECK(napi_create_external(env, s, finalize_session, NULL, &ext));
  CHECK(napi_create_reference(env, dispatch, 1, &s->dispatch));
  CHECK(napi_create_reference(env, ext, 1, &s->self));
  CHECK(napi_create_string_utf8(env, "layerfs:fuse", NAPI_AUTO_LENGTH, &name));
  CHECK(napi_async_init(env, ext, name, &s->actx));
  return ext;
}

// llMount(mountpoint, options: string (-o list), dispatch) -> session. Throws when the mount fails.
static napi_value js_mount(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char mnt[4096], opts[4096];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[0], mnt, sizeof mnt, &len));
  CHECK(napi_get_value_string_utf8(env, argv[1], opts, sizeof opts, &len));
  return start_session(env, mnt, opts, argv[2]);
}

// llPrepare(options, dispatch) -> session, not mounted: the standby's gate mounts it (session_go),
// or llUnmount gives it up.
static napi_value js_prepare(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char opts[4096];
  size_t len;
  CHECK(napi_get_value_string_utf8(env, argv[0], opts, sizeof opts, &len));
  return start_session(env, NULL, opts, argv[1]);
}

int session_go(Session *s, const char *fsname, const char *mnt, unsigned long flags, const char *options) {
  if (!s->prepared || s->went || atomic_load(&s->stopping)) return EINVAL;
  struct stat st;
  if (stat(mnt, &st) != 0) return errno;
  char data[4096];
  int n = snprintf(data, sizeof data, "%sfd=%d,rootmode=%o,user_id=%u,group_id=%u", options, s->dev_fd,
                   (unsigned)(st.st_mode & S_IFMT), (unsigned)getuid(), (unsigned)getgid());
  if (n < 0 || (size_t)n >= sizeof data) return E2BIG;
  if (mount(fsname, mnt, "fuse.layerfs", flags, data) != 0) return errno;
  char fdpath[32];
  snprintf(fdpath, sizeof fdpath, "/dev/fd/%d", s->dev_fd);
  s->own_mnt = strdup(mnt);
  if (!s->own_mnt || fuse_session_mount(s->se, fdpath) != 0) { umount2(mnt, MNT_DETACH); free(s->own_mnt); s->own_mnt = NULL; return EIO; }
  use_io_hooks(s);
  pthread_mutex_lock(&s->golock);
  s->went = 1; // the session owns the descriptor now
  pthread_cond_broadcast(&s->gocond);
  pthread_mutex_unlock(&s->golock);
  return 0;
}

Session *session_of(napi_env env, napi_value v) {
  void *p = NULL;
  return napi_get_value_external(env, v, &p) == napi_ok ? p : NULL;
}

static Session *session_arg(napi_env env, napi_value v) {
  void *p = NULL;
  napi_get_value_external(env, v, &p);
  return p;
}

// llUnmount(session): detaches the mount; the session then ends (dispatch gets OP_DESTROY).
static napi_value js_unmount(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Session *s = session_arg(env, argv[0]);
  if (!s || !s->se) return NULL;
  atomic_store(&s->stopping, 1);
  unmount_session(s);
  session_end(s);
  // stop the reads for good, and drop what the references keep alive (a reader that will not stop
  // keeps the session: the process is ending anyway)
  stop_storer(s); // it writes to the session's descriptor
  if (s->threaded) {
    if (stop_reader(s)) fuse_session_destroy(s->se);
    if (!s->async_closed) { s->async_closed = 1; uv_close((uv_handle_t *)&s->async, NULL); }
  } else {
    fuse_session_destroy(s->se);
    uv_close((uv_handle_t *)&s->poll, NULL);
  }
  s->se = NULL;
  napi_delete_reference(env, s->dispatch);
  napi_async_destroy(env, s->actx);
  return NULL;
}

// ---------------------------------------------------------------- replies from JS

static fuse_req_t req_arg(napi_env env, napi_value v) {
  double d = 0; napi_get_value_double(env, v, &d); return (fuse_req_t)(uintptr_t)d;
}
static double dbl(napi_env env, napi_value v) { double d = 0; napi_get_value_double(env, v, &d); return d; }

// A Buffer argument's bytes as a NUL-terminated string (malloc'd; its length in *len); NULL if not a Buffer.
static char *dup_buffer(napi_env env, napi_value v, size_t *len) {
  void *data; size_t n;
  if (napi_get_buffer_info(env, v, &data, &n) != napi_ok) return NULL;
  char *out = malloc(n + 1);
  if (!out) return NULL;
  memcpy(out, data, n); out[n] = 0;
  *len = n;
  return out;
}

static double *attr_arg(napi_env env, napi_value v, size_t count) {
  napi_typedarray_type type; size_t length; void *data; napi_value ab; size_t off;
  if (napi_get_typedarray_info(env, v, &type, &length, &data, &ab, &off) != napi_ok || type != napi_float64_array || length < count) return NULL;
  return data;
}

// Attributes as JS lays them out (lowlevel.ts fill), in the kernel's form (pushed answers, the root's).
static struct kernel_attr kernel_attr_of(const double *a) {
  return (struct kernel_attr){
    .ino = (uint64_t)a[A_INO], .size = (uint64_t)a[A_SIZE], .blocks = (uint64_t)a[A_BLOCKS],
    .atime = (uint64_t)a[A_ATIME], .mtime = (uint64_t)a[A_MTIME], .ctime = (uint64_t)a[A_CTIME],
    .atimensec = (uint32_t)a[A_ATIMENS], .mtimensec = (uint32_t)a[A_MTIMENS], .ctimensec = (uint32_t)a[A_CTIMENS],
    .mode = (uint32_t)a[A_MODE], .nlink = (uint32_t)a[A_NLINK], .uid = (uint32_t)a[A_UID], .gid = (uint32_t)a[A_GID],
    .rdev = (uint32_t)a[A_RDEV], .blksize = (uint32_t)a[A_BLKSIZE],
  };
}

#define ARGS(n) size_t argc = n; napi_value argv[n]; CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL))

static napi_value js_reply_err(napi_env env, napi_callback_info info) {
  ARGS(2);
  int32_t e = 0; napi_get_value_int32(env, argv[1], &e);
  fuse_reply_err(req_arg(env, argv[0]), e);
  return NULL;
}

// llReplyEntry(req, nodeid, attrs, entryTimeout, attrTimeout)
static napi_value js_reply_entry(napi_env env, napi_callback_info info) {
  ARGS(5);
  double *a = attr_arg(env, argv[2], A_COUNT);
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = (fuse_ino_t)dbl(env, argv[1]);
  e.generation = 1;
  if (a) fill_stat(&e.attr, a);
  e.attr_timeout = dbl(env, argv[4]);
  e.entry_timeout = dbl(env, argv[3]);
  fuse_reply_entry(req_arg(env, argv[0]), &e);
  return NULL;
}

// llReplyNegative(req, timeout): no such entry, and the kernel may remember that.
static napi_value js_reply_negative(napi_env env, napi_callback_info info) {
  ARGS(2);
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.entry_timeout = dbl(env, argv[1]);
  fuse_reply_entry(req_arg(env, argv[0]), &e);
  return NULL;
}

static napi_value js_reply_attr(napi_env env, napi_callback_info info) {
  ARGS(3);
  double *a = attr_arg(env, argv[1], A_COUNT);
  struct stat st;
  fill_stat(&st, a);
  fuse_reply_attr(req_arg(env, argv[0]), &st, dbl(env, argv[2]));
  return NULL;
}

// llReplyBuf(req, buffer, length)
static napi_value js_reply_buf(napi_env env, napi_callback_info info) {
  ARGS(3);
  void *data; size_t len;
  CHECK(napi_get_buffer_info(env, argv[1], &data, &len));
  size_t n = (size_t)dbl(env, argv[2]);
  fuse_reply_buf(req_arg(env, argv[0]), data, n < len ? n : len);
  return NULL;
}

// llReplyReadlink(req, latin1 string)
static napi_value js_reply_readlink(napi_env env, napi_callback_info info) {
  ARGS(2);
  size_t len;
  CHECK(napi_get_value_string_latin1(env, argv[1], NULL, 0, &len));
  char *s = malloc(len + 1);
  napi_get_value_string_latin1(env, argv[1], s, len + 1, &len);
  fuse_reply_readlink(req_arg(env, argv[0]), s);
  free(s);
  return NULL;
}

// llReplyOpen(req, fh, keepCache, cacheDir)
static napi_value js_reply_open(napi_env env, napi_callback_info info) {
  ARGS(4);
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof fi);
  fi.fh = (uint64_t)dbl(env, argv[1]);
  bool keep = false, dir = false;
  napi_get_value_bool(env, argv[2], &keep);
  napi_get_value_bool(env, argv[3], &dir);
  fi.keep_cache = keep;
  fi.cache_readdir = dir;
  fuse_reply_open(req_arg(env, argv[0]), &fi);
  return NULL;
}

// llReplyStatfs(req, Float64Array [bsize, frsize, blocks, bfree, bavail, files, ffree, namemax])
static napi_value js_reply_statfs(napi_env env, napi_callback_info info) {
  ARGS(2);
  double *a = attr_arg(env, argv[1], 8);
  struct statvfs st;
  memset(&st, 0, sizeof st);
  if (a) {
    st.f_bsize = a[0]; st.f_frsize = a[1]; st.f_blocks = a[2]; st.f_bfree = a[3]; st.f_bavail = a[4];
    st.f_files = a[5]; st.f_ffree = a[6]; st.f_favail = a[6]; st.f_namemax = a[7];
  }
  fuse_reply_statfs(req_arg(env, argv[0]), &st);
  return NULL;
}

// llReplyXattr(req, size, value|null): the size when asked for it, ERANGE when it does not fit.
static napi_value js_reply_xattr(napi_env env, napi_callback_info info) {
  ARGS(3);
  fuse_req_t req = req_arg(env, argv[0]);
  size_t size = (size_t)dbl(env, argv[1]);
  void *data; size_t len;
  if (napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) { fuse_reply_err(req, ENODATA); return NULL; }
  if (size == 0) fuse_reply_xattr(req, len);
  else if (len > size) fuse_reply_err(req, ERANGE);
  else fuse_reply_buf(req, data, len);
  return NULL;
}

// llReplyDir(req, size, plus, names[], nodeids Float64Array, attrs Float64Array (A_COUNT each), first, timeout,
//            offs?: Float64Array: each entry's offset, the place a READDIR continues after it; else first + i + 1,
//            endNode?, epoch?: the entries are the listing's last, of node endNode, begun in attribute epoch
//            `epoch`: if all fit, C answers the READDIR after them (dir_end))
// -> entries put in the reply.
static napi_value js_reply_dir(napi_env env, napi_callback_info info) {
  ARGS(11);
  fuse_req_t req = req_arg(env, argv[0]);
  size_t size = (size_t)dbl(env, argv[1]);
  double timeout = dbl(env, argv[7]);
  bool plus = false; napi_get_value_bool(env, argv[2], &plus);
  uint32_t n = 0; CHECK(napi_get_array_length(env, argv[3], &n));
  double *ids = attr_arg(env, argv[4], n);
  double *attrs = attr_arg(env, argv[5], (size_t)n * A_COUNT);
  double first = dbl(env, argv[6]);
  double *offs = attr_arg(env, argv[8], n); // each entry's place, where JS gives them; else first + i + 1
  char *buf = malloc(size ? size : 1);
  size_t used = 0;
  uint32_t added = 0;
  char name[1100];
  for (uint32_t i = 0; i < n; i++) {
    napi_value v; size_t len;
    napi_get_element(env, argv[3], i, &v);
    napi_get_value_string_latin1(env, v, name, sizeof name, &len);
    size_t need;
    if (plus) {
      struct fuse_entry_param e;
      memset(&e, 0, sizeof e);
      e.ino = (fuse_ino_t)ids[i];
      fill_stat(&e.attr, attrs + (size_t)i * A_COUNT);
      e.generation = 1;
      e.attr_timeout = timeout;
      e.entry_timeout = timeout;
      need = fuse_add_direntry_plus(req, buf + used, size - used, name, &e, (off_t)(offs ? offs[i] : first + i + 1));
    } else {
      struct stat st;
      fill_stat(&st, attrs + (size_t)i * A_COUNT);
      need = fuse_add_direntry(req, buf + used, size - used, name, &st, (off_t)(offs ? offs[i] : first + i + 1));
    }
    if (need > size - used) break;
    used += need;
    added++;
  }
  double end_node = 0; napi_get_value_double(env, argv[9], &end_node);
  Session *s = end_node > 0 && added == n && n > 0 ? fuse_req_userdata(req) : NULL;
  if (s) {
    double epoch = -1; napi_get_value_double(env, argv[10], &epoch);
    pthread_mutex_lock(&s->plock);
    dir_end_set(s, (uint64_t)end_node, (uint64_t)(offs ? offs[n - 1] : first + n), (uint64_t)(int64_t)epoch);
    pthread_mutex_unlock(&s->plock);
  }
  fuse_reply_buf(req, buf, used);
  free(buf);
  napi_value r; napi_create_uint32(env, added, &r);
  return r;
}

// llReplyCreate(req, nodeid, attrs, entryTimeout, attrTimeout, fh)
static napi_value js_reply_create(napi_env env, napi_callback_info info) {
  ARGS(6);
  double *a = attr_arg(env, argv[2], A_COUNT);
  struct fuse_entry_param e;
  memset(&e, 0, sizeof e);
  e.ino = (fuse_ino_t)dbl(env, argv[1]);
  e.generation = 1;
  if (a) fill_stat(&e.attr, a);
  e.entry_timeout = dbl(env, argv[3]);
  e.attr_timeout = dbl(env, argv[4]);
  struct fuse_file_info fi;
  memset(&fi, 0, sizeof fi);
  fi.fh = (uint64_t)dbl(env, argv[5]);
  fuse_reply_create(req_arg(env, argv[0]), &e, &fi);
  return NULL;
}

static napi_value js_reply_write(napi_env env, napi_callback_info info) {
  ARGS(2);
  fuse_reply_write(req_arg(env, argv[0]), (size_t)dbl(env, argv[1]));
  return NULL;
}

// llDirect(session, byNode, id, fd, base, limit, layer, writable): READs (and WRITEs) of handle (or node) id go to fd
static napi_value js_direct(napi_env env, napi_callback_info info) {
  ARGS(8);
  bool writable = false; napi_get_value_bool(env, argv[7], &writable);
  Session *s = session_arg(env, argv[0]);
  bool by_node = false; napi_get_value_bool(env, argv[1], &by_node);
  uint64_t key = (uint64_t)dbl(env, argv[2]) | (by_node ? KEY_BY_NODE : 0);
  if (s) direct_set_locked(s, key, (int)dbl(env, argv[3]), (int64_t)dbl(env, argv[4]), (int64_t)dbl(env, argv[5]), (int)dbl(env, argv[6]), writable);
  return NULL;
}

// llDirectDrop(session, byNode, id)
static napi_value js_direct_drop(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  bool by_node = false; napi_get_value_bool(env, argv[1], &by_node);
  if (s) direct_drop_locked(s, (uint64_t)dbl(env, argv[2]) | (by_node ? KEY_BY_NODE : 0));
  return NULL;
}

// llStore(session, node, offset, bytes, layer): the storer pushes `bytes` (copied) into node's page
// cache at `offset`: the window around a random READ JS answered (a gzip member's), as want_store
// does for those C answers. Read-only mounts only.
static napi_value js_store(napi_env env, napi_callback_info info) {
  ARGS(5);
  Session *s = session_arg(env, argv[0]);
  void *data = NULL; size_t len = 0;
  if (!s || !s->read_only || !atomic_load(&s->store_window) || napi_get_buffer_info(env, argv[3], &data, &len) != napi_ok || len == 0 || len > (1 << 24)) return NULL;
  char *copy = malloc(len);
  if (!copy) return NULL;
  memcpy(copy, data, len);
  store_queue(s, (StoreJob){ 0, 0, (uint64_t)dbl(env, argv[1]), (int64_t)dbl(env, argv[2]), (uint32_t)len, (int)dbl(env, argv[4]), copy });
  return NULL;
}

// llReadaround(session, bytes): the window pushed into the page cache around a random READ (see
// want_store); 0 or anything not a power of two: none
static napi_value js_readaround(napi_env env, napi_callback_info info) {
  ARGS(2);
  Session *s = session_arg(env, argv[0]);
  double bytes = dbl(env, argv[1]);
  uint32_t w = bytes >= 8192 && bytes <= (1 << 24) ? (uint32_t)bytes : 0;
  if (s && !(w & (w - 1))) atomic_store(&s->store_window, w);
  return NULL;
}

// llUpperAttrs(session, inoBase > 0, timeout): C answers GETATTR of a node whose upper file is open by
// node for writing (see upper_getattr), its inode number inoBase + st_ino, kept `timeout` seconds
static napi_value js_upper_attrs(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  double base = dbl(env, argv[1]), timeout = dbl(env, argv[2]);
  if (!s || !(base >= 1) || !(timeout >= 0)) return NULL;
  atomic_store(&s->upper_attr_valid, timeout); // before the base, which turns the answers on
  atomic_store(&s->upper_ino_base, (uint64_t)base);
  return NULL;
}

// llNoCaps(session, node, fd): remembers that node has no security.capability if fd's file has none
static napi_value js_no_caps(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  if (s && without_caps((int)dbl(env, argv[2]))) {
    direct_set_locked(s, (uint64_t)dbl(env, argv[1]) | KEY_NO_CAPS, -1, 0, 0, -1, 0);
  }
  return NULL;
}

// Drops every entry of one kind (KEY_NO_CAPS or KEY_OPENABLE), under the table's lock.
static void drop_all_of_kind(Session *s, uint64_t kind) {
  pthread_rwlock_wrlock(&s->dlock);
  for (size_t i = 0; i < s->direct_cap; i++) {
    for (Direct **p = &s->direct[i]; *p; ) {
      uint64_t key = (*p)->key;
      if ((key & kind) && !(key & KEY_BY_NODE)) { Direct *d = *p; *p = d->next; free(d->path); free(d); s->direct_count--; }
      else p = &(*p)->next;
    }
  }
  pthread_rwlock_unlock(&s->dlock);
}

// llNoCapsClear(session): forgets every node llNoCaps remembered
static napi_value js_no_caps_clear(napi_env env, napi_callback_info info) {
  ARGS(1);
  Session *s = session_arg(env, argv[0]);
  if (s) { atomic_fetch_add(&s->caps_gen, 1); drop_all_of_kind(s, KEY_NO_CAPS); }
  return NULL;
}

// llOpenable(session, node, path: Buffer | null): C may open node's upper file at path itself (null: no more)
static napi_value js_openable(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  uint64_t key = (uint64_t)dbl(env, argv[1]) | KEY_OPENABLE;
  size_t len;
  char *path = dup_buffer(env, argv[2], &len);
  if (!path) { direct_drop_locked(s, key); return NULL; }
  pthread_rwlock_wrlock(&s->dlock);
  direct_set(s, key, -1, 0, 0, -1, 0)->path = path;
  pthread_rwlock_unlock(&s->dlock);
  return NULL;
}

// llInvalAttr(session, ino): the kernel's cached attributes of node `ino` are stale (another node
// changed them: a link made the file's nlink 2). Attributes only (offset -1): the kernel then takes
// no lock a request in flight may hold, so this is safe from a request's own handler.
static napi_value js_inval_attr(napi_env env, napi_callback_info info) {
  ARGS(2);
  Session *s = session_arg(env, argv[0]);
  double ino = 0;
  napi_get_value_double(env, argv[1], &ino);
  if (s && !s->ended) fuse_lowlevel_notify_inval_inode(s->se, (fuse_ino_t)ino, -1, 0); // ENOENT: not cached, nothing to drop
  return NULL;
}

// llOpenableClear(session): C opens nothing itself until JS says again (a name changed somewhere)
static napi_value js_openable_clear(napi_env env, napi_callback_info info) {
  ARGS(1);
  Session *s = session_arg(env, argv[0]);
  if (s) drop_all_of_kind(s, KEY_OPENABLE);
  return NULL;
}

// A handle C opened: by its number, or (byNode) any such handle of a node. Under dlock.
static Direct *native_handle(Session *s, uint64_t id, bool by_node) {
  if (!by_node) { Direct *d = is_native_fh(id) ? direct_find(s, id) : NULL; return d; }
  for (size_t i = 0; i < s->direct_cap; i++) for (Direct *d = s->direct[i]; d; d = d->next) if (is_native_fh(d->key) && d->node == id) return d;
  return NULL;
}

// llNativeStat(session, id, byNode) -> Float64Array [mode, nlink, uid, gid, size, blocks, atime s, ns,
// mtime s, ns, ctime s, ns] of a handle C opened (fstat), or null if there is none
static napi_value js_native_stat(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  bool by_node = false; napi_get_value_bool(env, argv[2], &by_node);
  if (!s) return NULL;
  struct stat st;
  pthread_rwlock_rdlock(&s->dlock);
  Direct *d = native_handle(s, (uint64_t)dbl(env, argv[1]), by_node);
  int ok = d && fstat(d->fd, &st) == 0;
  pthread_rwlock_unlock(&s->dlock);
  napi_value r;
  if (!ok) { napi_get_null(env, &r); return r; }
  napi_value ab; void *data;
  CHECK(napi_create_arraybuffer(env, 12 * sizeof(double), &data, &ab));
  double *a = data;
  a[0] = st.st_mode; a[1] = (double)st.st_nlink; a[2] = st.st_uid; a[3] = st.st_gid; a[4] = (double)st.st_size; a[5] = (double)st.st_blocks;
  a[6] = (double)st.st_atim.tv_sec; a[7] = (double)st.st_atim.tv_nsec; a[8] = (double)st.st_mtim.tv_sec; a[9] = (double)st.st_mtim.tv_nsec;
  a[10] = (double)st.st_ctim.tv_sec; a[11] = (double)st.st_ctim.tv_nsec;
  CHECK(napi_create_typedarray(env, napi_float64_array, 12, ab, 0, &r));
  return r;
}

// llNativeFile(session, fh, op, arg) -> 0 or an errno: on a handle C opened, op 1 ftruncate(arg),
// op 2 fsync (arg 1: fdatasync)
static napi_value js_native_file(napi_env env, napi_callback_info info) {
  ARGS(4);
  Session *s = session_arg(env, argv[0]);
  int op = (int)dbl(env, argv[2]);
  double arg = dbl(env, argv[3]);
  int err = EBADF;
  if (s) {
    pthread_rwlock_rdlock(&s->dlock);
    Direct *d = native_handle(s, (uint64_t)dbl(env, argv[1]), false);
    if (d) {
      int rc = op == 1 ? ftruncate(d->fd, (off_t)arg) : arg != 0 ? fdatasync(d->fd) : fsync(d->fd);
      err = rc == 0 ? 0 : errno;
    }
    pthread_rwlock_unlock(&s->dlock);
  }
  napi_value r;
  napi_create_int32(env, err, &r);
  return r;
}

// llDirectCounts(session, layers) -> Float64Array [reads, bytes] per layer of the READs served here
static napi_value js_direct_counts(napi_env env, napi_callback_info info) {
  ARGS(2);
  Session *s = session_arg(env, argv[0]);
  size_t n = (size_t)dbl(env, argv[1]);
  if (s && s->nlayers < n) {
    pthread_rwlock_wrlock(&s->dlock);
    s->layer_counts = realloc(s->layer_counts, LAYER_COUNTS * n * sizeof *s->layer_counts);
    for (size_t i = LAYER_COUNTS * s->nlayers; i < LAYER_COUNTS * n; i++) atomic_init(&s->layer_counts[i], 0);
    s->nlayers = n;
    pthread_rwlock_unlock(&s->dlock);
  }
  void *data; napi_value ab, arr;
  CHECK(napi_create_arraybuffer(env, LAYER_COUNTS * n * sizeof(double), &data, &ab));
  for (size_t i = 0; s && i < LAYER_COUNTS * n; i++) ((double *)data)[i] = (double)atomic_load(&s->layer_counts[i]);
  CHECK(napi_create_typedarray(env, napi_float64_array, LAYER_COUNTS * n, ab, 0, &arr));
  return arr;
}

// llReaderStats(session) -> Float64Array [requests the reader read, 1 if it polls after a request
// now, polling trials run] (all 0 where Node's thread reads /dev/fuse itself)
static napi_value js_reader_stats(napi_env env, napi_callback_info info) {
  ARGS(1);
  Session *s = session_arg(env, argv[0]);
  void *data; napi_value ab, arr;
  CHECK(napi_create_arraybuffer(env, 3 * sizeof(double), &data, &ab));
  double *d = data;
  d[0] = s ? (double)atomic_load_explicit(&s->reader_requests, memory_order_relaxed) : 0;
  d[1] = s ? atomic_load_explicit(&s->reader_polling, memory_order_relaxed) : 0;
  d[2] = s ? atomic_load_explicit(&s->reader_trials, memory_order_relaxed) : 0;
  CHECK(napi_create_typedarray(env, napi_float64_array, 3, ab, 0, &arr));
  return arr;
}

// llCaller(req) -> [uid, gid, pid, umask] of the process that made the request
static napi_value js_caller(napi_env env, napi_callback_info info) {
  ARGS(1);
  const struct fuse_ctx *c = fuse_req_ctx(req_arg(env, argv[0]));
  napi_value arr;
  CHECK(napi_create_array_with_length(env, 4, &arr));
  double v[4] = { c->uid, c->gid, c->pid, c->umask };
  for (uint32_t i = 0; i < 4; i++) napi_set_element(env, arr, i, num(env, v[i]));
  return arr;
}

// llEpoch(session) -> the epoch a plan made from now on belongs to; -1 where no plan can run (no
// reader thread, or a read-only mount); -2 while notes wait (JS reads them first: its view is behind).
static napi_value js_epoch(napi_env env, napi_callback_info info) {
  ARGS(1);
  Session *s = session_arg(env, argv[0]);
  if (!s || !s->threaded || s->read_only || s->ended) return num(env, -1);
  pthread_mutex_lock(&s->plock);
  double e = s->notes ? -2 : (double)s->epoch;
  pthread_mutex_unlock(&s->plock);
  return num(env, e);
}

// llPlanRoots(session, upper: Buffer, temp: Buffer): where plans put their entries (upper + merged
// path) and build them first (temp/#PID-nSEQ: JS's own names there have no "n").
static napi_value js_plan_roots(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  free(s->plan_upper); free(s->plan_temp);
  if (s->plan_workfd >= 0) close(s->plan_workfd);
  s->plan_upper = dup_buffer(env, argv[1], &s->plan_upper_len);
  s->plan_temp = dup_buffer(env, argv[2], &s->plan_temp_len);
  s->plan_workfd = s->plan_temp ? open(s->plan_temp, O_RDONLY | O_DIRECTORY | O_CLOEXEC) : -1;
  atomic_store(&s->planning, 1);
  if (atomic_load(&s->init_no_opendir)) atomic_store(&s->enosys_opendir, 1); // INIT came first (see ll_init)
  return NULL;
}

// llStatfsAt(session, path): STATFS is answered in C from the filesystem holding `path`.
static napi_value js_statfs_at(napi_env env, napi_callback_info info) {
  ARGS(2);
  Session *s = session_arg(env, argv[0]);
  char path[4096]; size_t plen = 0;
  if (!s || napi_get_value_string_utf8(env, argv[1], path, sizeof path, &plen) != napi_ok || plen + 1 >= sizeof path) return NULL;
  int fd = open(path, O_PATH | O_CLOEXEC);
  if (fd < 0) return NULL;
  if (s->statfs_fd >= 0) close(s->statfs_fd);
  s->statfs_fd = fd; // set before the mount's first request, on Node's thread
  return NULL;
}

// llPlan(session, node, epoch, path, numbers: Float64Array, xattrs: Buffer | null) -> the plan's
// id, or 0 when it is stale already (the epoch moved on since JS read it) or malformed. The entries
// are the last n of `path`'s own (its ancestors, then it); numbers: [n, then PLAN_FIELDS per entry:
// dir, mode, uid, gid, atime s, ns, mtime s, ns, source fd, offset, size, bytes of its xattrs in
// `xattrs` (name\0, u32 length, value, for each)].
static napi_value js_plan(napi_env env, napi_callback_info info) {
  ARGS(6);
  Session *s = session_arg(env, argv[0]);
  double node = dbl(env, argv[1]), epoch = dbl(env, argv[2]);
  char path[4096]; size_t plen = 0;
  napi_typedarray_type type; size_t count = 0; void *data = NULL; napi_value ab; size_t off;
  void *xattrs = NULL; size_t xlen = 0;
  if (!s || !s->plan_upper || !s->plan_temp
      || napi_get_value_string_latin1(env, argv[3], path, sizeof path, &plen) != napi_ok || plen + 1 >= sizeof path || path[0] != '/'
      || napi_get_typedarray_info(env, argv[4], &type, &count, &data, &ab, &off) != napi_ok || type != napi_float64_array) return num(env, 0);
  if (napi_get_buffer_info(env, argv[5], &xattrs, &xlen) != napi_ok) { xattrs = NULL; xlen = 0; }
  const double *a = data;
  size_t n = count > 0 ? (size_t)a[0] : 0;
  // where each of the path's components ends: the entries are the last n
  size_t ends[2048], m = 0;
  for (size_t i = 1; i <= plen && m < 2048; i++) if (i == plen || path[i] == '/') ends[m++] = i;
  if (n == 0 || n > m || count < 1 + n * PLAN_FIELDS) return num(env, 0);
  size_t need = xlen;
  for (size_t i = 0; i < n; i++) need += 2 * s->plan_upper_len + plen * 2 + s->plan_temp_len + 64;
  Plan *p = calloc(1, sizeof *p);
  if (!p) return num(env, 0);
  p->e = calloc(n, sizeof *p->e);
  p->blob = malloc(need);
  if (!p->e || !p->blob) { plan_free(p); return num(env, 0); }
  p->n = n; p->node = (uint64_t)node; p->epoch = (uint64_t)epoch; p->caps_gen = atomic_load(&s->caps_gen);
  char *at = p->blob;
  const char *x = xattrs;
  size_t xleft = xlen;
  for (size_t i = 0; i < n; i++) {
    const double *f = a + 1 + i * PLAN_FIELDS;
    PlanEntry *e = &p->e[i];
    e->dir = f[0] != 0; e->mode = (mode_t)f[1]; e->uid = (uid_t)f[2]; e->gid = (gid_t)f[3];
    e->times[0] = (struct timespec){ (time_t)f[4], (long)f[5] };
    e->times[1] = (struct timespec){ (time_t)f[6], (long)f[7] };
    e->src_fd = (int)f[8]; e->src_off = (int64_t)f[9]; e->size = (int64_t)f[10];
    size_t c = m - n + i, end = ends[c], pend = c > 0 ? ends[c - 1] : 0;
    e->real = at;
    at += sprintf(at, "%s%.*s", s->plan_upper, (int)end, path) + 1;
    e->parent = at;
    at += sprintf(at, "%s%.*s", s->plan_upper, (int)pend, path) + 1;
    e->tmp = at;
    at += sprintf(at, "#%d-n%llu", (int)getpid(), (unsigned long long)++s->temp_seq) + 1;
    size_t xl = (size_t)f[11];
    if (xl > xleft) { plan_free(p); return num(env, 0); }
    memcpy(at, x, xl);
    e->xattrs = at; e->xattrs_len = xl;
    at += xl; x += xl; xleft -= xl;
  }
  pthread_mutex_lock(&s->plock);
  if (p->epoch != s->epoch) { pthread_mutex_unlock(&s->plock); plan_free(p); return num(env, 0); }
  // a node's newer plan replaces its older one; plans of past epochs can never run
  for (Plan **q = &s->plans; *q;) {
    if ((*q)->node == p->node || (*q)->epoch != s->epoch) { Plan *d = *q; *q = d->next; plan_free(d); s->nplans--; }
    else q = &(*q)->next;
  }
  p->id = ++s->plan_seq ? s->plan_seq : ++s->plan_seq; // never 0
  p->next = s->plans; s->plans = p; s->nplans++;
  if (s->nplans > PLANS_KEPT) { // the oldest goes
    Plan **q = &s->plans;
    while ((*q)->next) q = &(*q)->next;
    plan_free(*q); *q = NULL; s->nplans--;
  }
  uint32_t id = p->id;
  pthread_mutex_unlock(&s->plock);
  return num(env, id);
}

// llChange(session, delta: 1 | -1, moves) -> whether notes wait: JS begins (1) or ends (-1) a change
// of its own. Beginning waits for a plan being run; no plan runs, and no pushed LOOKUP is answered,
// until the change ends. A change that `moves` the epoch (one that renames, removes or links a name,
// or opens a handle a copy-up would have to re-point) makes every plan and push made before it stale.
// The others (attributes, xattrs, new names, writes) change nothing a plan or a push relies on: a
// push is for a name the kernel does not hold yet, so a change of that name comes after its
// LOOKUP has taken the push; a plan's entries that such a change copied up are there when it runs
// (a directory is used as it is; a file stops the plan).
static napi_value js_change(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  int delta = (int)dbl(env, argv[1]);
  bool moves = false;
  napi_get_value_bool(env, argv[2], &moves);
  pthread_mutex_lock(&s->plock);
  s->busy += delta;
  if (moves) s->epoch++;
  s->attr_epoch++;
  if (delta > 0 && s->root_attr) { free(s->root_attr); s->root_attr = NULL; }
  bool notes = s->notes != NULL;
  pthread_mutex_unlock(&s->plock);
  napi_value r;
  napi_get_boolean(env, notes, &r);
  return r;
}

// llRootAttr(session, attr: Float64Array, attrTimeout): the root's attributes, for C to answer the
// kernel's first GETATTR of it (root_getattr). JS gives them only where every change it begins
// is an llChange (read-only mounts, and writable ones with plans).
static napi_value js_root_attr(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  double *a = attr_arg(env, argv[1], A_COUNT);
  if (!s || !a) return NULL;
  struct kernel_attr_out *out = calloc(1, sizeof *out);
  if (!out) return NULL;
  out->attr_valid = (uint64_t)dbl(env, argv[2]);
  out->attr = kernel_attr_of(a);
  pthread_mutex_lock(&s->plock);
  free(s->root_attr);
  s->root_attr = NULL;
  if (s->busy == 0) { s->root_attr = out; out = NULL; }
  pthread_mutex_unlock(&s->plock);
  free(out);
  return NULL;
}

// The root's listing C answers from becomes `l` (NULL: none).
static void root_list_set(Session *s, RootList *l) {
  pthread_mutex_lock(&s->plock);
  RootList *old = s->root_list;
  s->root_list = l;
  pthread_mutex_unlock(&s->plock);
  root_list_free(old);
}

// llRootList(session, names[], nodeids: Float64Array, attrs: Float64Array (A_COUNT each), timeout):
// the root's whole listing, for C to answer the kernel's READDIRPLUS of it (see root_readdir); JS
// gives it right after the mount, on read-only mounts, and takes it back (no names) when it answers
// a listing of the root itself. Entry i's offset is i + 1, as llReplyDir's.
static napi_value js_root_list(napi_env env, napi_callback_info info) {
  ARGS(5);
  Session *s = session_arg(env, argv[0]);
  uint32_t n = 0;
  if (!s || napi_get_array_length(env, argv[1], &n) != napi_ok) return NULL;
  if (n == 0) { root_list_set(s, NULL); return NULL; }
  double *ids = attr_arg(env, argv[2], n);
  double *attrs = attr_arg(env, argv[3], (size_t)n * A_COUNT);
  RootList *l = calloc(1, sizeof *l);
  if (!ids || !attrs || !l) { free(l); return NULL; }
  l->n = n;
  l->ids = calloc(n, sizeof *l->ids);
  l->at = calloc((size_t)n + 1, sizeof *l->at);
  if (!l->ids || !l->at) { root_list_free(l); return NULL; }
  for (uint32_t i = 0; i < n; i++) l->ids[i] = (uint64_t)ids[i];
  l->buf = dirplus_records(env, argv[1], n, ids, attrs, (uint64_t)dbl(env, argv[4]), NULL, l->at);
  if (!l->buf) { root_list_free(l); return NULL; }
  root_list_set(s, l);
  return NULL;
}

// llAhead(session, node, names[], nodeids: Float64Array, attrs: Float64Array (A_COUNT each), timeout,
//         offs: Float64Array | undefined, epoch, wakeAt) -> whether C took it: node's whole listing, made
// ahead in attribute epoch `epoch` (writable mounts), for C to answer the kernel's READDIRPLUS of it
// (see ahead_readdir); offsets as llReplyDir's. JS is woken once no more than wakeAt (0: not at all)
// listings are left.
static napi_value js_ahead(napi_env env, napi_callback_info info) {
  ARGS(9);
  Session *s = session_arg(env, argv[0]);
  napi_value no; napi_get_boolean(env, false, &no);
  uint32_t n = 0;
  if (!s || napi_get_array_length(env, argv[2], &n) != napi_ok || n == 0) return no;
  uint64_t node = (uint64_t)dbl(env, argv[1]);
  double *ids = attr_arg(env, argv[3], n);
  double *attrs = attr_arg(env, argv[4], (size_t)n * A_COUNT);
  double *offs = attr_arg(env, argv[6], n);
  double epoch = dbl(env, argv[7]);
  size_t *at = calloc((size_t)n + 1, sizeof *at);
  char *records = ids && attrs && at ? dirplus_records(env, argv[2], n, ids, attrs, (uint64_t)dbl(env, argv[5]), offs, at) : NULL;
  Ahead *a = records ? malloc(sizeof *a) : NULL;
  if (a) *a = (Ahead){ NULL, node, (uint64_t)(int64_t)epoch, offs ? (uint64_t)offs[n - 1] : n, at[n], records };
  else free(records);
  free(at);
  if (!a) return no;
  pthread_mutex_lock(&s->plock);
  if (!s->ahead) s->ahead = calloc(AHEAD_BUCKETS, sizeof *s->ahead);
  int ok = s->ahead && !s->ended && (s->read_only || (epoch >= 0 && attr_epoch_stands(s, a->epoch)));
  if (ok) {
    ahead_free(ahead_take(s, node));
    Ahead **q = ahead_slot(s, node);
    a->next = NULL;
    *q = a;
    s->ahead_count++;
    s->ahead_low = (int)dbl(env, argv[8]);
  }
  pthread_mutex_unlock(&s->plock);
  if (!ok) { ahead_free(a); return no; }
  napi_value yes; napi_get_boolean(env, true, &yes);
  return yes;
}

// llAheadTake(session, node) -> whether node's listing made ahead was still here (not given out):
// C gives it no more. Node 0: all of them (-> true).
static napi_value js_ahead_take(napi_env env, napi_callback_info info) {
  ARGS(2);
  Session *s = session_arg(env, argv[0]);
  uint64_t node = (uint64_t)dbl(env, argv[1]);
  int had = 1;
  if (s) {
    pthread_mutex_lock(&s->plock);
    if (node == 0) ahead_clear(s);
    else { Ahead *a = ahead_take(s, node); had = a != NULL; ahead_free(a); }
    pthread_mutex_unlock(&s->plock);
  }
  napi_value r; napi_get_boolean(env, had, &r);
  return r;
}

// llNotes(session) -> what the plans run since the last call did, or null: per plan [id, n, done,
// errno, then n times in ns].
static napi_value js_notes(napi_env env, napi_callback_info info) {
  ARGS(1);
  Session *s = session_arg(env, argv[0]);
  if (!s) return NULL;
  pthread_mutex_lock(&s->plock);
  Note *list = s->notes;
  s->notes = s->notes_tail = NULL;
  s->plan_notes = 0;
  pthread_mutex_unlock(&s->plock);
  napi_value r;
  if (!list) { napi_get_null(env, &r); return r; }
  size_t count = 0;
  for (Note *n = list; n; n = n->next) count += 4 + (n->n > 0 ? (size_t)n->n : 0);
  napi_value abuf; void *out;
  CHECK(napi_create_arraybuffer(env, count * sizeof(double), &out, &abuf));
  double *o = out;
  for (Note *n = list, *next; n; n = next) {
    next = n->next;
    *o++ = (double)n->id; *o++ = n->n; *o++ = n->done; *o++ = n->err;
    for (int i = 0; i < n->n; i++) *o++ = n->ns[i];
    free(n);
  }
  CHECK(napi_create_typedarray(env, napi_float64_array, count, abuf, 0, &r));
  return r;
}

// llPush(session, parent, epoch, name, node, attr: Float64Array, entryTimeout, attrTimeout) -> whether
// kept: the answer to LOOKUP(parent, name), good in `epoch` (see lookup_pushed).
static napi_value js_push(napi_env env, napi_callback_info info) {
  ARGS(8);
  Session *s = session_arg(env, argv[0]);
  napi_value no;
  napi_get_boolean(env, false, &no);
  char name[256]; size_t nlen = 0;
  double *a = attr_arg(env, argv[5], A_COUNT);
  if (!s || !a || napi_get_value_string_latin1(env, argv[3], name, sizeof name, &nlen) != napi_ok || nlen == 0 || nlen >= sizeof name - 1) return no;
  Pushed *p = malloc(sizeof *p + nlen + 1);
  if (!p) return no;
  memcpy(p->name, name, nlen + 1);
  p->parent = (uint64_t)dbl(env, argv[1]);
  double et = dbl(env, argv[6]), at = dbl(env, argv[7]);
  p->entry = (struct kernel_entry_out){
    .nodeid = (uint64_t)dbl(env, argv[4]), .generation = 1, // as js_reply_entry
    .entry_valid = (uint64_t)et, .attr_valid = (uint64_t)at,
    .attr = kernel_attr_of(a),
  };
  uint64_t epoch = (uint64_t)dbl(env, argv[2]);
  pthread_mutex_lock(&s->plock);
  if (epoch != s->epoch) { pthread_mutex_unlock(&s->plock); free(p); return no; }
  if (!s->pushed) s->pushed = calloc(PUSHED_BUCKETS, sizeof *s->pushed);
  if (!s->pushed) { pthread_mutex_unlock(&s->plock); free(p); return no; }
  if (s->push_epoch != epoch) { pushed_clear(s); s->push_epoch = epoch; } // all of a past epoch
  pushed_remove(s, p->parent, p->name);
  size_t b = pushed_slot(p->parent, p->name);
  p->next = s->pushed[b];
  s->pushed[b] = p;
  pthread_mutex_unlock(&s->plock);
  napi_value yes;
  napi_get_boolean(env, true, &yes);
  return yes;
}

// llAttrEpoch(session) -> the epoch attributes read from now on belong to (llAttrs); -1 where C
// answers no GETATTR (no reader thread, or a read-only mount, whose kernel keeps attributes anyway).
static napi_value js_attr_epoch(napi_env env, napi_callback_info info) {
  ARGS(1);
  Session *s = session_arg(env, argv[0]);
  if (!s || !s->threaded || s->read_only || s->ended) return num(env, -1);
  pthread_mutex_lock(&s->plock);
  double e = attr_epoch_stands(s, s->attr_epoch) ? (double)s->attr_epoch : -1;
  pthread_mutex_unlock(&s->plock);
  return num(env, e);
}

// llAttrs(session, epoch, nodes: Float64Array, attrs: Float64Array, timeout): C answers GETATTR of
// each node (0: skipped) with its attributes, read by JS in `epoch` (llAttrEpoch), until a change.
static napi_value js_attrs(napi_env env, napi_callback_info info) {
  ARGS(5);
  Session *s = session_arg(env, argv[0]);
  napi_typedarray_type type; size_t n = 0; void *data; napi_value ab; size_t off;
  if (!s || napi_get_typedarray_info(env, argv[2], &type, &n, &data, &ab, &off) != napi_ok || type != napi_float64_array) return NULL;
  const double *ids = data;
  const double *attrs = attr_arg(env, argv[3], n * A_COUNT);
  double epoch = dbl(env, argv[1]), timeout = dbl(env, argv[4]);
  if (!attrs || epoch < 0) return NULL;
  pthread_mutex_lock(&s->plock);
  if (!attr_epoch_stands(s, (uint64_t)epoch)) { pthread_mutex_unlock(&s->plock); return NULL; }
  if (!s->attrs) s->attrs = calloc(ATTR_BUCKETS, sizeof *s->attrs);
  if (s->attrs && s->attrs_epoch != s->attr_epoch) { attrs_clear(s); s->attrs_epoch = s->attr_epoch; } // all of a past epoch
  for (size_t i = 0; s->attrs && i < n; i++) {
    if (ids[i] <= 0) continue;
    AttrEntry **q = attr_slot(s, (uint64_t)ids[i]);
    if (!*q && !(*q = calloc(1, sizeof **q))) break;
    (*q)->node = (uint64_t)ids[i];
    (*q)->out = (struct kernel_attr_out){ .attr_valid = (uint64_t)timeout, .attr = kernel_attr_of(attrs + i * A_COUNT) };
  }
  pthread_mutex_unlock(&s->plock);
  return NULL;
}

// llAttrDrop(session, node): the kernel forgot the node; C drops its attributes.
static napi_value js_attr_drop(napi_env env, napi_callback_info info) {
  ARGS(2);
  Session *s = session_arg(env, argv[0]);
  if (!s || !s->attrs) return NULL;
  pthread_mutex_lock(&s->plock);
  AttrEntry **q = attr_slot(s, (uint64_t)dbl(env, argv[1]));
  if (*q) { AttrEntry *a = *q; *q = a->next; free(a); }
  pthread_mutex_unlock(&s->plock);
  return NULL;
}

// llUnpush(session, parent, name): C no longer answers LOOKUP(parent, name) (JS answered it itself).
static napi_value js_unpush(napi_env env, napi_callback_info info) {
  ARGS(3);
  Session *s = session_arg(env, argv[0]);
  char name[256]; size_t nlen = 0;
  if (!s || napi_get_value_string_latin1(env, argv[2], name, sizeof name, &nlen) != napi_ok) return NULL;
  uint64_t parent = (uint64_t)dbl(env, argv[1]);
  pthread_mutex_lock(&s->plock);
  pushed_remove(s, parent, name);
  pthread_mutex_unlock(&s->plock);
  return NULL;
}

napi_value fuse_ll_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "llMount", NULL, js_mount, NULL, NULL, NULL, napi_default, NULL },
    { "llUnmount", NULL, js_unmount, NULL, NULL, NULL, napi_default, NULL },
    { "llPrepare", NULL, js_prepare, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyErr", NULL, js_reply_err, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyEntry", NULL, js_reply_entry, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyNegative", NULL, js_reply_negative, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyAttr", NULL, js_reply_attr, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyBuf", NULL, js_reply_buf, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyReadlink", NULL, js_reply_readlink, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyOpen", NULL, js_reply_open, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyStatfs", NULL, js_reply_statfs, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyXattr", NULL, js_reply_xattr, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyDir", NULL, js_reply_dir, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyCreate", NULL, js_reply_create, NULL, NULL, NULL, napi_default, NULL },
    { "llReplyWrite", NULL, js_reply_write, NULL, NULL, NULL, napi_default, NULL },
    { "llCaller", NULL, js_caller, NULL, NULL, NULL, napi_default, NULL },
    { "llDirect", NULL, js_direct, NULL, NULL, NULL, napi_default, NULL },
    { "llReadaround", NULL, js_readaround, NULL, NULL, NULL, napi_default, NULL },
    { "llUpperAttrs", NULL, js_upper_attrs, NULL, NULL, NULL, napi_default, NULL },
    { "llStore", NULL, js_store, NULL, NULL, NULL, napi_default, NULL },
    { "llDirectDrop", NULL, js_direct_drop, NULL, NULL, NULL, napi_default, NULL },
    { "llDirectCounts", NULL, js_direct_counts, NULL, NULL, NULL, napi_default, NULL },
    { "llReaderStats", NULL, js_reader_stats, NULL, NULL, NULL, napi_default, NULL },
    { "llNoCaps", NULL, js_no_caps, NULL, NULL, NULL, napi_default, NULL },
    { "llNoCapsClear", NULL, js_no_caps_clear, NULL, NULL, NULL, napi_default, NULL },
    { "llOpenable", NULL, js_openable, NULL, NULL, NULL, napi_default, NULL },
    { "llOpenableClear", NULL, js_openable_clear, NULL, NULL, NULL, napi_default, NULL },
    { "llInvalAttr", NULL, js_inval_attr, NULL, NULL, NULL, napi_default, NULL },
    { "llNativeStat", NULL, js_native_stat, NULL, NULL, NULL, napi_default, NULL },
    { "llNativeFile", NULL, js_native_file, NULL, NULL, NULL, napi_default, NULL },
    { "llEpoch", NULL, js_epoch, NULL, NULL, NULL, napi_default, NULL },
    { "llPlan", NULL, js_plan, NULL, NULL, NULL, napi_default, NULL },
    { "llPlanRoots", NULL, js_plan_roots, NULL, NULL, NULL, napi_default, NULL },
    { "llStatfsAt", NULL, js_statfs_at, NULL, NULL, NULL, napi_default, NULL },
    { "llAttrEpoch", NULL, js_attr_epoch, NULL, NULL, NULL, napi_default, NULL },
    { "llAttrs", NULL, js_attrs, NULL, NULL, NULL, napi_default, NULL },
    { "llAttrDrop", NULL, js_attr_drop, NULL, NULL, NULL, napi_default, NULL },
    { "llChange", NULL, js_change, NULL, NULL, NULL, napi_default, NULL },
    { "llNotes", NULL, js_notes, NULL, NULL, NULL, napi_default, NULL },
    { "llPush", NULL, js_push, NULL, NULL, NULL, napi_default, NULL },
    { "llRootAttr", NULL, js_root_attr, NULL, NULL, NULL, napi_default, NULL },
    { "llRootList", NULL, js_root_list, NULL, NULL, NULL, napi_default, NULL },
    { "llAhead", NULL, js_ahead, NULL, NULL, NULL, napi_default, NULL },
    { "llAheadTake", NULL, js_ahead_take, NULL, NULL, NULL, napi_default, NULL },
    { "llUnpush", NULL, js_unpush, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  standby_gate_init(env, exports);
  return exports;
}

static napi_value init(napi_env env, napi_value exports) { return fuse_ll_init(env, exports); }
NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
