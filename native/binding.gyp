{
  "targets": [{
    "target_name": "layerfs_sys",
    "sources": ["layerfs_sys.c"],
    "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]
  }]
}
