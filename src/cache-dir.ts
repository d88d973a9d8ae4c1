import { homedir } from 'node:os'
import { join } from 'node:path'

/** layerfs's cache directory: $XDG_CACHE_HOME/layerfs, else ~/.cache/layerfs (indexes, code cache). */
export function cacheDir(): string {
  return join(process.env.XDG_CACHE_HOME || join(homedir(), '.cache'), 'layerfs')
}
