// One step of a ramp (`make bench`, `make compare`): one scenario's request at a constant arrival rate.
//
//   k6 run -e TARGET_URL=http://localhost:8106 -e RATE=1000 -e DURATION_S=10 k6-tests/ramp.js
//   k6 run -e FLOW=register -e EXPECTED_STATUS=201 -e TARGET_URL=http://localhost:8001 ... k6-tests/ramp.js
//
// FLOW=click (the default) posts /track_click and expects a 200 {"status": "tracked"}; FLOW=register posts
// /register with a new email each time and expects EXPECTED_STATUS (202 from the asynchronous fleet,
// 201 from the synchronous one). The rate is held when every arrival was sent (no dropped iterations:
// k6 had a free VU for each), every answer was the expected one, and P95 stayed under P95_LIMIT_MS (the
// design document's 50 ms for clicks). make bench ramps clicks against analyticsservice and against a
// bare FastAPI endpoint with the same request body (bench/bare.py), the machine's ceiling.

import http from 'k6/http';
import { check, fail } from 'k6';

const RATE = Number(__ENV.RATE || 100);
const DURATION_S = Number(__ENV.DURATION_S || 10);
const P95_LIMIT_MS = Number(__ENV.P95_LIMIT_MS || 50);
const FLOW = (__ENV.FLOW || 'click').toLowerCase();
const PATHS = { click: '/track_click', register: '/register' };
if (!PATHS[FLOW]) fail(`FLOW must be click or register: ${__ENV.FLOW}`);
const EXPECTED_STATUS = Number(__ENV.EXPECTED_STATUS || (FLOW === 'click' ? 200 : 202));
const URL = `${(__ENV.TARGET_URL || 'http://localhost:8106').replace(/\/+$/, '')}${PATHS[FLOW]}`;
const SUMMARY_PREFIX = __ENV.SUMMARY_PREFIX || `${FLOW}-ramp`;
// Enough VUs to keep the rate with answers up to twice the limit; beyond that arrivals are dropped.
const MAX_VUS = Math.ceil((RATE * 2 * P95_LIMIT_MS) / 1000) + 20;
const PARAMS = { headers: { 'Content-Type': 'application/json' }, tags: { flow: FLOW, kind: 'accept' } };
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

http.setResponseCallback(http.expectedStatuses(EXPECTED_STATUS));

function click() {
  const payload = { user_id: 1 + Math.floor(Math.random() * 100000), page: PAGES[__ITER % PAGES.length] };
  const response = http.post(URL, JSON.stringify(payload), PARAMS);
  check(response, {
    [`click: ${EXPECTED_STATUS} tracked`]: (r) => r.status === EXPECTED_STATUS && r.body !== null
      && r.body.indexOf('"tracked"') > 0,
  });
}

function register() {
  const email = `ramp-${__VU}-${__ITER}-${Date.now()}-${Math.floor(Math.random() * 1e9)}@example.com`;
  const response = http.post(URL, JSON.stringify({ email }), PARAMS);
  check(response, {
    [`register: ${EXPECTED_STATUS}`]: (r) => r.status === EXPECTED_STATUS && r.body !== null
      && r.body.indexOf(email) > 0,
  });
}

export default FLOW === 'click' ? click : register;

export function handleSummary(data) {
  const metric = (name) => (data.metrics[name] ? data.metrics[name].values : null);
  const latency = metric('http_req_duration{expected_response:true}') || {};
  const failed = metric('http_req_failed') || { passes: 0, fails: 0 };
  const checks = metric('checks') || { passes: 0, fails: 0 };
  const summary = {
    flow: FLOW,
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
