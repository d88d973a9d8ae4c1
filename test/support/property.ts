/**
 * fast-check's options for the differential property suites: `numRuns` cases; in CI, stop at the
 * first failure (no shrinking); and the seed and path of a case a failure report names, from
 * LAYERFS_PROPERTY_SEED and LAYERFS_PROPERTY_PATH, to replay it (that case alone runs first).
 */
export function propertyOptions(numRuns: number): { numRuns: number; endOnFailure: boolean; includeErrorInReport: true; seed?: number; path?: string } {
  const seed = process.env.LAYERFS_PROPERTY_SEED
  const path = process.env.LAYERFS_PROPERTY_PATH
  return {
    numRuns, endOnFailure: process.env.CI === 'true', includeErrorInReport: true,
    ...(seed ? { seed: Number(seed), ...(path ? { path } : {}) } : {}),
  }
}
