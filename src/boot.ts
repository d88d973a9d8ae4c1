// What bin/layerfs runs: V8's code cache first, then the command line.
import { installCodeCache } from './code-cache'

installCodeCache()
// eslint-disable-next-line @typescript-eslint/no-require-imports
;(require('./cli') as typeof import('./cli')).main(process.argv.slice(2))
