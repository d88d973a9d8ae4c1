// The standby's gate: a thread of the standby daemon (src/standby.ts) that accepts the launchers'
// connections on the standby's socket and reads each request. A request for exactly the mount the
// standby has prepared (llGatePrepare: the last mount made, read-only, its layers opened and its
// FUSE session made ahead) is mounted here at once, if nothing it was prepared from has changed,
// and answered; Node's thread learns of it afterwards (onMounted). Every other request goes to
// Node's thread (onRequest), which serves it as before. A launcher waited ~3 ms for a standby's
// JavaScript to parse its request, open the layers and mount (code not run for a second or more is
// slow to run again: 2-3x); a thread that was waiting in accept(2) takes ~0.3 ms.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>
#include "fd_io.h"
#include "fuse_ll.h"
#include "priority.h"

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, "napi call failed: " #call); return NULL; } } while (0)
#define MAX_REQUEST (1 << 20)

// What a prepared mount was made from, as stat(2) saw it: a layer's archive or directory, its
// index file, the build's files. Directories (`identity_only`) are read live: only which one counts.
typedef struct Check {
  char *path;
  int identity_only;
  uint64_t dev, ino, size, mtime_sec, mtime_nsec, ctime_sec, ctime_nsec;
} Check;

typedef struct Prepared {
  Session *session;
  char *canon; size_t canon_len;   // the request it is for (canonical, see canonical())
  int mnt_arg;                     // which of its arguments is the mountpoint: any will do
  char *fsname, *options; unsigned long flags;
  Check *checks; size_t nchecks;
  char *reply; size_t reply_len;   // the frames the launcher gets
} Prepared;

typedef struct Handed { struct Handed *next; int fd; uint32_t uid; size_t len; char body[]; } Handed;

typedef struct Gate {
  napi_env env;
  napi_ref on_request, on_mounted;
  int listen_fd;
  pthread_t thread; int thread_running;
  uv_async_t async; int async_closed;
  pthread_mutex_t lock; // all below
  Handed *head, *tail;
  Prepared *prep;
  int taken, told, closed;
  char mounted_at[PATH_MAX]; // where the gate mounted it
} Gate;

static void prepared_free(Prepared *p) {
  if (!p) return;
  for (size_t i = 0; i < p->nchecks; i++) free(p->checks[i].path);
  free(p->checks); free(p->canon); free(p->fsname); free(p->options); free(p->reply);
  free(p);
}

// A relevant variable (the daemon's behaviour depends on it): as relevant() in src/standby.ts.
static int relevant_key(const char *kv, size_t klen) {
  static const char *const prefixes[] = { "LAYERFS_", "DEBUG", "XDG_", "NODE_", NULL };
  static const char *const names[] = { "HOME", "TMPDIR", "PATH", NULL };
  if ((klen == 16 && memcmp(kv, "LAYERFS_PROGRESS", 16) == 0) || (klen == 19 && memcmp(kv, "NODE_EXTRA_CA_CERTS", 19) == 0)) return 0;
  for (int i = 0; prefixes[i]; i++) if (klen >= strlen(prefixes[i]) && memcmp(kv, prefixes[i], strlen(prefixes[i])) == 0) return 1;
  for (int i = 0; names[i]; i++) if (klen == strlen(names[i]) && memcmp(kv, names[i], klen) == 0) return 1;
  return 0;
}

static int key_cmp(const void *a, const void *b) {
  const char *x = *(const char *const *)a, *y = *(const char *const *)b;
  size_t lx = strcspn(x, "="), ly = strcspn(y, "=");
  int c = memcmp(x, y, lx < ly ? lx : ly);
  return c ? c : (lx > ly) - (lx < ly);
}

