// k6 load test for the six scenarios of the asynchronous fleet, all running in parallel.
//
//   k6 run k6-tests/script-async.js                                  # default profile, http://localhost:81xx
//   k6 run -e MODE=sync k6-tests/script-async.js                     # the synchronous fleet, :80xx
//   k6 run -e PROFILE=smoke k6-tests/script-async.js                 # ~20 s, light
//   k6 run -e PROFILE=stress k6-tests/script-async.js                # ramps every scenario up
//   k6 run -e BASE_URL=http://10.0.0.5 k6-tests/script-async.js      # another host, design-doc ports
//   k6 run -e ORDERSERVICE_URL=http://127.0.0.1:9000 ...             # one service elsewhere (any port)
//   k6 run -e PRODUCT_IDS=7,8,9 ...                                  # update and order these, not 1-3
//   k6 run -e FLOWS=order,click ...                                  # only these scenarios
//
// Every request carries two tags of our own: `flow` (register, payment, product_update, report,
// order, click) and `kind` (`accept` for the request a user waits on, `poll` for status polling).
// k6 overwrites a tag named `scenario` with the scenario's name, so thresholds filter on `flow`,
// and a `count>0` threshold per flow makes an empty series fail instead of passing vacuously.
// Checks are tagged with their flow too, so a failing flow with few requests (reports, orders) is
// not hidden behind thousands of passing clicks.
//
// MODE=sync drives the synchronous fleet (FLEET_MODE=sync) with the same load: each request answers with
// the outcome (201 for a registration, the final payment, the report's hash, the settled order), so there
// is nothing to poll, and the request's own latency is the completion time. The design document's accept
// limits apply to the asynchronous fleet only; both modes fail on errors, failed checks and empty series.
//
// The run fails (exit code 99) when any threshold fails. handleSummary writes SUMMARY_PREFIX.json
// (machine-readable: per-flow figures, every threshold) and SUMMARY_PREFIX.txt (what stdout shows).

import http from 'k6/http';
import { check, sleep, fail } from 'k6';
import { Counter, Trend } from 'k6/metrics';

const PROFILE = (__ENV.PROFILE || 'default').toLowerCase();
const MODE = (__ENV.MODE || 'async').toLowerCase();
if (!['async', 'sync'].includes(MODE)) fail(`MODE must be async or sync: ${__ENV.MODE}`);
const SYNC = MODE === 'sync';
const THINK_TIME_S = Number(__ENV.THINK_TIME_S || 1);
const POLL_INTERVAL_S = Number(__ENV.POLL_INTERVAL_S || 0.25);
// The saga times out by itself after SAGA_TIMEOUT_S (30 s): an order still pending later is lost.
const SAGA_DEADLINE_S = Number(__ENV.SAGA_DEADLINE_S || 40);
const JOB_DEADLINE_S = Number(__ENV.JOB_DEADLINE_S || 120);
const PAYMENT_DEADLINE_S = Number(__ENV.PAYMENT_DEADLINE_S || 30);
const SUMMARY_PREFIX = __ENV.SUMMARY_PREFIX || 'k6-summary';
// The products scenarios 3 and 5 update and order: the catalogue's seed by default.
const PRODUCT_IDS = (__ENV.PRODUCT_IDS || '1,2,3').split(',').map(Number);
if (!PRODUCT_IDS.every((id) => Number.isInteger(id) && id > 0)) fail(`PRODUCT_IDS must list product ids: ${__ENV.PRODUCT_IDS}`);

// The synchronous fleet answers 100 ports lower (common/addresses.py): both fleets can run at once.
const PORT_SHIFT = SYNC ? -100 : 0;
const PORTS = Object.fromEntries(Object.entries({
  userservice: 8101, paymentservice: 8102, productservice: 8103, reportservice: 8104,
  orderservice: 8105, analyticsservice: 8106,
}).map(([service, port]) => [service, port + PORT_SHIFT]));

function serviceUrl(service) {
  const override = __ENV[`${service.toUpperCase()}_URL`];
  if (override) return override.replace(/\/+$/, '');
  return `${(__ENV.BASE_URL || 'http://localhost').replace(/\/+$/, '')}:${PORTS[service]}`;
}

