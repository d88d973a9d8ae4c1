// layerfs_sys: the system calls Node does not offer (xattrs without following symlinks, mknod,
// nanosecond utimensat, renameat2), with paths as Buffers so that any name's bytes get through.
// Synchronous: they touch local lower/upper directories, never our own mount.
#define _GNU_SOURCE
#include <node_api.h>
#include "copy_range.h"
#include "priority.h"
#include "setids.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdbool.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <linux/fs.h>
#include <sys/syscall.h>
#include <sys/socket.h>

#define CHECK(call) do { if ((call) != napi_ok) { napi_throw_error(env, NULL, "napi call failed: " #call); return NULL; } } while (0)

// Throws an Error with .code = "EXXX" and .errno = -n, like Node's fs errors.
static napi_value throw_errno(napi_env env, int err, const char *syscall) {
  char msg[256];
  snprintf(msg, sizeof msg, "%s: %s", syscall, strerror(err));
  napi_value message, error, code, errnum;
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &message);
  napi_create_error(env, NULL, message, &error);
  const char *name = NULL;
  switch (err) {
    case ENOENT: name = "ENOENT"; break; case EACCES: name = "EACCES"; break; case EPERM: name = "EPERM"; break;
    case ENODATA: name = "ENODATA"; break; case ENOTSUP: name = "ENOTSUP"; break; case EEXIST: name = "EEXIST"; break;
    case ENOTDIR: name = "ENOTDIR"; break; case EISDIR: name = "EISDIR"; break; case ERANGE: name = "ERANGE"; break;
    case ENOSPC: name = "ENOSPC"; break; case EINVAL: name = "EINVAL"; break; case ENOTEMPTY: name = "ENOTEMPTY"; break;
    case EXDEV: name = "EXDEV"; break; case E2BIG: name = "E2BIG"; break; case EROFS: name = "EROFS"; break;
    case ELOOP: name = "ELOOP"; break; case ENAMETOOLONG: name = "ENAMETOOLONG"; break; case EBUSY: name = "EBUSY"; break;
    default: name = "EIO";
  }
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_int32(env, -err, &errnum);
  napi_set_named_property(env, error, "code", code);
  napi_set_named_property(env, error, "errno", errnum);
  napi_throw(env, error);
  return NULL;
}

// A Buffer argument as a NUL-terminated C string (malloc'd; caller frees).
static char *path_arg(napi_env env, napi_value v) {
  void *data; size_t len;
  if (napi_get_buffer_info(env, v, &data, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "path must be a Buffer");
    return NULL;
  }
  char *s = malloc(len + 1);
  memcpy(s, data, len);
  s[len] = 0;
  return s;
}

static char *string_arg(napi_env env, napi_value v) {
  size_t len;
  if (napi_get_value_string_latin1(env, v, NULL, 0, &len) != napi_ok) {
    napi_throw_type_error(env, NULL, "expected a string");
    return NULL;
  }
  char *s = malloc(len + 1);
  napi_get_value_string_latin1(env, v, s, len + 1, &len);
  return s;
}

// lgetxattr(path: Buffer, name: string): Buffer | null (null: no such attribute)
static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]); if (!path) return NULL;
  char *name = string_arg(env, argv[1]); if (!name) { free(path); return NULL; }
  napi_value result;
  for (;;) {
    ssize_t size = lgetxattr(path, name, NULL, 0);
    if (size < 0) break;
    void *data;
    CHECK(napi_create_buffer(env, size, &data, &result));
    ssize_t got = lgetxattr(path, name, data, size);
    if (got < 0 && errno == ERANGE) continue; // grew in between
    if (got < 0) break;
    if (got < size) { napi_value sub; void *d2; napi_create_buffer_copy(env, got, data, &d2, &sub); result = sub; }
    free(path); free(name);
    return result;
  }
  int err = errno;
  free(path); free(name);
  if (err == ENODATA || err == ENOTSUP) { napi_get_null(env, &result); return result; }
  return throw_errno(env, err, "lgetxattr");
}

