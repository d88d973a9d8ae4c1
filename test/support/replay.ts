/**
 * fast-check's seed and path from the environment, to replay a failure a report names
 * (LAYERFS_PROPERTY_SEED=506777513 LAYERFS_PROPERTY_PATH=98): that case alone runs first.
 */
export function replay(): { seed?: number; path?: string } {
  const seed = process.env.LAYERFS_PROPERTY_SEED
  if (!seed) return {}
  const path = process.env.LAYERFS_PROPERTY_PATH
  return { seed: Number(seed), ...(path ? { path } : {}) }
}
