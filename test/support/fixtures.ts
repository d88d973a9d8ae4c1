import { join } from 'node:path'
import { REPO, must } from './run'

/** Where fixtures are built once and kept between runs (outside the repository). */
export const FIXTURES = process.env.LAYERFS_FIXTURES ?? '/var/cache/layerfs-fixtures'

let built: Promise<string> | null = null

/** Builds the fixtures with the project's own script (a no-op when they are there) and returns their directory. */
export function fixturesDir(): Promise<string> {
  built ??= must('bash', [join(REPO, 'test', 'fixtures', 'build-fixtures.sh'), FIXTURES]).then(() => FIXTURES)
  return built
}