// llistxattr(path: Buffer): string[] (latin1)
static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]); if (!path) return NULL;
  char *list = NULL;
  ssize_t size;
  for (;;) {
    size = llistxattr(path, NULL, 0);
    if (size < 0) break;
    free(list);
    list = malloc(size + 1);
    ssize_t got = llistxattr(path, list, size);
    if (got < 0 && errno == ERANGE) continue;
    size = got;
    break;
  }
  int err = errno;
  free(path);
  napi_value arr;
  CHECK(napi_create_array(env, &arr));
  if (size < 0) {
    free(list);
    if (err == ENOTSUP) return arr;
    return throw_errno(env, err, "llistxattr");
  }
  uint32_t i = 0;
  for (ssize_t p = 0; p < size; ) {
    size_t n = strlen(list + p);
    napi_value s;
    napi_create_string_latin1(env, list + p, n, &s);
    napi_set_element(env, arr, i++, s);
    p += n + 1;
  }
  free(list);
  return arr;
}

// lsetxattr(path: Buffer, name: string, value: Buffer, flags: number)
static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]); if (!path) return NULL;
  char *name = string_arg(env, argv[1]); if (!name) { free(path); return NULL; }
  void *value; size_t len; int32_t flags = 0;
  CHECK(napi_get_buffer_info(env, argv[2], &value, &len));
  if (argc > 3) napi_get_value_int32(env, argv[3], &flags);
  int rc = lsetxattr(path, name, value, len, flags);
  int err = errno;
  free(path); free(name);
  if (rc < 0) return throw_errno(env, err, "lsetxattr");
  return NULL;
}

// lremovexattr(path: Buffer, name: string)
static napi_value js_lremovexattr(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]); if (!path) return NULL;
  char *name = string_arg(env, argv[1]); if (!name) { free(path); return NULL; }
  int rc = lremovexattr(path, name);
  int err = errno;
  free(path); free(name);
  if (rc < 0) return throw_errno(env, err, "lremovexattr");
  return NULL;
}

// mknod(path: Buffer, mode: number, major: number, minor: number)
static napi_value js_mknod(napi_env env, napi_callback_info info) {
  size_t argc = 4; napi_value argv[4];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]); if (!path) return NULL;
  uint32_t mode, major, minor;
  napi_get_value_uint32(env, argv[1], &mode);
  napi_get_value_uint32(env, argv[2], &major);
  napi_get_value_uint32(env, argv[3], &minor);
  int rc = mknod(path, mode, makedev(major, minor));
  int err = errno;
  free(path);
  if (rc < 0) return throw_errno(env, err, "mknod");
  return NULL;
}

// utimens(path: Buffer, atimeSec, atimeNsec, mtimeSec, mtimeNsec): times of the link itself, to the nanosecond
static napi_value js_utimens(napi_env env, napi_callback_info info) {
  size_t argc = 5; napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]); if (!path) return NULL;
  int64_t as, ms; int32_t an, mn;
  napi_get_value_int64(env, argv[1], &as);
  napi_get_value_int32(env, argv[2], &an);
  napi_get_value_int64(env, argv[3], &ms);
  napi_get_value_int32(env, argv[4], &mn);
  struct timespec ts[2] = { { .tv_sec = as, .tv_nsec = an }, { .tv_sec = ms, .tv_nsec = mn } };
  int rc = utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW);
  int err = errno;
  free(path);
  if (rc < 0) return throw_errno(env, err, "utimensat");
  return NULL;
}

// renameat2(from: Buffer, to: Buffer, flags: number): RENAME_NOREPLACE=1, RENAME_EXCHANGE=2, RENAME_WHITEOUT=4
static napi_value js_renameat2(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *from = path_arg(env, argv[0]); if (!from) return NULL;
  char *to = path_arg(env, argv[1]); if (!to) { free(from); return NULL; }
  uint32_t flags;
  napi_get_value_uint32(env, argv[2], &flags);
  int rc = syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, flags);
  int err = errno;
  free(from); free(to);
  if (rc < 0) return throw_errno(env, err, "renameat2");
  return NULL;
}

