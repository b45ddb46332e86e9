// k6 load test for the six scenarios of the asynchronous fleet, all running in parallel.
//
//   k6 run k6-tests/script-async.js                                  # default profile, http://localhost:81xx
//   k6 run -e PROFILE=smoke k6-tests/script-async.js                 # ~20 s, light
//   k6 run -e PROFILE=stress k6-tests/script-async.js                # ramps every scenario up
//   k6 run -e BASE_URL=http://10.0.0.5 k6-tests/script-async.js      # another host, design-doc ports
//   k6 run -e TARGETS=compose k6-tests/script-async.js               # inside the compose network
//
// Every request carries two tags of our own: `flow` (register, payment, product_update, report,
// order, click) and `kind` (`accept` for the request a user waits on, `poll` for status polling).
// k6 overwrites a tag named `scenario` with the scenario's name, so thresholds filter on `flow`,
// and a `count>0` threshold per flow makes an empty series fail instead of passing vacuously.

import http from 'k6/http';
import { check, sleep, fail } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const PROFILE = (__ENV.PROFILE || 'default').toLowerCase();
const THINK_TIME_S = Number(__ENV.THINK_TIME_S || 1);
const POLL_INTERVAL_S = Number(__ENV.POLL_INTERVAL_S || 0.25);
const SAGA_DEADLINE_S = Number(__ENV.SAGA_DEADLINE_S || 30);
const JOB_DEADLINE_S = Number(__ENV.JOB_DEADLINE_S || 120);
const PAYMENT_DEADLINE_S = Number(__ENV.PAYMENT_DEADLINE_S || 30);
const SUMMARY_PREFIX = __ENV.SUMMARY_PREFIX || 'k6-summary';

const PORTS = {
  userservice: 8101, paymentservice: 8102, productservice: 8103, reportservice: 8104,
  orderservice: 8105, analyticsservice: 8106,
};

function serviceUrl(service) {
  const override = __ENV[`${service.toUpperCase()}_URL`];
  if (override) return override;
  if ((__ENV.TARGETS || '') === 'compose') return `http://${service}:${PORTS[service]}`;
  return `${__ENV.BASE_URL || 'http://localhost'}:${PORTS[service]}`;
}

const URLS = Object.fromEntries(Object.keys(PORTS).map((service) => [service, serviceUrl(service)]));
const JSON_HEADERS = { 'Content-Type': 'application/json' };
const FLOWS = ['register', 'payment', 'product_update', 'report', 'order', 'click'];

// Only these statuses count as successes in http_req_failed; 404/409/422/5xx are failures.
http.setResponseCallback(http.expectedStatuses(200, 201, 202));

const sagaCompletion = new Trend('saga_completion_seconds', true);
const jobCompletion = new Trend('report_job_completion_seconds', true);
const paymentCompletion = new Trend('payment_completion_seconds', true);
const outcomes = new Counter('async_outcomes');
const deadlineMisses = new Counter('async_deadline_misses');

// --- load profiles ---------------------------------------------------------------------------------

function closedLoop(vus, duration) {
  return { executor: 'constant-vus', vus, duration, gracefulStop: '30s' };
}

function arrivals(rate, duration) {
  return {
    executor: 'constant-arrival-rate', rate, timeUnit: '1s', duration,
    preAllocatedVUs: Math.max(10, Math.ceil(rate / 10)), maxVUs: Math.max(50, rate), gracefulStop: '10s',
  };
}

function ramp(target, duration) {
  return {
    executor: 'ramping-vus', startVUs: 1, gracefulRampDown: '10s', gracefulStop: '30s',
    stages: [{ duration, target }, { duration: '20s', target }],
  };
}

const PROFILES = {
  smoke: {
    register: closedLoop(1, '20s'), payment: closedLoop(1, '20s'), product_update: closedLoop(1, '20s'),
    report: closedLoop(1, '20s'), order: closedLoop(1, '20s'), click: arrivals(20, '20s'),
  },
  // The design document's load: scenarios 1-5 with 5/5/5/2/5 VUs for 30 s, clicks at 100/s.
  default: {
    register: closedLoop(5, '30s'), payment: closedLoop(5, '30s'), product_update: closedLoop(5, '30s'),
    report: closedLoop(2, '30s'), order: closedLoop(5, '30s'), click: arrivals(100, '30s'),
  },
  stress: {
    register: ramp(40, '60s'), payment: ramp(40, '60s'), product_update: ramp(20, '60s'),
    report: ramp(4, '60s'), order: ramp(40, '60s'),
    click: {
      executor: 'ramping-arrival-rate', startRate: 100, timeUnit: '1s', preAllocatedVUs: 100, maxVUs: 1000,
      stages: [{ duration: '60s', target: 2000 }, { duration: '20s', target: 2000 }],
    },
  },
};

if (!PROFILES[PROFILE]) fail(`unknown PROFILE ${PROFILE}: use smoke, default or stress`);

