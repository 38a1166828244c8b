// The aggregator's query API (aggregator/openapi.yaml), same origin.

export interface Window {
  from: string;
  to: string;
  from_unix_ns: number;
  to_unix_ns: number;
}

export const PHASES = ['frontend', 'queue', 'prefill', 'decode', 'delivery'] as const;
export type Phase = (typeof PHASES)[number];

export interface QuantileRow {
  q: number;
  e2e_ms: number | null;
  ttft_ms: number | null;
  tpot_ms: number | null;
  frontend_ms: number | null;
  queue_ms: number | null;
  prefill_ms: number | null;
  decode_ms: number | null;
  delivery_ms: number | null;
  /** GPU time, CPU-bound time, collective wait (absent from older aggregators). */
  resources?: Resources<number | null>;
  /** Token gaps: the wire's longest, the engine's TPOT and longest (absent from older aggregators). */
  gaps?: Gaps<number | null>;
}

/** Token gaps beside the wire's TPOT: the client's longest gap, the engine's TPOT and longest gap. */
export const GAPS = ['max_gap', 'engine_tpot', 'engine_max_gap'] as const;
export type Gap = (typeof GAPS)[number];
export type Gaps<T> = Record<Gap, T>;

/** What a request used on the GPUs, beside its phases (they overlap them). */
export const RESOURCES = ['gpu', 'gpu_host_bound', 'collective_wait'] as const;
export type Resource = (typeof RESOURCES)[number];
export type Resources<T> = Record<Resource, T>;
export const RESOURCE_LABELS: Resources<string> = {
  gpu: 'GPU time',
  gpu_host_bound: 'CPU-bound steps',
  collective_wait: 'collective wait',
};

export interface PhaseMean {
  mean_ms: number;
  share: number;
  requests: number;
}

export interface PhaseDiff {
  mean_ms: number;
  share: number;
}

export interface Cohort {
  definition: string;
  count: number;
  min_e2e_ms: number;
  max_e2e_ms: number;
  mean_e2e_ms: number;
  phases: Record<Phase, PhaseMean>;
  covered_share: number;
  unattributed: PhaseMean;
  resources?: Resources<PhaseMean>;
}

export interface SlowVsMedian {
  slow_quantile: number;
  slow: Cohort;
  median: Cohort;
  diff: Record<Phase, PhaseDiff>;
  unattributed_diff: PhaseDiff;
  resources_diff?: Resources<PhaseDiff>;
  largest_difference: string | null;
}

export interface Breakdown {
  window: Window;
  count: number;
  samples: Record<string, number>;
  quantiles: QuantileRow[];
  slow_vs_median: SlowVsMedian | null;
}

export interface RequestSummary {
  trace_id: string;
  start: string;
  start_unix_ns: number;
  end_unix_ns: number;
  node: string;
  pid: number;
  engine: string;
  model: string;
  method: string;
  path: string;
  status: number;
  outcome: string;
  stream: boolean;
  e2e_ms: number;
  ttft_ms: number;
  tpot_ms: number | null;
  frontend_ms: number | null;
  queue_ms: number | null;
  prefill_ms: number | null;
  decode_ms: number | null;
  delivery_ms: number | null;
  engine_ttft_ms: number | null;
  engine_e2e_ms: number | null;
  /** Time to first visible text (streams; older rows: absent). */
  first_text_ms?: number | null;
  /** The response's `usage` counts (null when the server sent none). */
  prompt_tokens?: number | null;
  completion_tokens?: number | null;
  read_wait_ms: number;
  req_bytes: number;
  resp_bytes: number;
  chunks: number;
  engine_steps: number;
  max_gap_ms: number;
  client: string;
  server: string;
  response_id: string;
  x_request_id: string;
  engine_request_id: string;
  gave_up: string;
  /** GPU time of its steps, latency view (null: no step seen by the CUDA hooks). */
  gpu_ms?: number | null;
  /** Its share of its steps' GPU time, split by tokens. */
  gpu_cost_ms?: number | null;
  /** Wall time of its host-paced (CPU-bound) steps. */
  gpu_host_bound_ms?: number | null;
  /** Its steps whose GPU time is only an upper bound. */
  gpu_upper_bound_steps?: number | null;
  /** NCCL collectives of its steps lined up across ranks, their waits, the straggler. */
  collectives?: number | null;
  collective_wait_ms?: number | null;
  straggler_rank?: number | null;
  straggler_lag_ms?: number | null;
}