// A request's canonical form: its fields up to the arguments as sent, argument `mnt_arg` (the
// mountpoint) left empty, then the relevant variables of its environment sorted by name
// (src/standby.ts canonicalRequest makes the same); its cwd and mountpoint in *cwd, *mnt. NULL if malformed.
static char *canonical(const char *body, size_t len, int mnt_arg, size_t *out_len, const char **cwd, const char **mnt) {
  if (len == 0 || body[len - 1] != 0) return NULL;
  size_t nf = 0;
  for (size_t i = 0; i < len; i++) if (!body[i]) nf++;
  const char **f = malloc(nf * sizeof *f);
  if (!f) return NULL;
  for (size_t i = 0, k = 0, at = 0; i < len; i++) if (!body[i]) { f[k++] = body + at; at = i + 1; }
  char *out = NULL;
  if (nf < 7) goto done;
  long argc = strtol(f[5], NULL, 10);
  if (argc < 0 || (size_t)argc + 7 > nf) goto done;
  long envc = strtol(f[6 + argc], NULL, 10);
  if (envc < 0 || (size_t)(7 + argc + envc) > nf || mnt_arg >= argc) goto done;
  *cwd = f[2];
  *mnt = f[6 + mnt_arg];
  const char **env = f + 7 + argc;
  size_t kept = 0;
  for (long i = 0; i < envc; i++) {
    const char *eq = strchr(env[i], '=');
    if (eq && eq > env[i] && relevant_key(env[i], (size_t)(eq - env[i]))) env[kept++] = env[i];
  }
  qsort(env, kept, sizeof *env, key_cmp);
  // magic .. the last argument, with their NULs, the mountpoint's bytes left out
  size_t before = (size_t)(f[6 + mnt_arg] - body), after = (size_t)(f[6 + argc] - f[7 + mnt_arg]);
  size_t total = before + 1 + after;
  for (size_t i = 0; i < kept; i++) total += strlen(env[i]) + 1;
  out = malloc(total);
  if (!out) goto done;
  memcpy(out, body, before);
  out[before] = 0;
  memcpy(out + before + 1, f[7 + mnt_arg], after);
  size_t at = before + 1 + after;
  for (size_t i = 0; i < kept; i++) { size_t n = strlen(env[i]) + 1; memcpy(out + at, env[i], n); at += n; }
  *out_len = total;
done:
  free(f);
  return out;
}

static int unchanged(const Check *c) {
  struct stat st;
  if (stat(c->path, &st) != 0 || (uint64_t)st.st_dev != c->dev || (uint64_t)st.st_ino != c->ino) return 0;
  if (c->identity_only) return 1;
  return (uint64_t)st.st_size == c->size && (uint64_t)st.st_mtim.tv_sec == c->mtime_sec && (uint64_t)st.st_mtim.tv_nsec == c->mtime_nsec
    && (uint64_t)st.st_ctim.tv_sec == c->ctime_sec && (uint64_t)st.st_ctim.tv_nsec == c->ctime_nsec;
}

#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif

// The mountpoint `mnt` (relative to `cwd`), resolved into `real`: a directory nothing is mounted on.
static int mountpoint_free(const char *cwd, const char *mnt, char *real) {
  char path[PATH_MAX];
  if (mnt[0] == 0 || (size_t)snprintf(path, sizeof path, "%s%s%s", mnt[0] == '/' ? "" : cwd, mnt[0] == '/' ? "" : "/", mnt) >= sizeof path) return 0;
  if (!realpath(path, real)) return 0;
  struct statx stx;
  if (statx(AT_FDCWD, real, 0, STATX_TYPE, &stx) != 0 || !S_ISDIR(stx.stx_mode)) return 0;
  return (stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) && !(stx.stx_attributes & STATX_ATTR_MOUNT_ROOT);
}

// The prepared mount, if the request asks for it and nothing it was made from changed: mounted and
// answered here. 1 if so (the connection is closed); 0 to hand the request to Node's thread.
static int take_prepared(Gate *g, int conn, const char *body, size_t len) {
  pthread_mutex_lock(&g->lock);
  Prepared *p = g->prep;
  size_t clen = 0;
  const char *cwd = NULL, *mnt = NULL;
  char *canon = p ? canonical(body, len, p->mnt_arg, &clen, &cwd, &mnt) : NULL;
  int ok = canon && clen == p->canon_len && memcmp(canon, p->canon, clen) == 0;
  free(canon);
  for (size_t i = 0; ok && i < p->nchecks; i++) ok = unchanged(&p->checks[i]);
  ok = ok && mountpoint_free(cwd, mnt, g->mounted_at) && session_go(p->session, p->fsname, g->mounted_at, p->flags, p->options) == 0;
  if (!ok) { pthread_mutex_unlock(&g->lock); return 0; }
  write_all(conn, p->reply, p->reply_len);
  close(conn);
  g->prep = NULL;
  g->taken = 1;
  pthread_mutex_unlock(&g->lock);
  prepared_free(p);
  set_process_priority(0); // it serves this mount now: Node's thread and the rest at normal priority too
  uv_async_send(&g->async);
  return 1;
}

