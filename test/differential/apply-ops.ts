import { apply, type Op } from './ops'

// Applies operations (JSON on argv[3]) under argv[2] and prints each outcome on a line: run as
// another user (setpriv) by the writable differential tests.
async function main(): Promise<void> {
  const ops = JSON.parse(process.argv[3]) as Op[]
  const out: string[] = []
  for (const o of ops) out.push(await apply(process.argv[2], o))
  process.stdout.write(JSON.stringify(out))
}

void main()
