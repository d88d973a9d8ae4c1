// What fuse_ll.c offers the standby's gate (standby_gate.c), which mounts a prepared session.
#ifndef LAYERFS_FUSE_LL_H
#define LAYERFS_FUSE_LL_H
#include <node_api.h>

typedef struct Session Session;

// The session behind an llPrepare/llMount external; NULL if it is not one.
Session *session_of(napi_env env, napi_value v);

// Mounts a prepared session at `mnt` (mount(2): source fsname, type fuse.layerfs, `flags`, and
// `options` followed by the fd, rootmode, user_id and group_id libfuse would give) and lets its
// reader go. Any thread. 0, or an errno (nothing mounted then).
int session_go(Session *s, const char *fsname, const char *mnt, unsigned long flags, const char *options);

void standby_gate_init(napi_env env, napi_value exports);

#endif