static void *gate_main(void *arg) {
  Gate *g = arg;
  // a launcher waits on it: at normal priority, as the standby's other threads are not while it waits
  set_thread_priority(0, 0);
  for (;;) {
    int conn = accept4(g->listen_fd, NULL, NULL, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      break; // shut down (llGateClose)
    }
    struct ucred cred;
    socklen_t clen = sizeof cred;
    if (getsockopt(conn, SOL_SOCKET, SO_PEERCRED, &cred, &clen) != 0 || cred.uid != getuid()) {
      write_all(conn, "f\0\0\0\0", 5); // declined: nobody else's launcher
      close(conn);
      continue;
    }
    // the launcher sends its whole request at once, right after connecting
    struct timeval tv = { .tv_sec = 2, .tv_usec = 0 };
    setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    uint32_t n = 0;
    Handed *h = NULL;
    if (read_all(conn, &n, 4) == 1 && n <= MAX_REQUEST && (h = malloc(sizeof *h + n)) && (n == 0 || read_all(conn, h->body, n) == 1)) {
      if (take_prepared(g, conn, h->body, n)) { free(h); break; } // mounted: no more requests
      tv.tv_sec = 0;
      setsockopt(conn, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
      h->next = NULL; h->fd = conn; h->uid = cred.uid; h->len = n;
      pthread_mutex_lock(&g->lock);
      if (g->tail) g->tail->next = h; else g->head = h;
      g->tail = h;
      pthread_mutex_unlock(&g->lock);
      // JavaScript serves it: at normal priority, Node's thread and the thread pool it awaits
      // (standby.ts lowers them again if it declines)
      set_process_priority(0);
      uv_async_send(&g->async);
    } else {
      free(h);
      close(conn);
    }
  }
  // the name is free for the next standby once this socket is closed
  pthread_mutex_lock(&g->lock);
  if (g->listen_fd >= 0) { close(g->listen_fd); g->listen_fd = -1; }
  pthread_mutex_unlock(&g->lock);
  return NULL;
}

// An exception a callback threw goes where Node sends uncaught ones.
static void rethrow(napi_env env) {
  bool pending = false;
  napi_is_exception_pending(env, &pending);
  if (!pending) return;
  napi_value e;
  napi_get_and_clear_last_exception(env, &e);
  napi_fatal_exception(env, e);
}

// On Node's thread: requests for JS, then the news of a prepared mount taken.
static void on_gate(uv_async_t *handle) {
  Gate *g = handle->data;
  napi_env env = g->env;
  pthread_mutex_lock(&g->lock);
  Handed *list = g->head;
  g->head = g->tail = NULL;
  int tell = g->taken && !g->told;
  if (tell) g->told = 1;
  pthread_mutex_unlock(&g->lock);
  napi_handle_scope scope;
  napi_open_handle_scope(env, &scope);
  napi_value recv, fn; // napi_make_callback wants an object to call on
  napi_get_global(env, &recv);
  for (Handed *h = list, *next; h; h = next) {
    next = h->next;
    napi_value argv[3];
    void *data;
    napi_create_int32(env, h->fd, &argv[0]);
    napi_create_uint32(env, h->uid, &argv[1]);
    napi_create_buffer_copy(env, h->len, h->body, &data, &argv[2]);
    napi_get_reference_value(env, g->on_request, &fn);
    if (napi_make_callback(env, NULL, recv, fn, 3, argv, NULL) != napi_ok) close(h->fd);
    rethrow(env);
    free(h);
  }
  if (tell) {
    napi_value at;
    napi_create_string_utf8(env, g->mounted_at, NAPI_AUTO_LENGTH, &at);
    napi_get_reference_value(env, g->on_mounted, &fn);
    napi_make_callback(env, NULL, recv, fn, 1, &at, NULL);
    rethrow(env);
  }
  napi_close_handle_scope(env, scope);
}

// llGateOpen(address: Buffer (sun_path, abstract: a NUL first), onRequest(fd, uid, body), onMounted(mountpoint))
// -> gate. Throws an Error with code EADDRINUSE when another standby listens.
static napi_value js_gate_open(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *name; size_t nlen;
  CHECK(napi_get_buffer_info(env, argv[0], &name, &nlen));
  struct sockaddr_un sa;
  memset(&sa, 0, sizeof sa);
  sa.sun_family = AF_UNIX;
  if (nlen >= sizeof sa.sun_path) { napi_throw_error(env, NULL, "standby address too long"); return NULL; }
  memcpy(sa.sun_path, name, nlen);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  // padded with NULs to the whole sun_path, as libuv binds and native/launch.c connects
  if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 64) != 0) {
    int err = errno;
    if (fd >= 0) close(fd);
    napi_value msg, code, e;
    napi_create_string_utf8(env, strerror(err), NAPI_AUTO_LENGTH, &msg);
    napi_create_string_utf8(env, err == EADDRINUSE ? "EADDRINUSE" : "EGATE", NAPI_AUTO_LENGTH, &code);
    napi_create_error(env, code, msg, &e);
    napi_throw(env, e);
    return NULL;
  }
  Gate *g = calloc(1, sizeof *g);
  g->env = env;
  g->listen_fd = fd;
  pthread_mutex_init(&g->lock, NULL);
  CHECK(napi_create_reference(env, argv[1], 1, &g->on_request));
  CHECK(napi_create_reference(env, argv[2], 1, &g->on_mounted));
  uv_loop_t *loop;
  CHECK(napi_get_uv_event_loop(env, &loop));
  uv_async_init(loop, &g->async, on_gate);
  g->async.data = g;
  if (pthread_create(&g->thread, NULL, gate_main, g) != 0) {
    close(fd);
    napi_throw_error(env, NULL, "cannot start the standby's gate thread");
    return NULL;
  }
  g->thread_running = 1;
  napi_value ext;
  CHECK(napi_create_external(env, g, NULL, NULL, &ext)); // lives as long as the process
  return ext;
}