export interface RequestList {
  window: Window;
  total: number;
  offset: number;
  limit: number;
  next_offset: number | null;
  sort: string;
  order: string;
  requests: RequestSummary[];
}

export interface Endpoint {
  ip: string;
  port: number;
  netns: number;
}

export interface RequestDetail extends RequestSummary {
  step_ids: number[];
  chunk_offsets_ms: number[];
  /** Engine-side token times (absent from older aggregators). */
  engine_output_offsets_ms?: number[];
  engine_instance: string | null;
  client_endpoint: Endpoint | null;
  server_endpoint: Endpoint | null;
  /** TCP sequence numbers of the request's and the response's first bytes. */
  req_tcp_seq: number | null;
  resp_tcp_seq: number | null;
  /** The exchange's hop id: the caller's `http.client` span id (absent from older aggregators). */
  hop_id?: string | null;
}

/** One half of a hop, as its node recorded it. */
export interface HopHalf {
  node: string;
  pid: number;
  trace_id: string | null;
  start_unix_ns: number;
  end_unix_ns: number;
}

/** An HTTP exchange between two processes: the caller's span and the server's request. */
export interface Hop {
  hop_id: string;
  /** `outbound`: this trace made the call; `inbound`: it served it. */
  direction: string;
  /** `header`, `response_id`, `body`, `timing`, `none`; null without the caller's half. */
  link: string | null;
  client: HopHalf | null;
  server: HopHalf | null;
  to_server_ms: number | null;
  from_server_ms: number | null;
  /** Bounds of the server node's clock minus the caller node's (ns). */
  offset_lo_ns: number | null;
  offset_hi_ns: number | null;
  offset_samples: number;
  offset_consistent: boolean;
}

/** A node's clock against the asked trace's node's (`follow=hops`). */
export interface NodeClock {
  node: string;
  offset_lo_ns: number;
  offset_hi_ns: number;
}

export interface Span {
  /** Its trace (another one than the asked trace in a `follow=hops` view). */
  trace_id?: string;
  /** `follow=hops`: its node's clock minus the asked trace's node's, and the error of that. */
  clock_offset_ns?: number;
  clock_error_ns?: number;
  span_id: string;
  parent_span_id: string;
  name: string;
  node: string;
  pid: number;
  start_unix_ns: number;
  end_unix_ns: number;
  offset_ms: number;
  duration_ms: number;
  attributes: Record<string, string>;
  links: { trace_id: string; span_id: string }[];
}

export interface Step {
  node: string;
  step_id: number;
  engine_instance: string | null;
  start_unix_ns: number | null;
  end_unix_ns: number | null;
  offset_ms: number | null;
  duration_ms: number | null;
  batch_size: number | null;
  /** `requests` (vLLM) or `tokens` (llama.cpp). */
  batch_unit: string | null;
  /** Tokens its requests computed in it, and this request's (the cost weight). */
  tokens?: number | null;
  request_tokens?: number | null;
  /** What the GPU did in it (null: not seen by the CUDA hooks). */
  gpu?: StepGpu | null;
  /** Its NCCL collectives lined up across ranks (null: none seen). */
  collectives?: StepCollectives | null;
  /** The step's own span (the `engine.step` span under each request's root has this id). */
  span_id: string | null;
  trace_id: string | null;
  shared_with_count: number;
  shared_with: string[];
}

