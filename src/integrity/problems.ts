/** The integrity problems of DESIGN §5: label values of outpost_integrity_anomalies (contract). */
export const PROBLEMS = [
  'missing_head',
  'missing_stats',
  'missing_events',
  'bad_first_event',
  'seq_gap',
  'head_mismatch',
  'missing_link',
  'orphan_projection',
  'missing_commit_lsn',
] as const;
export type Problem = (typeof PROBLEMS)[number];
export type Anomalies = Record<Problem, number>;

export const noAnomalies = (): Anomalies =>
  Object.fromEntries(PROBLEMS.map((p) => [p, 0])) as Anomalies;

export const anomaliesOf = (counts: Record<string, unknown> | null | undefined): Anomalies => {
  const anomalies = noAnomalies();
  for (const problem of PROBLEMS) {
    anomalies[problem] = Number(counts?.[problem] ?? 0);
  }
  return anomalies;
};
