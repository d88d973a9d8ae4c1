// Whether two systems' samples of a row differ by more than the machine's noise. The bench machine
// is a 2-vCPU guest whose memory the host reclaims and hands back, and some rows (a warm 1 GiB read,
// a 1 GiB copy-up) moved by 30-50% from one run to the next while both FUSE systems did the same
// kernel work: a median that came out 5% behind said nothing by itself. The report gives each
// row's two-sided p-value from the Mann-Whitney U (rank-sum) test, exact: every way of splitting the
// pooled samples' ranks into groups of the two sizes counted, ties given their mean rank. It assumes
// nothing about the shape of the noise (which is skewed here: a slow sample is 3x, a fast one 0.9x).

/** Ranks of the pooled samples (1-based; equal values share their mean rank). */
function ranks(pooled: readonly number[]): number[] {
  const order = pooled.map((v, i) => [v, i] as const).sort((a, b) => a[0] - b[0])
  const r = new Array<number>(pooled.length)
  for (let i = 0; i < order.length;) {
    let j = i
    while (j + 1 < order.length && order[j + 1][0] === order[i][0]) j++
    for (let k = i; k <= j; k++) r[order[k][1]] = (i + j) / 2 + 1
    i = j + 1
  }
  return r
}

/**
 * Two-sided exact p-value of the rank-sum test of `a` against `b`: the chance, were both drawn
 * from one distribution, of a split of the pooled ranks at least as lopsided as the one seen.
 * 1 when either is empty. Sizes up to a few hundred samples (the bench has at most ~60).
 */
export function rankSumP(a: readonly number[], b: readonly number[]): number {
  const n = a.length
  const total = a.length + b.length
  if (n === 0 || b.length === 0) return 1
  // mean ranks are halves at worst: doubled, every rank sum is an integer
  const r2 = ranks([...a, ...b]).map((x) => Math.round(2 * x))
  const seen = r2.slice(0, n).reduce((s, x) => s + x, 0)
  const maxSum = r2.reduce((s, x) => s + x, 0)
  // ways[k][s]: how many k-subsets of the ranks taken so far sum to s (doubles: C(60,30) > 2^53,
  // and only their ratio matters)
  const ways: Float64Array[] = Array.from({ length: n + 1 }, () => new Float64Array(maxSum + 1))
  ways[0][0] = 1
  for (const x of r2) {
    // k downwards: what this rank adds to k+1 is read from k before this rank changed k
    for (let k = n - 1; k >= 0; k--) {
      const from = ways[k]
      const to = ways[k + 1]
      for (let s = maxSum - x; s >= 0; s--) if (from[s] !== 0) to[s + x] += from[s]
    }
  }
  const mean = (n * (total + 1)) // doubled: n (N+1) / 2, times 2
  const far = Math.abs(seen - mean)
  let all = 0
  let asFar = 0
  ways[n].forEach((w, s) => {
    all += w
    if (Math.abs(s - mean) >= far - 1e-9) asFar += w
  })
  return Math.min(1, asFar / all)
}

/** The smallest p-value samples of these sizes can give (the two groups wholly apart, no ties). */
export function fewestP(n: number, m: number): number {
  let splits = 1 // C(n + m, n)
  for (let i = 1; i <= n; i++) splits = (splits * (m + i)) / i
  return n === 0 || m === 0 ? 1 : Math.min(1, 2 / splits)
}