const URLS = Object.fromEntries(Object.keys(PORTS).map((service) => [service, serviceUrl(service)]));
const JSON_HEADERS = { 'Content-Type': 'application/json' };
const ALL_FLOWS = ['register', 'payment', 'product_update', 'report', 'order', 'click'];
// FLOWS=order,click runs only those scenarios (to look at one in isolation); all six by default.
const FLOWS = __ENV.FLOWS ? __ENV.FLOWS.split(',').map((flow) => flow.trim()) : ALL_FLOWS;
if (FLOWS.length === 0 || !FLOWS.every((flow) => ALL_FLOWS.includes(flow))) {
  fail(`FLOWS must list some of ${ALL_FLOWS.join(', ')}: ${__ENV.FLOWS}`);
}
// Accept-latency limits of the design document: 100 ms for scenarios 1-5, 50 ms for clicks.
const ACCEPT_P95_LIMIT_MS = { register: 100, payment: 100, product_update: 100, report: 100, order: 100, click: 50 };

// Only these statuses count as successes in http_req_failed; 404/409/422/5xx are failures.
http.setResponseCallback(http.expectedStatuses(200, 201, 202));

// From just before the accept request until polling saw the final status (a user's view; the
// resolution is POLL_INTERVAL_S). Times in milliseconds, shown as durations.
const sagaCompletion = new Trend('saga_completion_duration', true);
const jobCompletion = new Trend('report_job_completion_duration', true);
const paymentCompletion = new Trend('payment_completion_duration', true);
const outcomes = new Counter('async_outcomes');
// The synchronous fleet's answer to an order whose payment is declined (the reservation released).
const SYNC_DECLINED_ORDER_STATUS = 402;
const deadlineMisses = new Counter('async_deadline_misses');

// --- load profiles ---------------------------------------------------------------------------------

function closedLoop(vus, duration) {
  return { executor: 'constant-vus', vus, duration, gracefulStop: '30s' };
}

function arrivals(rate, duration) {
  // Every VU up front: a VU initialised mid-run costs arrivals, which would count as dropped.
  const vus = Math.max(50, rate);
  return {
    executor: 'constant-arrival-rate', rate, timeUnit: '1s', duration,
    preAllocatedVUs: vus, maxVUs: vus, gracefulStop: '10s',
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
      executor: 'ramping-arrival-rate', startRate: 100, timeUnit: '1s', preAllocatedVUs: 400, maxVUs: 1000,
      gracefulStop: '10s', stages: [{ duration: '60s', target: 2000 }, { duration: '20s', target: 2000 }],
    },
  },
};

if (!PROFILES[PROFILE]) fail(`unknown PROFILE ${PROFILE}: use smoke, default or stress`);

const scenarios = Object.fromEntries(
  Object.entries(PROFILES[PROFILE])
    .filter(([flow]) => FLOWS.includes(flow))
    .map(([flow, executor]) => [flow, { ...executor, exec: flow }]),
);

function acceptLatencyMetric(flow) {
  // Latency of successful requests only: failures are counted by http_req_failed and the checks.
  return `http_req_duration{kind:accept,flow:${flow},expected_response:true}`;
}

// The threshold that keeps a latency series in the summary: the design limit for the asynchronous fleet,
// one no run can fail for the synchronous one (k6 reports only the sub-metrics thresholds name).
function latencyThreshold(flow) {
  return SYNC ? 'p(95)>=0' : `p(95)<${ACCEPT_P95_LIMIT_MS[flow]}`;
}

function acceptCountMetric(flow) {
  return `http_reqs{kind:accept,flow:${flow},expected_response:true}`;
}

