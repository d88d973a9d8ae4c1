{
  "variables": { "static_launcher%": 1 },
  "targets": [{
    "target_name": "layerfs_sys",
    "sources": ["layerfs_sys.c", "gzip_access.c", "index_map.c", "copy_range.c", "priority.c", "setids.c"],
    "libraries": ["-lz"],
    "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
  }, {
    "target_name": "layerfs_fuse",
    "sources": ["fuse_ll.c", "keep_warm.c", "standby_gate.c", "fd_io.c", "copy_range.c", "priority.c", "setids.c"],
    "include_dirs": ["/usr/include/fuse3"],
    "libraries": ["-lfuse3", "-lpthread"],
    "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
  }, {
    "target_name": "layerfs-launch",
    "type": "executable",
    "sources": ["launch.c", "fd_io.c", "priority.c"],
    "cflags": ["-O2", "-Wall", "-Wextra"],
    "conditions": [["static_launcher==1", { "ldflags": ["-static"] }]]
  }]
}
