/**
 * fast-check's options for the differential property suites: `numRuns` cases; stop at the first
 * failure without shrinking, unless LAYERFS_PROPERTY_SHRINK=1 (each case mounts both filesystems
 * several times, ~5 s: a fresh-clone run that met a failing case shrank it until the file's 20 min
 * timeout ended it, and reported neither the case nor its seed); and the seed and path of a case a
 * failure report names, from LAYERFS_PROPERTY_SEED and LAYERFS_PROPERTY_PATH, to replay it (that
 * case alone runs first, shrunk with LAYERFS_PROPERTY_SHRINK=1).
 */
export function propertyOptions(numRuns: number): { numRuns: number; endOnFailure: boolean; includeErrorInReport: true; seed?: number; path?: string } {
  const seed = process.env.LAYERFS_PROPERTY_SEED
  const path = process.env.LAYERFS_PROPERTY_PATH
  return {
    numRuns, endOnFailure: process.env.LAYERFS_PROPERTY_SHRINK !== '1', includeErrorInReport: true,
    ...(seed ? { seed: Number(seed), ...(path ? { path } : {}) } : {}),
  }
}
