// One step of `make bench`'s click ramp: POST /track_click at a constant arrival rate.
//
//   k6 run -e TARGET_URL=http://localhost:8106 -e RATE=1000 -e DURATION_S=10 k6-tests/click-ramp.js
//
// The rate is held when every arrival was sent (no dropped iterations: k6 had a free VU for each),
// every answer was a 200 {"status": "tracked"}, and P95 stayed under P95_LIMIT_MS (the design
// document's 50 ms). make bench runs it at growing rates against analyticsservice and against a
// bare FastAPI endpoint with the same request body (bench/bare.py), the machine's ceiling.

import http from 'k6/http';
import { check } from 'k6';

const RATE = Number(__ENV.RATE || 100);
const DURATION_S = Number(__ENV.DURATION_S || 10);
const P95_LIMIT_MS = Number(__ENV.P95_LIMIT_MS || 50);
const URL = `${(__ENV.TARGET_URL || 'http://localhost:8106').replace(/\/+$/, '')}/track_click`;
const SUMMARY_PREFIX = __ENV.SUMMARY_PREFIX || 'click-ramp';
// Enough VUs to keep the rate with answers up to twice the limit; beyond that arrivals are dropped.
const MAX_VUS = Math.ceil((RATE * 2 * P95_LIMIT_MS) / 1000) + 20;
const PARAMS = { headers: { 'Content-Type': 'application/json' }, tags: { flow: 'click', kind: 'accept' } };
const PAGES = ['homepage', 'products', 'cart', 'checkout', 'search', 'account', 'help', 'about'];

export const options = {
  scenarios: {
    click: {
      executor: 'constant-arrival-rate', rate: RATE, timeUnit: '1s', duration: `${DURATION_S}s`,
      // All VUs up front: a VU started mid-step would cost arrivals while it initialises.
      preAllocatedVUs: MAX_VUS, maxVUs: MAX_VUS, gracefulStop: '5s',
    },
  },
  thresholds: {
    'http_req_duration{expected_response:true}': [`p(95)<${P95_LIMIT_MS}`],
    'http_reqs{expected_response:true}': ['count>0'],
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    dropped_iterations: ['count==0'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
};

export default function () {
  const payload = { user_id: 1 + Math.floor(Math.random() * 100000), page: PAGES[__ITER % PAGES.length] };
  const response = http.post(URL, JSON.stringify(payload), PARAMS);
  check(response, {
    'click: 200 tracked': (r) => r.status === 200 && r.body !== null && r.body.indexOf('"tracked"') > 0,
  });
}

export function handleSummary(data) {
  const metric = (name) => (data.metrics[name] ? data.metrics[name].values : null);
  const latency = metric('http_req_duration{expected_response:true}') || {};
  const failed = metric('http_req_failed') || { passes: 0, fails: 0 };
  const checks = metric('checks') || { passes: 0, fails: 0 };
  const summary = {
    target_url: URL,
    target_rate: RATE,
    duration_s: DURATION_S,
    achieved_rate: (metric('http_reqs{expected_response:true}') || { count: 0 }).count / DURATION_S,
    requests: failed.passes + failed.fails,
    failed_requests: failed.passes,
    failed_checks: checks.fails,
    dropped_iterations: (metric('dropped_iterations') || { count: 0 }).count,
    max_vus: (metric('vus_max') || { value: 0 }).value,
    p50_ms: latency.med === undefined ? null : latency.med,
    p95_ms: latency['p(95)'] === undefined ? null : latency['p(95)'],
    p99_ms: latency['p(99)'] === undefined ? null : latency['p(99)'],
    max_ms: latency.max === undefined ? null : latency.max,
  };
  const text = `rate ${RATE}/s for ${DURATION_S} s: ${summary.requests} requests, ${summary.achieved_rate.toFixed(0)}/s ok, `
    + `P50 ${summary.p50_ms} ms, P95 ${summary.p95_ms} ms, P99 ${summary.p99_ms} ms, failed ${summary.failed_requests}, `
    + `dropped ${summary.dropped_iterations}\n`;
  return { stdout: text, [`${SUMMARY_PREFIX}.json`]: JSON.stringify(summary, null, 2) };
}
