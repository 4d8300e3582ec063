/** Error codes of the API and the status each maps to: the one place that decides statuses. */
export const ERROR_STATUS = {
  malformed_json: 400,
  invalid_utf8: 400,
  validation_failed: 400,
  files_span_units: 400,
  invalid_cursor: 400,
  unauthorized: 401,
  forbidden: 403,
  admin_disabled: 403,
  not_found: 404,
  method_not_allowed: 405,
  conflict: 409,
  upgrade_required: 426,
  already_finished: 409,
  idempotency_key_reused: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  internal: 500,
  log_unavailable: 503,
  replica_unavailable: 503,
  main_unavailable: 503,
} as const;
export type ErrorCode = keyof typeof ERROR_STATUS;
export type ErrorDetail = { path: string; message: string };

export class ApiError extends Error {
  readonly status: (typeof ERROR_STATUS)[ErrorCode];

  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: ErrorDetail[],
    options?: { cause?: unknown; retryAfterSeconds?: number },
  ) {
    super(message, { cause: options?.cause });
    this.name = 'ApiError';
    this.status = ERROR_STATUS[code];
    this.retryAfterSeconds = options?.retryAfterSeconds;
  }

  readonly retryAfterSeconds: number | undefined;
}

export const errorBody = (code: ErrorCode, message: string, details?: ErrorDetail[]) => ({
  error: details && details.length > 0 ? { code, message, details } : { code, message },
});

export const notFound = (what: string) => new ApiError('not_found', `${what} not found`);
