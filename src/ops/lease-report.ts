import type { LeaseHolding } from '../db/queries/leases.ts';

/** `[0, 1, 2, 3, 5]` as `0-3, 5`. */
export const partitionRanges = (partitions: readonly number[]): string => {
  const ranges: string[] = [];
  const sorted = [...partitions].sort((a, b) => a - b);
  for (let i = 0; i < sorted.length; ) {
    let j = i;
    while (j + 1 < sorted.length && sorted[j + 1] === (sorted[j] as number) + 1) {
      j += 1;
    }
    ranges.push(i === j ? `${sorted[i]}` : `${sorted[i]}-${sorted[j]}`);
    i = j + 1;
  }
  return ranges.join(', ');
};

/** The process that holds a partition's lease now, if one does. */
export const liveHolder = (holding: LeaseHolding | undefined): string | undefined =>
  holding?.live && holding.owner !== null ? holding.owner : undefined;

/**
 * Which process applies which partitions, or which partitions nobody applies: entries waiting for
 * projection show the same whether the projector is slow, failing or not running at all.
 */
export const projectorLeasesLine = (
  holdings: readonly LeaseHolding[],
  partitions: number,
): string => {
  const byPartition = new Map(holdings.map((h) => [h.partition, h]));
  const unheld: number[] = [];
  const heldBy = new Map<string, number[]>();
  for (let partition = 0; partition < partitions; partition += 1) {
    const owner = liveHolder(byPartition.get(partition));
    if (owner !== undefined) {
      heldBy.set(owner, [...(heldBy.get(owner) ?? []), partition]);
    } else {
      unheld.push(partition);
    }
  }
  const held = [...heldBy].map(([owner, ps]) => `${partitionRanges(ps)} by ${owner}`).join('; ');
  if (unheld.length === 0) {
    return `projector leases: ${held}`;
  }
  // Each former holder once, with its most recent expiry.
  const lapsedSince = new Map<string, number>();
  for (const partition of unheld) {
    const holding = byPartition.get(partition);
    if (holding?.owner && holding.expiredSeconds !== null) {
      const since = lapsedSince.get(holding.owner) ?? Number.POSITIVE_INFINITY;
      lapsedSince.set(holding.owner, Math.min(since, holding.expiredSeconds));
    }
  }
  const lapsed = [...lapsedSince].map(([owner, seconds]) => `${owner}'s ${seconds} s ago`);
  const last = lapsed.length > 0 ? ` (leases expired: ${lapsed.join(', ')})` : '';
  return `no projector holds partition${unheld.length > 1 ? 's' : ''} ${partitionRanges(unheld)}${last}: nothing applies their events until a projector runs (outpost serve --only projector, or outpost serve) and reaches the main database${held ? `; held: ${held}` : ''}`;
};

/** What a projector of a log refused its site name is told, and its operator's pending. */
export const anotherLogHolds = (
  site: string,
  members: readonly string[],
  seenSecondsAgo: number,
  barred = false,
) =>
  `site ${site}'s partitions are applied from another Redis log (${members.length > 0 ? `projectors ${members.join(', ')}, ` : ''}last seen ${seenSecondsAgo} s ago): two sites have OUTPOST_SITE=${site}, so give each its own; or, if that log was this site's own before its Redis was replaced by an empty one, ${barred ? '' : "this log takes the name once that log's projectors have stopped (unless they ran after this log was first seen), and "}to free it ${barred ? '' : 'now '}for this log, on the main database: DELETE FROM site_logs WHERE site = '${site.replaceAll("'", "''")}'. This site's events wait unapplied meanwhile`;

/** What the site holding its name is told of a projector of another log refused it. */
export const anotherLogRefused = (site: string, consumer: string) =>
  `a projector of another Redis log (${consumer}) runs as site ${site} and applies nothing: two sites have OUTPOST_SITE=${site}; give each its own`;

/** What a projector of a log that took its site name from a stopped log's says. */
export const siteTakenOver = (site: string) =>
  `site ${site} is now applied from this Redis log: the log that held the name stopped renewing it (its last projector released it, or none renewed it for a while), and this one was first seen after that (the site's Redis replaced by an empty one); if that log is another site's still in use, the two have one OUTPOST_SITE: give each its own before it starts again, or it will be refused`;
