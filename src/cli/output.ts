/** Human output: an aligned table; machine output: JSON. Every command offers both. */
export const table = (rows: readonly Record<string, unknown>[]): string => {
  if (rows.length === 0) {
    return '(none)';
  }
  const columns = [...new Set(rows.flatMap((row) => Object.keys(row)))];
  // A value with line breaks (a PostgreSQL error with its detail, say) stays on its row.
  const cell = (value: unknown) =>
    value === undefined || value === null
      ? '-'
      : typeof value === 'object'
        ? JSON.stringify(value)
        : String(value)
            .trim()
            .split(/\s*\n\s*/)
            .join('; ');
  const widths = columns.map((col) =>
    Math.max(col.length, ...rows.map((row) => cell(row[col]).length)),
  );
  const line = (values: string[]) =>
    values
      .map((v, i) => v.padEnd(widths[i] ?? 0))
      .join('  ')
      .trimEnd();
  return [
    line(columns.map((c) => c.toUpperCase())),
    ...rows.map((row) => line(columns.map((c) => cell(row[c])))),
  ].join('\n');
};

export const print = (text: string) => {
  process.stdout.write(`${text}\n`);
};

export class CliError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CliError';
  }
}

/**
 * A flag's whole number, at least `min` and below `below` when given. Commands read their flags
 * before connecting, so a mistyped flag is named even while Redis or a database is away.
 */
export const wholeNumberFlag = (
  value: string | undefined,
  name: string,
  bounds: { min?: number; below?: number } = {},
): number | undefined => {
  if (value === undefined) {
    return undefined;
  }
  if (!/^\d+$/.test(value)) {
    throw new CliError(`${name} takes a whole number, not ${JSON.stringify(value)}`);
  }
  const n = Number(value);
  // Past it, Number() rounds, and Redis refuses what it is sent without naming the flag.
  if (!Number.isSafeInteger(n)) {
    throw new CliError(`${name} must be at most ${Number.MAX_SAFE_INTEGER}`);
  }
  if (bounds.min !== undefined && n < bounds.min) {
    throw new CliError(`${name} must be at least ${bounds.min}`);
  }
  if (bounds.below !== undefined && n >= bounds.below) {
    throw new CliError(`${name} must be below ${bounds.below}`);
  }
  return n;
};

/**
 * Progress for long runs: a rewritten line on a terminal, JSON lines for scripts, else nothing.
 * `end` closes the line, so neither the report nor a failure's reason starts in the middle of it.
 */
export const progress = (json: boolean) => {
  let last = 0;
  let drawn = false;
  return {
    report: (fields: Record<string, unknown>) => {
      if (json) {
        process.stderr.write(`${JSON.stringify({ progress: fields })}\n`);
      } else if (process.stderr.isTTY && Date.now() - last > 250) {
        last = Date.now();
        drawn = true;
        const text = Object.entries(fields)
          .map(([k, v]) => `${k} ${v}`)
          .join(', ');
        process.stderr.write(`\r${text}   `);
      }
    },
    end: () => {
      if (drawn) {
        process.stderr.write('\n');
        drawn = false;
      }
    },
  };
};