static Gate *gate_arg(napi_env env, napi_value v) {
  void *p = NULL;
  return napi_get_value_external(env, v, &p) == napi_ok ? p : NULL;
}

static char *string_arg(napi_env env, napi_value v) {
  size_t len = 0;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return NULL;
  char *s = malloc(len + 1);
  if (s) napi_get_value_string_utf8(env, v, s, len + 1, &len);
  return s;
}

static char *buffer_arg(napi_env env, napi_value v, size_t *len) {
  void *data;
  if (napi_get_buffer_info(env, v, &data, len) != napi_ok) return NULL;
  char *s = malloc(*len ? *len : 1);
  if (s) memcpy(s, data, *len);
  return s;
}

// llGatePrepare(gate, session, canon: Buffer, mntArg, fsname, flags, options, checkPaths: string[],
// checkNums: BigUint64Array (8 per path: identityOnly, dev, ino, size, mtime s, ns, ctime s, ns),
// reply: Buffer): the gate mounts `session` for a request whose canonical form is `canon`.
static napi_value js_gate_prepare(napi_env env, napi_callback_info info) {
  size_t argc = 10; napi_value argv[10];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Gate *g = gate_arg(env, argv[0]);
  Session *s = session_of(env, argv[1]);
  uint32_t nchecks = 0;
  napi_typedarray_type type; size_t nnums = 0; void *nums = NULL; napi_value ab; size_t off;
  if (!g || !s || napi_get_array_length(env, argv[7], &nchecks) != napi_ok
      || napi_get_typedarray_info(env, argv[8], &type, &nnums, &nums, &ab, &off) != napi_ok
      || type != napi_biguint64_array || nnums != (size_t)nchecks * 8) {
    napi_throw_error(env, NULL, "llGatePrepare: bad arguments");
    return NULL;
  }
  Prepared *p = calloc(1, sizeof *p);
  p->session = s;
  p->canon = buffer_arg(env, argv[2], &p->canon_len);
  double mnt_arg = -1, flags = 0;
  napi_get_value_double(env, argv[3], &mnt_arg);
  p->mnt_arg = (int)mnt_arg;
  p->fsname = string_arg(env, argv[4]);
  napi_get_value_double(env, argv[5], &flags);
  p->flags = (unsigned long)flags;
  p->options = string_arg(env, argv[6]);
  p->reply = buffer_arg(env, argv[9], &p->reply_len);
  p->checks = calloc(nchecks ? nchecks : 1, sizeof *p->checks);
  p->nchecks = nchecks;
  const uint64_t *n = nums;
  for (uint32_t i = 0; i < nchecks; i++) {
    napi_value v;
    napi_get_element(env, argv[7], i, &v);
    Check *c = &p->checks[i];
    c->path = string_arg(env, v);
    c->identity_only = n[8 * i] != 0;
    c->dev = n[8 * i + 1]; c->ino = n[8 * i + 2]; c->size = n[8 * i + 3];
    c->mtime_sec = n[8 * i + 4]; c->mtime_nsec = n[8 * i + 5]; c->ctime_sec = n[8 * i + 6]; c->ctime_nsec = n[8 * i + 7];
  }
  int bad = !p->canon || p->mnt_arg < 0 || !p->fsname || !p->options || !p->reply || !p->checks;
  for (uint32_t i = 0; !bad && i < nchecks; i++) bad = !p->checks[i].path;
  if (bad) { prepared_free(p); napi_throw_error(env, NULL, "llGatePrepare: out of memory"); return NULL; }
  pthread_mutex_lock(&g->lock);
  Prepared *old = g->taken ? p : g->prep; // once one was taken, no other
  if (!g->taken) g->prep = p;
  pthread_mutex_unlock(&g->lock);
  prepared_free(old);
  return NULL;
}