const thresholds = {
  checks: ['rate>0.999'],
  http_req_failed: ['rate<0.001'],
  // An arrival-rate scenario that runs out of VUs skips arrivals: the fleet did not hold the rate.
  dropped_iterations: ['count<1'],
  async_deadline_misses: ['count<1'],
};
for (const flow of FLOWS) {
  thresholds[acceptLatencyMetric(flow)] = [latencyThreshold(flow)];
  // At least one accepted request per flow, so no latency threshold can pass on an empty series.
  thresholds[acceptCountMetric(flow)] = ['count>0'];
  thresholds[`checks{flow:${flow}}`] = ['rate>0.999'];
  thresholds[`http_req_failed{flow:${flow}}`] = ['rate<0.001'];
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
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

// Poll `url` until `isDone(body)`; check every answer against `contract`; record the time from
// `startedAt` in `trend`; count a deadline miss if the final status does not come in time.
function pollUntil(flow, url, contract, isDone, deadlineS, startedAt, trend) {
  const deadline = Date.now() + deadlineS * 1000;
  while (Date.now() < deadline) {
    sleep(POLL_INTERVAL_S);
    const response = http.get(url, poll(flow));
    const body = parse(response);
    const valid = check(response, {
      [`${flow} status: 200`]: (r) => r.status === 200,
      [`${flow} status: contract`]: () => body !== null && contract(body),
    }, { flow });
    if (valid && isDone(body)) {
      trend.add(Date.now() - startedAt);
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
    [SYNC ? 'register: 201' : 'register: 202']: (r) => r.status === (SYNC ? 201 : 202),
    'register: contract': () => body !== null && Number.isInteger(body.id) && body.email === email
      && body.event_published === true && typeof body.message === 'string',
  }, { flow: 'register' });
  sleep(THINK_TIME_S);
}

// --- scenario 2: background payment --------------------------------------------------------------------

const PAYMENT_STATUSES = ['processing', 'completed', 'failed', 'cancelled', 'refunded'];

export function payment() {
  const startedAt = Date.now();
  const amount = Math.round((1 + Math.random() * 500) * 100) / 100;
  const response = http.post(
    `${URLS.paymentservice}/process_payment`, JSON.stringify({ amount, currency: 'USD' }), accept('payment'),
  );
  const body = parse(response);
  if (SYNC) {
    const settled = check(response, {
      'payment: 200': (r) => r.status === 200,
      'payment: completed with a transaction id': () => body !== null && body.status === 'completed'
        && !!body.transaction_id && Number(body.amount) === amount && body.currency === 'USD',
    }, { flow: 'payment' });
    if (settled) {
      paymentCompletion.add(Date.now() - startedAt);
      outcomes.add(1, { flow: 'payment', outcome: body.status });
    }
    sleep(THINK_TIME_S);
    return;
  }
  const accepted = check(response, {
    'payment: 202': (r) => r.status === 202,
    'payment: contract': () => body !== null && typeof body.payment_id === 'string'
      && body.status === 'processing' && typeof body.message === 'string',
  }, { flow: 'payment' });
  if (accepted && __ITER % 5 === 0) {
    // Follow one payment in five to the end (PAYMENT_DELAY_S each); status polls are tagged apart.
    const final = pollUntil('payment', `${URLS.paymentservice}/payments/${body.payment_id}`,
      (b) => b.payment_id === body.payment_id && PAYMENT_STATUSES.includes(b.status),
      (b) => b.status !== 'processing', PAYMENT_DEADLINE_S, startedAt, paymentCompletion);
    if (final) {
      outcomes.add(1, { flow: 'payment', outcome: final.status });
      check(final, {
        // PAYMENT_FAILURE_RATE is 0 unless the fleet was configured otherwise.
        'payment: completed with a transaction id': (b) => b.status === 'completed' && !!b.transaction_id
          && Number(b.amount) === amount && b.currency === 'USD',
      }, { flow: 'payment' });
    }
  }
  sleep(THINK_TIME_S);
}

// --- scenario 3: fan-out -----------------------------------------------------------------------------

export function product_update() {
  const productId = PRODUCT_IDS[__ITER % PRODUCT_IDS.length];
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
  }, { flow: 'product_update' });
  sleep(THINK_TIME_S);
}

// --- scenario 4: CPU job offloading ----------------------------------------------------------------------

const JOB_STATUSES = ['queued', 'running', 'completed', 'failed'];

export function report() {
  const startedAt = Date.now();
  const response = http.post(
    `${URLS.reportservice}/generate_report`, JSON.stringify({ report_type: 'monthly' }), accept('report'),
  );
  const body = parse(response);
  if (SYNC) {
    const done = check(response, {
      'report: 200': (r) => r.status === 200,
      'report: completed with a hash': () => body !== null && body.status === 'completed' && body.progress === 100
        && typeof body.report_hash === 'string' && body.report_hash.length > 0,
    }, { flow: 'report' });
    if (done) {
      jobCompletion.add(Date.now() - startedAt);
      outcomes.add(1, { flow: 'report', outcome: body.status });
    }
    sleep(THINK_TIME_S);
    return;
  }
  const accepted = check(response, {
    'report: 202': (r) => r.status === 202,
    'report: contract': () => body !== null && typeof body.job_id === 'string' && body.status === 'queued'
      && typeof body.message === 'string',
  }, { flow: 'report' });
  if (accepted) {
    const final = pollUntil('report', `${URLS.reportservice}/jobs/${body.job_id}`,
      (b) => b.job_id === body.job_id && JOB_STATUSES.includes(b.status) && Number.isInteger(b.progress)
        && b.progress >= 0 && b.progress <= 100,
      (b) => b.status === 'completed' || b.status === 'failed', JOB_DEADLINE_S, startedAt, jobCompletion);
    if (final) {
      outcomes.add(1, { flow: 'report', outcome: final.status });
      check(final, {
        'report: completed with a hash': (b) => b.status === 'completed' && b.progress === 100
          && typeof b.report_hash === 'string' && b.report_hash.length > 0,
      }, { flow: 'report' });
    }
  }
  sleep(THINK_TIME_S);
}

