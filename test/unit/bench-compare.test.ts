import { describe, it } from 'node:test'
import assert from 'node:assert/strict'
import { fewestP, rankSumP } from '../../bench/compare'

// The bench report's noise test (bench/compare.ts), against values worked out by hand from the
// rank-sum distribution and against a count of every split of the pooled ranks (bruteForce).

describe('rankSumP', () => {
  const close = (got: number, want: number) => assert.ok(Math.abs(got - want) < 1e-9, `${got} != ${want}`)

  it('two groups of 3 wholly apart: 2 of the C(6,3) = 20 splits are as lopsided', () => {
    close(rankSumP([1, 2, 3], [10, 11, 12]), 2 / 20)
    close(rankSumP([10, 11, 12], [1, 2, 3]), 2 / 20) // two-sided: the order of the groups does not matter
  })

  it('two groups of 5 wholly apart: 2 of C(10,5) = 252', () => {
    close(rankSumP([5, 6, 7, 8, 9], [0.1, 0.2, 0.3, 0.4, 0.5]), 2 / 252)
  })

  it('interleaved samples are no evidence of a difference (as every split of the ranks counts it)', () => {
    const p = rankSumP([1, 3, 5, 7], [2, 4, 6, 8])
    close(p, bruteForce([1, 3, 5, 7], [2, 4, 6, 8]))
    assert.ok(p > 0.5, String(p))
  })

  it('identical samples (all ties) give 1', () => {
    close(rankSumP([4, 4, 4], [4, 4, 4]), 1)
  })

  it('fewestP: the p of two groups wholly apart', () => {
    close(fewestP(3, 3), rankSumP([1, 2, 3], [4, 5, 6]))
    close(fewestP(2, 2), 2 / 6)
    close(fewestP(5, 7), rankSumP([1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12]))
    assert.equal(fewestP(0, 4), 1)
  })

  it('an empty group gives 1', () => {
    assert.equal(rankSumP([], [1, 2]), 1)
  })

  it('ties share their mean rank, as a count of every split finds', () => {
    close(rankSumP([1, 2, 3], [3, 5, 6]), bruteForce([1, 2, 3], [3, 5, 6]))
    close(rankSumP([2, 2, 7, 9, 9], [2, 9, 9, 11]), bruteForce([2, 2, 7, 9, 9], [2, 9, 9, 11]))
  })

  it('samples of bench sizes agree with a count of every split', () => {
    // 6 and 7 samples: C(13,6) = 1716 splits; values from a bench row (ms), some equal
    const a = [143.6, 121.5, 115.5, 130.3, 128.5, 100]
    const b = [105.7, 84.9, 82.3, 81.5, 134, 116, 123.7]
    close(rankSumP(a, b), bruteForce(a, b))
  })
})

/** The p-value by listing every way to split the pooled ranks into groups of a's and b's sizes. */
function bruteForce(a: readonly number[], b: readonly number[]): number {
  const pooled = [...a, ...b]
  const sorted = [...pooled].sort((x, y) => x - y)
  const rank = (v: number) => {
    const first = sorted.indexOf(v)
    const last = sorted.lastIndexOf(v)
    return (first + last) / 2 + 1
  }
  const r = pooled.map(rank)
  const mean = (a.length * (pooled.length + 1)) / 2
  const far = Math.abs(r.slice(0, a.length).reduce((s, x) => s + x, 0) - mean)
  let all = 0
  let asFar = 0
  const pick = (from: number, left: number, sum: number): void => {
    if (left === 0) {
      all++
      if (Math.abs(sum - mean) >= far - 1e-9) asFar++
      return
    }
    for (let i = from; i <= r.length - left; i++) pick(i + 1, left - 1, sum + r[i])
  }
  pick(0, a.length, 0)
  return asFar / all
}
