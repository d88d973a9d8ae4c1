import createDebug from 'debug'

// All diagnostics go through debug ('DEBUG=layerfs:*'); nothing else in src/ writes to the console
// except cli.ts, which talks to the user.
export const log = {
  cli: createDebug('layerfs:cli'),
  mount: createDebug('layerfs:mount'),
  fuse: createDebug('layerfs:fuse'),
  tar: createDebug('layerfs:tar'),
  index: createDebug('layerfs:index'),
  dir: createDebug('layerfs:dir'),
  union: createDebug('layerfs:union'),
}

/** Sends every debug line to `write` (the daemon logs to a file once it is detached). */
export function redirectLog(write: (line: string) => void): void {
  createDebug.log = (...args: unknown[]) => write(args.map(String).join(' ') + '\n')
}