// --- scenario 5: the order saga ----------------------------------------------------------------------------

export function order() {
  const startedAt = Date.now();
  const productId = PRODUCT_IDS[__ITER % PRODUCT_IDS.length];
  // Both saga outcomes run under load: half the payments succeed, half are declined (compensation).
  const behaviour = __ITER % 2 === 0 ? 'succeed' : 'fail';
  const payload = { product_id: productId, quantity: 1, payment_behaviour: behaviour };
  if (SYNC) {
    syncOrder(behaviour, productId, payload, startedAt);
    sleep(THINK_TIME_S);
    return;
  }
  const response = http.post(`${URLS.orderservice}/create_order`, JSON.stringify(payload), accept('order'));
  const body = parse(response);
  const accepted = check(response, {
    'order: 202': (r) => r.status === 202,
    'order: contract': () => body !== null && Number.isInteger(body.id) && body.product_id === productId
      && body.quantity === 1 && body.status === 'pending',
  }, { flow: 'order' });
  if (accepted) {
    const final = pollUntil('order', `${URLS.orderservice}/orders/${body.id}`,
      (b) => b.id === body.id && ['pending', 'completed', 'failed'].includes(b.status) && Array.isArray(b.timeline),
      (b) => b.status !== 'pending', SAGA_DEADLINE_S, startedAt, sagaCompletion);
    if (final) {
      outcomes.add(1, { flow: 'order', outcome: final.status });
      const steps = final.timeline.map((step) => step.step);
      check(final, {
        'order: the payment decided the outcome': (b) => (behaviour === 'succeed'
          ? b.status === 'completed' && b.failure_reason === null && steps.includes('payment_completed')
          // The order fails as the payment fails; the stock's release may land a moment later.
          : b.status === 'failed' && b.failure_reason === 'payment_declined' && steps.includes('payment_failed')),
      }, { flow: 'order' });
    }
  }
  sleep(THINK_TIME_S);
}

// The synchronous fleet answers once the saga has settled: 201 with the completed order, or 402 with the
// failed one (compensated already) when the payment was declined.
function syncOrder(behaviour, productId, payload, startedAt) {
  const expected = behaviour === 'succeed' ? 201 : SYNC_DECLINED_ORDER_STATUS;
  const params = { ...accept('order'), responseCallback: http.expectedStatuses(expected) };
  const response = http.post(`${URLS.orderservice}/create_order`, JSON.stringify(payload), params);
  const body = parse(response);
  const order = body === null ? null : (behaviour === 'succeed' ? body : body.order);
  const settled = check(response, {
    [`order: ${expected}`]: (r) => r.status === expected,
    'order: the payment decided the outcome': () => order !== null && order !== undefined
      && order.product_id === productId && Array.isArray(order.timeline)
      && (behaviour === 'succeed'
        ? order.status === 'completed' && order.timeline.some((step) => step.step === 'payment_completed')
        : order.status === 'failed' && order.failure_reason === 'payment_declined'),
  }, { flow: 'order' });
  if (settled) {
    sagaCompletion.add(Date.now() - startedAt);
    outcomes.add(1, { flow: 'order', outcome: order.status });
  }
}

// --- scenario 6: buffered ingestion ------------------------------------------------------------------------

export function click() {
  const payload = { user_id: 1 + Math.floor(Math.random() * 1000), page: `/page/${__ITER % 10}` };
  const response = http.post(`${URLS.analyticsservice}/track_click`, JSON.stringify(payload), accept('click'));
  check(response, {
    'click: 200': (r) => r.status === 200,
    'click: tracked': (r) => r.status === 200 && (parse(r) || {}).status === 'tracked',
  }, { flow: 'click' });
}

// --- summary --------------------------------------------------------------------------------------------

function valuesOf(data, name) {
  const metric = data.metrics[name];
  return metric ? metric.values : null;
}