// llGateUnprepare(gate) -> false if the prepared mount was taken (onMounted is due), else true: no
// prepared mount is taken from now on (its session is the caller's to give up).
static napi_value js_gate_unprepare(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Gate *g = gate_arg(env, argv[0]);
  napi_value r;
  if (!g) { napi_get_boolean(env, true, &r); return r; }
  pthread_mutex_lock(&g->lock);
  Prepared *p = g->prep;
  g->prep = NULL;
  int taken = g->taken;
  pthread_mutex_unlock(&g->lock);
  prepared_free(p);
  napi_get_boolean(env, !taken, &r);
  return r;
}

// llGateClose(gate): no more connections; the name is free at once.
static napi_value js_gate_close(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  Gate *g = gate_arg(env, argv[0]);
  if (!g || g->closed) return NULL;
  g->closed = 1;
  pthread_mutex_lock(&g->lock);
  if (g->listen_fd >= 0) shutdown(g->listen_fd, SHUT_RDWR); // wakes accept(2)
  pthread_mutex_unlock(&g->lock);
  if (g->thread_running) { pthread_join(g->thread, NULL); g->thread_running = 0; }
  pthread_mutex_lock(&g->lock);
  Handed *list = g->head;
  g->head = g->tail = NULL;
  Prepared *p = g->prep;
  g->prep = NULL;
  pthread_mutex_unlock(&g->lock);
  for (Handed *h = list, *next; h; h = next) { next = h->next; close(h->fd); free(h); }
  prepared_free(p);
  if (!g->async_closed) { g->async_closed = 1; uv_close((uv_handle_t *)&g->async, NULL); }
  return NULL;
}

void standby_gate_init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "llGateOpen", NULL, js_gate_open, NULL, NULL, NULL, napi_default, NULL },
    { "llGatePrepare", NULL, js_gate_prepare, NULL, NULL, NULL, napi_default, NULL },
    { "llGateUnprepare", NULL, js_gate_unprepare, NULL, NULL, NULL, napi_default, NULL },
    { "llGateClose", NULL, js_gate_close, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
}
