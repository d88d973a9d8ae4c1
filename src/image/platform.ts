import { UserError } from '../errors'

/** os/architecture[/variant], as image indexes describe their manifests. */
export interface Platform {
  readonly os?: string
  readonly architecture?: string
  readonly variant?: string
}

const GOARCH: Record<string, string> = { x64: 'amd64', ia32: '386', arm64: 'arm64', arm: 'arm', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' }

/** The platform this machine runs images of. */
export function hostPlatform(): Platform {
  return { os: 'linux', architecture: GOARCH[process.arch] ?? process.arch }
}

/** Parses --platform OS/ARCH[/VARIANT]. */
export function parsePlatform(text: string): Platform {
  const parts = text.split('/')
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => p === '')) {
    throw new UserError(`bad --platform ${JSON.stringify(text)} (expected OS/ARCH[/VARIANT], e.g. linux/arm64)`)
  }
  return { os: parts[0], architecture: parts[1], variant: parts[2] }
}

export function describePlatform(p: Platform): string {
  return [p.os ?? '?', p.architecture ?? '?', ...(p.variant ? [p.variant] : [])].join('/')
}

export function matchesPlatform(have: Platform, want: Platform): boolean {
  return have.os === want.os && have.architecture === want.architecture && (!want.variant || have.variant === want.variant)
}