function flowRow(data, flow) {
  const latency = valuesOf(data, acceptLatencyMetric(flow)) || {};
  const accepted = valuesOf(data, acceptCountMetric(flow));
  const checks = valuesOf(data, `checks{flow:${flow}}`);
  const failed = valuesOf(data, `http_req_failed{flow:${flow}}`);
  return {
    flow,
    accepted: accepted ? accepted.count : 0,
    p50_ms: latency.med, p95_ms: latency['p(95)'], p99_ms: latency['p(99)'], max_ms: latency.max,
    p95_limit_ms: SYNC ? null : ACCEPT_P95_LIMIT_MS[flow],
    // Rate metrics count `passes` as samples that are true: for http_req_failed, failed requests.
    failed_requests: failed ? failed.passes : 0,
    requests: failed ? failed.passes + failed.fails : 0,
    checks_passed: checks ? checks.passes : 0,
    checks_failed: checks ? checks.fails : 0,
  };
}

function formatMs(value) {
  return value === undefined || value === null ? '-' : value.toFixed(1);
}

export function handleSummary(data) {
  const rows = FLOWS.map((flow) => flowRow(data, flow));
  const thresholdResults = Object.entries(data.metrics)
    .filter(([, metric]) => metric.thresholds)
    .flatMap(([name, metric]) => Object.entries(metric.thresholds)
      .map(([expression, result]) => ({ metric: name, expression, ok: result.ok })))
    .sort((a, b) => a.metric.localeCompare(b.metric));
  const checks = valuesOf(data, 'checks');
  const requestsFailed = valuesOf(data, 'http_req_failed');
  const completion = {
    order: valuesOf(data, 'saga_completion_duration'),
    report: valuesOf(data, 'report_job_completion_duration'),
    payment: valuesOf(data, 'payment_completion_duration'),
  };
  const report = {
    profile: PROFILE,
    mode: MODE,
    targets: URLS,
    accept_latency: rows,
    checks: checks ? { passed: checks.passes, failed: checks.fails, rate: checks.rate } : null,
    http_req_failed_rate: requestsFailed ? requestsFailed.rate : null,
    dropped_iterations: (valuesOf(data, 'dropped_iterations') || { count: 0 }).count,
    deadline_misses: (valuesOf(data, 'async_deadline_misses') || { count: 0 }).count,
    completion_ms: completion,
    thresholds: thresholdResults,
    thresholds_failed: thresholdResults.filter((t) => !t.ok).map((t) => `${t.metric}: ${t.expression}`),
    metrics: data.metrics,
  };

  const header = 'flow            accepted  failed  checks failed   p50 ms   p95 ms   p99 ms   max ms';
  const table = [header].concat(rows.map((row) => [
    row.flow.padEnd(15), String(row.accepted).padStart(8), String(row.failed_requests).padStart(7),
    String(row.checks_failed).padStart(14),
    ...[row.p50_ms, row.p95_ms, row.p99_ms, row.max_ms].map((v) => formatMs(v).padStart(8)),
  ].join(' ')));
  const completionLines = Object.entries(completion).filter(([, values]) => values).map(([flow, values]) => (
    `  ${flow.padEnd(8)} ${String(values.count).padStart(5)} done   p50 ${formatMs(values.med)} ms   `
    + `p95 ${formatMs(values['p(95)'])} ms   max ${formatMs(values.max)} ms`));
  const pct = (value) => (value === null || value === undefined ? '-' : `${(value * 100).toFixed(3)} %`);
  const text = [
    `profile ${PROFILE}, ${MODE} fleet: checks passed ${pct(checks && checks.rate)}, http_req_failed ${pct(report.http_req_failed_rate)}, `
      + `dropped iterations ${report.dropped_iterations}, deadline misses ${report.deadline_misses}`,
    '', 'Accept latency by flow (successful requests; polling excluded):', ...table,
    '', SYNC ? 'Completion (the request, until its answer):' : 'Completion (accept request to final status, seen by polling):',
    ...completionLines,
    '', 'Thresholds:', ...thresholdResults.map((t) => `  ${t.ok ? 'ok  ' : 'FAIL'} ${t.metric}: ${t.expression}`),
    '', report.thresholds_failed.length ? `${report.thresholds_failed.length} THRESHOLDS FAILED` : 'all thresholds passed',
    '',
  ].join('\n');
  return {
    stdout: text,
    [`${SUMMARY_PREFIX}.json`]: JSON.stringify(report, null, 2),
    [`${SUMMARY_PREFIX}.txt`]: text,
  };
}