export interface StepGpu {
  /** `full_graph`, `piecewise` or `eager`. */
  class: string;
  gpu_ms: number;
  launch_ms: number;
  sync_wait_ms: number;
  graph_launches: number;
  kernel_launches: number;
  dtoh_bytes: number;
  htod_bytes: number;
  host_bound: boolean;
  upper_bound: boolean;
  ranks: number;
}

export interface StepCollectives {
  count: number;
  wait_ms: number;
  straggler_rank: number;
  straggler_lag_ms: number;
}

export interface Neighbour extends RequestSummary {
  shared_steps: number;
}

export interface Trace {
  trace_id: string;
  nodes: string[];
  requests: RequestDetail[];
  spans: Span[];
  spans_truncated: boolean;
  steps: Step[];
  steps_truncated: boolean;
  batched_with: Neighbour[];
  /** Calls this trace made and the call it served (absent from older aggregators). */
  hops?: Hop[];
  /** `follow=hops`: each node's clock against the first's. */
  clocks?: NodeClock[];
  /** `follow=hops`: the other traces in the view. */
  linked_traces?: string[];
}

export interface FilterValues {
  window: Window;
  count: number;
  models: string[];
  nodes: string[];
  engines: string[];
  statuses: number[];
  outcomes: string[];
  /** Run tags, `key=value` (node-probe `--tag`). */
  tags?: string[];
  /** Tenant labels (node-probe `--tenant-header`/`--tenant-field`). */
  tenants?: string[];
  truncated: boolean;
}

/** One value of `GET /api/v1/groups`; lists follow `Groups.quantiles`. */
export interface Group {
  value: string;
  count: number;
  errors: number;
  e2e_ms: (number | null)[];
  ttft_ms: (number | null)[];
  tpot_ms: (number | null)[];
}

export interface Groups {
  window: Window;
  by: string;
  quantiles: number[];
  count: number;
  groups: Group[];
  truncated: boolean;
}

/** One cause of `GET /api/v1/explain/{trace_id}`. */
export interface Finding {
  cause: string;
  phase: string;
  value_ms: number;
  typical_ms: number;
  excess_ms: number;
  sentence: string;
}

/** `GET /api/v1/explain/{trace_id}`: why this request was slower than typical. */
export interface RequestExplanation {
  trace_id: string;
  node: string;
  model: string;
  e2e_ms: number;
  typical_e2e_ms: number | null;
  reference_count: number;
  summary: string;
  dominant: string | null;
  findings: Finding[];
}

export interface TsBucket {
  start: string;
  start_unix_s: number;
  count: number;
  e2e_ms: number[] | null;
  ttft_ms: number[] | null;
  tpot_ms: number[] | null;
  tpot_count: number;
}

export interface Timeseries {
  window: Window;
  step_s: number;
  quantiles: number[];
  count: number;
  buckets: TsBucket[];
}

export interface Histogram {
  window: Window;
  metric: string;
  scale: string;
  count: number;
  min_ms: number | null;
  max_ms: number | null;
  buckets: { lo_ms: number; hi_ms: number; count: number }[];
}

/** An API error, with the server's message. */
export class ApiError extends Error {
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

/** GET `/api/v1/{path}?{params}` as JSON. */
export async function get<T>(path: string, params?: URLSearchParams, signal?: AbortSignal): Promise<T> {
  const qs = params && params.toString() ? `?${params.toString()}` : '';
  const r = await fetch(`/api/v1/${path}${qs}`, { signal, headers: { accept: 'application/json' } });
  if (!r.ok) {
    let msg = `${r.status} ${r.statusText}`;
    try {
      const body = (await r.json()) as { error?: { message?: string } };
      if (body.error?.message) msg = body.error.message;
    } catch {
      // not JSON
    }
    throw new ApiError(msg, r.status);
  }
  return (await r.json()) as T;
}