// copyRange(fdIn, offIn, fdOut, offOut, length) -> bytes copied (see copy_range.c for how).
static napi_value js_copy_range(napi_env env, napi_callback_info info) {
  size_t argc = 5; napi_value argv[5];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  int32_t in = -1, out = -1;
  int64_t off_in = 0, off_out = 0, len = 0;
  napi_get_value_int32(env, argv[0], &in); napi_get_value_int64(env, argv[1], &off_in);
  napi_get_value_int32(env, argv[2], &out); napi_get_value_int64(env, argv[3], &off_out);
  napi_get_value_int64(env, argv[4], &len);
  const char *what = "copyRange";
  int64_t done = copy_range(in, off_in, out, off_out, len, &what);
  if (done < 0) return throw_errno(env, errno, what);
  napi_value r; napi_create_int64(env, done, &r);
  return r;
}

// lstatEntry(path: Buffer, out: Float64Array(16)): 0, or the errno (no throw: a missing entry is
// an answer in a lookup, and an exception per miss cost more than the call). Fills out with
// [mode, uid, gid, size, blocks, nlink, ino mod 2^40, rdev, atime s, ns, mtime s, ns, ctime s, ns,
// overlay xattrs]: the last a bitmask of which overlay.{opaque,redirect,metacopy} xattrs the entry
// has, trusted (bits 0, 2, 4) and user (1, 3, 5), from one llistxattr, for directories and files.
static const char *const OVERLAY_XATTRS[] = {
  "trusted.overlay.opaque", "user.overlay.opaque", "trusted.overlay.redirect", "user.overlay.redirect",
  "trusted.overlay.metacopy", "user.overlay.metacopy",
};

static napi_value js_lstat_entry(napi_env env, napi_callback_info info) {
  size_t argc = 2; napi_value argv[2];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  void *pdata; size_t plen;
  if (napi_get_buffer_info(env, argv[0], &pdata, &plen) != napi_ok) { napi_throw_type_error(env, NULL, "path must be a Buffer"); return NULL; }
  napi_typedarray_type type; size_t length; void *data; napi_value ab; size_t off;
  if (napi_get_typedarray_info(env, argv[1], &type, &length, &data, &ab, &off) != napi_ok || type != napi_float64_array || length < 15) {
    napi_throw_type_error(env, NULL, "out must be a Float64Array(15)"); return NULL;
  }
  char stackpath[4096];
  char *path = plen < sizeof stackpath ? stackpath : malloc(plen + 1);
  memcpy(path, pdata, plen); path[plen] = 0;
  struct stat st;
  int err = lstat(path, &st) == 0 ? 0 : errno;
  double *o = data;
  if (!err) {
    o[0] = st.st_mode; o[1] = st.st_uid; o[2] = st.st_gid; o[3] = (double)st.st_size; o[4] = (double)st.st_blocks;
    o[5] = (double)st.st_nlink; o[6] = (double)(st.st_ino % (1ULL << 40)); o[7] = (double)st.st_rdev;
    o[8] = (double)st.st_atim.tv_sec; o[9] = st.st_atim.tv_nsec; o[10] = (double)st.st_mtim.tv_sec; o[11] = st.st_mtim.tv_nsec;
    o[12] = (double)st.st_ctim.tv_sec; o[13] = st.st_ctim.tv_nsec;
    int mask = 0;
    if (S_ISDIR(st.st_mode) || S_ISREG(st.st_mode)) {
      char list[1024];
      ssize_t n = llistxattr(path, list, sizeof list);
      if (n < 0 && errno == ERANGE) mask = 0x3f; // a long list: let the caller ask for each
      for (ssize_t p = 0; n > 0 && p < n; p += strlen(list + p) + 1) {
        for (int i = 0; i < 6; i++) if (strcmp(list + p, OVERLAY_XATTRS[i]) == 0) mask |= 1 << i;
      }
    }
    o[14] = mask;
  }
  if (path != stackpath) free(path);
  napi_value r;
  napi_create_int32(env, err, &r);
  return r;
}

