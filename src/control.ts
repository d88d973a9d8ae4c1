import { createServer, createConnection, type Server } from 'node:net'
import { mkdirSync, rmSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { awaitControlFile, runtimeDir } from './runtime'
import { log } from './log'

// The daemon's control socket: the CLI asks a live mount what it serves (`layerfs tree`, `layerfs stats`).
// One JSON request per connection, one JSON answer.

export type ControlRequest =
  | { readonly op: 'which'; readonly paths: readonly string[] }
  | { readonly op: 'stats' }

export interface WhichAnswer {
  /** Per path: the layer position that serves it (0 = topmost), its source, and for a directory every layer merged into it; null if absent. */
  readonly layers: ReadonlyArray<{ readonly layer: number; readonly source: string; readonly merged: readonly number[] } | null>
}

export type ControlHandler = (req: ControlRequest) => Promise<unknown>

export function socketPath(mountpoint: string): string {
  return join(runtimeDir(), createHash('sha256').update(mountpoint).digest('hex').slice(0, 24) + '.sock')
}

export async function listen(mountpoint: string, handle: ControlHandler): Promise<Server> {
  const path = socketPath(mountpoint)
  // local and quick: synchronous, not two trips through the thread pool while the mount waits
  mkdirSync(runtimeDir(), { recursive: true, mode: 0o700 })
  rmSync(path, { force: true })
  const server = createServer((sock) => {
    let buf = ''
    sock.setEncoding('utf8')
    sock.on('data', (chunk: string) => {
      buf += chunk
      const nl = buf.indexOf('\n')
      if (nl < 0) return
      let req: ControlRequest
      try {
        req = JSON.parse(buf.slice(0, nl)) as ControlRequest
      } catch {
        sock.end(JSON.stringify({ error: 'bad request' }) + '\n')
        return
      }
      handle(req).then(
        (answer) => sock.end(JSON.stringify({ answer }) + '\n'),
        (err: Error) => sock.end(JSON.stringify({ error: err.message }) + '\n'),
      )
    })
    sock.on('error', (err) => log.mount('control: %s', err.message))
  })
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(path, () => resolve())
  })
  server.unref() // the mount keeps the daemon alive, not this socket
  return server
}

/** Sends one request to the daemon serving `mountpoint`. */
export async function ask<T>(mountpoint: string, req: ControlRequest): Promise<T> {
  const missing = (err: unknown): boolean => ['ENOENT', 'ECONNREFUSED'].includes((err as NodeJS.ErrnoException).code ?? '')
  // a socket not there yet is waited for (awaitControlFile); any other failure ends it at once
  const answer = await awaitControlFile(() => askOnce<T>(mountpoint, req).then((a) => ({ a }), (err: unknown) => {
    if (missing(err)) return null
    throw err
  }))
  if (!answer) throw new Error('no layerfs daemon answers for this mountpoint')
  return answer.a
}

function askOnce<T>(mountpoint: string, req: ControlRequest): Promise<T> {
  return new Promise((resolve, reject) => {
    const sock = createConnection(socketPath(mountpoint))
    let buf = ''
    sock.setEncoding('utf8')
    sock.on('connect', () => sock.write(JSON.stringify(req) + '\n'))
    sock.on('data', (chunk: string) => (buf += chunk))
    sock.on('end', () => {
      try {
        const msg = JSON.parse(buf) as { answer?: T; error?: string }
        if (msg.error !== undefined) reject(new Error(msg.error))
        else resolve(msg.answer as T)
      } catch {
        reject(new Error('no answer from the daemon'))
      }
    })
    sock.on('error', reject)
  })
}