const scenarios = Object.fromEntries(
  Object.entries(PROFILES[PROFILE]).map(([flow, executor]) => [flow, { ...executor, exec: flow }]),
);

// Accept-latency limits of the design document: 100 ms for scenarios 1-5, 50 ms for clicks.
const thresholds = {
  checks: ['rate>0.999'],
  http_req_failed: ['rate<0.001'],
  async_deadline_misses: ['count<1'],
};
for (const flow of FLOWS) {
  const limit = flow === 'click' ? 50 : 100;
  // Latency of successful requests only (failures are counted by http_req_failed and checks), and
  // at least one success per flow, so no threshold can pass on an empty series.
  thresholds[`http_req_duration{kind:accept,flow:${flow},expected_response:true}`] = [`p(95)<${limit}`];
  thresholds[`http_reqs{kind:accept,flow:${flow},expected_response:true}`] = ['count>0'];
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
  discardResponseBodies: false,
};

// --- helpers ---------------------------------------------------------------------------------------

function uniqueSuffix() {
  return `${__VU}-${__ITER}-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;
}

function accept(flow) {
  return { tags: { flow, kind: 'accept' }, headers: JSON_HEADERS };
}

function poll(flow) {
  return { tags: { flow, kind: 'poll' }, headers: JSON_HEADERS };
}

function parse(response) {
  try {
    return response.json();
  } catch (error) {
    return null;
  }
}

// Poll `url` until `isDone(body)`; record the time from `startedAt`; count a deadline miss otherwise.
function pollUntil(flow, url, isDone, deadlineS, startedAt, trend) {
  const deadline = Date.now() + deadlineS * 1000;
  while (Date.now() < deadline) {
    sleep(POLL_INTERVAL_S);
    const response = http.get(url, poll(flow));
    const body = parse(response);
    if (response.status === 200 && body && isDone(body)) {
      trend.add((Date.now() - startedAt) / 1000);
      return body;
    }
  }
  deadlineMisses.add(1, { flow });
  return null;
}

// --- scenario 1: fire-and-forget ---------------------------------------------------------------------

export function register() {
  const email = `k6-${uniqueSuffix()}@example.com`;
  const response = http.post(`${URLS.userservice}/register`, JSON.stringify({ email }), accept('register'));
  const body = parse(response);
  check(response, {
    'register: 202': (r) => r.status === 202,
    'register: contract': () => body !== null && Number.isInteger(body.id) && body.email === email
      && body.event_published === true && typeof body.message === 'string',
  });
  sleep(THINK_TIME_S);
}

// --- scenario 2: background payment --------------------------------------------------------------------

export function payment() {
  const startedAt = Date.now();
  const amount = Math.round((1 + Math.random() * 500) * 100) / 100;
  const response = http.post(
    `${URLS.paymentservice}/process_payment`, JSON.stringify({ amount, currency: 'USD' }), accept('payment'),
  );
  const body = parse(response);
  const accepted = check(response, {
    'payment: 202': (r) => r.status === 202,
    'payment: contract': () => body !== null && typeof body.payment_id === 'string'
      && body.status === 'processing' && typeof body.message === 'string',
  });
  if (accepted && __ITER % 5 === 0) {
    // Follow one payment in five to the end: status polling is tagged apart from the accept latency.
    const final = pollUntil('payment', `${URLS.paymentservice}/payments/${body.payment_id}`,
      (b) => b.status === 'completed' || b.status === 'failed', PAYMENT_DEADLINE_S, startedAt, paymentCompletion);
    if (final) {
      outcomes.add(1, { flow: 'payment', outcome: final.status });
      check(final, { 'payment: completed has a transaction id': (b) => b.status !== 'completed' || !!b.transaction_id });
    }
  }
  sleep(THINK_TIME_S);
}

// --- scenario 3: fan-out -----------------------------------------------------------------------------

export function product_update() {
  const productId = 1 + (__ITER % 3);
  const name = `Product ${productId} rev ${uniqueSuffix()}`;
  const stock = 1000 + Math.floor(Math.random() * 1000);
  const response = http.put(
    `${URLS.productservice}/products/${productId}`, JSON.stringify({ name, stock }), accept('product_update'),
  );
  const body = parse(response);
  check(response, {
    'product_update: 200': (r) => r.status === 200,
    'product_update: contract': () => body !== null && body.id === productId && body.name === name
      && body.stock === stock && body.event_published === true,
  });
  sleep(THINK_TIME_S);
}

// --- scenario 4: CPU job offloading ----------------------------------------------------------------------

export function report() {
  const startedAt = Date.now();
  const response = http.post(
    `${URLS.reportservice}/generate_report`, JSON.stringify({ report_type: 'monthly' }), accept('report'),
  );
  const body = parse(response);
  const accepted = check(response, {
    'report: 202': (r) => r.status === 202,
    'report: contract': () => body !== null && typeof body.job_id === 'string' && body.status === 'queued'
      && typeof body.message === 'string',
  });
  if (accepted) {
    const final = pollUntil('report', `${URLS.reportservice}/jobs/${body.job_id}`,
      (b) => b.status === 'completed' || b.status === 'failed', JOB_DEADLINE_S, startedAt, jobCompletion);
    if (final) {
      outcomes.add(1, { flow: 'report', outcome: final.status });
      check(final, {
        'report: completed with a hash': (b) => b.status === 'completed' && typeof b.report_hash === 'string',
      });
    }
  }
  sleep(THINK_TIME_S);
}

// --- scenario 5: the order saga ----------------------------------------------------------------------------

export function order() {
  const startedAt = Date.now();
  const productId = 1 + (__ITER % 3);
  const payload = { product_id: productId, quantity: 1 };
  // Half the orders ask for a successful payment, so both saga outcomes run under load.
  if (__ITER % 2 === 0) payload.payment_behaviour = 'succeed';
  const response = http.post(`${URLS.orderservice}/create_order`, JSON.stringify(payload), accept('order'));
  const body = parse(response);
  const accepted = check(response, {
    'order: 202': (r) => r.status === 202,
    'order: contract': () => body !== null && Number.isInteger(body.id) && body.product_id === productId
      && body.quantity === 1 && body.status === 'pending',
  });
  if (accepted) {
    const final = pollUntil('order', `${URLS.orderservice}/orders/${body.id}`,
      (b) => b.status === 'completed' || b.status === 'failed', SAGA_DEADLINE_S, startedAt, sagaCompletion);
    if (final) {
      outcomes.add(1, { flow: 'order', outcome: final.status });
      check(final, {
        'order: terminal with a reason when failed': (b) => b.status === 'completed' || !!b.failure_reason,
      });
    }
  }
  sleep(THINK_TIME_S);
}

// --- scenario 6: buffered ingestion ------------------------------------------------------------------------

export function click() {
  const payload = { user_id: 1 + Math.floor(Math.random() * 1000), page: `/page/${__ITER % 10}` };
  const response = http.post(`${URLS.analyticsservice}/track_click`, JSON.stringify(payload), accept('click'));
  check(response, {
    'click: 200': (r) => r.status === 200,
    'click: tracked': (r) => r.status === 200 && parse(r) !== null && parse(r).status === 'tracked',
  });
}

// --- summary --------------------------------------------------------------------------------------------

export function handleSummary(data) {
  const rows = FLOWS.map((flow) => {
    const metric = data.metrics[`http_req_duration{kind:accept,flow:${flow},expected_response:true}`];
    const count = data.metrics[`http_reqs{kind:accept,flow:${flow},expected_response:true}`];
    const values = metric ? metric.values : {};
    return {
      flow,
      requests: count ? count.values.count : 0,
      p50_ms: values.med, p95_ms: values['p(95)'], p99_ms: values['p(99)'], max_ms: values.max,
    };
  });
  const report = {
    profile: PROFILE,
    accept_latency: rows,
    checks_passed: data.metrics.checks ? data.metrics.checks.values.rate : null,
    http_req_failed: data.metrics.http_req_failed ? data.metrics.http_req_failed.values.rate : null,
    thresholds_failed: Object.entries(data.metrics)
      .filter(([, metric]) => metric.thresholds && Object.values(metric.thresholds).some((t) => !t.ok))
      .map(([name]) => name),
    saga_completion_seconds: data.metrics.saga_completion_seconds ? data.metrics.saga_completion_seconds.values : null,
    report_job_completion_seconds: data.metrics.report_job_completion_seconds
      ? data.metrics.report_job_completion_seconds.values : null,
    payment_completion_seconds: data.metrics.payment_completion_seconds
      ? data.metrics.payment_completion_seconds.values : null,
    metrics: data.metrics,
  };
  const table = ['flow            requests   p50 ms   p95 ms   p99 ms'].concat(rows.map((row) => [
    row.flow.padEnd(15), String(row.requests).padStart(9),
    ...[row.p50_ms, row.p95_ms, row.p99_ms].map((v) => (v === undefined ? '-' : v.toFixed(1)).padStart(8)),
  ].join(' '))).join('\n');
  const thresholdLines = Object.entries(data.metrics)
    .filter(([, metric]) => metric.thresholds)
    .flatMap(([name, metric]) => Object.entries(metric.thresholds)
      .map(([expression, result]) => `  ${result.ok ? 'ok  ' : 'FAIL'} ${name}: ${expression}`));
  const pct = (value) => (value === null || value === undefined ? '-' : `${(value * 100).toFixed(3)} %`);
  const text = [
    `profile ${PROFILE}: checks passed ${pct(report.checks_passed)}, http_req_failed ${pct(report.http_req_failed)}`,
    '', 'Accept latency by flow:', table, '', 'Thresholds:', ...thresholdLines, '',
  ].join('\n');
  return {
    stdout: text,
    [`${SUMMARY_PREFIX}.json`]: JSON.stringify(report, null, 2),
    [`${SUMMARY_PREFIX}.txt`]: text,
  };
}