// mountRoot(path: Buffer): 1 if a mount's root is at path (statx STATX_ATTR_MOUNT_ROOT, Linux 5.8),
// 0 if not, -1 if the kernel does not say (the caller reads the mount table). One call, where
// reading and parsing /proc/self/mountinfo cost a mount ~0.2 ms.
#ifndef STATX_ATTR_MOUNT_ROOT
#define STATX_ATTR_MOUNT_ROOT 0x00002000
#endif
static napi_value js_mount_root(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]);
  if (!path) return NULL;
  struct statx stx;
  int rc = statx(AT_FDCWD, path, 0, 0, &stx);
  int err = errno;
  free(path);
  if (rc < 0) return throw_errno(env, err, "statx");
  napi_value r;
  napi_create_int32(env, !(stx.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT) ? -1 : (stx.stx_attributes & STATX_ATTR_MOUNT_ROOT) ? 1 : 0, &r);
  return r;
}

// dropSetIds(path, gid, pid): drop_setids (setids.h) on the file at path; whether bits went.
static napi_value js_drop_setids(napi_env env, napi_callback_info info) {
  size_t argc = 3; napi_value argv[3];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  char *path = path_arg(env, argv[0]);
  if (!path) return NULL;
  uint32_t gid = 0, pid = 0;
  napi_get_value_uint32(env, argv[1], &gid);
  napi_get_value_uint32(env, argv[2], &pid);
  int rc = drop_setids(-1, path, gid, pid);
  free(path);
  if (rc < 0) return throw_errno(env, -rc, "dropSetIds");
  napi_value r;
  napi_get_boolean(env, rc > 0, &r);
  return r;
}

// standbyPriority(low: boolean): every thread of this process (Linux keeps scheduling and I/O
// priority per thread) to low priority — I/O class idle, and nice 10 for root — or back to the
// defaults (raising nice again needs root). A standby waits low and serves at normal priority
// (see priority.c; its gate raises it when it hands a request over).
static napi_value js_standby_priority(napi_env env, napi_callback_info info) {
  size_t argc = 1; napi_value argv[1];
  CHECK(napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
  bool low = false;
  napi_get_value_bool(env, argv[0], &low);
  set_process_priority(low);
  return NULL;
}

napi_value gzip_access_init(napi_env env, napi_value exports); // gzip_access.c
napi_value index_map_init(napi_env env, napi_value exports); // index_map.c

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
    { "lgetxattr", NULL, js_lgetxattr, NULL, NULL, NULL, napi_default, NULL },
    { "lstatEntry", NULL, js_lstat_entry, NULL, NULL, NULL, napi_default, NULL },
    { "llistxattr", NULL, js_llistxattr, NULL, NULL, NULL, napi_default, NULL },
    { "lsetxattr", NULL, js_lsetxattr, NULL, NULL, NULL, napi_default, NULL },
    { "lremovexattr", NULL, js_lremovexattr, NULL, NULL, NULL, napi_default, NULL },
    { "mknod", NULL, js_mknod, NULL, NULL, NULL, napi_default, NULL },
    { "copyRange", NULL, js_copy_range, NULL, NULL, NULL, napi_default, NULL },
    { "utimens", NULL, js_utimens, NULL, NULL, NULL, napi_default, NULL },
    { "renameat2", NULL, js_renameat2, NULL, NULL, NULL, napi_default, NULL },
    { "standbyPriority", NULL, js_standby_priority, NULL, NULL, NULL, napi_default, NULL },
    { "mountRoot", NULL, js_mount_root, NULL, NULL, NULL, napi_default, NULL },
    { "dropSetIds", NULL, js_drop_setids, NULL, NULL, NULL, napi_default, NULL },
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  gzip_access_init(env, exports);
  index_map_init(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
