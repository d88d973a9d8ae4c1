{
  "targets": [{
    "target_name": "layerfs_sys",
    "sources": ["layerfs_sys.c", "gzip_access.c"],
    "libraries": ["-lz"],
    "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
  }]
}
